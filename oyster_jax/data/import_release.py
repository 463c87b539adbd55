"""Import the official benchmark releases, as published, into the JSONL layout the project reads.

    python -m oyster_jax.data.import_release strata_sword --src DIR --out DIR
    python -m oyster_jax.data.import_release taxonomy --src DIR --out DIR

Then point ``OYSTER_DATA_DIR`` at the parent of the written ``strata_sword/`` and ``risk_taxonomy/`` folders.

**Strata-Sword** (Alibaba-AAIG/Strata-Sword, folder ``strata_sword/``): six spreadsheets
``strata_sword_{en,cn}_level_{1,2,3}.xlsx``, one sheet each, a header row, then one attack per row:
column 1 the prompt (headed "jailbreak instruction" or "攻击指令"), column 2 "attack method" (the literal
"None" on level 1, where every prompt is a direct request), column 3 a risk type (empty in the release).
Written as ``strata_sword/{en,cn}_level_{n}.jsonl`` with ``{id, language, level, attack_method, prompt}``:
ids ``{lang}-L{level}-{row:03d}`` counted from 0 in sheet order, prompts byte for byte as in the cell,
"None" written as ``Direct``, and a non-empty risk type kept as ``risk_type``. The release has
en 100/100/200 and cn 100/100/100 prompts; other counts are an error unless ``--any_counts``.

**Taxonomy** (``risk_rules.xlsx`` in the Strata-Sword repository, or ``safe_guidelines.xlsx`` in
Alibaba-AAIG/Oyster — the same workbook): a sheet of the published second-level categories with their
rules (headers 风险分级, 风险类别cn, 风险类别en, then the Chinese and English rules) and a sheet of every
category with its description (headers including 风险说明cn / 风险说明en; first-level rows marked 一级).
Written as ``risk_taxonomy/level1_categories.jsonl`` (``name_en, name_cn, description_en,
description_cn``) and ``risk_taxonomy/level2_rules.jsonl`` (the same plus ``rules_en, rules_cn``), the
text of each cell with surrounding white space removed.

Sheets are recognised by their header names, not their position; a missing file, sheet or column is an
error naming it (exit 2). Outputs are written atomically; nothing is written unless every input reads.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import openpyxl

from oyster_jax.core import schemas
from oyster_jax.core.files import atomic_write_text

STRATA_COUNTS = {("en", 1): 100, ("en", 2): 100, ("en", 3): 200, ("cn", 1): 100, ("cn", 2): 100, ("cn", 3): 100}
STRATA_HOWTO = (
    "download the six strata_sword_{en,cn}_level_{1,2,3}.xlsx files from the strata_sword/ folder of the "
    "Alibaba-AAIG/Strata-Sword repository and pass that folder as --src"
)
TAXONOMY_FILES = ("risk_rules.xlsx", "safe_guidelines.xlsx")
TAXONOMY_HOWTO = (
    "download risk_rules.xlsx from the Alibaba-AAIG/Strata-Sword repository (or safe_guidelines.xlsx from "
    "Alibaba-AAIG/Oyster) and pass its folder as --src"
)
LEVEL1_MARK = "一级"


class ReleaseError(ValueError):
    """An input that does not have the published layout; the message names the file, sheet, row or column."""


def _rows(path: pathlib.Path, howto: str) -> dict[str, list[tuple]]:
    """Every sheet of a workbook as value rows, header first."""
    if not path.is_file():
        raise ReleaseError(f"{path}: no such file; {howto}")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile/KeyError/InvalidFileException for non-workbooks
        raise ReleaseError(f"{path}: not a readable .xlsx workbook ({type(e).__name__}: {e})") from None
    try:
        return {ws.title: [tuple(r) for r in ws.iter_rows(values_only=True)] for ws in book.worksheets}
    finally:
        book.close()


def _text(value) -> str:
    return "" if value is None else str(value)


# ------------------------------------------------------------------------------------------------
# Strata-Sword
# ------------------------------------------------------------------------------------------------
def read_strata_sword(src: str | pathlib.Path, any_counts: bool = False) -> dict[tuple[str, int], list[dict]]:
    """(language, level) -> eval records, from the six published spreadsheets in `src`."""
    src = pathlib.Path(src)
    out = {}
    for (language, level), expected in STRATA_COUNTS.items():
        path = src / f"strata_sword_{language}_level_{level}.xlsx"
        sheets = _rows(path, STRATA_HOWTO)
        sheet, rows = next(iter(sheets.items()))  # one sheet per file in the release
        if not rows or len([c for c in rows[0] if c is not None]) < 2:
            raise ReleaseError(f"{path}: sheet {sheet!r}: expected a header row with the prompt and 'attack method'")
        records = []
        for number, row in enumerate(rows[1:], start=2):
            if all(c is None or not str(c).strip() for c in row):
                continue  # trailing blank rows
            prompt, method = _text(row[0]), _text(row[1] if len(row) > 1 else None).strip()
            where = f"{path}: sheet {sheet!r}: row {number}"
            if not prompt.strip():
                raise ReleaseError(f"{where}: column 1 (prompt) is empty")
            if not method:
                raise ReleaseError(f"{where}: column 2 (attack method) is empty")
            record = {
                "id": f"{language}-L{level}-{len(records):03d}",
                "language": language,
                "level": level,
                "attack_method": "Direct" if method == "None" else method,
                "prompt": prompt,
            }
            risk_type = _text(row[2] if len(row) > 2 else None).strip()
            if risk_type:
                record["risk_type"] = risk_type
            records.append(schemas.validate_record(record, "eval", str(path), number))
        if not any_counts and len(records) != expected:
            raise ReleaseError(
                f"{path}: {len(records)} prompts, the release has {expected} (pass --any_counts for a subset)"
            )
        out[language, level] = records
    return out


def write_strata_sword(records: dict[tuple[str, int], list[dict]], out: str | pathlib.Path) -> list[pathlib.Path]:
    folder = pathlib.Path(out) / "strata_sword"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (language, level), rows in records.items():
        path = folder / f"{language}_level_{level}.jsonl"
        schemas.write_records(path, rows, "eval")
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# Taxonomy
# ------------------------------------------------------------------------------------------------
def _columns(path: pathlib.Path, sheet: str, header: tuple, wanted: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Header name -> column index; each wanted key matches the first header that ends with one of its names."""
    names = [_text(h).strip() for h in header]
    found = {}
    for key, suffixes in wanted.items():
        for i, name in enumerate(names):
            if any(name == s or name.endswith(s) for s in suffixes):
                found[key] = i
                break
        else:
            raise ReleaseError(f"{path}: sheet {sheet!r}: no column {suffixes[0]!r} in the header {names}")
    return found


