"""`python -m oyster_jax.bench.serve` runs end to end on the tiny model and reports every level."""

import json

from oyster_jax.bench import serve as bench_serve


def test_bench_serve_reports_each_concurrency(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--concurrency", "1,2", "--requests", "2", "--new_tokens", "4", "--max_batch", "2", "--json", str(out)]
    assert bench_serve.main(args) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["concurrency"] for r in results] == [1, 2]
    for r in results:
        assert r["requests"] == 2 and r["tokens_per_s"] > 0 and 0 < r["ttft_p50_s"] <= r["ttft_p90_s"]
        # every request made exactly --new_tokens tokens (EOS disabled)
        assert abs(r["tokens_per_s"] * r["seconds"] - 2 * 4) < 1e-6
    assert "concurrency   2:" in capsys.readouterr().out
