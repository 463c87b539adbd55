"""Ahead-of-time compile forward+backward for a model config on a mesh you may not have, and print
XLA's memory analysis. No weights and no accelerator needed: inputs are abstract.

    python -m oyster_jax.tools.aot --config configs/models/qwen3_14b.py --mesh data=1,fsdp=4,tensor=2

On a CPU host with fewer devices than the mesh needs, fake CPU devices are created (XLA_FLAGS must be
set before JAX starts, which this module does when run as a program).
"""

from __future__ import annotations

import argparse
import math
import os
import sys


def _ensure_devices(n: int) -> None:
    flag = f"--xla_force_host_platform_device_count={n}"
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def _mesh_size(spec: str) -> int:
    sizes = [int(part.split("=")[1]) for part in spec.split(",") if part.strip()]
    return math.prod(s for s in sizes if s > 0)


def next_token_loss(cfg, params, tokens, segment_ids):
    """Mean next-token cross-entropy over non-padding positions (the train-step shape for AOT)."""
    import jax
    import jax.numpy as jnp

    from oyster_jax import models

    logits = models.forward(cfg, params, tokens, segment_ids=segment_ids)[:, :-1]
    targets = tokens[:, 1:]
    weights = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1)


def compile_train_grad(cfg, mesh, rules, batch: int, seq: int):
    """Lower + compile value_and_grad of `next_token_loss` with explicit shardings and abstract inputs."""
    import functools

    import jax

    from oyster_jax import models
    from oyster_jax.data import layouts
    from oyster_jax.sharding import batch_sharding, param_shardings, replicated, use_rules

    p_shard = param_shardings(cfg, mesh, rules)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), models.abstract_params(cfg), p_shard
    )
    tokens = layouts.SFT(batch, seq).spec()["tokens"]  # the packed SFT rows' shape, from the layout module
    tok = jax.ShapeDtypeStruct(tokens.shape, tokens.dtype, sharding=batch_sharding(mesh))
    fn = jax.jit(
        jax.value_and_grad(functools.partial(next_token_loss, cfg)),
        in_shardings=(p_shard, batch_sharding(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), p_shard),
    )
    with use_rules(mesh, rules):
        return fn.lower(abstract, tok, tok).compile()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="configs/models/<name>.py")
    ap.add_argument("--mesh", default="data=1,fsdp=4,tensor=2")
    ap.add_argument("--rules", default="fsdp_tp", help="sharding recipe from configs/sharding.py")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
    ap.add_argument("--remat", default="full", help="remat policy: none | full | dots | dots_no_batch")
    args = ap.parse_args(argv)
    _ensure_devices(_mesh_size(args.mesh))

    import time

    from oyster_jax import models
    from oyster_jax.sharding import make_mesh

    cfg = models.model_config_from_file(
        args.config, dtype=args.dtype, remat_policy=args.remat, scan_layers=True, attention_impl="xla"
    )
    mesh = make_mesh(args.mesh)
    t0 = time.time()
    compiled = compile_train_grad(cfg, mesh, args.rules, args.batch, args.seq)
    mem = compiled.memory_analysis()
    gib = 2.0**-30
    param_bytes = cfg.num_params() * 4
    shape = f"mesh {dict(mesh.shape)}, batch {args.batch} x seq {args.seq}"
    print(f"{args.config}: {cfg.num_params() / 1e9:.2f}B params, {shape}")
    print(f"compiled forward+backward in {time.time() - t0:.1f}s; per-device memory analysis:")
    for field in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        print(f"  {field:32s} {getattr(mem, field) * gib:10.3f} GiB")
    print(
        f"  (full f32 params: {param_bytes * gib:.3f} GiB; per device if evenly sharded: "
        f"{param_bytes * gib / mesh.devices.size * mesh.shape['data']:.3f} GiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
