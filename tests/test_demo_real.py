"""`make demo-real`'s code path end to end on a tiny random stand-in for SmolLM2 (same architecture family, the
bundled tokenizer): evaluate -> SFT -> ORPO -> evaluate -> export -> transformers check -> report; then a
rerun, which trains nothing and re-measures the same numbers from the saved checkpoint. The metric helpers
are checked against hand-computed values."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from oyster_jax import convert, data, demo_real, models
from oyster_jax.core import chain as chain_lib
from oyster_jax.core import chat
from oyster_jax.eval import alignment
from oyster_jax.train import config as config_lib

TINY = {
    "model.vocab_size": "4096",
    "model.hidden_size": "64",
    "model.intermediate_size": "128",
    "model.num_layers": "2",
    "model.num_heads": "2",
    "model.num_kv_heads": "1",
    "model.head_dim": "32",
}
FEW = {
    "sft.num_steps": "2",
    "sft.batch_size": "2",
    "pref.num_steps": "2",
    "pref.batch_size": "2",
    "data.seq_len": "256",
    "checkpoint.every_steps": "100",
}
SMALL_EVAL = {
    "pref_pairs": "6",
    "gen_queries": "6",
    "gen_max_new_tokens": "8",
    "gen_batch_size": "6",
    "ppl_seq_len": "64",
    "strata_per_language": "3",
    "strata_max_new_tokens": "8",
    "bootstrap_samples": "50",
    "export_check_prompts": "2",
    "export_check_tokens": "8",
}


def _tiny_base_model(tmp_path):
    """A random model of the experiment's architecture, shrunk, exported as a Hugging Face dir with the tokenizer."""
    config = config_lib.load_experiment("smollm2_csa")
    config_lib.apply_overrides(config, TINY)
    cfg = config_lib.model_config(config)
    params = models.init_params(cfg, jax.random.key(0))
    return convert.to_hf(cfg, params, tmp_path / "base", tokenizer=data.default_tokenizer_path())


def _argv(workdir, base):
    overrides = TINY | FEW | {"init_from": str(base), "data.tokenizer": str(base / "tokenizer.json")}
    return (
        ["--workdir", str(workdir), "--config", "smollm2_csa"]
        + [f"--config.{k}={v}" for k, v in overrides.items()]
        + [f"--eval.{k}={v}" for k, v in SMALL_EVAL.items()]
    )


def test_demo_real_end_to_end_and_rerun_re_measures(tmp_path):
    """With the Strata-Sword data when $OYSTER_DATA_DIR has it (tests/conftest.py), else its absent record."""
    have_data = (pathlib.Path(os.environ.get("OYSTER_DATA_DIR", "/nonexistent")) / "strata_sword").is_dir()
    base = _tiny_base_model(tmp_path)
    workdir = tmp_path / "run"
    assert demo_real.main(_argv(workdir, base)) == 0
    report = json.loads((workdir / "report.json").read_text())
    assert {"model", "wall_seconds", "before", "after", "export"} <= set(report)
    assert {"dir", "transformers_greedy_identical"} <= set(report["export"])
    assert report["export"]["transformers_greedy_identical"] is True
    for m in (report["before"], report["after"]):
        assert set(m) == set(alignment.METRICS)
        for name in ("heldout_pref_accuracy", "chain_parse_rate", "benign_overrefusal"):
            assert 0.0 <= m[name] <= 1.0, (name, m[name])
        assert m["general_ppl"] > 1.0
        asr = m["strata_sword_keyword_asr"]
        if not have_data:
            assert asr["absent"] is True and asr["reason"]
            continue
        assert asr["judge"] == "keyword (baseline)"
        for lang in ("en", "cn"):
            assert asr[lang]["n"] + asr[lang]["invalid"] == 3
    assert report["details"]["after"]["heldout_pref"]["pairs"] == 6
    assert report["stages"]["sft"]["trained_now"] and report["stages"]["pref"]["steps"] == 2
    for name in ("report.md", "metrics.png", "curves.png", "hf/config.json", "eval/after/generations.jsonl"):
        assert (workdir / name).is_file(), name
    assert (workdir / "pref" / "DONE.json").is_file() and report["checkpoints"]["pref"] == str(workdir / "pref")

    # The re-measure path: nothing is trained again, and the same numbers come back from the saved checkpoint.
    assert demo_real.main(_argv(workdir, base)) == 0
    again = json.loads((workdir / "report.json").read_text())
    assert not again["stages"]["sft"]["trained_now"] and not again["stages"]["pref"]["trained_now"]
    assert again["before"] == report["before"] and again["after"] == report["after"]


