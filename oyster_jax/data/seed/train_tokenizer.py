"""Train the tiny default tokenizer (byte-level BPE, 4096 ids) on the bundled seed data.

    python -m oyster_jax.data.seed.train_tokenizer          # writes oyster_jax/data/seed/tokenizer.json

Qwen2/3-style pre-tokenization (the same split regex: digits one by one, letters in runs, punctuation
apart) followed by byte-level BPE, so any UTF-8 text (Chinese, emoji) encodes without unknown tokens.
Ids 0..8 are the special tokens below; ``<|endoftext|>`` (id 0) is EOS and padding. The corpus is every
seed file rendered in both chat formats and both chain styles, so the markers and the chain wording
get their own merges.
"""

from __future__ import annotations

import json
import pathlib

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from oyster_jax import cli
from oyster_jax.core import chat
from oyster_jax.core.schemas import read_records

SEED_DIR = pathlib.Path(__file__).resolve().parent
VOCAB_SIZE = 4096
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
)
# The Qwen2 pre-tokenizer pattern (contractions, letter runs, single digits, punctuation, newlines, spaces).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus(seed_dir: pathlib.Path):
    """Rendered conversations from every seed file (both formats, both chain styles)."""
    for name in ("sft_train", "sft_test", "general_train", "general_test"):
        for r in read_records(seed_dir / f"{name}.jsonl", "sft"):
            for style in chat.CHAIN_STYLES:
                thinking = chat.render_chain(r["chain"], style, r["language"])
                messages = r["messages"][:-1] + [{**r["messages"][-1], "thinking": thinking}]
                for fmt in chat.FORMATS:
                    yield chat.render(messages, fmt)
    for name in ("pref_train", "pref_test"):
        for r in read_records(seed_dir / f"{name}.jsonl", "pref"):
            prompt = chat.render_generation_prompt(r["prompt_messages"])
            for side in ("chosen", "rejected"):
                yield prompt + chat.render_completion(r[side]["thinking"], r[side]["response"])


def build_tokenizer() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed_dir", default=str(SEED_DIR))
    parser.add_argument("--out", default=None, help="tokenizer.json path (default: <seed-dir>/tokenizer.json)")
    parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    seed_dir = pathlib.Path(args.seed_dir)
    out = pathlib.Path(args.out) if args.out else seed_dir / "tokenizer.json"
    texts = list(corpus(seed_dir))
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(token) == i, f"special token {token!r} must have id {i}"
    tok.save(str(out))
    config = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 4096}
    (out.parent / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    lengths = [len(e.ids) for e in tok.encode_batch(texts[:2000], add_special_tokens=False)]
    print(
        f"tokenizer -> {out}: vocab {tok.get_vocab_size()}, {out.stat().st_size / 1e6:.2f} MB, "
        f"{len(texts)} training texts, mean {sum(lengths) / len(lengths):.0f} tokens per rendered text"
    )


if __name__ == "__main__":
    main()
