"""The attention benchmark runs end to end on CPU (--smoke: tiny shapes, kernels interpreted)."""

import json

from oyster_jax.bench import attention as bench


def test_flop_count_is_causal_aware():
    # T = S = 4 causal: 1 + 2 + 3 + 4 = 10 visible pairs; decoding T=1 of S=5 sees all 5 keys.
    assert bench.visible_pairs(4, 4, causal=True) == 10
    assert bench.visible_pairs(1, 5, causal=True) == 5
    assert bench.visible_pairs(3, 5, causal=False) == 15
    assert bench.attention_flops(2, 4, 4, 3, 8, causal=True, backward=False) == 2 * 3 * 10 * 4 * 8
    assert bench.attention_flops(1, 4, 4, 1, 8, causal=False, backward=True) == 16 * 14 * 8


def test_smoke_run_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(["--smoke", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "pallas" in printed and "xla" in printed and "fwd ms" in printed
    saved = json.loads(out.read_text())
    assert saved["meta"]["interpret"] is True
    assert {r["impl"] for r in saved["rows"]} == {"pallas", "xla"}
    for row in result["rows"]:
        assert row["fwd_status"] == "ok" and row["fwd_bwd_status"] == "ok", row
        assert row["fwd_ms"] > 0 and row["fwd_bwd_tflops"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