def read_taxonomy(src: str | pathlib.Path) -> tuple[list[dict], list[dict]]:
    """(level-1 categories, level-2 rules) from the published guideline workbook in `src`."""
    src = pathlib.Path(src)
    path = next((src / name for name in TAXONOMY_FILES if (src / name).is_file()), src / TAXONOMY_FILES[0])
    sheets = _rows(path, TAXONOMY_HOWTO)
    headers = {title: tuple(_text(h).strip() for h in rows[0]) if rows else () for title, rows in sheets.items()}
    described = [t for t, h in headers.items() if "风险说明cn" in h and "风险说明en" in h]
    ruled = [t for t, h in headers.items() if t not in described and any(h_.endswith("规则cn") for h_ in h)]
    if not described:
        raise ReleaseError(f"{path}: no sheet with the columns '风险说明cn' and '风险说明en' (category descriptions)")
    if not ruled:
        raise ReleaseError(f"{path}: no sheet of published rules (columns '风险类别cn', '风险规则cn', '风险规则en')")
    base = {"level": ("风险分级",), "name_cn": ("风险类别cn",), "name_en": ("风险类别en",)}

    d_sheet = described[0]
    d_rows = sheets[d_sheet]
    d_cols = _columns(
        path, d_sheet, d_rows[0], {**base, "description_cn": ("风险说明cn",), "description_en": ("风险说明en",)}
    )
    descriptions, level1 = {}, []
    for row in d_rows[1:]:
        cells = {k: _text(row[i] if i < len(row) else None).strip() for k, i in d_cols.items()}
        if not cells["name_cn"]:
            continue
        descriptions[cells["name_cn"]] = cells
        if cells["level"] == LEVEL1_MARK:
            level1.append({k: cells[k] for k in ("name_en", "name_cn", "description_en", "description_cn")})

    r_sheet = ruled[0]
    r_rows = sheets[r_sheet]
    r_cols = _columns(path, r_sheet, r_rows[0], {**base, "rules_cn": ("规则cn",), "rules_en": ("规则en",)})
    level2 = []
    for number, row in enumerate(r_rows[1:], start=2):
        cells = {k: _text(row[i] if i < len(row) else None).strip() for k, i in r_cols.items()}
        if not cells["name_cn"]:
            continue
        where = f"{path}: sheet {r_sheet!r}: row {number}"
        if cells["name_cn"] not in descriptions:
            raise ReleaseError(f"{where}: category {cells['name_cn']!r} has no description in sheet {d_sheet!r}")
        for key in ("name_en", "rules_cn", "rules_en"):
            if not cells[key]:
                raise ReleaseError(f"{where}: column {key!r} is empty")
        d = descriptions[cells["name_cn"]]
        level2.append(
            {
                "name_en": cells["name_en"],
                "name_cn": cells["name_cn"],
                "description_en": d["description_en"],
                "description_cn": d["description_cn"],
                "rules_en": cells["rules_en"],
                "rules_cn": cells["rules_cn"],
            }
        )
    if not level1:
        raise ReleaseError(f"{path}: sheet {d_sheet!r} has no first-level ({LEVEL1_MARK}) categories")
    return level1, level2


def write_taxonomy(level1: list[dict], level2: list[dict], out: str | pathlib.Path) -> list[pathlib.Path]:
    folder = pathlib.Path(out) / "risk_taxonomy"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in (("level1_categories.jsonl", level1), ("level2_rules.jsonl", level2)):
        path = folder / name
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oyster_jax.data.import_release", description=__doc__.splitlines()[0])
    ap.add_argument("release", choices=("strata_sword", "taxonomy"))
    ap.add_argument("--src", required=True, help="folder holding the published spreadsheets")
    ap.add_argument("--out", required=True, help="the data folder (OYSTER_DATA_DIR); a sub-folder is written in it")
    ap.add_argument("--any_counts", action="store_true", help="strata_sword: accept other prompt counts (a subset)")
    args = ap.parse_args(argv)
    try:
        if args.release == "strata_sword":
            records = read_strata_sword(args.src, args.any_counts)
            written = write_strata_sword(records, args.out)
            summary = ", ".join(f"{lang} L{level}: {len(r)}" for (lang, level), r in records.items())
        else:
            level1, level2 = read_taxonomy(args.src)
            written = write_taxonomy(level1, level2, args.out)
            summary = f"{len(level1)} first-level categories, {len(level2)} second-level rule sets"
    except (ReleaseError, schemas.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.release}: {summary}; wrote {', '.join(str(p) for p in written)}")
    print(f"use it with: export OYSTER_DATA_DIR={pathlib.Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
