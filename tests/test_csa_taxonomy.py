"""Taxonomy: names against the official files, the documented L2->L1 mapping, lookups, guideline override."""

import json

import pytest

from oyster_jax.core import taxonomy as tx

# The documented mapping, restated by hand (counts per first-level category and a few spot checks).
EXPECTED_COUNTS = {
    "Ideology": 2,
    "Legal Violations": 11,
    "Ethical Issues": 4,
    "Bias and Discrimination": 4,
    "Physical and Mental Harm": 2,
    "Hate and Abuse": 1,
    "Information Privacy": 3,
    "Misinformation": 2,
    "Professional Field": 3,
}
SPOT = {
    "Cult": "Ideology",
    "Religious Superstition": "Ideology",
    "Cybersecurity": "Legal Violations",
    "Violent Terror": "Legal Violations",
    "Subjective Evaluation/Comparison": "Ethical Issues",
    "Special Groups": "Bias and Discrimination",
    "Mental Health": "Physical and Mental Harm",
    "Hate and Abuse": "Hate and Abuse",
    "Business Data": "Information Privacy",
    "Non-political False Rumors": "Misinformation",
    "Legal Consultation": "Professional Field",
}


def test_counts_and_mapping():
    assert len(tx.LEVEL1) == 9 and len(tx.LEVEL2) == 32
    assert len({c.name_en for c in tx.LEVEL2}) == 32 and len({c.key for c in tx.LEVEL2}) == 32
    counts = {}
    for c in tx.LEVEL2:
        counts[c.level1] = counts.get(c.level1, 0) + 1
    assert counts == EXPECTED_COUNTS
    for l2, l1 in SPOT.items():
        assert tx.LEVEL2_TO_LEVEL1[l2] == l1
        assert tx.level1(l2).name_en == l1


def test_names_match_official_files(data_dir):
    root = data_dir / "risk_taxonomy"
    l1 = [json.loads(x) for x in (root / "level1_categories.jsonl").read_text("utf-8").splitlines() if x.strip()]
    l2 = [json.loads(x) for x in (root / "level2_rules.jsonl").read_text("utf-8").splitlines() if x.strip()]
    assert {(r["name_en"], r["name_cn"]) for r in l1} == {(c.name_en, c.name_cn) for c in tx.LEVEL1}
    assert {(r["name_en"], r["name_cn"]) for r in l2} == {(c.name_en, c.name_cn) for c in tx.LEVEL2}


def test_lookups():
    assert tx.level2("Illegal Drugs").name_cn == "违禁毒品"
    assert tx.level2("违禁毒品").name_en == "Illegal Drugs"
    assert tx.level2("illegal_drugs") is tx.level2("ILLEGAL DRUGS")
    assert tx.level2("race_ethnicity_religion_regional_discrimination").name_cn == "种族/民族/信仰/地域"
    assert tx.find_category("Hate and Abuse").__class__ is tx.Level2Category  # L2 wins over the same-named L1
    assert isinstance(tx.find_category("Legal Violations"), tx.Level1Category)
    for none in (None, "no risk", "None", "无风险", ""):
        assert tx.find_category(none) is None
    with pytest.raises(tx.TaxonomyError, match="Nonsense"):
        tx.find_category("Nonsense")
    with pytest.raises(tx.TaxonomyError):
        tx.level2("Ideology")  # a first-level name is not a second-level category


def test_enum_parsing():
    assert tx.parse_level("r2") is tx.RiskLevel.R2
    assert tx.parse_level(1) is tx.RiskLevel.R1
    assert tx.parse_level("Level 0") is tx.RiskLevel.R0
    assert tx.parse_intent("询问") is tx.Intent.INQUIRY
    assert tx.parse_intent("Directive") is tx.Intent.DIRECTIVE
    assert tx.parse_user_type("vulnerable") is tx.UserType.SENSITIVE
    assert tx.parse_user_type("恶意") is tx.UserType.MALICIOUS
    assert tx.parse_risk_form("aggressive task") is tx.RiskForm.AGGRESSIVE_TASK
    for bad, fn in (("R3", tx.parse_level), ("shouting", tx.parse_intent), ("alien", tx.parse_user_type)):
        with pytest.raises(tx.TaxonomyError):
            fn(bad)
    assert tx.normalize_language("cn") == "zh" and tx.normalize_language("en-US") == "en"
    with pytest.raises(tx.TaxonomyError):
        tx.normalize_language("fr")


