"""Orbax checkpoint (model checkpoint, trainer workdir or one of its stages) -> Hugging Face directory.

    python -m oyster_jax.convert.orbax_to_hf --ckpt /ckpts/qwen3_14b --out /export/qwen3_14b [--dtype bfloat16]

The output (config.json, generation_config.json, model-0000K-of-0000N.safetensors + index) loads with
`transformers.AutoModelForCausalLM.from_pretrained(out)` and with vLLM.
"""

from __future__ import annotations

import argparse
import sys
import time

from oyster_jax import cli
from oyster_jax.convert.formats import load_weights
from oyster_jax.convert.hf import to_hf


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="Orbax model checkpoint, trainer workdir W or W/<stage>")
    ap.add_argument("--out", required=True, help="output Hugging Face directory")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--max_shard_gb", type=float, default=4.0)
    ap.add_argument("--debug", action="store_true", help="print the traceback of a bad-input error too")
    args = ap.parse_args(argv)
    t0 = time.time()
    with cli.bad_input_exits(args.debug):  # no checkpoint, unreadable model_config.json: one line, exit 2
        cfg, params = load_weights(args.ckpt)
    out = to_hf(cfg, params, args.out, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 2**30), progress=True)
    print(f"wrote {out}: {cfg.arch}, {cfg.num_params() / 1e6:.1f}M params as {args.dtype}, {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
