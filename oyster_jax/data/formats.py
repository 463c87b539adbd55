"""Records in, whatever their format: the project schema, TRL preference records, chat SFT records, and
Hugging Face ``datasets`` (saved with ``save_to_disk``, or parquet / arrow / JSON(L) files).

A *data spec* names where records come from:

- a path to a ``.jsonl`` file: read line by line here, so a rejection names ``file:line: field``;
- a path to a ``.parquet`` / ``.arrow`` file, a directory written by ``Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk``, or a directory of such files: read through ``datasets``;
- ``hf:PATH[:split]``: the same through ``datasets`` explicitly (``PATH`` may also be a ``.jsonl``/``.json``
  file; ``split`` picks one split of a ``DatasetDict``, default ``train``); a rejection names
  ``hf:PATH[split] row N: field`` (N counts from 0, as ``dataset[N]``). Only local data: nothing is
  downloaded;
- a registered SeqIO task or mixture name (resolved by ``oyster_jax.data.pipeline``, not here).

``normalize(raw, kind)`` turns one raw record into the project schema (``oyster_jax.core.schemas``) before it
is validated:

- missing ``id`` -> ``"h"`` + 16 hex digits of a SHA-256 over the record's content (canonical JSON, null
  fields dropped), so the same record read from JSONL or parquet gets the same id; an exact duplicate of an
  earlier record of the same file gets ``"<hash>-2"``, ``"-3"``, ... (file order);
- missing ``language`` -> ``core.taxonomy.detect_language`` over the user turns (``"en"`` or ``"zh"``);
- SFT: chat records with only ``messages`` (system / user / assistant, multi-turn); an assistant turn's
  ``reasoning_content`` (or ``reasoning``) becomes its ``thinking``. TRL prompt-completion records
  (``prompt`` / ``completion``, strings or message lists) become ``messages``;
- preference: TRL records ``{prompt, chosen, rejected}``, each a string or a conversational message list
  (the "implicit prompt" form without ``prompt`` takes the common leading messages of ``chosen`` and
  ``rejected`` as the prompt). The reasoning of a completion comes from ``chosen_reasoning`` /
  ``rejected_reasoning`` (top level), from ``reasoning_content`` / ``thinking`` on its assistant message, or
  from a leading ``<think>...</think>`` in its text. Project preference records may leave out
  ``chosen.thinking`` / ``rejected.thinking``.

``read_records(spec, kind)`` returns the normalized, validated records of a spec (duplicate ids are an
error, as in ``schemas.read_records``). ``spec_fingerprint(spec)`` identifies the content behind a spec
(for caches and iterator states) without reading it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator

from oyster_jax.core import chat, schemas
from oyster_jax.core.schemas import RecordError
from oyster_jax.core.taxonomy import detect_language

__all__ = ["HF_PREFIX", "normalize", "parse_spec", "read_records", "is_file_spec", "spec_fingerprint", "content_id"]

HF_PREFIX = "hf:"
_HF_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}
_REASONING_KEYS = ("reasoning_content", "reasoning")

# ------------------------------------------------------------------------------------------------
# One record -> the project schema
# ------------------------------------------------------------------------------------------------


def _drop_nulls(value):
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def content_id(record: dict) -> str:
    """The stable id of a record without one: a hash of its content (null fields dropped, keys sorted)."""
    blob = json.dumps(_drop_nulls(record), ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return "h" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _fail(where: tuple[str, int, str], field: str, reason: str):
    path, line, unit = where
    raise RecordError(path, line, field, reason, unit=unit)


def _as_messages(value, field: str, where, default_role: str) -> list[dict]:
    """A string (one ``default_role`` turn) or a list of ``{role, content}`` messages, copied."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [_drop_nulls(dict(m)) for m in value]
    _fail(where, field, "expected a string or a non-empty list of {role, content} messages")


def _reasoning_to_thinking(messages: list[dict]) -> list[dict]:
    for m in messages:
        for key in _REASONING_KEYS:
            if key in m:
                value = m.pop(key)
                if m.get("role") == "assistant" and m.get("thinking") is None and value is not None:
                    m["thinking"] = value
    return messages


def _user_text(messages) -> str:
    if not isinstance(messages, list):
        return ""
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user")


