"""The official releases import as published: spreadsheets in the released layout -> the JSONL the project reads.

The workbooks here are built with openpyxl in the same layout as the releases (header names, sheet order,
the literal "None" attack method on level 1) but hold placeholder prompts, never the real ones.
"""

from __future__ import annotations

import json

import openpyxl
import pytest

from oyster_jax.core import schemas, taxonomy
from oyster_jax.data import import_release
from oyster_jax.eval import strata_sword

METHODS = {2: ["Contradictory", "Shuffle", "Long Text"], 3: ["Multi-Turn", "Script+Template"]}


def _sheet(path, header, rows, title="Sheet1"):
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = title
    ws.append(header)
    for row in rows:
        ws.append(row)
    book.save(path)


def _strata_release(folder, counts=None, blank_row=None):
    counts = counts or import_release.STRATA_COUNTS
    for (language, level), n in counts.items():
        header = (
            ["jailbreak instruction", "attack method", "risk type"]
            if level == 1
            else ["攻击指令", "attack method", "风险分类"]
        )
        rows = []
        for i in range(n):
            method = "None" if level == 1 else METHODS[level][i % len(METHODS[level])]
            prompt = f"[placeholder {language} L{level} #{i}]\n  second line "  # white space kept as published
            rows.append([prompt, method, None])
        if blank_row is not None and (language, level) == blank_row[0]:
            rows[blank_row[1]][0] = "   "
        _sheet(folder / f"strata_sword_{language}_level_{level}.xlsx", header, rows)


def test_strata_sword_imports_as_published(tmp_path, monkeypatch):
    src, out = tmp_path / "release", tmp_path / "data"
    src.mkdir()
    _strata_release(src)
    assert import_release.main(["strata_sword", "--src", str(src), "--out", str(out)]) == 0
    en3 = schemas.read_records(out / "strata_sword" / "en_level_3.jsonl", "eval")
    assert len(en3) == 200
    assert en3[7] == {
        "id": "en-L3-007",
        "language": "en",
        "level": 3,
        "attack_method": "Script+Template",
        "prompt": "[placeholder en L3 #7]\n  second line ",
    }
    cn1 = schemas.read_records(out / "strata_sword" / "cn_level_1.jsonl", "eval")
    assert {r["attack_method"] for r in cn1} == {"Direct"} and cn1[0]["id"] == "cn-L1-000"
    # The evaluation harness reads what the importer wrote.
    prompts = strata_sword.load_prompts(str(out))
    assert len(prompts) == 700
    assert sum(p["language"] == "cn" and p["level"] == 2 for p in prompts) == 100


