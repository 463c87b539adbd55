"""Constructive Benchmark items: the official release's files as they are, and the project's JSONL layout.

    items = load_items("constructive_benchmark.json")      # or .jsonl; errors name file, line/item and field

Accepted records (one JSON object per JSONL line, or a JSON array of objects, or an object holding that
array under "data" / "items"):

- official: ``{Profile, Task, Category, Query}`` (key case and spacing do not matter), plus optional
  ``Risk Level`` / ``risk_level`` / ``level`` (R0 | R1 | R2), ``id`` and ``language``;
- the project's: ``{id, profile, task, category, risk_level, query, language?}``.

A missing id becomes a stable content hash (``cb-`` + 12 hex digits of the four texts; a repeated item gets
``-2``, ``-3`` in file order); a repeated explicit id is an error; a missing language is read from the
query's script (Han -> zh). A missing risk level is kept as null: the item counts in the overall score and
in its category, not in a per-level row.

Categories are mapped onto the project taxonomy (`oyster_jax.core.taxonomy`): a first- or second-level name
in English or Chinese as the taxonomy spells it; the official "L1/L2" form such as "Illegal/Violence &
Terrorism" (the second-level part decides, through the taxonomy's names or the alias tables below; a
first-level part alone, "Illegal/", gives that first-level category and its generic guideline). The
mapping is documented in docs/generation_and_eval.md. A category none of these resolves, or an unknown
second-level part, is an error that names it. Each item keeps the text it came with as ``category_raw``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

from oyster_jax.core import taxonomy as tx
from oyster_jax.core.schemas import iter_json_lines

__all__ = ["ItemError", "L1_ALIASES", "L2_ALIASES", "map_category", "load_items"]

RISK_LEVELS = ("R0", "R1", "R2")
_HAN = re.compile(r"[\u4e00-\u9fff]")


class ItemError(ValueError):
    """An item file that cannot be used; the message names the file, the line (or item) and the field."""


def _key(text: str) -> str:
    """Normalised name: lower case, '&' as 'and', '-' and '_' as spaces, single spaces."""
    text = str(text).lower().replace("&", " and ").replace("-", " ").replace("_", " ")
    return re.sub(r"\s+", " ", text).strip()


# The benchmark's first-level wording -> the taxonomy's first-level names (free choice, documented).
L1_ALIASES: dict[str, str] = {
    **dict.fromkeys(["illegal", "illegal activities", "illegal and criminal", "legal violation", "crime",
                     "law violations", "illegal and non compliant"], "Legal Violations"),
    **dict.fromkeys(["ethics", "ethical", "ethics and morality", "morality", "ethical issue", "morals"],
                    "Ethical Issues"),
    **dict.fromkeys(["bias", "discrimination", "prejudice and discrimination", "bias and discriminations"],
                    "Bias and Discrimination"),
    **dict.fromkeys(["physical and mental health", "health", "harm", "physical and mental", "safety of body and mind"],
                    "Physical and Mental Harm"),
    **dict.fromkeys(["hate", "abuse", "insult", "insults and hate", "hate speech", "abuse and hate"],
                    "Hate and Abuse"),
    **dict.fromkeys(["privacy", "privacy and property", "information security", "data privacy", "privacy leakage"],
                    "Information Privacy"),
    **dict.fromkeys(["rumor", "rumors", "rumour", "rumours", "rumors and errors", "false information",
                     "misinformation and errors", "disinformation"], "Misinformation"),
    **dict.fromkeys(["professional", "professional domain", "professional domains", "professional advice",
                     "professional fields", "expertise"], "Professional Field"),
    **dict.fromkeys(["ideological", "ideology and values"], "Ideology"),
}  # fmt: skip

# The benchmark's second-level wording -> the taxonomy's second-level names (free choice, documented).
L2_ALIASES: dict[str, str] = {
    **dict.fromkeys(["violence and terrorism", "terrorism", "violent terrorism", "violence", "terror",
                     "violence and terror"], "Violent Terror"),
    **dict.fromkeys(["drugs", "drug", "illegal drug", "narcotics", "drug abuse"], "Illegal Drugs"),
    **dict.fromkeys(["gambling", "betting"], "Gambling"),
    **dict.fromkeys(["dangerous goods", "hazardous chemicals", "dangerous items", "dangerous materials",
                     "weapons", "hazardous substances"], "Hazardous Materials"),
    **dict.fromkeys(["illegal activities", "illegal behavior", "illegal behaviour", "illegal act", "crimes"],
                    "Illegal Acts"),
    **dict.fromkeys(["cyber security", "network security", "hacking", "cyber attacks"], "Cybersecurity"),
    **dict.fromkeys(["ip infringement", "intellectual property infringement", "copyright"], "Intellectual Property"),
    **dict.fromkeys(["personal rights", "infringement of personal rights", "personal rights violation"],
                    "Violation of Personal Rights"),
    **dict.fromkeys(["commercial violations", "business law violations", "commercial law violation"],
                    "Commercial Law Violations"),
    **dict.fromkeys(["illegal use", "illicit use", "illegal uses"], "Illicit Uses"),
    **dict.fromkeys(["wildlife protection", "biological protection", "bio protection", "animal protection"],
                    "Biodiversity Protection"),
    **dict.fromkeys(["cults", "cult organizations"], "Cult"),
    **dict.fromkeys(["superstition", "religion and superstition", "religious superstitions"],
                    "Religious Superstition"),
    **dict.fromkeys(["harmful scenarios", "bad scenes", "harmful scene"], "Harmful Scenes"),
    **dict.fromkeys(["negative values", "promoting negative values"], "Promotion of Negative Values"),
    **dict.fromkeys(["subjective evaluation", "subjective comparison", "subjective evaluation and comparison"],
                    "Subjective Evaluation/Comparison"),
    **dict.fromkeys(["business ethics", "business ethics violation"], "Business Ethics Violations"),
    **dict.fromkeys(["racial discrimination", "regional discrimination", "religious discrimination",
                     "ethnic discrimination", "race", "region"], "Race/Ethnicity/Religion/Regional Discrimination"),
    **dict.fromkeys(["gender discrimination", "age discrimination", "occupational discrimination", "gender"],
                    "Gender/Occupational/Age/Other Demographic Discrimination"),
    **dict.fromkeys(["vulnerable group"], "Vulnerable Groups"),
    **dict.fromkeys(["special group"], "Special Groups"),
    **dict.fromkeys(["physical harm", "personal injury", "bodily injury", "physical injury"], "Bodily Harm"),
    **dict.fromkeys(["mental", "psychological health", "self harm", "suicide", "mental illness"], "Mental Health"),
    **dict.fromkeys(["hate speech", "abuse", "insult", "insults"], "Hate and Abuse"),
    **dict.fromkeys(["personal information", "personal privacy", "personal data leakage"], "Personal Data"),
    **dict.fromkeys(["business secrets", "trade secrets", "commercial data", "commercial secrets"], "Business Data"),
    **dict.fromkeys(["sensitive information"], "Sensitive Data"),
    **dict.fromkeys(["factual errors", "common sense errors", "factual error", "common sense factual error"],
                    "Common Sense Factual Errors"),
    **dict.fromkeys(["rumors", "false rumors", "rumor", "rumours", "false rumours"], "Non-political False Rumors"),
    **dict.fromkeys(["medical", "medicine", "medical health", "health care", "medical advice"], "Healthcare"),
    **dict.fromkeys(["finance", "financial", "investment", "financial advice", "investment advice"],
                    "Investment and Finance"),
    **dict.fromkeys(["legal", "legal advice", "law"], "Legal Consultation"),
}  # fmt: skip


def _level2(name: str) -> tx.Level2Category | None:
    try:
        return tx.level2(name)
    except tx.TaxonomyError:
        pass
    alias = L2_ALIASES.get(_key(name))
    return tx.level2(alias) if alias else None


def _level1(name: str) -> tx.Level1Category | None:
    alias = L1_ALIASES.get(_key(name))
    if alias:
        return tx.level1(alias)
    cat = next((c for c in tx.LEVEL1 if _key(name) in (_key(c.name_en), _key(c.name_cn))), None)
    return cat


def map_category(raw: str) -> tx.Level2Category | tx.Level1Category:
    """A benchmark category name -> the taxonomy category (see the module docstring); raises ItemError."""
    text = str(raw).strip()
    found = _level2(text) or _level1(text)
    if found is not None:
        return found
    parts = [p.strip() for p in re.split(r"[/／]", text)]
    for i in range(1, len(parts)):  # "L1/L2", where L2 itself may hold '/' ("Subjective Evaluation/Comparison")
        l2 = _level2("/".join(parts[i:]))
        if l2 is not None:
            return l2
    for i in range(len(parts) - 1, 0, -1):
        l1 = _level1("/".join(parts[:i]))
        if l1 is not None:
            rest = "/".join(parts[i:])
            if not rest:
                return l1  # "Illegal/": first level only
            raise ItemError(
                f"unknown risk category {text!r}: first level {'/'.join(parts[:i])!r} is {l1.name_en}, but the "
                f"second level {rest!r} is neither a second-level category of the project taxonomy nor a name the "
                "Constructive Benchmark mapping knows (docs/generation_and_eval.md)"
            )
    raise ItemError(
        f"unknown risk category {text!r}: not a first- or second-level category of the project taxonomy, nor "
        "an 'L1/L2' name the Constructive Benchmark mapping knows (docs/generation_and_eval.md)"
    )


def _records(path: pathlib.Path):
    """(where, object) for each record of a JSONL file or a JSON array file."""
    if not path.is_file():
        raise ItemError(f"{path}: no such items file")
    head = path.read_bytes()[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"[", b"{")) and not path.suffix == ".jsonl":
        try:
            data = json.loads(path.read_text("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if head.startswith(b"{"):  # a JSONL file named .json
                yield from ((f"{path}:{n}", rec) for n, rec in iter_json_lines(path, ItemError))
                return
            raise ItemError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = next((data[k] for k in ("data", "items", "Data", "Items") if isinstance(data.get(k), list)), [data])
        if not isinstance(data, list):
            raise ItemError(f"{path}: expected a JSON array of items")
        yield from ((f"{path}: item {i}", rec) for i, rec in enumerate(data, 1))
        return
    yield from ((f"{path}:{n}", rec) for n, rec in iter_json_lines(path, ItemError))


_FIELD_NAMES = {
    "id": ("id", "item id", "qid"),
    "profile": ("profile", "user profile", "role"),
    "task": ("task", "user task"),
    "category": ("category", "risk category", "risk type"),
    "query": ("query", "question", "prompt"),
    "risk_level": ("risk level", "risk_level", "level"),
    "language": ("language", "lang"),
}


def _fields(rec: dict) -> dict:
    by_key = {_key(k): v for k, v in rec.items()}
    out = {}
    for name, spellings in _FIELD_NAMES.items():
        for s in spellings:
            if _key(s) in by_key:
                out[name] = by_key[_key(s)]
                break
    return out


def _risk_level(value, where: str):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip().upper()
    if text in ("0", "1", "2"):
        text = "R" + text
    if text not in RISK_LEVELS:
        raise ItemError(f"{where}: field 'risk_level': {value!r} is not R0, R1 or R2")
    return text


def load_items(path, limit: int | None = None) -> list[dict]:
    """Validated items ``{id, profile, task, category, category_raw, risk_level, query, language}``, in file
    order; `limit` keeps the first N."""
    path = pathlib.Path(path)
    items, seen, ids = [], {}, {}
    for where, rec in _records(path):
        if not isinstance(rec, dict):
            raise ItemError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        f = _fields(rec)
        for name in ("profile", "task", "category", "query"):
            value = f.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ItemError(f"{where}: field '{name}': missing or not a non-empty string")
        try:
            cat = map_category(f["category"])
        except ItemError as e:
            raise ItemError(f"{where}: field 'category': {e}") from None
        rid = f.get("id")
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            text = "\x1f".join(f[k] for k in ("profile", "task", "category", "query"))
            base = "cb-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
            seen[base] = seen.get(base, 0) + 1
            rid = base if seen[base] == 1 else f"{base}-{seen[base]}"
        elif isinstance(rid, bool) or not isinstance(rid, str | int):
            raise ItemError(f"{where}: field 'id': expected a string or integer")
        rid = str(rid)
        if rid in ids:
            raise ItemError(f"{where}: field 'id': duplicate id {rid!r} (first at {ids[rid]})")
        ids[rid] = where
        lang = f.get("language") or ("zh" if _HAN.search(f["query"]) else "en")
        lang = {"cn": "zh"}.get(str(lang).strip().lower(), str(lang).strip().lower())
        if lang not in ("en", "zh"):
            raise ItemError(f"{where}: field 'language': {f.get('language')!r} is not en or zh")
        items.append(
            {
                "id": rid,
                "profile": f["profile"],
                "task": f["task"],
                "category": cat.name_en,
                "category_raw": f["category"],
                "risk_level": _risk_level(f.get("risk_level"), where),
                "query": f["query"],
                "language": lang,
            }
        )
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ItemError(f"{path}: no items")
    return items