def _normalize_sft(r: dict, where) -> dict:
    if r.get("messages") is None and r.get("completion") is not None:  # TRL prompt-completion
        prompt = _as_messages(r.get("prompt") if r.get("prompt") is not None else "", "prompt", where, "user")
        completion = _as_messages(r["completion"], "completion", where, "assistant")
        r = {k: v for k, v in r.items() if k not in ("prompt", "completion")}
        r["messages"] = prompt + completion
    if isinstance(r.get("messages"), list):
        copied = [_drop_nulls(dict(m)) if isinstance(m, dict) else m for m in r["messages"]]
        r = dict(r, messages=_reasoning_to_thinking(copied))
    return r


def _completion(value, reasoning, field: str, where, prompt: list[dict]) -> dict:
    """A TRL completion (a string, or a message list that may repeat the prompt) -> {thinking?, response}."""
    if isinstance(value, str):
        text, thinking = value, None
    else:
        turns = _as_messages(value, field, where, "assistant")
        start = len(prompt) if len(turns) > len(prompt) and turns[: len(prompt)] == prompt else 0
        turns = _reasoning_to_thinking(turns[start:])
        if len(turns) != 1 or turns[0].get("role") != "assistant":
            _fail(where, field, f"expected one assistant message after the prompt, got {len(turns)} message(s)")
        text, thinking = turns[0].get("content"), turns[0].get("thinking")
        if not isinstance(text, str):
            _fail(where, f"{field}[{start}].content", "expected a string")
    if reasoning is not None:
        thinking = reasoning
    if thinking is None and chat.THINK_CLOSE in text:
        thinking, text = chat.split_thinking(text)
    out = {"response": text}
    if thinking is not None:
        out["thinking"] = thinking
    return out


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def _normalize_pref(r: dict, where) -> dict:
    if r.get("prompt_messages") is not None or isinstance(r.get("chosen"), dict):
        return r  # the project's schema
    for key in ("chosen", "rejected"):
        if r.get(key) is None:
            _fail(where, key, "missing (a preference record needs chosen and rejected)")
    chosen, rejected = r["chosen"], r["rejected"]
    if r.get("prompt") is not None:
        prompt = _as_messages(r["prompt"], "prompt", where, "user")
    else:  # implicit prompt: the conversations share their leading turns
        if isinstance(chosen, str) or isinstance(rejected, str):
            _fail(where, "prompt", "missing (string chosen/rejected need a prompt)")
        c = _as_messages(chosen, "chosen", where, "assistant")
        j = _as_messages(rejected, "rejected", where, "assistant")
        start = _common_prefix(c, j)
        if start == 0:
            _fail(where, "prompt", "missing, and chosen and rejected share no leading messages to take it from")
        prompt = c[:start]
    extra = {k: v for k, v in r.items() if k not in ("prompt", "chosen", "rejected")}
    out = {
        **{k: v for k, v in extra.items() if not k.endswith(("_reasoning", "_thinking"))},
        "prompt_messages": _reasoning_to_thinking([dict(m) for m in prompt]),
    }
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        reasoning = r.get(f"{key}_reasoning", r.get(f"{key}_thinking"))
        if reasoning is not None and not isinstance(reasoning, str):
            _fail(where, f"{key}_reasoning", f"expected a string, got {type(reasoning).__name__}")
        out[key] = _completion(value, reasoning, key, where, prompt)
    return out


