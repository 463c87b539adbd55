"""ORPO of DeepSeek-R1-Distill-Qwen-14B (Qwen2 architecture: qkv bias, no q/k norm) on CSA preference pairs.

Same recipe as qwen3_14b_orpo.py with the DeepSeek-R1 chat format (`<｜User｜>…<｜Assistant｜><think>\\n…`).
Weights: `huggingface-cli download deepseek-ai/DeepSeek-R1-Distill-Qwen-14B \\
    --local-dir checkpoints/DeepSeek-R1-Distill-Qwen-14B`.

TPU v5p-64 (32 chips): FSDP over all chips.

    python -m oyster_jax.main --config configs/experiments/ds_r1_distill_qwen_14b_orpo.py \\
        --workdir gs://BUCKET/ds_r1_14b_orpo --config.mesh=data=1,fsdp=32,tensor=1 \\
        --config.init_from=checkpoints/DeepSeek-R1-Distill-Qwen-14B --config.data.pref_task=data/csa_pairs.jsonl

8x H100 80 GB: FSDP over 8 GPUs, 4 microbatches.

    python -m oyster_jax.main --config configs/experiments/ds_r1_distill_qwen_14b_orpo.py \\
        --workdir runs/ds_r1_14b_orpo --config.mesh=data=1,fsdp=8,tensor=1 --config.pref.microbatches=4 \\
        --config.init_from=checkpoints/DeepSeek-R1-Distill-Qwen-14B --config.data.pref_task=data/csa_pairs.jsonl

Expected: as for Qwen3-14B; `tests/test_train_aot.py` AOT-compiles this step on an 8-device fake CPU mesh.
"""

from oyster_jax.train.config import base_config, model_fields

HF_DIR = "checkpoints/DeepSeek-R1-Distill-Qwen-14B"


def get_config():
    c = base_config()
    c.model = model_fields(
        "ds_r1_distill_qwen_14b",
        param_dtype="float32",
        dtype="bfloat16",
        remat_policy="full",
        scan_layers=True,
        attention_impl="auto",
    )
    c.init_from = HF_DIR
    c.stages = "pref"
    c.mesh = "data=1,fsdp=-1,tensor=1"
    c.sharding = "fsdp_tp"
    c.data.pref_task = "oyster_csa_seed_pref"  # or a JSONL path of preference records
    c.data.heldout_pref_task = "oyster_csa_seed_pref"
    c.data.tokenizer = f"{HF_DIR}/tokenizer.json"
    c.data.chat_format = "deepseek_r1"
    c.data.pref_seq_len = 4096
    c.data.max_prompt_len = 1024

    c.pref.loss = "orpo"
    c.pref.orpo_lambda = 0.1
    c.pref.num_steps = 1000
    c.pref.batch_size = 32
    c.pref.microbatches = 1
    c.pref.learning_rate = 5e-6
    c.pref.warmup_steps = 50
    c.pref.min_lr_ratio = 0.1
    c.pref.grad_clip = 1.0
    c.pref.logits_chunk = 512

    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 3
    return c
