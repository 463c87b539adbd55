"""Train-step throughput: tokens/s and achieved FLOP/s as a share of this process's measured matmul roofline,
optionally side by side with TRL's ORPOTrainer (PyTorch, float32) on the same model shape and batch.

    python -m oyster_jax.bench.train_step --config configs/experiments/tiny_csa.py --stage pref --trl
    (tiny_csa shares each pair's prompt, data.pref_shared_len; --config.data.pref_shared_len=0 runs two rows)
    python -m oyster_jax.bench.train_step --config configs/experiments/tiny_csa.py --stage sft \\
        --model configs/models/bench_25m.py --seq 512 --batch 8
    python -m oyster_jax.bench.train_step --hf_model ~/.cache/oyster_jax/models/smollm2-135m-instruct \\
        --stage pref --batch 4 --seq 256 --trl          # the real model's weights on both sides

`--hf_model DIR` (a Hugging Face directory) replaces the experiment's model with that checkpoint: its
architecture and weights on our side (`convert.load_weights`, in the experiment's runtime dtypes), the same
directory through `AutoModelForCausalLM.from_pretrained` and its own tokenizer on TRL's side.
    python -m oyster_jax.bench.train_step --stage pref --trl --lora --lora_rank 16   # LoRA vs TRL + PEFT ORPO

Both frameworks run in this one process with the same thread count (`--threads`, default 2), alternating
in rounds so that a noisy neighbour slows both alike. FLOPs are the model's causal-aware training FLOPs
(`ModelConfig.flops_per_token`, forward + backward = 3x forward; with LoRA the frozen base's matmuls 2x) over
every position the step runs, and
tokens/s counts those positions (under prompt sharing one row per pair; TRL's tokens/s counts its two rows); the
roofline is the median f32 [n, n] @ [n, n] matmul rate (best of n = 512, 1024) measured in each round
right beside that round's steps; the reported fraction is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from oyster_jax import cli
from oyster_jax.core.files import atomic_write_text


def _set_threads(n: int) -> None:
    # Before PyTorch starts its pools. XLA:CPU sizes its pool to the CPUs this process may use: on a bigger
    # machine, pin the process (`taskset -c 0,1 python -m ...`) to compare on `n` cores.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def roofline_flops(dtype_name: str = "float32", reps: int = 12) -> float:
    """FLOP/s of a square f32 matmul in this process: the median over `reps` runs, best of n in 512, 1024.

    Medians (not best bursts) so that a round's roofline and its step times see the same neighbours.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    dtype = getattr(jnp, dtype_name)
    rates = []
    for n in (512, 1024):
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - t)
        rates.append(2.0 * n**3 / float(np.median(times)))
    return max(rates)


_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "scan_layers", "attention_impl", "math_impl")


# ------------------------------------------------------------------------------------------------
# oyster_jax side
# ------------------------------------------------------------------------------------------------


