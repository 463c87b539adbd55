"""True step metrics: FLOPs and tokens/s count the rows a step runs (one per pair under prompt sharing), the
peak FLOP/s comes from a per-chip table or the config, and an unknown accelerator logs no MFU."""

import os
import types

import pytest

from oyster_jax.train import config as config_lib
from oyster_jax.train import metrics as metrics_lib
from oyster_jax.train import trainer

P, T = 4, 32  # pairs per step, tokens per row as two rows (prompt 16 + completion 16)


@pytest.mark.parametrize(
    "kind,peak",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
    ],
)
def test_peak_table(kind, peak):
    assert metrics_lib.table_peak_flops(kind, "bfloat16") == peak
    assert metrics_lib.table_peak_flops(kind, "float32") is None  # the table holds bf16 dense peaks only


def test_peak_source_order():
    gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    assert metrics_lib.peak_flops_per_device(0.0, gpu, "bfloat16")[0] == 989e12
    assert metrics_lib.peak_flops_per_device(500.0, gpu, "bfloat16") == (500e12, "config.peak_tflops")
    unknown = types.SimpleNamespace(platform="gpu", device_kind="Some Future Chip")
    peak, source = metrics_lib.peak_flops_per_device(0.0, unknown, "bfloat16")
    assert peak is None and "config.peak_tflops" in source
    assert "mfu" not in metrics_lib.throughput(1e12, 1000, 0.5, None)  # no peak: no MFU, not a wrong one
    cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
    peak, source = metrics_lib.peak_flops_per_device(0.0, cpu, "float32")
    assert peak > 0 and source.startswith("measured")  # labelled as a measurement, not a datasheet peak


def _cpu_upper_bound_tflops() -> float:
    """A peak no x86 core can beat: 5 GHz x 64 f32 FLOP per cycle (two AVX-512 FMA units) per core."""
    return (os.cpu_count() or 1) * 5e9 * 64 / 1e12


def _synthetic_pref_run(tmp_path, shared_len: int):
    config = config_lib.base_config()
    config.stages = "pref"
    config.mesh = "data=1,fsdp=1,tensor=1"
    config.synthetic_data = True
    config.data.pref_seq_len = T
    config.data.pref_shared_len = shared_len
    config.pref.num_steps = 4
    config.pref.batch_size = P
    config.pref.warmup_steps = 0
    config.checkpoint.every_steps = 100
    config.peak_tflops = _cpu_upper_bound_tflops()
    workdir = tmp_path / f"shared{shared_len}"
    trainer.train(config, workdir, progress=False)
    records = metrics_lib.read_jsonl(workdir / "pref" / "metrics.jsonl")
    return config_lib.model_config(config), [r for r in records if "tokens_per_s" in r]


def test_tokens_and_flops_count_the_rows_run_for_both_layouts(tmp_path):
    """The same synthetic pairs as two rows of 32 and as one shared-prompt row of 48: tokens/s and FLOP/s
    both count the positions the step ran (rows x row length), so prompt sharing shows fewer tokens per
    step, not a doubled rate; MFU against a stated peak stays in [0, 1]."""
    counted = {}
    for shared, rows, row_len in ((0, 2 * P, T), (T // 2 + 2 * (T // 2), P, 48)):
        cfg, records = _synthetic_pref_run(tmp_path, shared)
        assert len(records) == 3  # the first step (with compilation) logs no rate
        for r in records:
            tokens = r["tokens_per_s"] * r["step_seconds"]
            flops = r["tflops_per_s"] * 1e12 * r["step_seconds"]
            assert tokens == pytest.approx(rows * row_len, rel=1e-9)
            assert flops == pytest.approx(cfg.flops_per_token(row_len) * rows * row_len, rel=1e-9)
            assert 0.0 < r["mfu"] <= 1.0
        counted[shared] = rows * row_len
    assert counted[48] < counted[0]  # 4 x 48 < 8 x 32: sharing runs fewer tokens for the same pairs


def test_lora_flops_skip_the_base_weight_gradients():
    """By hand, one layer, D=8, F=16, 2 heads x 4 (1 KV head), V=32, T=8 causal, LoRA rank 2 on q and down."""
    from oyster_jax.models import ModelConfig
    from oyster_jax.models.lora import LoraConfig

    cfg = ModelConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=4, max_position_embeddings=64)  # fmt: skip
    dense = 2 * ((2 * 8 * 8 + 2 * 8 * 4 + 3 * 8 * 16) + 32 * 8)  # q, o; k, v; gate, up, down; the head
    attn = 4 * 2 * 4 * (8 + 1) / 2
    assert cfg.flops_per_token(8) == pytest.approx(3 * (dense + attn))
    lora = cfg.replace(lora=LoraConfig(rank=2, targets=("q", "down")))
    adapters = 2 * ((8 + 8) + (16 + 8))  # rank x (fan-in + fan-out) for q and down
    assert lora.flops_per_token(8) == pytest.approx(2 * dense + 3 * attn + 3 * 2 * adapters)