def normalize(raw, kind: str, path: str = "<memory>", line: int = 0, unit: str = "") -> dict:
    """One raw record of ``kind`` in any accepted format -> the project schema (not yet validated; see the
    module docstring). Raises RecordError naming the location and the field."""
    where = (str(path), line, unit)
    if not isinstance(raw, dict):
        _fail(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    if kind not in ("sft", "pref"):
        return raw
    r = _normalize_sft(raw, where) if kind == "sft" else _normalize_pref(raw, where)
    if r.get("id") is None:
        r = {"id": content_id(raw), **r}
    if r.get("language") is None:
        messages = r.get("messages") if kind == "sft" else r.get("prompt_messages")
        r = dict(r, language=detect_language(_user_text(messages)))
    return r


# ------------------------------------------------------------------------------------------------
# Specs -> raw records
# ------------------------------------------------------------------------------------------------


def parse_spec(spec: str | os.PathLike) -> tuple[str, pathlib.Path, str | None]:
    """``(reader, path, split)``: reader ``"jsonl"`` (the line reader) or ``"hf"`` (``datasets``)."""
    text = os.fspath(spec)
    if text.startswith(HF_PREFIX):
        body = text[len(HF_PREFIX) :]
        head, sep, tail = body.rpartition(":")
        if sep and tail and "/" not in tail and not pathlib.Path(body).exists():
            return "hf", pathlib.Path(head), tail
        return "hf", pathlib.Path(body), None
    path = pathlib.Path(text)
    if path.is_dir() or path.suffix in (".parquet", ".arrow"):
        return "hf", path, None
    return "jsonl", path, None


def is_file_spec(spec) -> bool:
    """Whether ``spec`` names data on disk (``hf:...`` or an existing file or directory)."""
    if not isinstance(spec, str | os.PathLike):
        return False
    text = os.fspath(spec)
    return text.startswith(HF_PREFIX) or pathlib.Path(text).exists()


def spec_fingerprint(spec) -> str:
    """Identity of the content behind a spec: every file's path, size and mtime (and the split)."""
    reader, path, split = parse_spec(spec)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not path.exists():
        raise FileNotFoundError(_missing(spec, path))
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr((reader, split, stats)).encode()).hexdigest()[:16]


def _missing(spec, path) -> str:
    return f"{spec}: no such file or directory ({path})"


def _load_hf(path: pathlib.Path, split: str | None, spec: str):
    """A ``datasets.Dataset`` from a save_to_disk directory or local data files (never the Hub)."""
    import datasets  # lazy: pandas/pyarrow start-up only for specs that need them

    if not path.exists():
        raise FileNotFoundError(_missing(spec, path) + "; hf: specs read local data only")
    datasets.disable_progress_bars()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(str(path))
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix in _HF_SUFFIXES) if path.is_dir() else [path]
        builders = {_HF_SUFFIXES.get(p.suffix) for p in files}
        if not files or None in builders or len(builders) != 1:
            raise ValueError(
                f"{spec}: expected a save_to_disk directory, or .parquet / .arrow / .json(l) files of one kind, "
                f"found {[p.name for p in files][:5] or 'none'}"
            )
        ds = datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")
    if isinstance(ds, datasets.DatasetDict):
        want = split or "train"
        if want not in ds:
            raise ValueError(f"{spec}: no split {want!r}; the dataset has {sorted(ds)} (use hf:PATH:split)")
        return ds[want], want
    if split not in (None, "train"):
        raise ValueError(f"{spec}: a single dataset has only the split 'train', not {split!r}")
    return ds, "train"


def iter_raw(spec) -> Iterator[tuple[str, int, str, object]]:
    """``(location, index, unit, raw record)`` for every record behind a file spec, in order."""
    reader, path, split = parse_spec(spec)
    if reader == "jsonl":
        if not path.is_file():
            raise FileNotFoundError(_missing(spec, path))
        for lineno, value in schemas.iter_json_lines(path):
            yield str(path), lineno, "", value
        return
    ds, split = _load_hf(path, split, os.fspath(spec))
    location = f"{HF_PREFIX}{path}[{split}]"
    for i, row in enumerate(ds):
        yield location, i, "row", row


def read_records(spec, kind: str) -> list[dict]:
    """Normalized, validated records of ``kind`` behind a file spec (see the module docstring)."""
    out: list[dict] = []
    seen: dict[str, tuple[int, bool]] = {}
    repeats: collections.Counter = collections.Counter()
    for location, index, unit, raw in iter_raw(spec):
        record = normalize(raw, kind, location, index, unit)
        generated = isinstance(raw, dict) and raw.get("id") is None
        if generated and record["id"] in seen:
            repeats[record["id"]] += 1
            record = dict(record, id=f"{record['id']}-{repeats[record['id']] + 1}")
        record = schemas.validate_record(record, kind, location, index, unit=unit)
        if record["id"] in seen:
            first = seen[record["id"]][0]
            raise RecordError(location, index, "id", f"duplicate id {record['id']!r} (first at {first})", unit=unit)
        seen[record["id"]] = (index, generated)
        out.append(record)
    return out
