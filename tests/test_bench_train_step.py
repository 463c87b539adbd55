"""The train-step benchmark runs (tiny shapes) and reports what it measured, in both preference layouts, on
config-built models and on a Hugging Face directory (`--hf_model`), side by side with TRL when installed."""

import json

import pytest
import transformers

from oyster_jax.bench import train_step as bench
from tests.hf_models import save_tiny_chat_model


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


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("hf") / "tiny_chat")


def test_sft_on_hf_model_reports_the_roofline_share(tiny_hf_dir, tmp_path):
    out = tmp_path / "sft.json"
    argv = ["--hf_model", str(tiny_hf_dir), "--stage", "sft", "--batch", "2", "--seq", "32", "--profile_head"]
    assert bench.main(argv + ["--steps", "1", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_hf_dir)  # tied: the embedding counts once
    assert result["hf_model"] == str(tiny_hf_dir) and result["model_params"] == hf.num_parameters()
    ours = result["oyster_jax"]
    assert result["stage"] == "sft" and 0 < ours["fraction_of_roofline"] < 2
    # the head's FLOP share, by hand: 3·2·D·V per position over the config's training FLOPs per token
    cfg = bench._hf_model_fields(str(tiny_hf_dir), {})
    per_token = 3 * 2 * (2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64) + 4096 * 32) + 3 * 2 * 4 * 4 * 8 * 16.5
    assert cfg.vocab_size == 4096 and ours["head_share_of_flops"] == pytest.approx(3 * 2 * 32 * 4096 / per_token)
    assert ours["head_share_of_step"] > 0


def test_orpo_on_hf_model_against_trl(tiny_hf_dir, tmp_path):
    pytest.importorskip("trl", reason="TRL is the bench extra: pip install -e .[bench]")
    out = tmp_path / "orpo.json"
    argv = ["--hf_model", str(tiny_hf_dir), "--stage", "pref", "--batch", "2", "--seq", "32", "--trl"]
    assert (
        bench.main(argv + ["--config.data.pref_shared_len=0", "--steps", "1", "--rounds", "1", "--json", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["rows_per_step"] == 4 and result["pref_shared_len"] == 0
    assert result["trl_orpo"]["steps_per_s"] > 0 and result["speedup_vs_trl"] > 0


def test_lora_orpo_on_hf_model_against_trl_with_peft(tiny_hf_dir, tmp_path):
    pytest.importorskip("trl", reason="TRL is the bench extra: pip install -e .[bench]")
    out = tmp_path / "lora.json"
    argv = ["--hf_model", str(tiny_hf_dir), "--stage", "pref", "--batch", "2", "--seq", "32", "--trl", "--lora"]
    assert bench.main(argv + ["--lora_rank", "4", "--steps", "1", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["lora"]["rank"] == 4 and result["hf_model"] == str(tiny_hf_dir)
    assert result["trainable_params"] == result["trl_orpo"]["trainable_params"] > 0  # PEFT trains what we train
    assert result["trl_orpo"]["steps_per_s"] > 0 and result["speedup_vs_trl"] > 0


def test_model_and_hf_model_together_are_refused(tiny_hf_dir):
    with pytest.raises(SystemExit) as e:
        bench.main(["--hf_model", str(tiny_hf_dir), "--model", "configs/models/tiny.py"])
    assert e.value.code == 2
