"""Generation throughput: oyster_jax `infer.generate` vs `transformers` `generate`, same model, same inputs.

    python -m oyster_jax.bench.generate                       # configs/models/tiny.py, CPU, greedy
    python -m oyster_jax.bench.generate --batch_sizes 1,8 --prompt_len 64 --new_tokens 128 --json out.json

The model is the tiny config with random weights, built once in transformers and converted to ours, so
both sides run identical weights. Greedy decoding with EOS disabled: every row generates exactly
`--new_tokens` tokens. Compile time (ours) and the first call (theirs) are reported separately from the
steady-state timing (best of `--repeats`). tokens/s = batch · new_tokens / seconds (prefill included).
Also prints whether the greedy tokens agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

from tqdm import tqdm

from oyster_jax import cli
from oyster_jax.core.files import atomic_write_text


def _model_config(path: str):

    from oyster_jax.models import ModelConfig  # lazy: the model pulls in JAX

    spec = importlib.util.spec_from_file_location("bench_model_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return ModelConfig.from_dict(module.get_config().to_dict())


def _build(cfg, seed: int):
    """A random transformers model with `cfg`'s architecture, and the same weights in our format."""
    import torch  # lazy: torch loads only for the comparison
    import transformers  # lazy: transformers loads only for the comparison

    from oyster_jax import convert  # lazy: checkpoint loading pulls in JAX

    hf_cfg = cfg.to_hf_config()
    config = transformers.AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # larger-than-init weights so that greedy outputs are not one repeated token
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(4.0)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        ours_cfg, params = convert.from_hf(pathlib.Path(tmp))
    return model, ours_cfg, params


def _time(fn, repeats: int) -> tuple[float, float, object]:
    """(first call seconds, best of `repeats` later calls, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m oyster_jax.bench.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="configs/models/tiny.py")
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch_threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import jax  # lazy: JAX loads only when a local model runs
    import numpy as np
    import torch  # lazy: torch loads only for the comparison

    from oyster_jax import infer  # lazy: generation pulls in JAX

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    cfg = _model_config(args.model_config)
    model, cfg, params = _build(cfg, args.seed)
    params = jax.device_put(params)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    rows = []
    for batch in tqdm(batch_sizes, desc="batch sizes", file=sys.stderr):
        prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len))
        n_tokens = batch * args.new_tokens

        def ours(prompts=prompts):
            return infer.generate(cfg, params, prompts.tolist(), args.new_tokens, eos_ids=[])

        def theirs(ids=torch.tensor(prompts)):
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )
            return out[:, args.prompt_len :].tolist()

        o_first, o_best, o_out = _time(ours, args.repeats)
        t_first, t_best, t_out = _time(theirs, args.repeats)
        agree = sum(a == b for ra, rb in zip(o_out, t_out) for a, b in zip(ra, rb)) / n_tokens
        rows.append(
            {
                "batch": batch,
                "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens,
                "oyster_jax_tok_s": n_tokens / o_best,
                "oyster_jax_first_call_s": o_first,
                "transformers_tok_s": n_tokens / t_best,
                "transformers_first_call_s": t_first,
                "greedy_token_agreement": agree,
            }
        )
    print(
        f"generation on {jax.default_backend()} ({os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}); "
        f"model {args.model_config} ({cfg.num_params() / 1e6:.1f}M params), prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'batch':>5} {'oyster_jax tok/s':>17} {'transformers tok/s':>19} {'ratio':>6} {'compile+1st (s)':>16} agree"
    )
    for r in rows:
        ratio = r["oyster_jax_tok_s"] / r["transformers_tok_s"]
        print(
            f"{r['batch']:>5} {r['oyster_jax_tok_s']:>17.1f} {r['transformers_tok_s']:>19.1f} {ratio:>6.2f} "
            f"{r['oyster_jax_first_call_s']:>16.2f} {r['greedy_token_agreement']:.1%}"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
