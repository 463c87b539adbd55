"""ORPO of Qwen3-14B on CSA preference pairs (chosen = pearl point, rejected = initial / contrastive response).

As in the report, ORPO starts from the base model (no SFT stage, no reference model): loss = NLL(chosen)
+ λ·L_OR with λ = 0.1 on mean completion log-probs; chosen and rejected run through one fused forward.
Weights: a Hugging Face directory (`huggingface-cli download Qwen/Qwen3-14B --local-dir checkpoints/Qwen3-14B`).
Pairs: `config.data.pref_task` = a data spec of preference records (e.g. the Lingo-BP engine's JSONL, TRL
`{prompt, chosen, rejected}` records or a Hugging Face dataset; docs/data.md), or `config.data.pref_mixture`.

TPU v5p-64 (32 chips): FSDP over all chips, 32 pairs (64 rows of 4096 tokens) per step.

    python -m oyster_jax.main --config configs/experiments/qwen3_14b_orpo.py --workdir /gcs/BUCKET/qwen3_14b_orpo \\
        --config.mesh=data=1,fsdp=32,tensor=1 --config.init_from=checkpoints/Qwen3-14B \\
        --config.data.pref_task=data/csa_pairs.jsonl

8x H100 80 GB: FSDP over 8 GPUs; 4 microbatches of 8 pairs (2 pairs per GPU per microbatch).

    python -m oyster_jax.main --config configs/experiments/qwen3_14b_orpo.py --workdir runs/qwen3_14b_orpo \\
        --config.mesh=data=1,fsdp=8,tensor=1 --config.pref.microbatches=4 \\
        --config.init_from=checkpoints/Qwen3-14B --config.data.pref_task=data/csa_pairs.jsonl

Expected: rewards/accuracies rises towards 1 and log_odds_ratio towards 0 within a few hundred steps;
`tests/test_train_multidevice.py` AOT-compiles this step on an 8-device fake CPU mesh and prints the memory analysis.
"""

from oyster_jax.configs.experiments._large_model import large_model_config

HF_DIR = "checkpoints/Qwen3-14B"


def get_config():
    c = large_model_config("qwen3_14b", HF_DIR, "chatml", stages="pref")
    c.data.pref_task = "oyster_csa_seed_pref"  # or any data spec (docs/data.md)
    c.data.heldout_pref_task = "oyster_csa_seed_pref"
    c.data.pref_seq_len = 4096
    c.data.max_prompt_len = 1024

    c.pref.loss = "orpo"
    c.pref.orpo_lambda = 0.1
    c.pref.num_steps = 1000
    c.pref.batch_size = 32  # pairs (64 rows)
    c.pref.microbatches = 1
    c.pref.learning_rate = 5e-6
    c.pref.warmup_steps = 50
    c.pref.min_lr_ratio = 0.1
    c.pref.weight_decay = 0.0
    c.pref.grad_clip = 1.0
    c.pref.logits_chunk = 512

    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 3
    return c
