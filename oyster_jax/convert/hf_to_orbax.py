"""Hugging Face directory -> Orbax model checkpoint.

    python -m oyster_jax.convert.hf_to_orbax --hf_dir /path/to/Qwen3-14B --out /ckpts/qwen3_14b \
        [--param_dtype bfloat16] [--mesh data=1,fsdp=-1,tensor=1]

Tensors stream from the safetensors files one at a time; with --mesh each goes straight to its shards.
"""

from __future__ import annotations

import argparse
import sys
import time

from oyster_jax import cli
from oyster_jax.convert.checkpoint import save_model
from oyster_jax.convert.hf import from_hf


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf_dir", required=True, help="directory with config.json and *.safetensors")
    ap.add_argument("--out", required=True, help="output Orbax checkpoint directory")
    ap.add_argument("--param_dtype", default=None, choices=["float32", "bfloat16"], help="default: float32")
    ap.add_argument("--mesh", default=None, help="e.g. data=1,fsdp=-1,tensor=1 (default: one device)")
    ap.add_argument("--debug", action="store_true", help="print the traceback of a bad-input error too")
    args = ap.parse_args(argv)
    t0 = time.time()
    overrides = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    mesh = None
    with cli.bad_input_exits(args.debug):  # a bad --mesh, config.json or tensor: one line naming it, exit 2
        if args.mesh:
            from oyster_jax.sharding import make_mesh

            try:
                mesh = make_mesh(args.mesh)
            except ValueError as e:
                raise ValueError(f"--mesh {args.mesh}: {e}") from e
        cfg, params = from_hf(args.hf_dir, mesh=mesh, progress=True, **overrides)
    out = save_model(args.out, cfg, params)
    print(f"wrote {out}: {cfg.arch}, {cfg.num_params() / 1e6:.1f}M params, {cfg.param_dtype}, {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
