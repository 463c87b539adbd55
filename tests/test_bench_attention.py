"""The attention benchmark runs end to end on CPU (--smoke: tiny shapes, kernels interpreted)."""

import json
import pathlib
import re
import subprocess
import sys
import textwrap
from importlib import metadata

import jax.numpy as jnp
import pytest

from oyster_jax.bench import attention as bench
from oyster_jax.models.attention import xla_attention
from tests.tolerances import KERNEL_BF16, KERNEL_F32


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


def test_smoke_check_and_tune_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(["--smoke", "--check", "--tune", "128", "--json", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert bench.exit_status(result) == 0 and saved["checks_passed"] is True

    # --check: every length of the smoke run, out/dq/dk/dv each within tolerance of the reference.
    checks = saved["checks"]
    for c in checks:
        assert c["ok"] and c["required"] and c["status"] == "ok", c
        for name in bench.CHECKED:
            assert 0 <= c[name]["max_err_over_tol"] <= 1 and c[name]["nonfinite"] == 0, (name, c)
    assert "check T=128 pallas_default: out max|err|" in printed

    # --tune: one row per candidate and stage; the chosen kernel settings are each stage's fastest.
    tuning, rows = saved["meta"]["tuning"], saved["tune_rows"]
    assert tuning["seq"] == 128 and set(tuning["chosen"]) >= {"blocks", "fwd_warps", "dq_stages", "dkv_warps"}
    assert [r["stage"] for r in rows].count("fwd") == 2 and {r["stage"] for r in rows} == {"fwd", "dq", "dkv"}
    for stage in ("fwd", "dq", "dkv"):
        stage_rows = [r for r in rows if r["stage"] == stage]
        assert all(r["status"] == "ok" and r["ms"] > 0 and r["tflops"] > 0 for r in stage_rows), stage_rows
        assert min(stage_rows, key=lambda r: r["ms"])["config"] == tuning["effective"][stage]
    assert tuning["paste"][0].startswith("GPU_BLOCKS = BlockSizes(") and tuning["paste"][0] in printed
    checked = ["pallas_default"] + ([] if tuning["is_default"] else ["pallas"])  # tuned kernels: checked too
    assert sorted((c["seq"], c["impl"]) for c in checks) == sorted((T, i) for T in (64, 128) for i in checked)

    # The sweep reports the tuned kernels as "pallas" and the built-in defaults beside them.
    assert [(r["seq"], r["impl"]) for r in saved["rows"]] == [
        (T, impl) for T in (64, 128) for impl in ("pallas", "pallas_default", "xla")
    ]
    assert all(r["fwd_bwd_status"] == "ok" for r in saved["rows"])


def test_check_reports_a_wrong_result_as_a_failure():
    want = jnp.linspace(-3.0, 3.0, 64, dtype=jnp.float32).reshape(4, 16)
    tol = bench.CHECK_TOLERANCE["bfloat16"]
    assert bench.compare(want.astype(jnp.bfloat16), want, tol)["ok"]
    # 2 * tol off at |want| = 3: the bound there is tol + 3 tol = 4 tol, so twice the error fails.
    wrong = bench.compare(want.at[0, 0].add(8 * tol), want, tol)
    assert not wrong["ok"] and wrong["max_err_over_tol"] == pytest.approx(2.0, rel=1e-3)
    assert wrong["max_abs_err"] == pytest.approx(8 * tol, rel=1e-3)
    nan = bench.compare(want.at[1, 2].set(jnp.nan), want, tol)
    assert not nan["ok"] and nan["nonfinite"] == 1
    # End to end: non-causal attention checked against the causal reference fails, and fails the run.
    non_causal = lambda q, k, v, causal: xla_attention(q, k, v, causal=not causal)
    row = bench.check_one(non_causal, 1, 32, 4, 2, 16, jnp.float32, causal=True)
    assert row["status"] == "FAIL" and not row["ok"] and not row["out"]["ok"], row
    assert bench.exit_status({"checks_passed": False}) == 1 and bench.exit_status({}) == 0


def test_check_tolerances_are_the_tests():
    assert bench.CHECK_TOLERANCE == {"float32": KERNEL_F32, "bfloat16": KERNEL_BF16, "float16": KERNEL_BF16}


def test_import_pulls_in_only_what_the_device_image_has():
    """The device image has jax (+ CUDA plugin), flax, numpy, matplotlib, tqdm and the standard library, and
    the repo travels as a working tree. Import the benchmark in a fresh interpreter whose path finder sees
    nothing else (no package outside those distributions and their declared requirements, and no
    tensorflow, seqio or orbax whatever they declare), as it would be there: optional imports that a
    library guards stay optional, an unguarded one fails the import."""
    allowed = _import_names(_requirement_closure(["jax", "jaxlib", "flax", "numpy", "matplotlib", "tqdm"]))
    allowed = sorted((allowed | {"oyster_jax"}) - FORBIDDEN)
    code = textwrap.dedent(
        f"""
        import importlib.machinery, json, sys
        allowed, forbidden = set({allowed!r}), set({sorted(FORBIDDEN)!r})

        class DeviceImagePathFinder(importlib.machinery.PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                top = name.partition(".")[0]
                stdlib = top in sys.stdlib_module_names or top.startswith("_sysconfigdata")
                if top in forbidden or not (stdlib or top in allowed):
                    return None  # not installed there
                return super().find_spec(name, path, target)

        sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = DeviceImagePathFinder
        import oyster_jax.bench.attention
        print(json.dumps(sorted(sys.modules)))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = {name.partition(".")[0] for name in json.loads(run.stdout.splitlines()[-1])}
    assert not loaded & FORBIDDEN, loaded & FORBIDDEN
    assert {"jax", "oyster_jax"} <= loaded


FORBIDDEN = {"tensorflow", "seqio", "orbax"}
REPO = pathlib.Path(__file__).resolve().parents[1]


def _requirement_closure(roots: list[str]) -> set[str]:
    """Normalized distribution names: `roots` and everything they require (extras left out)."""
    seen, todo = set(), list(roots)
    while todo:
        dist = re.sub(r"[-_.]+", "-", todo.pop()).lower()  # PEP 503 normalization
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requirements = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requirements if "extra ==" not in r]
    return seen


def _import_names(dists: set[str]) -> set[str]:
    normalize = lambda dist: re.sub(r"[-_.]+", "-", dist).lower()
    by_module = metadata.packages_distributions()
    return {module for module, owners in by_module.items() if any(normalize(d) in dists for d in owners)}
