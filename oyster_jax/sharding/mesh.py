"""Mesh construction and the logical -> physical sharding map."""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from oyster_jax.configs.sharding import RECIPES

MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh_spec(spec: str | dict) -> dict[str, int]:
    """'data=1,fsdp=4,tensor=2' or a dict -> {axis: size}, axes in MESH_AXES order, missing axes = 1."""
    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            if name not in MESH_AXES or not value:
                raise ValueError(f"mesh spec {spec!r}: bad entry {part!r}; expected AXIS=SIZE with AXIS in {MESH_AXES}")
            items[name] = int(value)
        spec = items
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are not among {MESH_AXES}")
    return {a: int(spec.get(a, 1)) for a in MESH_AXES}


def make_mesh(spec: str | dict, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; one axis may be -1 to take the remaining devices."""
    shape = parse_mesh_spec(spec)
    devices = list(devices if devices is not None else jax.devices())
    fill = [a for a, s in shape.items() if s == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape.values() if s != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"mesh {shape}: {len(devices)} devices are not divisible by {known}")
        shape[fill[0]] = len(devices) // known
    if math.prod(shape.values()) != len(devices):
        raise ValueError(f"mesh {shape} needs {math.prod(shape.values())} devices; {len(devices)} available")
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(tuple(shape.values()), devices=devices)
    except Exception:  # CPU / unusual topologies: plain row-major order
        arr = np.asarray(devices).reshape(tuple(shape.values()))
    return Mesh(arr, MESH_AXES)


def resolve_rules(rules) -> tuple:
    """A recipe name from configs/sharding.py (`oyster_jax.configs.sharding`), or a tuple of (logical, mesh) pairs."""
    if rules is None:
        rules = "fsdp_tp"
    if isinstance(rules, str):
        if rules not in RECIPES:
            raise ValueError(f"unknown sharding recipe {rules!r}; known: {sorted(RECIPES)}")
        rules = RECIPES[rules]
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)


def logical_to_sharding(logical: PartitionSpec, shape, mesh: Mesh, rules) -> NamedSharding:
    """Map one tensor's logical axes to a NamedSharding, replicating any dim a mesh axis cannot divide."""
    table = dict(resolve_rules(rules))
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, PartitionSpec(*out))


def tree_shardings(logical_axes, shapes, mesh: Mesh, rules=None):
    """NamedSharding for every leaf of `shapes`, from the matching PartitionSpec of logical axes and `rules`.

    The parameter shardings of a model are `models.param_shardings(cfg, mesh, rules)`, which calls this
    with the model's own logical axes (sharding sits below models and knows no model).
    """
    return jax.tree.map(
        lambda spec, s: logical_to_sharding(spec, s.shape, mesh, rules),
        logical_axes,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Inputs [B, ...]: batch over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def active_spec(shape, logical: tuple) -> PartitionSpec | None:
    """The PartitionSpec that the active `use_rules` gives logical axes `logical` of an array of `shape` (None
    outside `use_rules`), any dim a mesh axis cannot divide replicated, as `logical_to_sharding` places
    parameters."""
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return None
    return logical_to_sharding(PartitionSpec(*logical), shape, mesh, rules).spec


def constrain(x: jax.Array, logical: tuple) -> jax.Array:
    """`x` constrained to the logical axes `logical` under the active `use_rules` (`active_spec`); a no-op
    outside it."""
    spec = active_spec(x.shape, logical)
    if spec is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(jax.sharding.get_abstract_mesh(), spec))


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules=None):
    """Activation constraints (`nn.with_logical_constraint`) resolve against `mesh` with `rules`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(resolve_rules(rules)):
        yield
