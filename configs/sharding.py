"""Logical-axis -> mesh-axis rules, one short table per recipe. Pick one with `config.sharding.recipe`.

Parameter axes: vocab, embed, heads, kv_heads, head_dim, mlp, layers.
Activation axes: act_batch, act_length, act_embed, act_heads, act_kv_heads, act_mlp, act_vocab.
The losses' LM head (train/head_logprobs.py): head_rows (its tokens) and head_vocab (its weight's and its logits'
vocabulary), so that under FSDP the head runs vocabulary-parallel instead of gathering the whole weight.
A mesh axis that does not divide a dimension is dropped for that tensor (it is replicated instead).
"""

# FSDP over `fsdp`, Megatron-style tensor parallelism over `tensor`, batch over `data` x `fsdp`.
FSDP_TP = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("act_batch", ("data", "fsdp")),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("head_rows", "data"),
    ("head_vocab", ("fsdp", "tensor")),
)

# Pure data parallelism: every parameter replicated.
DATA_PARALLEL = (("act_batch", ("data", "fsdp")),)

RECIPES = {"fsdp_tp": FSDP_TP, "data_parallel": DATA_PARALLEL}
