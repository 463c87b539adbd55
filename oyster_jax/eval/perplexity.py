"""Perplexity on held-out text: a cheap check that safety training did not damage general ability.

    python -m oyster_jax.eval.perplexity --ckpt runs/demo/ckpt --text oyster_jax/data/seed/general_test.jsonl

Input: a `.txt` file (one document) or a `.jsonl` file with one document per line, either `{"text": ...}`
or `{"messages": [...]}` (rendered with the chat template, thinking left out). Each document is cut into
non-overlapping windows of `--seq_len` tokens; inside a window every token after the first is predicted
from the ones before it. Perplexity = exp(total NLL / scored tokens). Logits are computed in chunks of
positions, so a 150k vocabulary does not need a [B, T, V] buffer.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from oyster_jax import cli
from oyster_jax.core import chat
from oyster_jax.core.files import atomic_write_text
from oyster_jax.core.schemas import iter_json_lines

__all__ = ["read_documents", "windows", "perplexity_of_tokens", "main"]


def read_documents(path, chat_format: str = "chatml") -> list[str]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    if path.suffix != ".jsonl":
        text = path.read_text("utf-8")
        if not text.strip():
            raise ValueError(f"{path}: the file is empty")
        return [text]

    docs = []
    for lineno, rec in iter_json_lines(path, ValueError):
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            docs.append(rec["text"])
        elif isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            try:
                msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
                docs.append(chat.render(msgs, chat_format))
            except (KeyError, TypeError, chat.ChatFormatError) as e:
                raise ValueError(f"{path}:{lineno}: field 'messages': {e}") from None
        else:
            raise ValueError(f"{path}:{lineno}: expected a 'text' string or a 'messages' list")
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs


def windows(docs: list[list[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows that never cross documents: tokens int32 [W, T] and valid int32 [W, T]."""
    rows, valid = [], []
    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start : start + seq_len]
            if len(piece) < 2:
                continue  # nothing to predict
            rows.append(piece + [0] * (seq_len - len(piece)))
            valid.append([1] * len(piece) + [0] * (seq_len - len(piece)))
    if not rows:
        raise ValueError("no window has two or more tokens: nothing to score")
    return np.asarray(rows, np.int32), np.asarray(valid, np.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def _window_nll(cfg, params, tokens, valid, chunk: int):
    """Summed NLL and count of the next-token predictions in each batch of windows."""
    from oyster_jax import models  # lazy: the model pulls in JAX

    h = models.hidden_states(cfg, params, tokens, segment_ids=valid)  # [B, T, D]
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    weight = jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1).astype(jnp.float32)
    B, T, D = h.shape
    n = T // chunk

    def body(total, xs):
        hc, tc, wc = xs  # [B, C, D], [B, C], [B, C]
        logp = jax.nn.log_softmax(models.logits_from_hidden(cfg, params, hc), axis=-1)
        nll = -jnp.take_along_axis(logp, tc[..., None], axis=-1)[..., 0]
        return total + jnp.sum(nll * wc), None

    split = lambda x: jnp.moveaxis(x.reshape(B, n, chunk, *x.shape[2:]), 1, 0)  # noqa: E731
    total, _ = jax.lax.scan(body, jnp.float32(0), (split(h), split(targets), split(weight)))
    return total, jnp.sum(weight)


def perplexity_of_tokens(cfg, params, docs: list[list[int]], seq_len: int = 512, batch_size: int = 8, progress=False):
    """{"nll": mean NLL per scored token, "perplexity", "tokens": scored tokens, "windows"}."""

    tokens, valid = windows(docs, seq_len)
    chunk = math.gcd(seq_len, 128)
    total, count = 0.0, 0.0
    n = len(tokens)
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, file=sys.stderr):
        tb, vb = tokens[start : start + batch_size], valid[start : start + batch_size]
        if len(tb) < batch_size:  # pad the last batch: one compiled shape
            pad = batch_size - len(tb)
            tb = np.concatenate([tb, np.zeros((pad, seq_len), np.int32)])
            vb = np.concatenate([vb, np.zeros((pad, seq_len), np.int32)])
        s, c = _window_nll(cfg, params, tb, vb, chunk)
        total, count = total + float(s), count + float(c)
    nll = total / count
    return {"nll": nll, "perplexity": math.exp(nll), "tokens": int(count), "windows": n}


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m oyster_jax.eval.perplexity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="model: Hugging Face dir, Orbax checkpoint or trainer workdir")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one in --ckpt)")
    parser.add_argument("--text", required=True, help=".txt, or .jsonl with 'text' or 'messages' per line")
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--chat_format", default="chatml")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.seq_len < 2 or args.batch_size < 1:
        parser.error("--seq_len must be >= 2 and --batch_size >= 1")
    try:
        from oyster_jax import convert  # lazy: checkpoint loading pulls in JAX

        docs = read_documents(args.text, args.chat_format)
        cfg, params, tokenizer = convert.open_model(args.ckpt, tokenizer=args.tokenizer)
        token_docs = [tokenizer.encode(d, add_special_tokens=False).ids for d in docs]
        result = perplexity_of_tokens(cfg, params, token_docs, args.seq_len, args.batch_size, progress=True)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"text": str(args.text), "ckpt": str(args.ckpt), "seq_len": args.seq_len} | result
    print(f"perplexity {result['perplexity']:.3f} (NLL {result['nll']:.4f} nats/token) over {result['tokens']} "
          f"tokens in {len(docs)} documents, {result['windows']} windows of <= {args.seq_len}")  # fmt: skip
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
