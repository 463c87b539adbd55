"""The one Strata-Sword loader: the evaluation harness, the SeqIO tasks and the TFDS builder all read here.

    from oyster_jax.data import strata_sword
    records = strata_sword.load(languages=("en",), levels=(2,))   # $OYSTER_DATA_DIR, or data_dir=DIR
    path = strata_sword.file_path("cn", 3, data_dir)               # located, or a StrataSwordNotFound

Layout: six files ``{en,cn}_level_{1,2,3}.jsonl`` of eval records ``{id, language, level, attack_method,
prompt}`` (``oyster_jax.core.schemas``, kind ``eval``), in ``DIR/strata_sword/`` or in ``DIR`` itself.
``python -m oyster_jax.data.import_release strata_sword --src DIR --out DIR`` writes them from the
published spreadsheets. Every record is validated (errors name the file, line and field) and must agree
with its file on language and level. Multi-turn attacks are packed into one user message in the release,
and are read as they are; ``unpack_turns(prompt)`` splits such a prompt into its user turns (paragraphs
separated by blank lines, a leading "1." / "2、" numbering and enclosing quotes removed) for a harness that
plays them one by one.

A missing folder or file raises ``StrataSwordNotFound`` (a ``FileNotFoundError``) whose message says how to
get the data; it names no folder of any particular machine.
"""

from __future__ import annotations

import os
import pathlib
import re

from oyster_jax.core import schemas

__all__ = [
    "LANGUAGES",
    "LEVELS",
    "HOWTO",
    "StrataSwordError",
    "StrataSwordNotFound",
    "data_root",
    "file_name",
    "file_path",
    "read_file",
    "load_file",
    "load",
    "MULTI_TURN",
    "unpack_turns",
]

LANGUAGES = ("en", "cn")
LEVELS = (1, 2, 3)
SUBDIR = "strata_sword"
HOWTO = (
    "get the benchmark from the strata_sword/*.xlsx files of the Alibaba-AAIG/Strata-Sword repository, run "
    "`python -m oyster_jax.data.import_release strata_sword --src DIR --out DIR`, and pass that --out DIR "
    "(or set OYSTER_DATA_DIR to it)"
)


class StrataSwordError(ValueError):
    """A Strata-Sword file whose content does not fit its name or the eval schema (names file and field)."""


class StrataSwordNotFound(FileNotFoundError):
    """The Strata-Sword files are not where they were looked for; the message says how to get them."""


def file_name(language: str, level: int) -> str:
    return f"{language}_level_{level}.jsonl"


def _check_key(language: str, level: int) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"Strata-Sword language {language!r}: expected one of {LANGUAGES}")
    if isinstance(level, bool) or level not in LEVELS:
        raise ValueError(f"Strata-Sword level {level!r}: expected one of {LEVELS}")


def data_root(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder holding the six files: ``data_dir/strata_sword`` when it exists, else ``data_dir``;
    ``data_dir`` defaults to ``$OYSTER_DATA_DIR``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("OYSTER_DATA_DIR")
        if not data_dir:
            raise StrataSwordNotFound(f"Strata-Sword: no data folder given and OYSTER_DATA_DIR is not set; {HOWTO}")
    root = pathlib.Path(data_dir)
    if (root / SUBDIR).is_dir():
        return root / SUBDIR
    return root


def file_path(language: str, level: int, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The path of one file, which must exist."""
    _check_key(language, level)
    path = data_root(data_dir) / file_name(language, level)
    if not path.is_file():
        raise StrataSwordNotFound(f"{path}: Strata-Sword file not found; {HOWTO}")
    return path


def read_file(path: str | os.PathLike, language: str, level: int) -> list[dict]:
    """Validated records of one file, which must all be of `language` and `level`."""
    _check_key(language, level)
    path = pathlib.Path(path)
    if not path.is_file():
        raise StrataSwordNotFound(f"{path}: Strata-Sword file not found; {HOWTO}")
    records = schemas.read_records(path, "eval")
    for rec in records:
        if rec["language"] != language or rec["level"] != level:
            raise StrataSwordError(
                f"{path}: record {rec['id']!r}: fields 'language'/'level' say {rec['language']!r} level "
                f"{rec['level']!r}, but the file is {language} level {level}"
            )
    return records


def load_file(language: str, level: int, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Validated records of ``{language}_level_{level}.jsonl`` under `data_dir` (default $OYSTER_DATA_DIR)."""
    return read_file(file_path(language, level, data_dir), language, level)


def load(
    data_dir: str | os.PathLike | None = None, languages=LANGUAGES, levels=LEVELS
) -> dict[tuple[str, int], list[dict]]:
    """(language, level) -> records, for each requested file, in the order asked."""
    return {(lang, level): load_file(lang, level, data_dir) for lang in languages for level in levels}


MULTI_TURN = "Multi-Turn"  # the attack method whose prompts pack several user turns into one message
_NUMBERING = re.compile(r"^\s*(?:\d{1,2}\s*[.、:：)）]|[(（]\d{1,2}[)）])\s*")
_QUOTES = ('""', "“”", "「」", "''")


def unpack_turns(prompt: str) -> list[str]:
    """The user turns packed into one Multi-Turn prompt: its paragraphs (split at blank lines; a single
    paragraph whose lines are numbered "1." "2." ... is split at those lines), each without its leading turn
    number and without quotes around the whole turn. A prompt with no such structure is one turn."""
    turns = []
    paragraphs = re.split(r"\n\s*\n", prompt.strip())
    if len(paragraphs) == 1:
        lines = paragraphs[0].splitlines()
        starts = [i for i, line in enumerate(lines) if _NUMBERING.match(line)]
        if len(starts) >= 2 and starts[0] == 0:
            paragraphs = ["\n".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]
    for paragraph in paragraphs:
        text = _NUMBERING.sub("", paragraph.strip(), count=1).strip()
        for left, right in _QUOTES:
            if len(text) >= 2 and text[0] == left and text[-1] == right:
                text = text[1:-1].strip()
                break
        if text:
            turns.append(text)
    return turns or [prompt]
