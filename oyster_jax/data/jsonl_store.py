"""The one resumable JSONL store: an append-only file of records keyed by `id`, safe to kill and rerun.

    store = JsonlStore(out / "responses.jsonl")
    todo = store.pending(items)                  # items without a finished record (failed ones run again)
    store.append(record)                         # one line, flushed (fsynced with fsync=True)

One JSON object per line, each with a string or integer `id`; the last line for an id wins, so a retried
item's newer record supersedes its failed one. A killed writer can leave only the last line damaged, so
that is the one line repaired on read: cut off mid-record (no newline, not JSON) it is dropped, complete but
missing its newline it is kept and the newline added. Any other bad line is an error naming `path:line`
(and the file is left as it is): it is not something a crash produces, so it is not silently thrown away.

Used by the evaluation harnesses (`responses.jsonl`) and the Lingo-BP engine (its three output files).
Standard library only, so any layer may use it.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterable

from oyster_jax.core.files import atomic_write_text

__all__ = ["JsonlError", "JsonlStore"]


class JsonlError(ValueError):
    """A line of a store that is not a record (not the torn last line); the message starts with `path:line:`."""

    def __init__(self, path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _is_finished(record: dict) -> bool:
    return not record.get("error")


class JsonlStore:
    """Records keyed by `id` in one JSONL file. `fsync=True` makes each append durable before it returns."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = pathlib.Path(path)
        self.fsync = fsync
        self._repaired = False  # appends go after a repaired last line

    # --- reading ---
    def records(self, *, repair: bool = True) -> list[dict]:
        """Every record in file order (several per id possible). With `repair`, a damaged last line is fixed in
        the file (dropped when torn, newline added when complete); without it the file is only read."""
        return [rec for _, rec in self.numbered(repair=repair)]

    def numbered(self, *, repair: bool = True) -> list[tuple[int, dict]]:
        """`records` with the line number of each (for errors that name `path:line`)."""
        if not self.path.exists():
            self._repaired = True
            return []
        records: list[tuple[int, dict]] = []
        torn_at = None  # byte offset of a torn last line
        missing_newline = False
        offset = 0
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                is_last_unterminated = not raw.endswith(b"\n")  # only the file's last line can be
                if raw.strip():
                    try:
                        rec = json.loads(raw.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        if is_last_unterminated:
                            torn_at = offset
                            break
                        raise JsonlError(self.path, lineno, f"not a JSON record ({e})") from None
                    if not isinstance(rec, dict):
                        raise JsonlError(self.path, lineno, f"expected a JSON object, got {type(rec).__name__}")
                    rid = rec.get("id")
                    if isinstance(rid, bool) or not isinstance(rid, str | int):
                        raise JsonlError(self.path, lineno, "field 'id': missing or not a string / integer")
                    records.append((lineno, rec))
                    missing_newline = is_last_unterminated
                offset += len(raw)
        if repair:
            if torn_at is not None:
                with self.path.open("r+b") as f:
                    f.truncate(torn_at)
            elif missing_newline:
                with self.path.open("ab") as f:
                    f.write(b"\n")
            self._repaired = True
        return records

    def load(self, *, repair: bool = True) -> dict[str, dict]:
        """id (as a string) -> its last record."""
        return {str(r["id"]): r for r in self.records(repair=repair)}

    def pending(
        self,
        items: Iterable,
        *,
        key: Callable[[object], object] = lambda item: item["id"],
        finished: Callable[[dict], bool] = _is_finished,
    ) -> list:
        """The `items` whose id has no finished record yet, in their order. By default a record is finished
        unless it carries an `error` (a failed item is run again on resume)."""
        done = {i for i, r in self.load().items() if finished(r)}
        return [it for it in items if str(key(it)) not in done]

    # --- writing ---
    def append(self, record: dict) -> None:
        self.extend([record])

    def extend(self, records: Iterable[dict]) -> None:
        """Append records in one write call (then flush, and fsync when asked)."""
        text = "".join(_line(r) for r in records)
        if not text:
            return
        if not self._repaired:
            self.records(repair=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the whole file with `records`, atomically (a crash leaves the old file or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(_line(r) for r in records))
        self._repaired = True
