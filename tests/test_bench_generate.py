"""The generation benchmark runs on a Hugging Face directory (tiny, random): chat prompts through its chat
template, batched on both sides, and reports the share of greedy tokens that agree with transformers."""

import json

from oyster_jax.bench import generate as bench
from tests.hf_models import save_tiny_chat_model


def test_hf_model_chat_batch_matches_transformers(tmp_path, capsys):
    model_dir = save_tiny_chat_model(tmp_path / "tiny_chat")
    out = tmp_path / "gen.json"
    argv = ["--hf_model", str(model_dir), "--batch_sizes", "3", "--new_tokens", "6", "--repeats", "1"]
    assert bench.main(argv + ["--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["batch"] == 3 and row["new_tokens"] == 6
    assert row["prompt_len_min"] < row["prompt_len"]  # ragged chat prompts: transformers' rows are left-padded
    assert row["greedy_token_agreement"] == 1.0
    assert row["oyster_jax_tok_s"] > 0 and row["transformers_tok_s"] > 0
    assert "chat prompts of" in capsys.readouterr().out
