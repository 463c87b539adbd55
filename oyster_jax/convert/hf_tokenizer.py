"""The tokenizer half of a Hugging Face export: tokenizer.json, tokenizer_config.json with our chat template.

    write_tokenizer(out_dir, "oyster_jax/data/seed/tokenizer.json", chat_format="chatml")
    -> {"bos_token_id": None, "eos_token_id": 2, "pad_token_id": 0}      # for config.json / generation_config

`chat_template(fmt)` is Jinja generated from the same `core.chat.ChatFormat` markers that `core.chat.render`
uses, so `tokenizer.apply_chat_template(messages)` gives exactly the token ids of
`render(messages)` / `render_generation_prompt(messages)` (tests/test_convert_export.py compares them over
many conversations). An assistant message's thinking is read from `thinking` (ours) or
`reasoning_content` (the Qwen3 / vLLM convention).

`<think>` and `</think>` are written as added tokens that are not special, so
`decode(..., skip_special_tokens=True)` keeps the thinking tags while dropping `<|im_end|>`.
EOS is the format's end-of-turn token (`<|im_end|>` for ChatML), PAD `<|endoftext|>` when the tokenizer has
it; the same ids go to config.json and generation_config.json.
"""

from __future__ import annotations

import json
import os
import pathlib

import tokenizers

from oyster_jax.core import chat

__all__ = ["chat_template", "special_token_ids", "write_tokenizer"]

_NOT_SPECIAL = (chat.THINK_OPEN, chat.THINK_CLOSE)


def _lit(text: str) -> str:
    """A Jinja string literal (Jinja reads Python-style escapes)."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(fmt: str = "chatml") -> str:
    """Jinja rendering a conversation exactly as `core.chat.render_generation_prompt` / `render` do."""
    f = chat.get_format(fmt)
    think_open, think_close = _lit(chat.THINK_OPEN + "\n"), _lit("\n" + chat.THINK_CLOSE + "\n\n")
    return (
        "{{- " + _lit(f.bos) + " -}}\n"
        "{%- for message in messages -%}\n"
        "{%- if message.role == 'system' -%}\n"
        "{{- " + _lit(f.system_open) + " + message.content + " + _lit(f.system_close + f.turn_separator) + " -}}\n"
        "{%- elif message.role == 'user' -%}\n"
        "{{- " + _lit(f.user_open) + " + message.content + " + _lit(f.user_close + f.turn_separator) + " -}}\n"
        "{%- elif message.role == 'assistant' -%}\n"
        "{%- set thinking = message.thinking if message.thinking is defined else message.reasoning_content -%}\n"
        "{{- " + _lit(f.assistant_open) + " -}}\n"
        "{%- if thinking is defined and thinking is not none -%}"
        "{{- " + think_open + " + thinking + " + think_close + " -}}{%- endif -%}\n"
        "{{- message.content + " + _lit(f.assistant_close + f.turn_separator) + " -}}\n"
        "{%- else -%}\n"
        "{{- raise_exception('role must be system, user or assistant, got ' + message.role) -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{- " + _lit(f.assistant_open + f.generation_suffix) + " -}}{%- endif -%}\n"
    )


def special_token_ids(tokenizer, fmt: str = "chatml") -> dict:
    """{bos_token_id, eos_token_id, pad_token_id} of `tokenizer` (a `tokenizers.Tokenizer`) for `fmt`."""
    f = chat.get_format(fmt)
    eos = tokenizer.token_to_id(f.assistant_close)
    if eos is None:
        raise ValueError(f"the tokenizer has no single token for the end of turn {f.assistant_close!r}")
    pad = tokenizer.token_to_id("<|endoftext|>")
    bos = tokenizer.token_to_id(f.bos) if f.bos else None
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos if pad is None else pad}


def write_tokenizer(
    out_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    *,
    chat_format: str = "chatml",
    model_max_length: int | None = None,
    vocab_size: int | None = None,
) -> dict:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`; return the
    special token ids (see `special_token_ids`)."""
    src = pathlib.Path(tokenizer_path)
    if src.is_dir():
        src = src / "tokenizer.json"
    if not src.is_file():
        raise FileNotFoundError(f"tokenizer.json not found at {src}")
    data = json.loads(src.read_text())
    for token in data.get("added_tokens", []):
        if token["content"] in _NOT_SPECIAL:
            token["special"] = False
    tok = tokenizers.Tokenizer.from_str(json.dumps(data))
    if vocab_size is not None and tok.get_vocab_size() > vocab_size:
        raise ValueError(f"{src}: the tokenizer has {tok.get_vocab_size()} ids, the model only {vocab_size}")
    ids = special_token_ids(tok, chat_format)
    out_dir = pathlib.Path(out_dir)
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1))

    def name(i):
        return None if i is None else tok.id_to_token(i)

    specials = {
        "bos_token": name(ids["bos_token_id"]),
        "eos_token": name(ids["eos_token_id"]),
        "pad_token": name(ids["pad_token_id"]),
    }
    added = {
        str(t["id"]): {
            "content": t["content"],
            "lstrip": t.get("lstrip", False),
            "normalized": t.get("normalized", False),
            "rstrip": t.get("rstrip", False),
            "single_word": t.get("single_word", False),
            "special": t["special"],
        }
        for t in data.get("added_tokens", [])
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length or 131072,
        "added_tokens_decoder": added,
        "chat_template": chat_template(chat_format),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in specials.items() if v is not None}, ensure_ascii=False, indent=2)
    )
    return ids
