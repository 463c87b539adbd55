"""Orbax checkpoint (model checkpoint, trainer workdir or one of its stages) -> Hugging Face directory.

    python -m oyster_jax.convert.orbax_to_hf --ckpt /ckpts/qwen3_14b --out /export/qwen3_14b [--dtype bfloat16] \\
        [--tokenizer /models/Qwen3-14B/tokenizer.json] [--chat_format chatml]

The output (config.json, generation_config.json, model-0000K-of-0000N.safetensors + index, tokenizer.json,
tokenizer_config.json with the project's chat template) loads with
`transformers.AutoModelForCausalLM.from_pretrained(out)` / `AutoTokenizer.from_pretrained(out)`.
The tokenizer is `--tokenizer`, else a tokenizer.json inside `--ckpt` (or its parent, a trainer workdir),
else the bundled seed tokenizer when the vocabulary sizes match; `--no_tokenizer` writes weights only.

A stage trained with LoRA (config.lora.rank > 0) holds adapters only: `--adapter_only` writes them as a PEFT
adapter (adapter_config.json + adapter_model.safetensors, for `peft.PeftModel.from_pretrained` and vLLM's
LoRA loader); without it the base recorded in the stage's lora.json is loaded (and its fingerprint checked)
and the merged model is written.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

from oyster_jax import cli
from oyster_jax.convert.formats import find_tokenizer, load_weights
from oyster_jax.convert.hf import to_hf
from oyster_jax.convert.peft import load_lora_stage, load_stage_base, lora_stage_dir, to_peft
from oyster_jax.models import lora as lora_lib


def _default_tokenizer(ckpt: str):
    """The tokenizer the checkpoint carries (a trainer stage's tokenizer/, or one beside the weights), else None:
    to_hf then takes the bundled one if it fits the vocabulary, and says so otherwise."""
    try:
        return find_tokenizer(ckpt)
    except FileNotFoundError:
        return None


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="Orbax model checkpoint, trainer workdir W or W/<stage>")
    ap.add_argument("--out", required=True, help="output Hugging Face directory")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--max_shard_gb", type=float, default=4.0)
    ap.add_argument("--tokenizer", help="tokenizer.json to ship (default: see above)")
    ap.add_argument("--chat_format", default="chatml", help="chat template written to tokenizer_config.json")
    ap.add_argument("--no_tokenizer", action="store_true", help="write the weights and config only")
    ap.add_argument("--adapter_only", action="store_true", help="LoRA stage: write the PEFT adapter only")
    ap.add_argument("--debug", action="store_true", help="print the traceback of a bad-input error too")
    args = ap.parse_args(argv)
    t0 = time.time()
    with cli.bad_input_exits(args.debug):  # no checkpoint, unreadable model_config.json: one line, exit 2
        if args.adapter_only or lora_stage_dir(args.ckpt) is not None:
            cfg, adapters, meta = load_lora_stage(args.ckpt)
            if args.adapter_only:
                out = to_peft(cfg, adapters, args.out, base_model_name_or_path=meta.get("base_path", ""))
                n = sum(int(a.size) for a in jax.tree.leaves(adapters))
                print(f"wrote {out}: PEFT LoRA adapter, rank {cfg.lora.rank}, {n / 1e6:.2f}M params")
                return 0
            params = lora_lib.merge(load_stage_base(cfg, meta), adapters)
        else:
            cfg, params = load_weights(args.ckpt)
    tokenizer = False if args.no_tokenizer else (args.tokenizer or _default_tokenizer(args.ckpt))
    try:
        out = to_hf(
            cfg,
            params,
            args.out,
            dtype=args.dtype,
            max_shard_bytes=int(args.max_shard_gb * 2**30),
            progress=True,
            tokenizer=tokenizer,
            chat_format=args.chat_format,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    merged = " (LoRA adapters merged)" if cfg.lora is not None else ""
    size = f"{cfg.num_params() / 1e6:.1f}M params as {args.dtype}"
    print(f"wrote {out}: {cfg.arch}{merged}, {size}, {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
