"""The tokenizer a stage trained with, saved beside its checkpoints in Hugging Face layout.

    W/<stage>/tokenizer/tokenizer.json          the tokenizer (a copy of config.data.tokenizer, or the bundled one)
    W/<stage>/tokenizer/tokenizer_config.json   its config plus `chat_template` (the chat format the data used,
                                                unless the tokenizer already brings its own)

so a trainer workdir can be opened, chatted with or exported without naming the tokenizer again
(`transformers.AutoTokenizer.from_pretrained(W/<stage>/tokenizer)` works on it).

The chat template is `convert.hf_tokenizer.chat_template` (the same one every export carries), written from
the `ChatFormat` markers of `oyster_jax.core.chat`, so
`tokenizer.apply_chat_template(messages)` renders exactly `chat.render(messages)` (an assistant message may
carry `thinking`) and `add_generation_prompt=True` appends `chat.render_generation_prompt`'s opening.
"""

from __future__ import annotations

import json
import pathlib

from oyster_jax.convert.hf_tokenizer import chat_template  # the one Jinja form of core.chat's formats

TOKENIZER_DIR = "tokenizer"
# Files of a Hugging Face tokenizer that travel with tokenizer.json when they sit beside it.
_COMPANIONS = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json")


def write_tokenizer(directory, tokenizer_json, chat_format: str) -> None:
    """Copy `tokenizer_json` (and the HF files beside it) into `directory`, with a `tokenizer_config.json`
    that carries the chat template of `chat_format`. `directory` may be local or gs://."""
    from etils import epath

    src = pathlib.Path(tokenizer_json)
    dst = epath.Path(directory)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer.json").write_bytes(src.read_bytes())
    for name in _COMPANIONS:
        if (src.parent / name).is_file():
            (dst / name).write_bytes((src.parent / name).read_bytes())
    config_path = src.parent / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config["tokenizer_class"] = config.get("tokenizer_class", "PreTrainedTokenizerFast")
    # A tokenizer that brings its model family's own template keeps it (that is what HF tooling expects of
    # that model); otherwise the template of the format the data was rendered in.
    config.setdefault("chat_template", chat_template(chat_format))
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n")