def test_strata_sword_counts_are_checked(tmp_path, capsys):
    src = tmp_path / "release"
    src.mkdir()
    _strata_release(src, counts={k: 3 for k in import_release.STRATA_COUNTS})
    assert import_release.main(["strata_sword", "--src", str(src), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "strata_sword_en_level_1.xlsx: 3 prompts, the release has 100" in err
    assert not (tmp_path / "d").exists()  # nothing written when an input is off
    assert import_release.main(["strata_sword", "--src", str(src), "--out", str(tmp_path / "d"), "--any_counts"]) == 0
    assert len(schemas.read_records(tmp_path / "d" / "strata_sword" / "en_level_2.jsonl", "eval")) == 3


def test_strata_sword_errors_name_the_place_and_the_source(tmp_path, capsys):
    src = tmp_path / "release"
    src.mkdir()
    _strata_release(src, blank_row=(("cn", 2), 4))
    assert import_release.main(["strata_sword", "--src", str(src), "--out", str(tmp_path / "d")]) == 2
    assert "strata_sword_cn_level_2.xlsx: sheet 'Sheet1': row 6: column 1 (prompt) is empty" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_release.main(["strata_sword", "--src", str(empty), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "strata_sword_en_level_1.xlsx: no such file" in err and "Alibaba-AAIG/Strata-Sword" in err
    (empty / "strata_sword_en_level_1.xlsx").write_text("not a workbook")
    assert import_release.main(["strata_sword", "--src", str(empty), "--out", str(tmp_path / "d")]) == 2
    assert "not a readable .xlsx workbook" in capsys.readouterr().err


LEVEL1 = [
    ("意识形态", "Ideology", "描述一", "Content at the ideological level."),
    ("专业领域", "Professional Field", "描述二", "Consultation."),
]
LEVEL2 = [("邪教", "Cult", "说明三", "Cults.", "1. 规则\n2. 规则 ", "1. Oppose cults.\n2. Guide away.\n")]


def _taxonomy_release(path, rules_header=("风险规则cn", "风险规则en"), descriptions_first=False):
    book = openpyxl.Workbook()
    rules = book.active
    rules.title = "中英映射"
    rules.append(["风险分级", "风险类别cn", "风险类别en", *rules_header])
    for name_cn, name_en, _, _, r_cn, r_en in LEVEL2:
        rules.append(["二级", name_cn, name_en, r_cn, r_en])
    full = book.create_sheet("中英映射（原表）", 0 if descriptions_first else None)
    full.append(
        [
            "风险分级",
            "风险类别cn",
            "风险类别en",
            "风险说明cn",
            "风险说明en",
            "对外风险规则cn",
            "对外风险规则en",
            "对外发布",
            "规则",
        ]
    )
    for name_cn, name_en, d_cn, d_en in LEVEL1:
        full.append(["一级", name_cn, name_en, d_cn, d_en, "无", "无", "否", "无"])
    for name_cn, name_en, d_cn, d_en, _, _ in LEVEL2:
        full.append(["二级", name_cn, name_en, d_cn + "\n", d_en, "x", "x", "是", "x"])
    full.append(["二级", "未发布", "Unpublished", "d", "d", "无", "无", "否", "无"])
    book.save(path)


@pytest.mark.parametrize(
    "filename, rules_header, descriptions_first",
    [
        ("risk_rules.xlsx", ("风险规则cn", "风险规则en"), False),  # Strata-Sword's copy
        ("safe_guidelines.xlsx", ("对外风险规则cn", "对外风险规则en"), True),  # Oyster's copy, sheets reordered
    ],
)
def test_taxonomy_imports_and_loads(tmp_path, monkeypatch, filename, rules_header, descriptions_first):
    src, out = tmp_path / "release", tmp_path / "data"
    src.mkdir()
    _taxonomy_release(src / filename, rules_header, descriptions_first)
    assert import_release.main(["taxonomy", "--src", str(src), "--out", str(out)]) == 0
    level1 = [json.loads(line) for line in (out / "risk_taxonomy" / "level1_categories.jsonl").open()]
    level2 = [json.loads(line) for line in (out / "risk_taxonomy" / "level2_rules.jsonl").open()]
    assert level1 == [
        {"name_en": en, "name_cn": cn, "description_en": d_en, "description_cn": d_cn} for cn, en, d_cn, d_en in LEVEL1
    ]
    assert level2 == [
        {
            "name_en": "Cult",
            "name_cn": "邪教",
            "description_en": "Cults.",
            "description_cn": "说明三",
            "rules_en": "1. Oppose cults.\n2. Guide away.",
            "rules_cn": "1. 规则\n2. 规则",
        }
    ]  # only the published rule sets, cell text stripped
    monkeypatch.setenv("OYSTER_DATA_DIR", str(out))
    assert taxonomy.load_official_guidelines()["Cult"]["en"] == "1. Oppose cults.\n2. Guide away."


def test_taxonomy_errors_name_the_sheet_and_column(tmp_path, capsys):
    src = tmp_path / "release"
    src.mkdir()
    _sheet(
        src / "risk_rules.xlsx",
        ["风险分级", "风险类别cn", "风险类别en", "风险说明cn", "风险说明en"],
        [["一级", "a", "A", "d", "D"]],
    )
    assert import_release.main(["taxonomy", "--src", str(src), "--out", str(tmp_path / "d")]) == 2
    assert "risk_rules.xlsx: no sheet of published rules" in capsys.readouterr().err
    assert import_release.main(["taxonomy", "--src", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "risk_rules.xlsx: no such file" in err and "Alibaba-AAIG/Oyster" in err
