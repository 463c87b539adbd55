"""Perplexity against transformers' own loss on a tiny random model, windowing, and the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from eval_fakes import TINY_CHAT_CFG, random_params
from hf_models import make_hf_model, save_hf_model
from tolerances import HF_LOGITS_F32

from oyster_jax import convert
from oyster_jax.data.vocab import default_tokenizer_path
from oyster_jax.eval import perplexity as ppl


def test_windows_never_cross_documents():
    tokens, valid = ppl.windows([[1, 2, 3, 4, 5], [6], [7, 8]], seq_len=3)
    assert tokens.tolist() == [[1, 2, 3], [4, 5, 0], [7, 8, 0]]  # [6] alone predicts nothing
    assert valid.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 0]]


def test_matches_transformers_loss(tmp_path):
    model = make_hf_model("qwen3_gqa_tied")
    cfg, params = convert.from_hf(save_hf_model(model, tmp_path / "hf"))
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (37, 5, 16)]
    seq_len = 16
    out = ppl.perplexity_of_tokens(cfg, params, docs, seq_len=seq_len, batch_size=2)
    # reference: transformers' mean next-token cross-entropy per window, re-weighted by predictions
    total, count = 0.0, 0
    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start : start + seq_len]
            if len(piece) < 2:
                continue
            ids = torch.tensor([piece])
            with torch.no_grad():
                loss = model(input_ids=ids, labels=ids).loss.item()
            total += loss * (len(piece) - 1)
            count += len(piece) - 1
    assert out["tokens"] == count == (15 + 15 + 4) + 4 + 15  # doc 1 in windows of 16, 16, 5
    assert out["nll"] == pytest.approx(total / count, abs=HF_LOGITS_F32)
    assert out["perplexity"] == pytest.approx(math.exp(total / count), rel=HF_LOGITS_F32)
    assert out["windows"] == 5


def test_cli_on_seed_text(tmp_path, capsys):
    ckpt = convert.save_model(tmp_path / "ckpt", TINY_CHAT_CFG, random_params(TINY_CHAT_CFG))
    text = tmp_path / "held_out.jsonl"
    text.write_text(
        json.dumps({"text": "The capital of Japan is Tokyo."})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
        + "\n"
    )
    out = tmp_path / "ppl.json"
    args = ["--ckpt", str(ckpt), "--tokenizer", default_tokenizer_path(), "--text", str(text), "--seq_len", "16"]
    assert ppl.main(args + ["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["perplexity"] > 1 and result["tokens"] > 10 and "perplexity" in capsys.readouterr().out
    text.write_text('{"nope": 1}\n')
    assert ppl.main(args) == 2 and "held_out.jsonl:1" in capsys.readouterr().err