def make_jax_runner(config, stage_name: str, prompt_len: int, hf_model: str = ""):
    """-> (run_one_step, model_cfg, layout): a compiled train step on a fixed synthetic batch in the
    stage's layout (`data.layouts`; one shared-prompt row per pair when config.data.pref_shared_len > 0),
    starting from random weights or, with `hf_model`, from that Hugging Face checkpoint."""
    import jax
    import numpy as np

    from oyster_jax import models
    from oyster_jax.data import layouts
    from oyster_jax.train import optim, trainer
    from oyster_jax.train import stage as stage_lib
    from oyster_jax.train import step as step_lib

    spec = stage_lib.describe(config, stage_name)
    hp, cfg, seq = spec.hparams, spec.model, spec.data.seq_len
    rng = np.random.default_rng(0)
    if not hp.is_pref:
        rows = hp.batch_size
        tokens = rng.integers(0, cfg.vocab_size, (rows, seq)).astype(np.int32)
        mask = np.zeros((rows, seq), np.int32)
        mask[:, prompt_len:] = 1
        layout = layouts.SFT(rows, seq)
        batch = {
            "tokens": tokens,
            "loss_weights": mask,
            "segment_ids": np.ones((rows, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy(),
        }
    else:
        tokens = rng.integers(0, cfg.vocab_size, (hp.batch_size, 2, seq)).astype(np.int32)
        shared = spec.data.shared_len
        layout = layouts.SharedPrompt(hp.batch_size, shared) if shared else layouts.TwoRows(hp.batch_size, seq)
        # Every pair: a prompt of `prompt_len` tokens, both completions fill the rest of a row.
        batch = layout.build([(t[0, :prompt_len], t[0, prompt_len:], t[1, prompt_len:]) for t in tokens])
    optimizer = optim.make_optimizer(hp, hp.num_steps)
    if hf_model:
        from oyster_jax import convert
        from oyster_jax.models import lora

        runtime = {k: getattr(cfg, k) for k in _RUNTIME_FIELDS}
        loaded_cfg, params = convert.load_weights(hf_model, **runtime)
        if loaded_cfg != lora.without_adapters(cfg):
            raise ValueError(f"{hf_model}: the checkpoint's config differs from the benchmark's model config")
        if cfg.lora is not None:  # the checkpoint is the base: fresh adapters as the trainer starts them
            params = lora.merge(params, lora.split(models.init_params(cfg, jax.random.key(0)))[1])
    else:
        params = models.init_params(cfg, jax.random.key(0))
    params, frozen = lora_split(cfg, params)
    state = step_lib.init_state(params, optimizer, jax.random.key(0))
    jitted = trainer.jitted_train_step(spec, batch, frozen_reference=False)
    device_batch = jax.device_put(batch)
    holder = {"state": state}

    def run_one_step():
        with trainer.use_rules(spec.mesh, spec.rules):
            holder["state"], metrics = jitted(holder["state"], device_batch, *frozen)
        return float(metrics["loss"])

    run_one_step.holder = holder  # the live train state, for sub-part timing (`make_head_runner`)
    return run_one_step, cfg, layout


def make_head_runner(cfg, holder: dict, n_tokens: int):
    """The LM head + log-softmax alone, forward and backward (`train.head_logprobs`, as the losses run it),
    on `n_tokens` hidden states: the sub-part that a large vocabulary makes expensive. -> run_once().
    The head weights are read from the live train state `holder["state"]` at each call (the step donates it)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from oyster_jax.models.config import dtype_of
    from oyster_jax.train.head_logprobs import head_logprobs

    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.standard_normal((n_tokens, cfg.hidden_size)), dtype_of(cfg.dtype))
    targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (n_tokens,)), jnp.int32)

    @jax.jit
    def fwd_bwd(head, h):
        return jax.value_and_grad(lambda p, x: head_logprobs(cfg, p, x, targets).sum(), argnums=(0, 1))(head, h)

    def run_once():
        params = holder["state"]["params"]
        jax.block_until_ready(fwd_bwd({k: params[k] for k in ("embed_tokens", "lm_head") if k in params}, h))

    run_once()  # compile
    return run_once


# ------------------------------------------------------------------------------------------------
# TRL side
# ------------------------------------------------------------------------------------------------


def make_trl_runner(cfg, pairs: int, seq: int, prompt_len: int, threads: int, hf_model: str = ""):
    """TRL ORPOTrainer on the same architecture (transformers, float32), fixed [chosen; rejected] batch:
    random weights of `cfg`'s shape, or the checkpoint `hf_model` with its own tokenizer.

    -> run_steps(n) that runs `n` real trainer steps (forward, backward, clipping, AdamW) and returns the
    wall time of each step, measured by a TrainerCallback between consecutive `on_step_end` calls.
    """
    import tempfile

    import datasets
    import torch
    import transformers
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from oyster_jax import data

    torch.set_num_threads(threads)
    if hf_model:
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_model, dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(hf_model)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        hf_config = transformers.AutoConfig.for_model(**_hf_config_kwargs(cfg))
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=data.default_tokenizer_path())
        tok.pad_token = "<|endoftext|>"
        tok.eos_token = "<|im_end|>"
    model = _with_peft_lora(model, cfg.lora)

    words = "the model explains warning signs and safe options in plain words".split()

    def text(n_tokens: int, salt: int) -> str:
        out, k = [], salt
        while len(tok(" ".join(out), add_special_tokens=False)["input_ids"]) < n_tokens:
            out.append(words[k % len(words)])
            k += 3
        return " ".join(out)

    # Prompt of exactly `prompt_len` tokens; completions long enough that TRL truncates them to fill `seq`.
    prompt_words = text(prompt_len, 0).split()
    while len(tok(" ".join(prompt_words), add_special_tokens=False)["input_ids"]) > prompt_len:
        prompt_words.pop()
    prompt = " ".join(prompt_words)
    rows = [{"prompt": prompt, "chosen": " " + text(seq, 1), "rejected": " " + text(seq, 2)} for _ in range(pairs)]
    dataset = datasets.Dataset.from_list(rows * 64)

    times: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    out_dir = tempfile.mkdtemp(prefix="trl_bench_")
    args = ORPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=pairs,
        max_length=seq,
        max_completion_length=seq,
        beta=0.1,
        learning_rate=1e-4,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        max_steps=1,
        seed=0,
    )
    trainer = ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    trainer.add_callback(StepTimer())
    batch = next(iter(trainer.get_train_dataloader()))
    shape = tuple(batch["chosen_input_ids"].shape)

    def run_steps(n: int) -> list[float]:
        times.clear()
        trainer.args.max_steps = n + 1
        start = time.perf_counter()
        trainer.train()
        stamps = [start] + times
        return [b - a for a, b in zip(stamps[1:-1], stamps[2:])]  # drop the first step (warm-up)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return run_steps, shape, trainable


def _head_flops_share(cfg, layout) -> float:
    """Share of the step's training FLOPs in the LM head matmuls (3 x 2·D·V per position)."""
    from oyster_jax.train import metrics as metrics_lib

    head = 3 * 2 * cfg.hidden_size * cfg.vocab_size * layout.rows * layout.row_len
    return head / metrics_lib.train_flops_per_step(cfg, layout.rows, layout.row_len)


def _hf_model_fields(hf_dir: str, runtime: dict):
    """config.model fields for the architecture of the Hugging Face directory `hf_dir`, with `runtime`'s."""
    import dataclasses

    import ml_collections

    from oyster_jax import convert
    from oyster_jax.models import ModelConfig

    full = dataclasses.asdict(ModelConfig.from_hf_config(convert.read_hf_config(hf_dir), **runtime))
    if isinstance(full.get("eos_token_id"), tuple):
        full["eos_token_id"] = list(full["eos_token_id"])
    return ml_collections.ConfigDict(full)


# ------------------------------------------------------------------------------------------------
# LoRA (--lora): our adapters (config.lora) against PEFT's on the TRL side, the same rank, alpha and targets.
# ------------------------------------------------------------------------------------------------


def add_lora_args(ap) -> None:
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters (TRL side: PEFT's, same settings)")
    ap.add_argument("--lora_rank", type=int, default=16)
    ap.add_argument("--lora_alpha", type=float, default=32.0)


def apply_lora_args(config, args) -> None:
    if args.lora:
        config.lora.rank, config.lora.alpha = args.lora_rank, args.lora_alpha


def lora_split(cfg, params):
    """-> (what the optimizer trains, the step's extra arguments): (params, ()), or with LoRA (adapters, (base,))."""
    if cfg.lora is None:
        return params, ()
    from oyster_jax.models import lora

    base, adapters = lora.split(params)
    return adapters, (base,)


def _trainable_params(cfg) -> int:
    """Parameters the optimizer updates: all of them, or with LoRA the adapters."""
    import jax

    from oyster_jax import models
    from oyster_jax.models import lora

    abstract = models.abstract_params(cfg)
    return sum(x.size for x in jax.tree.leaves(lora.split(abstract)[1] if cfg.lora is not None else abstract))


def _with_peft_lora(model, lora):
    """`model` with PEFT LoRA adapters matching ours (base frozen), or `model` itself without LoRA."""
    if lora is None:
        return model
    import peft

    from oyster_jax.models.lora import TARGETS  # here: JAX starts only after the thread count is set

    conf = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=[TARGETS[t][1] for t in lora.targets],
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, conf)


def _hf_config_kwargs(cfg) -> dict:
    d = cfg.to_hf_config()
    d.pop("architectures", None)
    d.pop("torch_dtype", None)
    return d


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/experiments/tiny_csa.py")
    ap.add_argument("--stage", default="pref", choices=("sft", "pref"))
    ap.add_argument("--model", default="", help="configs/models/<name>.py to replace the experiment's model")
    ap.add_argument("--hf_model", default="", help="a Hugging Face model dir: its architecture and weights")
    ap.add_argument("--seq", type=int, default=256, help="tokens per row (pref: prompt + completion)")
    ap.add_argument("--batch", type=int, default=8, help="SFT rows or preference pairs per step")
    ap.add_argument("--prompt_len", type=int, default=0, help="pref: prompt tokens per row (default seq/2)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trl", action="store_true", help="also time TRL's ORPOTrainer (needs `pip install trl`)")
    ap.add_argument(
        "--profile_head",
        action="store_true",
        help="also time the LM head + log-softmax forward+backward alone, at the step's token count",
    )
    ap.add_argument("--json", default="", help="write the results here")
    add_lora_args(ap)
    args, rest = ap.parse_known_args(argv)
    args.hf_model = os.path.expanduser(args.hf_model)
    _set_threads(args.threads)
    import oyster_jax.xla_env  # noqa: F401  (the trainers' XLA flags, before JAX starts)
    from oyster_jax.main import build_config
    from oyster_jax.train import config as config_lib
    from oyster_jax.train import metrics as metrics_lib

    overrides = {k[len("--config.") :].split("=")[0]: k.split("=", 1)[1] for k in rest if k.startswith("--config.")}
    config = build_config(args.config, overrides)
    if args.model and args.hf_model:
        ap.error("--model and --hf_model both replace the model: pass one")
    with config.unlocked():
        keep = {k: config.model[k] for k in _RUNTIME_FIELDS}
        if args.model:
            config.model = config_lib.model_fields(args.model, **keep)
        if args.hf_model:
            config.model = _hf_model_fields(args.hf_model, keep)
        config[args.stage].batch_size = args.batch
        apply_lora_args(config, args)
        config.data.seq_len = args.seq
        config.data.pref_seq_len = args.seq
    prompt_len = args.prompt_len or args.seq // 2
    if args.stage == "pref" and config.data.get("pref_shared_len", 0):
        # Prompt sharing on (the experiment's setting): one row per pair, exactly as long as these pairs need.
        with config.unlocked():
            config.data.pref_shared_len = prompt_len + 2 * (args.seq - prompt_len)

    import numpy as np

    run_jax, cfg, layout = make_jax_runner(config, args.stage, prompt_len, args.hf_model)
    shared = config.data.get("pref_shared_len", 0) if args.stage == "pref" else 0
    rows, seq = (2 * args.batch, args.seq) if args.stage == "pref" else (args.batch, args.seq)  # as two rows
    # FLOPs and tokens of the work actually done: with prompt sharing, one row of `shared` tokens per pair.
    flops_per_step = metrics_lib.train_flops_per_step(cfg, layout.rows, layout.row_len)
    tokens_per_step = layout.rows * layout.row_len
    run_jax()  # compile
    run_jax()
    trl_run = None
    if args.trl:
        if args.stage != "pref":
            ap.error("--trl compares ORPO steps: use --stage pref")
        trl_run, trl_shape, trl_trainable = make_trl_runner(
            cfg, args.batch, seq, prompt_len, args.threads, args.hf_model
        )
        trl_run(1)  # warm-up
        if trl_shape != (args.batch, seq):
            print(f"warning: TRL batch shape {trl_shape} != ({args.batch}, {seq})", file=sys.stderr)
    run_head = None
    if args.profile_head:
        run_head = make_head_runner(cfg, run_jax.holder, tokens_per_step)
    jax_times, trl_times, fractions, roofs, head_shares = [], [], [], [], []
    for _ in range(args.rounds):
        roof = roofline_flops(config.model.dtype)  # measured beside this round's steps, under the same load
        round_times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            run_jax()
            round_times.append(time.perf_counter() - t)
        jax_times += round_times
        if run_head is not None:  # right after the round's steps, under the same load
            head_times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                run_head()
                head_times.append(time.perf_counter() - t)
            head_shares.append(float(np.median(head_times)) / float(np.median(round_times)))
        roofs.append(roof)
        fractions.append(flops_per_step / float(np.median(round_times)) / roof)
        if trl_run is not None:
            trl_times += trl_run(args.steps)
    jax_step = float(np.median(jax_times))
    roof = float(np.median(roofs))
    result = {
        "model_params": cfg.num_params(),
        "hf_model": args.hf_model,
        "stage": args.stage,
        "rows_per_step": rows,
        "seq_len": seq,
        "threads": args.threads,
        "pref_shared_len": shared,
        "lora": cfg.lora.to_dict() if cfg.lora is not None else None,
        "trainable_params": _trainable_params(cfg),
        "roofline_gflops": roof / 1e9,
        "oyster_jax": {
            "step_seconds_median": jax_step,
            "steps_per_s": 1.0 / jax_step,
            "tokens_per_s": tokens_per_step / jax_step,
            "gflops": flops_per_step / jax_step / 1e9,
            "fraction_of_roofline": float(np.median(fractions)),
            "fraction_of_roofline_per_round": fractions,
        },
        "load_average_1min": os.getloadavg()[0],
    }
    if head_shares:
        result["oyster_jax"]["head_share_of_step"] = float(np.median(head_shares))
        result["oyster_jax"]["head_share_of_step_per_round"] = head_shares
        result["oyster_jax"]["head_share_of_flops"] = _head_flops_share(cfg, layout)
    if trl_times:
        trl_step = float(np.median(trl_times))
        result["trl_orpo"] = {
            "step_seconds_median": trl_step,
            "steps_per_s": 1.0 / trl_step,
            "tokens_per_s": rows * seq / trl_step,  # TRL runs two rows per pair
            "gflops": flops_per_step / trl_step / 1e9,
            "trainable_params": trl_trainable,  # PEFT's adapters with --lora: must equal ours
        }
        result["speedup_vs_trl"] = trl_step / jax_step
    ours = result["oyster_jax"]
    layout_note = f" (prompt sharing: {args.batch} rows x {shared} tokens run)" if shared else ""
    print(
        f"{args.stage} step, {cfg.num_params() / 1e6:.1f}M params, {rows} rows x {seq} tokens{layout_note}, "
        f"{args.threads} threads: "
        f"oyster_jax {ours['steps_per_s']:.3f} steps/s, {ours['tokens_per_s']:.0f} tokens/s, "
        f"{ours['gflops']:.1f} GFLOP/s = {100 * ours['fraction_of_roofline']:.1f}% of the f32 matmul roofline "
        f"measured beside it ({roof / 1e9:.1f} GFLOP/s; median over rounds); load average {os.getloadavg()[0]:.1f}"
    )
    if head_shares:
        print(
            f"LM head + log-softmax (forward+backward, {tokens_per_step} tokens, V={cfg.vocab_size}) alone: "
            f"{100 * result['oyster_jax']['head_share_of_step']:.1f}% of the step's time "
            f"({100 * result['oyster_jax']['head_share_of_flops']:.1f}% of its FLOPs)"
        )
    if trl_times:
        t = result["trl_orpo"]
        print(
            f"TRL ORPOTrainer: {t['steps_per_s']:.3f} steps/s, {t['tokens_per_s']:.0f} tokens/s; "
            f"oyster_jax / TRL = {result['speedup_vs_trl']:.2f}x"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
