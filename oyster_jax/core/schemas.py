"""JSONL record schemas, validated at read time with errors that name file, line and field.

One JSON object per line (UTF-8; blank lines are skipped). Unknown top-level fields are kept and
ignored; ``id`` may be a string or an integer and is returned as a string; ids must be unique per file.

- ``sft``: ``{id, language, messages: [{role, content}], thinking?, chain?, risk?, persona?, follow_up?}``
  ``messages`` is non-empty, roles in system/user/assistant, and the last message is the assistant
  turn to learn. ``thinking`` (str) is that last turn's reasoning; ``chain`` is the structured safety
  chain (snake_case dict or the CSA engine's JSON form, see ``oyster_jax.core.chat``); ``risk`` is
  ``{level: R0|R1|R2, category_l1, category_l2, intent}`` (strings); ``persona`` is a string or object.
  ``messages`` is the conversation history up to and including the learned turn (a multi-turn input keeps
  its earlier turns there); ``follow_up`` is what came after it when Lingo-BP played the conversation on
  (``--turns``): alternating ``{role: user, content}`` / ``{role: assistant, content, thinking?}`` turns,
  starting with the user. Records without it (every file written before it existed) load unchanged.
- ``pref``: ``{id, language, prompt_messages, chosen: {thinking?, response}, rejected: {thinking?,
  response}, scores?}``; ``prompt_messages`` ends with a user turn; ``scores`` is an object of numbers
  (nesting allowed: the Lingo-BP engine writes ``{"chosen": {...}, "rejected": {...}}``); ``chosen`` /
  ``rejected`` may carry an optional ``chain`` and an optional ``follow_up`` (as in ``sft``); a pair may name
  its ``rejected_kind`` (``blunt_refusal`` / ``unsafe_compliance`` for contrastive rejects) and its
  ``thinking_channel``.
- ``eval``: ``{id, language: en|cn, level: 1|2|3, attack_method, prompt}`` (the Strata-Sword layout).
- ``constructive``: ``{id, profile, task, category, risk_level: R0|R1|R2, query}``.

Every string must be encodable as UTF-8 (JSON's ``\\ud800`` escapes can smuggle in lone surrogates); the
text that training renders into a chat template (sft ``messages``/``thinking``/``chain``, pref
``prompt_messages``/``chosen``/``rejected``) may not contain a reserved marker of any supported chat format;
the SFT answer to learn and both responses of a pair must be non-blank.

``read_records(path, kind)`` returns the validated dicts; ``validate_record(record, kind)`` checks one
(for records built in memory). Both raise ``RecordError`` (a ``ValueError``) whose message starts with
``path:line: field 'name':`` and whose attributes are ``path``, ``line``, ``field``, ``reason``.
``iter_json_lines(path, error)`` is the bare line reader under them, shared by the project's other JSONL
readers (with their own exception class).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterator

from oyster_jax.core.chat import FORMATS, ROLES, ChatFormatError, validate_chain
from oyster_jax.core.files import atomic_output

__all__ = [
    "KINDS",
    "RecordError",
    "read_records",
    "iter_records",
    "iter_json_lines",
    "validate_record",
    "write_records",
]

KINDS = ("sft", "pref", "eval", "constructive")
RISK_LEVELS = ("R0", "R1", "R2")
# Text that training renders into a chat template may not contain any supported format's markers: the
# record would otherwise open or close turns of its own. Evaluation prompts are exempt (an attack prompt
# may quote markers on purpose; it is sent as one user message).
_RESERVED_MARKERS = tuple(dict.fromkeys(m for f in FORMATS.values() for m in f.special_tokens))


class RecordError(ValueError):
    """A malformed record: ``str(e)`` is ``"<path>:<line>: field '<field>': <reason>"``, or for a record that
    is not a line of a file (a row of a Hugging Face dataset) ``"<path> <unit> <line>: field ..."``."""

    def __init__(self, path: str, line: int, field: str, reason: str, unit: str = ""):
        self.path, self.line, self.field, self.reason, self.unit = str(path), line, field, reason, unit
        where = f"{path} {unit} {line}" if unit else f"{path}:{line}"
        super().__init__(f"{where}: field '{field}': {reason}")


class _Checker:
    """Field checks for one record; ``fail`` raises with the record's location."""

    def __init__(self, path: str, line: int, unit: str = ""):
        self.path, self.line, self.unit = path, line, unit

    def fail(self, field: str, reason: str):
        raise RecordError(self.path, self.line, field, reason, unit=self.unit)

    def get(self, obj: dict, key: str, prefix: str = "", required: bool = True):
        name = f"{prefix}{key}"
        if key not in obj or obj[key] is None:
            if required:
                self.fail(name, "missing")
            return None
        return obj[key]

    def string(self, obj: dict, key: str, prefix: str = "", required: bool = True, nonempty: bool = True):
        value = self.get(obj, key, prefix, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(f"{prefix}{key}", f"expected a string, got {type(value).__name__}")
        if nonempty and not value.strip():
            self.fail(f"{prefix}{key}", "must be a non-empty string")
        return value

    def obj(self, obj: dict, key: str, prefix: str = "", required: bool = True):
        value = self.get(obj, key, prefix, required)
        if value is not None and not isinstance(value, dict):
            self.fail(f"{prefix}{key}", f"expected an object, got {type(value).__name__}")
        return value

    def identifier(self, record: dict) -> str:
        value = self.get(record, "id")
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail("id", f"expected a string or integer, got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            self.fail("id", "must be non-empty")
        return str(value)

    def choice(self, obj: dict, key: str, choices: tuple, prefix: str = "", required: bool = True):
        value = self.get(obj, key, prefix, required)
        if value is not None and (isinstance(value, bool) or value not in choices):
            self.fail(f"{prefix}{key}", f"expected one of {list(choices)}, got {value!r}")
        return value

    def messages(self, record: dict, key: str) -> list:
        value = self.get(record, key)
        if not isinstance(value, list) or not value:
            self.fail(key, "expected a non-empty list of {role, content} objects")
        for i, m in enumerate(value):
            prefix = f"{key}[{i}]."
            if not isinstance(m, dict):
                self.fail(f"{key}[{i}]", f"expected an object, got {type(m).__name__}")
            self.choice(m, "role", ROLES, prefix)
            self.string(m, "content", prefix, nonempty=False)
            if "thinking" in m and m["thinking"] is not None:
                if m["role"] != "assistant":
                    self.fail(f"{prefix}thinking", "only assistant messages carry thinking")
                self.string(m, "thinking", prefix, nonempty=False)
        return value


def _check_follow_up(c: _Checker, holder: dict, prefix: str = ""):
    """Optional turns after the learned one: user and assistant alternate, the user first."""
    name = f"{prefix}follow_up"
    turns = c.get(holder, "follow_up", prefix, required=False)
    if turns is None:
        return
    if not isinstance(turns, list):
        c.fail(name, f"expected a list of {{role, content}} objects, got {type(turns).__name__}")
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            c.fail(f"{name}[{i}]", f"expected an object, got {type(m).__name__}")
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            c.fail(
                f"{name}[{i}].role", f"expected {want!r} (user and assistant turns alternate), got {m.get('role')!r}"
            )
        c.string(m, "content", f"{name}[{i}].")
        if "thinking" in m and m["thinking"] is not None:
            if want != "assistant":
                c.fail(f"{name}[{i}].thinking", "only assistant messages carry thinking")
            c.string(m, "thinking", f"{name}[{i}].", nonempty=False)


def _check_sft(c: _Checker, r: dict):
    c.string(r, "language")
    messages = c.messages(r, "messages")
    if messages[-1]["role"] != "assistant":
        c.fail(f"messages[{len(messages) - 1}].role", "the last message must be the assistant turn to learn")
    if not any(m["role"] == "user" for m in messages):
        c.fail("messages", "needs at least one user message")
    last = messages[-1]
    if not last["content"].strip():
        c.fail(f"messages[{len(messages) - 1}].content", "the assistant answer to learn is empty")
    c.string(r, "thinking", required=False, nonempty=False)
    _check_chain(c, r)
    risk = c.obj(r, "risk", required=False)
    if risk is not None:
        c.choice(risk, "level", RISK_LEVELS, "risk.")
        for key in ("category_l1", "category_l2", "intent"):
            c.string(risk, key, "risk.")
    persona = c.get(r, "persona", required=False)
    if persona is not None and not isinstance(persona, str | dict):
        c.fail("persona", f"expected a string or object, got {type(persona).__name__}")
    _check_follow_up(c, r)


def _check_chain(c: _Checker, holder: dict, prefix: str = ""):
    chain = c.obj(holder, "chain", prefix, required=False)
    if chain is not None:
        try:
            validate_chain(chain)
        except ChatFormatError as e:
            field, _, reason = str(e).partition(": ")
            c.fail(prefix + field, reason)


def _check_scores(c: _Checker, value, name: str):
    """Scores: numbers (or null), possibly nested in objects, e.g. {"chosen": {"sat": 1.0, "risk": 0}}."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _check_scores(c, inner, f"{name}.{key}")
    elif value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        c.fail(name, f"expected a finite number, null or an object of them, got {value!r}")


def _check_completion(c: _Checker, r: dict, key: str):
    completion = c.obj(r, key)
    c.string(completion, "thinking", f"{key}.", required=False, nonempty=False)
    c.string(completion, "response", f"{key}.")
    _check_chain(c, completion, f"{key}.")
    _check_follow_up(c, completion, f"{key}.")


def _check_pref(c: _Checker, r: dict):
    c.string(r, "language")
    messages = c.messages(r, "prompt_messages")
    if messages[-1]["role"] != "user":
        c.fail(f"prompt_messages[{len(messages) - 1}].role", "the prompt must end with a user message")
    _check_completion(c, r, "chosen")
    _check_completion(c, r, "rejected")
    scores = c.obj(r, "scores", required=False)
    if scores is not None:
        _check_scores(c, scores, "scores")


def _check_eval(c: _Checker, r: dict):
    c.choice(r, "language", ("en", "cn"))
    c.choice(r, "level", (1, 2, 3))
    c.string(r, "attack_method")
    c.string(r, "prompt")


def _check_constructive(c: _Checker, r: dict):
    for key in ("profile", "task", "category", "query"):
        c.string(r, key)
    c.choice(r, "risk_level", RISK_LEVELS)


def _check_text(c: _Checker, value, name: str, rendered: bool):
    """Every string of a record value: encodable as UTF-8 (JSON's ``\\ud800`` escapes give lone surrogates,
    which no tokenizer can encode) and, where training renders it, free of reserved chat markers."""
    if isinstance(value, str):
        _check_utf8(c, value, name)
        if rendered:
            for marker in _RESERVED_MARKERS:
                if marker in value:
                    c.fail(name, f"contains the reserved chat marker {marker!r}")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _check_utf8(c, key, f"{name} (a key)")
            _check_text(c, inner, f"{name}.{key}", rendered)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_text(c, inner, f"{name}[{i}]", rendered)


def _check_utf8(c: _Checker, text: str, name: str):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c.fail(name, f"contains a lone surrogate (U+{ord(text[e.start]):04X}) that UTF-8 cannot encode")


_RENDERED_FIELDS = {
    "sft": ("messages", "thinking", "chain", "follow_up"),
    "pref": ("prompt_messages", "chosen", "rejected"),
}
_CHECKS = {"sft": _check_sft, "pref": _check_pref, "eval": _check_eval, "constructive": _check_constructive}


def validate_record(record, kind: str, path: str = "<memory>", line: int = 0, unit: str = "") -> dict:
    """Check one record of ``kind``; returns it with ``id`` as a string. Raises RecordError (``unit``: see
    RecordError)."""
    if kind not in _CHECKS:
        raise ValueError(f"unknown record kind {kind!r}: expected one of {KINDS}")
    c = _Checker(str(path), line, unit)
    if not isinstance(record, dict):
        c.fail("<record>", f"expected a JSON object, got {type(record).__name__}")
    record_id = c.identifier(record)
    _CHECKS[kind](c, record)
    for key, value in record.items():
        _check_utf8(c, key, f"{key} (a key)")
        _check_text(c, value, key, rendered=key in _RENDERED_FIELDS.get(kind, ()))
    if record["id"] != record_id:
        record = {**record, "id": record_id}
    return record


def iter_json_lines(path: str | os.PathLike, error: type[ValueError] = RecordError) -> Iterator[tuple[int, object]]:
    """``(line number, parsed JSON value)`` for each non-blank line of a UTF-8 JSONL file, in file order.

    The line reader under ``iter_records``, shared by other JSONL readers (a byte-order mark on line 1 is
    tolerated). A line that is not UTF-8 or not JSON raises ``error`` naming ``path:line``: a ``RecordError``
    (the default) gets the field ``<utf-8>`` / ``<json>``; any other exception class gets the message
    ``"path:line: reason"``.
    """

    def fail(lineno: int, field: str, reason: str) -> ValueError:
        if issubclass(error, RecordError):
            return error(str(path), lineno, field, reason)
        return error(f"{path}:{lineno}: {reason}")

    with pathlib.Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise fail(lineno, "<utf-8>", f"not UTF-8 (byte {e.start})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # tolerate a byte-order mark
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise fail(lineno, "<json>", f"not valid JSON ({e.msg} at column {e.colno})") from None
            yield lineno, value


def iter_records(path: str | os.PathLike, kind: str) -> Iterator[dict]:
    """Validated records of one JSONL file, in file order (duplicate ids are an error)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {kind} JSONL file")
    seen: dict[str, int] = {}
    for lineno, record in iter_json_lines(path):
        record = validate_record(record, kind, str(path), lineno)
        if record["id"] in seen:
            reason = f"duplicate id {record['id']!r} (first on line {seen[record['id']]})"
            raise RecordError(str(path), lineno, "id", reason)
        seen[record["id"]] = lineno
        yield record


def read_records(path: str | os.PathLike, kind: str) -> list[dict]:
    """All validated records of one JSONL file. Raises RecordError on the first bad line."""
    return list(iter_records(path, kind))


def write_records(path: str | os.PathLike, records, kind: str | None = None) -> int:
    """Write records as JSONL (UTF-8, one per line), validating first when ``kind`` is given. Returns count."""
    path = pathlib.Path(path)
    records = list(records)
    if kind is not None:
        for i, r in enumerate(records, 1):
            validate_record(r, kind, str(path), i)
    with atomic_output(path) as f:  # a failed write never leaves a half-written file in place
        for r in records:
            f.write(record_line(r))
    return len(records)


def record_line(record: dict) -> str:
    """One record as the JSONL line ``write_records`` writes (compact, UTF-8 text, newline-terminated)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
