"""Generation throughput: oyster_jax `infer.generate` vs `transformers` `generate`, same model, same inputs.

    python -m oyster_jax.bench.generate                       # configs/models/tiny.py, CPU, greedy
    python -m oyster_jax.bench.generate --batch_sizes 1,8 --prompt_len 64 --new_tokens 128 --json out.json
    python -m oyster_jax.bench.generate --hf_model ~/.cache/oyster_jax/models/smollm2-135m-instruct \\
        --batch_sizes 8 --new_tokens 64 --torch_threads 2

The model is the tiny config with random weights, built once in transformers and converted to ours, so
both sides run identical weights; or, with `--hf_model DIR`, that Hugging Face checkpoint loaded by each side
(ours through `convert.from_hf`, theirs through `from_pretrained`, float32) and batches of chat prompts
rendered with the directory's own chat template (`apply_chat_template`, generation prompt), left-padded for
transformers, ragged for ours. Greedy decoding with EOS disabled: every row generates exactly
`--new_tokens` tokens. Compile time (ours) and the first call (theirs) are reported separately from the
steady-state timing (best of `--repeats`, the two sides alternating). tokens/s = batch · new_tokens / seconds
(prefill included). Also prints the share of greedy tokens that agree.
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


# Chat prompts for the real-model run, written for this benchmark: everyday requests of varied lengths.
CHAT_PROMPTS = [
    [{"role": "user", "content": "Suggest a name for a small bakery by the sea."}],
    [
        {"role": "system", "content": "You are a patient tutor."},
        {"role": "user", "content": "Explain what a fraction is to a ten-year-old."},
    ],
    [{"role": "user", "content": "What should I pack for a weekend hiking trip in the mountains?"}],
    [{"role": "user", "content": "Summarise the water cycle in three steps."}],
    [{"role": "user", "content": "How many minutes are there in a week? Show the arithmetic."}],
    [{"role": "user", "content": "Write two lines of a friendly email declining a meeting invitation."}],
    [
        {"role": "user", "content": "I have eggs, spinach and cheese."},
        {"role": "assistant", "content": "You could make an omelette."},
        {"role": "user", "content": "How long should I cook it?"},
    ],
    [{"role": "user", "content": "Name a few ways to keep houseplants alive while travelling."}],
]


def _load_hf(hf_dir: str, param_dtype: str):
    """(transformers model f32, our ModelConfig, our params, tokenizer) from one Hugging Face directory."""
    import torch  # lazy: torch loads only for the comparison
    import transformers  # lazy: transformers loads only for the comparison

    from oyster_jax import convert  # lazy: checkpoint loading pulls in JAX

    model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    cfg, params = convert.from_hf(hf_dir, param_dtype=param_dtype, dtype=param_dtype)
    return model, cfg, params, tok


def _chat_prompts(tok, batch: int) -> list[list[int]]:
    """`batch` chat prompts (CHAT_PROMPTS repeated), token ids through the tokenizer's chat template."""
    convs = [CHAT_PROMPTS[i % len(CHAT_PROMPTS)] for i in range(batch)]
    return [
        list(tok.apply_chat_template(c, tokenize=True, add_generation_prompt=True, return_dict=False)) for c in convs
    ]


def _time_alternating(fns, repeats: int) -> list[tuple[float, float, object]]:
    """For each fn: (first call seconds, best of `repeats` later calls, last result). The later calls
    alternate between the fns, so that a noisy neighbour slows each side alike."""
    firsts, bests, outs = [], [float("inf")] * len(fns), []
    for fn in fns:
        t0 = time.perf_counter()
        outs.append(fn())
        firsts.append(time.perf_counter() - t0)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            bests[i] = min(bests[i], time.perf_counter() - t0)
    return list(zip(firsts, bests, outs))


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m oyster_jax.bench.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="configs/models/tiny.py")
    parser.add_argument("--hf_model", default="", help="a Hugging Face model dir (real weights, chat prompts)")
    parser.add_argument(
        "--param_dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="--hf_model: our weights and compute dtype (transformers stays float32)",
    )
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
    hf_dir = os.path.expanduser(args.hf_model)
    tok = None
    if hf_dir:
        model, cfg, params, tok = _load_hf(hf_dir, args.param_dtype)
    else:
        model, cfg, params = _build(_model_config(args.model_config), args.seed)
    params = jax.device_put(params)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    rows = []
    for batch in tqdm(batch_sizes, desc="batch sizes", file=sys.stderr):
        if tok is not None:
            prompts = _chat_prompts(tok, batch)
            width = max(map(len, prompts))
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left-padded
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        else:
            prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len)).tolist()
            ids = torch.tensor(prompts)
            mask = torch.ones_like(ids)
        prompt_lens = [len(p) for p in prompts]
        n_tokens = batch * args.new_tokens

        def ours(prompts=prompts):
            return infer.generate(cfg, params, prompts, args.new_tokens, eos_ids=[])

        def theirs(ids=ids, mask=mask):
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )
            return out[:, ids.shape[1] :].tolist()

        (o_first, o_best, o_out), (t_first, t_best, t_out) = _time_alternating([ours, theirs], args.repeats)
        agree = sum(a == b for ra, rb in zip(o_out, t_out) for a, b in zip(ra, rb)) / n_tokens
        rows.append(
            {
                "batch": batch,
                "prompt_len": max(prompt_lens),
                "prompt_len_min": min(prompt_lens),
                "new_tokens": args.new_tokens,
                "oyster_jax_tok_s": n_tokens / o_best,
                "oyster_jax_first_call_s": o_first,
                "transformers_tok_s": n_tokens / t_best,
                "transformers_first_call_s": t_first,
                "greedy_token_agreement": agree,
            }
        )
    model_name = hf_dir or args.model_config
    prompt_note = "chat prompts of {}-{} tokens".format(rows[-1]["prompt_len_min"], rows[-1]["prompt_len"])
    print(
        f"generation on {jax.default_backend()} ({os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}); "
        f"model {model_name} ({cfg.num_params() / 1e6:.1f}M params, ours {cfg.param_dtype}), "
        f"{prompt_note if tok is not None else f'prompt {args.prompt_len}'}, "
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
