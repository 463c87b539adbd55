"""ORPO of DeepSeek-R1-Distill-Qwen-14B (Qwen2 architecture: qkv bias, no q/k norm) on CSA preference pairs.

The recipe of qwen3_14b_orpo.py (imported, not copied) with the DeepSeek-R1 chat format
(`<｜User｜>…<｜Assistant｜><think>\\n…`).
Weights: `huggingface-cli download deepseek-ai/DeepSeek-R1-Distill-Qwen-14B \\
    --local-dir checkpoints/DeepSeek-R1-Distill-Qwen-14B`.

TPU v5p-64 (32 chips): FSDP over all chips.

    python -m oyster_jax.main --config configs/experiments/ds_r1_distill_qwen_14b_orpo.py \\
        --workdir /gcs/BUCKET/ds_r1_14b_orpo --config.mesh=data=1,fsdp=32,tensor=1 \\
        --config.init_from=checkpoints/DeepSeek-R1-Distill-Qwen-14B --config.data.pref_task=data/csa_pairs.jsonl

8x H100 80 GB: FSDP over 8 GPUs, 4 microbatches.

    python -m oyster_jax.main --config configs/experiments/ds_r1_distill_qwen_14b_orpo.py \\
        --workdir runs/ds_r1_14b_orpo --config.mesh=data=1,fsdp=8,tensor=1 --config.pref.microbatches=4 \\
        --config.init_from=checkpoints/DeepSeek-R1-Distill-Qwen-14B --config.data.pref_task=data/csa_pairs.jsonl

Expected: as for Qwen3-14B; `tests/test_train_multidevice.py` AOT-compiles this step on an 8-device fake CPU mesh.
"""

from oyster_jax.configs.experiments import qwen3_14b_orpo
from oyster_jax.configs.experiments._large_model import RUNTIME
from oyster_jax.train.config import model_fields

HF_DIR = "checkpoints/DeepSeek-R1-Distill-Qwen-14B"


def get_config():
    c = qwen3_14b_orpo.get_config()
    c.model = model_fields("ds_r1_distill_qwen_14b", **RUNTIME)
    c.init_from = HF_DIR
    c.data.tokenizer = f"{HF_DIR}/tokenizer.json"
    c.data.chat_format = "deepseek_r1"
    return c