def test_strata_sword_metric_is_absent_without_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("OYSTER_DATA_DIR", raising=False)
    out = alignment._strata_sword(None, None, None, alignment.Settings(), None, [])
    assert out["absent"] is True and "OYSTER_DATA_DIR" in out["reason"]


def test_bad_eval_key_is_an_error(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--eval.pref_pair=3"]
    assert demo_real.main(argv) == 2
    assert "unknown --eval.pref_pair" in capsys.readouterr().err


def test_bootstrap_interval_and_stratified_subset():
    assert alignment.bootstrap_ci([1.0] * 10) == [1.0, 1.0]
    lo, hi = alignment.bootstrap_ci([0.0] * 50 + [1.0] * 50, samples=2000)
    assert lo < 0.5 < hi and 0.3 < lo and hi < 0.7  # the normal approximation gives 0.40 .. 0.60
    records = [{"id": i, "lang": "en" if i < 90 else "zh"} for i in range(100)]
    picked = alignment.stratified(records, 10, lambda r: (r["lang"],))
    assert sum(r["lang"] == "zh" for r in picked) == 5  # spread evenly, not the first ten


def test_chain_is_complete_reads_tagged_and_json_chains():
    c = {"user_needs": "help", "risk_intent": "", "safety_guidelines": "", "safety_strategies": [],
         "usefulness_strategies": ["explain the basics"]}  # fmt: skip
    assert alignment.chain_is_complete(chat.render_chain(c, "tagged"))
    assert alignment.chain_is_complete(chain_lib.render_json(chain_lib.SafetyChain(**c)))
    assert not alignment.chain_is_complete(chat.render_chain(c, "prose"))
    assert not alignment.chain_is_complete("<user_needs>help</user_needs>")  # no strategy
    assert not alignment.chain_is_complete("")


@pytest.mark.parametrize("bad", ["pref_pairs=x", "nope=1"])
def test_eval_settings_overrides(bad):
    key, _, value = bad.partition("=")
    with pytest.raises(ValueError):
        demo_real.eval_settings({key: value}, "chatml", "tagged")
    assert demo_real.eval_settings({"pref_pairs": "7"}, "", "").pref_pairs == 7
    assert np.isclose(alignment.Settings().bootstrap_samples, 1000)


def test_tagged_chain_style_reaches_the_seed_pairs_and_is_checked():
    from oyster_jax.core.schemas import read_records
    from oyster_jax.data import features
    from oyster_jax.models.config import ConfigError
    from oyster_jax.train import stage

    record = read_records(data.SEED_DIR / "pref_test.jsonl", "pref")[0]
    _, chosen, rejected = features.pref_texts(record, "chatml", "tagged")
    thinking, _ = chat.split_thinking(chosen)
    assert alignment.chain_is_complete(thinking) and not alignment.chain_is_complete(chat.split_thinking(rejected)[0])
    assert "<user_needs>" not in features.pref_texts(record, "chatml", "prose")[1]  # the tiny demo's prose is kept

    config = config_lib.load_experiment("smollm2_csa")
    assert stage.describe(config, "sft").data.chain_style == "tagged"
    config_lib.apply_overrides(config, {"data.chain_style": "bullets"})
    with pytest.raises(ConfigError, match="data.chain_style"):
        config_lib.validate(config)
