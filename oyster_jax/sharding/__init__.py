"""Device mesh and logical-axis sharding.

mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 2})      # -1 fills the remaining devices
shardings = models.param_shardings(cfg, mesh, rules)        # NamedSharding per parameter (in models)
with use_rules(mesh, rules): ...                            # activation constraints inside jit
"""

from oyster_jax.sharding.mesh import (
    MESH_AXES,
    active_spec,
    batch_sharding,
    constrain,
    logical_to_sharding,
    make_mesh,
    parse_mesh_spec,
    replicated,
    resolve_rules,
    tree_shardings,
    use_rules,
)

__all__ = [
    "MESH_AXES",
    "active_spec",
    "batch_sharding",
    "constrain",
    "logical_to_sharding",
    "make_mesh",
    "parse_mesh_spec",
    "replicated",
    "resolve_rules",
    "tree_shardings",
    "use_rules",
]
