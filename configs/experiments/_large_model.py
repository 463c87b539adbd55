"""What the 14B recipes share: runtime model fields, weights dir, mesh, sharding, tokenizer, chat format."""

from oyster_jax.train.config import base_config, model_fields

# f32 params and optimizer state, bf16 compute, full remat over scanned layers: fits 14B on FSDP x 8 GPUs.
RUNTIME = dict(param_dtype="float32", dtype="bfloat16", remat_policy="full", scan_layers=True, attention_impl="auto")


def large_model_config(model: str, hf_dir: str, chat_format: str, stages: str):
    c = base_config()
    c.model = model_fields(model, **RUNTIME)
    c.init_from = hf_dir
    c.stages = stages
    c.mesh = "data=1,fsdp=-1,tensor=1"
    c.sharding = "fsdp_tp"
    c.data.tokenizer = f"{hf_dir}/tokenizer.json"
    c.data.chat_format = chat_format
    return c
