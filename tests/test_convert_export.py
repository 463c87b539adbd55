"""Hugging Face exports that chat users recognise: the tokenizer ships, its Jinja chat template gives the
token ids of our own formatter, special ids agree everywhere, the thinking tags survive decoding, the
directory follows the umask, and the snippet of docs/convert_for_pytorch.md runs as written."""

import json
import os
import pathlib
import random
import re
import stat

import numpy as np
import pytest
import tokenizers
from eval_fakes import TINY_CHAT_CFG, random_params
from hf_models import assert_transformers5_config

from oyster_jax import convert
from oyster_jax.convert import orbax_to_hf
from oyster_jax.core import chat
from oyster_jax.data.vocab import default_tokenizer_path

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = TINY_CHAT_CFG.replace(tie_word_embeddings=False, max_position_embeddings=256)
SEED_TOK = tokenizers.Tokenizer.from_file(default_tokenizer_path())
IM_END = SEED_TOK.token_to_id("<|im_end|>")


# The reply the rigged model writes after the generation prompt: a thought, then an answer, then end of turn.
REPLY = ["<think>", "so", "</think>", "ok", "<|im_end|>"]


def _params_that_reply():
    """Random weights, except that each token of the chain (the generation prompt's last token, then REPLY)
    carries a large constant in its own residual dimension and the LM head reads that dimension for the next
    token of the chain: greedy decoding writes REPLY and ends the turn (a stop and thinking tags we can test)."""
    chain = [SEED_TOK.encode(chat.render_generation_prompt([{"role": "user", "content": "x"}])).ids[-1]]
    chain += [SEED_TOK.token_to_id(t) for t in REPLY]
    assert None not in chain and len(set(chain)) == len(chain), chain
    params = random_params(CFG)
    params["embed_tokens"] = np.array(params["embed_tokens"])
    params["lm_head"] = np.array(params["lm_head"])
    for dim, (token, nxt) in enumerate(zip(chain, chain[1:])):
        params["embed_tokens"][token, dim] += 50.0
        params["lm_head"][dim, :] = 0.0
        params["lm_head"][dim, nxt] = 10.0
    # The layers write nothing into those dimensions, so a position's own token alone sets them (attention
    # cannot carry an earlier chain token's constant forward).
    chain_dims = slice(0, len(chain) - 1)
    for i in range(CFG.num_layers):
        layer = params[f"layers_{i}"]
        for owner, name in (("self_attn", "o_proj"), ("mlp", "down_proj")):
            w = np.array(layer[owner][name])
            w[..., chain_dims] = 0.0
            layer[owner] = {**layer[owner], name: w}
    return params


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The CLI path of the issue: an Orbax checkpoint without a tokenizer -> orbax_to_hf."""
    root = tmp_path_factory.mktemp("export")
    ckpt = convert.save_model(root / "ckpt", CFG, _params_that_reply())
    old = os.umask(0o022)
    try:
        assert orbax_to_hf.main(["--ckpt", str(ckpt), "--out", str(root / "hf")]) == 0
    finally:
        os.umask(old)
    return root / "hf"


def _random_conversations(rng: random.Random, n: int):
    words = ["hello", "Tokyo", "为什么", "safety", "  spaced  ", "line\nbreak", "42", "émigré", "{json}", ""]

    def text():
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))

    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": text()})
            msg = {"role": "assistant", "content": text()}
            r = rng.random()
            if r < 0.3:
                msg["thinking"] = text()
            elif r < 0.45:
                msg["reasoning_content"] = text()  # the Qwen3 / vLLM spelling
            elif r < 0.55:
                msg["thinking"] = ""
            msgs.append(msg)
        if rng.random() < 0.6:
            msgs = msgs[:-1]  # ends with a user turn: a generation prompt
        out.append(msgs)
    return out


def _ours(msgs, fmt):
    ours = [
        {k: v for k, v in dict(m, thinking=m.get("thinking", m.get("reasoning_content"))).items()
         if k != "reasoning_content" and not (k == "thinking" and v is None)}
        for m in msgs
    ]  # fmt: skip
    text = chat.render_generation_prompt(ours, fmt) if ours[-1]["role"] != "assistant" else chat.render(ours, fmt)
    return SEED_TOK.encode(text, add_special_tokens=False).ids


def test_export_ships_tokenizer_template_and_consistent_ids(export, tmp_path):
    import transformers

    files = {p.name for p in export.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"} <= files
    assert stat.S_IMODE(export.stat().st_mode) == 0o755  # umask 022, as mkdir would give
    config = json.loads((export / "config.json").read_text())
    gen = json.loads((export / "generation_config.json").read_text())
    assert "torch_dtype" not in config and config["dtype"] == "float32"  # transformers-5 keys
    assert "rope_theta" not in config and config["rope_parameters"]["rope_theta"] == CFG.rope_theta
    assert_transformers5_config(export, tmp_path)  # only keys transformers 5 itself writes, same values
    tok = transformers.AutoTokenizer.from_pretrained(export)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == IM_END == config["eos_token_id"] == gen["eos_token_id"]
    assert tok.pad_token_id == SEED_TOK.token_to_id("<|endoftext|>") == config["pad_token_id"] == gen["pad_token_id"]
    assert tok.bos_token_id is None and config["bos_token_id"] is None
    # the thinking tags are ordinary added tokens: kept by skip_special_tokens, still single tokens
    ids = tok.encode("<think>\nhm\n</think>\n\nhi<|im_end|>", add_special_tokens=False)
    assert SEED_TOK.token_to_id("<think>") in ids and SEED_TOK.token_to_id("</think>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\nhm\n</think>\n\nhi"
    cfg_back, _ = convert.from_hf(export)
    assert cfg_back.rope_theta == CFG.rope_theta and cfg_back.eos_token_id == IM_END


@pytest.mark.parametrize("fmt", ["chatml", "deepseek_r1"])
def test_jinja_template_gives_our_formatters_token_ids(tmp_path, fmt):
    import transformers

    out = convert.to_hf(CFG, random_params(CFG), tmp_path / fmt, tokenizer=default_tokenizer_path(), chat_format=fmt)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    rng = random.Random(0)
    convs = _random_conversations(rng, 150)
    if fmt == "deepseek_r1":  # its template allows a system turn only first (as ours does)
        convs = [[m for i, m in enumerate(c) if m["role"] != "system" or i == 0] for c in convs]
    for msgs in convs:
        gen_prompt = msgs[-1]["role"] != "assistant"
        theirs = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen_prompt, return_dict=False)
        assert list(theirs) == _ours(msgs, fmt), msgs


def test_docs_snippet_runs_verbatim(export):
    """The 'Load with transformers' block of docs/convert_for_pytorch.md, with only the path replaced:
    apply_chat_template works, generate stops at <|im_end|>, decode keeps what the model wrote."""
    doc = (REPO / "docs" / "convert_for_pytorch.md").read_text()
    section = doc.split("## Load with transformers", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    code, n = re.subn(r'^path = ".*"$', f"path = {str(export)!r}", code, flags=re.MULTILINE)
    assert n == 1
    printed = []
    scope = {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))}
    exec(compile(code, "docs/convert_for_pytorch.md", "exec"), scope)  # noqa: S102  (our own documentation)
    out, inputs = scope["out"], scope["inputs"]
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert new == [SEED_TOK.token_to_id(t) for t in REPLY]  # stopped at the end of the turn, not at the limit
    assert printed == ["<think>so</think>ok"]  # the thinking tags survive skip_special_tokens; <|im_end|> does not


@pytest.mark.parametrize("which", ["W", "W/pref"])
def test_trainer_workdir_exports_its_tokenizer_and_chat_template(tmp_path, which):
    """orbax_to_hf --ckpt W (or W/pref): the stage's own tokenizer ships with the chat template and the same
    EOS everywhere, and transformers' generate stops at the end of the turn."""
    import torch
    import transformers
    from test_convert import _trainer_stage

    w = tmp_path / "W"
    _trainer_stage(w / "pref", CFG, {3: _params_that_reply()})
    (w / "config.json").write_text(json.dumps({"stages": "pref", "seed": 0}))
    (w / "pref" / "tokenizer").mkdir()
    (w / "pref" / "tokenizer" / "tokenizer.json").write_text(SEED_TOK.to_str())
    out = tmp_path / "hf"
    assert orbax_to_hf.main(["--ckpt", str(tmp_path / which), "--out", str(out)]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    assert tok.eos_token_id == IM_END == config["eos_token_id"] == gen["eos_token_id"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    messages = [{"role": "user", "content": "x"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert inputs["input_ids"][0].tolist() == _ours(messages, "chatml")
    new = model.generate(**inputs, max_new_tokens=32)[0, inputs["input_ids"].shape[1] :].tolist()
    assert new == [SEED_TOK.token_to_id(t) for t in REPLY]


def test_no_tokenizer_that_fits_is_refused(tmp_path):
    cfg = CFG.replace(vocab_size=1000)
    with pytest.raises(ValueError, match="tokenizer=PATH"):
        convert.to_hf(cfg, random_params(cfg), tmp_path / "x")
    assert not (tmp_path / "x").exists()