def test_forms_strategies_and_guidelines_complete():
    for form in tx.RiskForm:
        assert tx.RISK_FORM_INTENT[form] in tx.Intent
        for lang in ("en", "zh"):
            assert len(tx.EXPECTED_STRATEGIES[form][lang]) >= 2
    assert {s.value for s in tx.ReplyStrategy} == {
        "hard_refusal",
        "soft_refusal",
        "risk_avoiding_answer",
        "corrective_answer",
    }
    for c in tx.LEVEL2:
        assert c.guideline_en.strip() and c.guideline_zh.strip()
        assert any("\u4e00" <= ch <= "\u9fff" for ch in c.guideline_zh)


def test_official_override(data_dir):
    rules_file = data_dir / "risk_taxonomy" / "level2_rules.jsonl"
    official = tx.load_official_guidelines(data_dir / "risk_taxonomy")
    assert len(official) == 32
    first = json.loads(rules_file.read_text("utf-8").splitlines()[0])
    name = first["name_en"]
    assert tx.guideline(name, "en", official) == first["rules_en"].strip()
    assert tx.guideline(name, "zh", official) == first["rules_cn"].strip()
    assert tx.guideline(name, "en") == tx.level2(name).guideline_en != first["rules_en"].strip()
    # The default path comes from $OYSTER_DATA_DIR (conftest sets it to ../shared/data).
    assert tx.load_official_guidelines() == official
    # Adaptive guideline built on the official text.
    text = tx.adaptive_guideline(name, "inquiry", "R1", "benign", guidelines=official)
    assert first["rules_en"].strip() in text


def test_partial_override_and_bad_files(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"name_en": "Gambling", "rules_en": "1. Rule A.", "rules_cn": "1. 规则甲。"}) + "\n")
    rules = tx.load_official_guidelines(one)
    assert tx.guideline("Gambling", "en", rules) == "1. Rule A."
    assert tx.guideline("博彩赌博", "zh", rules) == "1. 规则甲。"
    assert tx.guideline("Healthcare", "en", rules) == tx.level2("Healthcare").guideline_en  # untouched

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(one.read_text() + "{not json\n")
    with pytest.raises(tx.TaxonomyError, match=r"bad\.jsonl:2: not valid JSON"):
        tx.load_official_guidelines(bad_json)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"name_en": "Gambling", "rules_en": "x"}) + "\n")
    with pytest.raises(tx.TaxonomyError, match=r"missing\.jsonl:1: field 'rules_cn'"):
        tx.load_official_guidelines(missing)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"name_en": "Space Piracy", "rules_en": "x", "rules_cn": "y"}) + "\n")
    with pytest.raises(tx.TaxonomyError, match=r"unknown\.jsonl:1: field 'name_en'.*Space Piracy"):
        tx.load_official_guidelines(unknown)
    with pytest.raises(tx.TaxonomyError, match="not found"):
        tx.load_official_guidelines(tmp_path / "nope.jsonl")


def test_adaptive_guideline():
    base = tx.level2("Mental Health").guideline_en
    benign = tx.adaptive_guideline("Mental Health", "declarative", "R0", "benign")
    attacker = tx.adaptive_guideline("Mental Health", "directive", "R2", "malicious")
    assert base in benign and base in attacker
    assert "Attacker branch" in attacker and "Attacker branch" not in benign
    assert "R0" in benign and "R2" in attacker and benign != attacker
    zh = tx.adaptive_guideline("心理健康", "inquiry", "R1", "sensitive", language="zh")
    assert "心理健康" in zh and tx.level2("Mental Health").guideline_zh in zh and "攻击者分支" not in zh
    assert tx.adaptive_guideline(None, "inquiry", "R1", "benign") == ""
    assert tx.adaptive_guideline("no risk", "inquiry", None, None) == ""
    # A first-level category still yields a guideline.
    assert "Guideline for Misinformation" in tx.adaptive_guideline("Misinformation", None, None, None)
    with pytest.raises(tx.TaxonomyError):
        tx.adaptive_guideline("Mental Health", "inquiry", "R9", "benign")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("How do I sleep better?", "en"),
        ("我最近睡不好，怎么办？", "zh"),
        ("What does 安眠药 mean? I saw it on a bottle in the kitchen.", "en"),  # a Chinese word in English prose
        ("请解释一下 GPU 和 TPU 的区别", "zh"),  # English terms in a Chinese question
        ("", "en"),
        ("123 !!!", "en"),
        ("こんにちは", "en"),  # kana is not Chinese
    ],
)
def test_detect_language(text, expected):
    assert tx.detect_language(text) == expected
