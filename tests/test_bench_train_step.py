"""The train-step benchmark runs (tiny shapes) and reports what it measured, in both preference layouts."""

import json

import pytest

from oyster_jax.bench import train_step as bench


@pytest.mark.parametrize("shared", [0, 48])
def test_pref_benchmark_smoke(tmp_path, shared, capsys):
    out = tmp_path / "bench.json"
    argv = ["--stage", "pref", "--batch", "2", "--seq", "32", "--steps", "1", "--rounds", "1", "--json", str(out)]
    argv += ["--model", "configs/models/tiny.py", f"--config.data.pref_shared_len={shared}"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["rows_per_step"] == 4 and result["seq_len"] == 32 and result["pref_shared_len"] == shared
    assert result["oyster_jax"]["steps_per_s"] > 0 and 0 < result["oyster_jax"]["fraction_of_roofline"] < 2
    assert ("prompt sharing" in capsys.readouterr().out) == bool(shared)
