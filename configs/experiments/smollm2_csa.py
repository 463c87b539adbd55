"""`make demo-real`: SmolLM2-135M-Instruct (the real pretrained model) through constructive SFT, then ORPO, on the
bundled seed data, on 2 CPU cores — evaluated before and after, exported to Hugging Face, checked by transformers.

    make real-model                  # once: python -m oyster_jax.convert.fetch smollm2-135m-instruct
    make demo-real                   # python -m oyster_jax.demo_real --workdir runs/demo-real
    python -m oyster_jax.main --config smollm2_csa --workdir runs/smollm2     # the training alone
    python -m oyster_jax.demo_real --config configs/experiments/smollm2_csa.py --config.sft.num_steps=2 ...

Weights and tokenizer: the fetched Hugging Face directory `$OYSTER_CACHE/models/smollm2-135m-instruct`
(`OYSTER_CACHE` defaults to `~/.cache/oyster_jax`, as in `oyster_jax.convert.fetch`).

Recipe: the thinking is the seed records' safety chain in tagged lines (`data.chain_style="tagged"`), so that
the chain the model writes can be parsed back (`core.chat.parse_chain`). SFT on the constructive + general
chat mixture (12 steps of 4 packed rows x 512 tokens, about 80 conversations, lr 2e-4) teaches the format and
the constructive answers; ORPO (8 steps of 4 pairs, λ 0.1, lr 3e-5) on the seed pairs then separates the pearl
answers from unsafe compliance and reflexive refusal. The seed records are 150-470 SmolLM2 tokens (Chinese
takes about twice the English count).

Hardware: 2 CPU cores, f32 (one SFT step of 4 x 512 is 1.76 TFLOP with the backward pass).
Wall time: 1,198 s (20 min) measured on a quiet 2-core machine, 2026-12-04: evaluation before 329 s, SFT 287 s,
ORPO 247 s, evaluation after 301 s, export check 28 s; peak RSS 12.6 GB.
Expected result (the issue's targets): held-out preference accuracy >= 0.85 and >= base + 0.20; chain parse
rate from 0 (the base model writes no chain) to >= 0.80; general perplexity within 1.15x of the base model's;
benign over-refusal <= 0.10. Measured: all met except the +0.20 gain (the base model already ranks 21 of
the 24 held-out pairs right: 0.875 -> 1.000); see the README table.
"""

from oyster_jax.convert.fetch import default_dir
from oyster_jax.train.config import base_config, model_fields

MODEL = "smollm2-135m-instruct"


def get_config():
    hf_dir = str(default_dir(MODEL))
    c = base_config()
    c.model = model_fields("smollm2_135m", param_dtype="float32", dtype="float32", scan_layers=True)
    c.init_from = hf_dir
    c.stages = "sft,pref"
    c.mesh = "data=1,fsdp=-1,tensor=1"
    c.data.tokenizer = f"{hf_dir}/tokenizer.json"
    c.data.chat_format = "chatml"
    c.data.chain_style = "tagged"
    c.data.seq_len = 512  # packed SFT rows
    c.data.pref_seq_len = 512  # prompt + completion; the longest seed pair (Chinese) needs about 420
    c.data.max_prompt_len = 128
    c.data.pref_shared_len = -1  # one row per pair, prompt | chosen | rejected, sized from the data

    # Small on purpose (2 shared CPU cores): about 80 seed conversations of SFT, then 32 pairs of ORPO.
    c.sft.num_steps = 12
    c.sft.batch_size = 4
    c.sft.microbatches = 2  # the same gradient in two halves: half the activation memory (about 8 GB at once)
    c.sft.learning_rate = 2e-4
    c.sft.warmup_steps = 2
    c.sft.logits_chunk = 128

    c.pref.loss = "orpo"
    c.pref.orpo_lambda = 0.1
    c.pref.num_steps = 8
    c.pref.batch_size = 4  # pairs
    c.pref.microbatches = 2
    c.pref.learning_rate = 3e-5
    c.pref.warmup_steps = 1
    c.pref.logits_chunk = 128

    c.checkpoint.every_steps = 4
    c.checkpoint.keep = 1
    c.peak_tflops = 1.0  # skip the start-up matmul measurement (MFU in the logs is then relative to 1 TFLOP/s)
    return c
