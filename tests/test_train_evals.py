"""Held-out evaluations inside train() (`config.evals`) and the tokenizer saved beside the checkpoints."""

import itertools
import json

import numpy as np
import pytest

from oyster_jax import data
from oyster_jax.core import chat
from oyster_jax.train import batches as batches_lib
from oyster_jax.train import config as config_lib
from oyster_jax.train import evaluate, tokenizer_files, trainer
from oyster_jax.train import stage as stage_lib

CONVERSATIONS = [
    [{"role": "user", "content": "How do I pick a strong password?"}],
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", "thinking": "A greeting."},
        {"role": "user", "content": "I feel low."},
        {"role": "assistant", "content": "I am here to listen.", "thinking": ""},
    ],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
]


@pytest.mark.parametrize("fmt", sorted(chat.FORMATS))
def test_saved_chat_template_renders_like_our_chat_format(tmp_path, fmt):
    """transformers' apply_chat_template on the saved tokenizer gives exactly `chat.render` (and the
    generation prompt), so a checkpoint's tokenizer chats in the format it was trained in."""
    transformers = pytest.importorskip("transformers")
    tokenizer_files.write_tokenizer(tmp_path, data.default_tokenizer_path(), fmt)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        if fmt == "deepseek_r1":  # its format allows a system turn only first, and thinks in every turn
            messages = [dict(m, thinking=m.get("thinking", "")) if m["role"] == "assistant" else m for m in messages]
        assert tok.apply_chat_template(messages, tokenize=False) == chat.render(messages, fmt)
        if messages[-1]["role"] != "assistant":
            want = chat.render_generation_prompt(messages, fmt)
            assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == want
    text = "How do I pick a strong password?"
    assert tok(text, add_special_tokens=False)["input_ids"] == data.default_vocabulary().encode(text)


def _config(**evals):
    config = config_lib.load_experiment("configs/experiments/tiny_csa.py")
    config.mesh = "data=1,fsdp=1,tensor=1"
    config.sft.num_steps = config.pref.num_steps = 2
    config.sft.batch_size, config.data.seq_len = 4, 64
    config.pref.batch_size, config.data.pref_seq_len, config.data.pref_shared_len = 4, 64, -1
    config.checkpoint.every_steps = 100
    config.evals = ("heldout_pref_accuracy",)
    config.eval_max_batches = 2
    config.eval_batch_size = 8
    for k, v in evals.items():
        config[k] = v
    return config


def test_evals_run_inside_train_and_equal_a_direct_evaluation(tmp_path):
    config = _config(eval_every_steps=1)
    results = trainer.train(config, tmp_path, progress=False)
    for name in ("sft", "pref"):
        got = results[name].evals["heldout_pref_accuracy"]
        # What the demo computed by hand before: the stage's final parameters over the same held-out batches.
        spec = stage_lib.describe(config, name)
        pairs = itertools.islice(batches_lib.make_heldout_iterator(spec, 8), 2)
        want = evaluate.preference_accuracy(spec.model, results[name].params, pairs)
        assert got["step"] == 2 and got["pairs"] == want["pairs"] == 16
        assert got["accuracy"] == want["accuracy"]
        np.testing.assert_allclose(got["mean_logp_chosen"], want["mean_logp_chosen"], rtol=1e-6)
        lines = [json.loads(x) for x in (tmp_path / name / "evals.jsonl").read_text().splitlines()]
        assert [(x["eval"], x["step"]) for x in lines] == [("heldout_pref_accuracy", 1), ("heldout_pref_accuracy", 2)]
        assert json.loads((tmp_path / name / "DONE.json").read_text())["evals"]["heldout_pref_accuracy"] == got
        # The tokenizer the stage trained with, in Hugging Face layout, with the chat template of its data.
        saved = json.loads((tmp_path / name / "tokenizer" / "tokenizer_config.json").read_text())
        assert saved["chat_template"] == tokenizer_files.chat_template("chatml")
        src = data.default_tokenizer_path()
        assert (tmp_path / name / "tokenizer" / "tokenizer.json").read_bytes() == open(src, "rb").read()
    # A rerun finds both stages done and reports the saved results without evaluating again.
    again = trainer.train(config, tmp_path, progress=False)
    assert all(r.stopped == "skipped" for r in again.values())
    assert again["pref"].evals == results["pref"].evals


def test_unknown_eval_is_a_config_error(tmp_path):
    from oyster_jax.models.config import ConfigError

    with pytest.raises(ConfigError, match="unknown evaluation.*'nope'.*heldout_pref_accuracy"):
        trainer.train(_config(evals=("nope",)), tmp_path, progress=False)
