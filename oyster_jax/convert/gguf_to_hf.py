"""GGUF file (llama.cpp / Ollama) -> Hugging Face directory, dequantized.

    python -m oyster_jax.convert.gguf_to_hf --gguf model.Q4_1.gguf --out /models/smollm2 [--dtype bfloat16]

Writes config.json, generation_config.json, model.safetensors, tokenizer.json and tokenizer_config.json
(with the chat template). The directory loads with `convert.from_hf`, `transformers` and vLLM.
Exit codes: 0 done; 2 a file or field we refuse (the message names the metadata key or tensor).
"""

from __future__ import annotations

import argparse
import sys
import time

from oyster_jax.convert.gguf import gguf_to_hf_dir, read_gguf
from oyster_jax.convert.safetensors_io import CheckpointFormatError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the .gguf file")
    ap.add_argument("--out", required=True, help="output Hugging Face directory (replaced when it exists)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        src = read_gguf(args.gguf)  # the header is parsed once: the conversion reuses it
        out = gguf_to_hf_dir(src, args.out, dtype=args.dtype, progress=True)
    except (CheckpointFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = src.config
    print(f"wrote {out}: {cfg.arch}, {cfg.num_params() / 1e6:.1f}M params as {args.dtype}, {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
