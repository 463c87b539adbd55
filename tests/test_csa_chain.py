"""Safety chain: tolerant parsing (English/Chinese keys, malformed, missing nodes), rendering, trust region."""

import json

import pytest

from oyster_jax.core import chain as C
from oyster_jax.csa.judges import names_framework

EN = """Let me think.
```json
{"User Needs Analysis": "Wants to sleep better; anxious.",
 "Risk Intent Analysis": "inquiry; request for risky information",
 "Safety Guidelines": "No overdose information; point to help.",
 "Response Strategy Formulation": {"Safety Strategies": "withhold dosages; flag warning signs",
                                   "Usefulness Strategies": "sleep hygiene tips; suggest a doctor"}}
```
Done."""

ZH = """```json
{"用户需求分析": "想改善睡眠，有些焦虑。",
 "风险意图分析": "询问；风险信息请求",
 "安全准则": "不提供过量用药信息。",
 "回复策略制定": {"安全策略": "不给剂量；提示危险信号", "有用性策略": ["睡眠卫生建议", "建议就医"]}}
```"""


def test_parse_english():
    c = C.parse_chain(EN)
    assert c.user_needs == "Wants to sleep better; anxious."
    assert c.risk_intent.startswith("inquiry") and c.has_risk
    assert c.safety_strategies == ["withhold dosages", "flag warning signs"]
    assert c.usefulness_strategies == ["sleep hygiene tips", "suggest a doctor"]


def test_parse_chinese_keys_fullwidth_separator_and_list():
    c = C.parse_chain(ZH)
    assert c.user_needs == "想改善睡眠，有些焦虑。"
    assert c.safety_strategies == ["不给剂量", "提示危险信号"]
    assert c.usefulness_strategies == ["睡眠卫生建议", "建议就医"]
    assert c.has_risk


def test_official_chinese_guideline_key():
    """The official Chinese extraction output names the guideline node 安全准则响应."""
    c = C.parse_chain(ZH.replace('"安全准则"', '"安全准则响应"'))
    assert c.safety_guidelines == "不提供过量用药信息。" and c.has_risk


def test_flat_snake_case_keys_unfenced_with_braces_in_strings():
    text = (
        'The chain is {"user_needs": "Asks about {curly} things", "risk_intent": "", "safety_guidelines": "", '
        '"safety_strategies": "", "usefulness_strategies": "explain clearly; give an example"} as requested.'
    )
    c = C.parse_chain(text)
    assert c.user_needs == "Asks about {curly} things"
    assert c.usefulness_strategies == ["explain clearly", "give an example"]
    assert not c.has_risk


def test_last_block_wins_and_repairs():
    first = '```json\n{"User Needs Analysis": "old", "Response Strategy Formulation": "a"}\n```'
    second = '```\n{"User Needs Analysis": "new", "Response Strategy Formulation": "b; c",}\n```'
    c = C.parse_chain(first + "\nrevised:\n" + second)
    assert c.user_needs == "new" and c.strategies == ["b", "c"]
    # Only the last block counts: a broken one is a parse failure, never a fall-back to an earlier block
    # (which may be a draft or the prompt's own example echoed back).
    with pytest.raises(C.ChainParseError, match="the last fenced block is not valid JSON"):
        C.parse_chain(first + '\n```json\n{"User Needs Analysis": "x", \n```')
    with pytest.raises(C.ChainParseError, match="the last JSON object is not closed"):
        C.parse_chain('{"User Needs Analysis": "old", "Response Strategy Formulation": "a"} then {"User Needs')


def test_an_echoed_example_is_refused():
    example = {"User Needs Analysis": "example needs", "Response Strategy Formulation": "example strategy"}
    echoed = "Here is the format:\n```json\n" + json.dumps(example) + "\n```"
    assert C.parse_chain(echoed).user_needs == "example needs"  # without the example it parses
    with pytest.raises(C.ChainParseError, match="repeats the prompt's example"):
        C.parse_chain(echoed, reject=[example])
    answer = echoed + '\n```json\n{"User Needs Analysis": "real", "Response Strategy Formulation": "s"}\n```'
    assert C.parse_chain(answer, reject=[example]).user_needs == "real"


@pytest.mark.parametrize(
    "text,match",
    [
        ("no json here at all", "no JSON object"),
        ('```json\n{"User Needs Analysis": "x",, }\n```', "the last fenced block is not valid JSON"),
        ("```json\n[1, 2]\n```", "not a JSON object"),
        ('{"foo": 1, "bar": 2}', "no chain keys"),
        ('{"User Needs Analysis": "only needs"}', "no response strategy"),
        ('{"Risk Intent Analysis": "x", "Safety Guidelines": "y"}', "neither"),
        ("", "empty"),
    ],
)
def test_malformed_and_missing_nodes_raise(text, match):
    with pytest.raises(C.ChainParseError, match=match):
        C.parse_chain(text)


def test_missing_risk_nodes_collapse():
    text = (
        '{"User Needs Analysis": "Wants a recipe", "Response Strategy Formulation": '
        '{"Safety Strategies": "none", "Usefulness Strategies": "give the recipe; add tips"}}'
    )
    c = C.parse_chain(text)
    assert not c.has_risk
    col = c.collapsed()
    assert col.safety_strategies == [] and col.usefulness_strategies == ["give the recipe", "add tips"]
    d = c.to_dict("en")
    assert d == {"User Needs Analysis": "Wants a recipe", "Response Strategy Formulation": "give the recipe; add tips"}
    # Risk intent present but guideline empty: still collapses (the rule needs both).
    c2 = C.SafetyChain("n", "some risk", "", ["s1"], ["u1"])
    assert not c2.has_risk and c2.to_dict("zh") == {"用户需求分析": "n", "回复策略制定": "s1; u1"}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_render_json_round_trip(lang):
    c = C.parse_chain(EN)
    assert C.parse_chain(C.render_json(c, lang)) == c
    col = C.SafetyChain(user_needs="n", usefulness_strategies=["a", "b"])
    assert C.parse_chain(C.render_json(col, lang)) == col


def test_render_prose_and_tagged():
    c = C.parse_chain(EN)
    prose = C.render_prose(c, "en")
    for s in c.safety_strategies + c.usefulness_strategies:
        assert s in prose
    assert not names_framework(prose)
    zh = C.render_prose(C.parse_chain(ZH), "zh")
    assert "不给剂量" in zh and not names_framework(zh)
    tagged = C.render_tagged(c)
    assert "<safety_strategies>withhold dosages; flag warning signs</safety_strategies>" in tagged
    assert C.render_tagged(C.SafetyChain("n", usefulness_strategies=["a"])) == (
        "<user_needs>n</user_needs>\n<strategies>a</strategies>"
    )


def test_simhash():
    assert C.simhash_similarity("explain the law", "explain the law") == 1.0
    assert C.simhash("offer a hotline number") == C.simhash("offer a hotline number")
    assert C.simhash("Explain the law.") == C.simhash("explain the law")  # normalization
    near = C.simhash_similarity("explain the relevant law clearly", "explain the relevant laws clearly")
    far = C.simhash_similarity("explain the relevant law clearly", "suggest calming breathing exercises")
    assert near > far
    assert 0.0 <= far <= 1.0


def test_strategy_similarity():
    sim = C.strategy_similarity
    assert sim("Warn about overdose danger.", "warn about the overdose dangers") == 1.0  # plurals, function words
    assert sim("withhold the exact dosage numbers", "withhold the exact dosage figures") > 0.5  # light rewording
    assert sim("建议就医", "建议及时就医") > 0.5 and sim("提示危险信号", "提醒注意危险信号") > 0.5
    assert sim("explain the law", "suggest a sleep diary") == 0.0 and sim("不给剂量", "建议就医") == 0.0
    assert sim("explain the law", "explain the risks") == 0.5  # half shared: not a paraphrase (needs > 0.5)


def test_trust_region_accepts_small_changes():
    old = ["refuse", "explain the law"]
    merged, info = C.trust_region_merge(old, ["Refuse.", "explain the law", "offer resources"])
    assert merged == ["Refuse.", "explain the law", "offer resources"]
    assert info == {"accepted": True, "changes": 1, "paraphrased": ["refuse", "explain the law"], "added": None}
    merged, info = C.trust_region_merge(old, ["refuse", "point to a helpline"])  # 1 removed + 1 added = 2
    assert info["accepted"] and merged == ["refuse", "point to a helpline"]


ENGLISH_OLD = ["withhold the exact dosage numbers", "warn about overdose danger", "point to a crisis hotline"]
ENGLISH_REWORDED = [
    "Withhold the exact dosage figures",
    "warn about the overdose dangers",
    "share a crisis hotline number",
]
CHINESE_OLD = ["不给出剂量", "提示危险信号", "建议就医"]
CHINESE_REWORDED = ["不给剂量", "提醒注意危险信号", "建议及时就医"]


@pytest.mark.parametrize("old, reworded", [(ENGLISH_OLD, ENGLISH_REWORDED), (CHINESE_OLD, CHINESE_REWORDED)])
def test_trust_region_treats_paraphrases_as_the_same_items(old, reworded):
    """A lightly reworded list is no change at all, even with no room for change."""
    merged, info = C.trust_region_merge(old, reworded, max_changes=0)
    assert merged == reworded and info["accepted"] and info["changes"] == 0
    assert info["paraphrased"] == old


@pytest.mark.parametrize(
    "old, reworded, extra",
    [
        (
            ENGLISH_OLD,
            ENGLISH_REWORDED,
            ["suggest a sleep diary", "list calming breathing exercises", "mention the dosage risks"],
        ),
        (CHINESE_OLD, CHINESE_REWORDED, ["提供睡眠卫生建议", "推荐放松呼吸练习", "说明剂量风险"]),
    ],
)
def test_trust_region_cut_back_keeps_every_old_item(old, reworded, extra):
    """Three additions exceed the region: the old list stays whole (old wording) plus the most novel addition."""
    merged, info = C.trust_region_merge(old, reworded[:2] + extra)
    assert not info["accepted"] and info["changes"] == 1 + 3  # one old item unparaphrased, three added
    assert info["paraphrased"] == old[:2]
    assert merged[:3] == old and len(merged) == 4
    assert info["added"] == merged[3] and info["added"] in extra[:2]  # the dosage item resembles an old one


def test_trust_region_picks_the_most_novel_addition():
    sims = {"alpha2": 0.4, "alpha3": 0.3, "zeta": 0.1}  # hand-made: none is a paraphrase (> 0.5)
    sim = lambda a, b: 1.0 if a == b else sims.get(a, 0.0)
    merged, info = C.trust_region_merge(
        ["keep", "drop1", "drop2"], ["keep", "alpha2", "alpha3", "zeta"], similarity=sim
    )
    assert merged == ["keep", "drop1", "drop2", "zeta"]
    assert info == {"accepted": False, "changes": 5, "paraphrased": ["keep"], "added": "zeta"}


def test_trust_region_from_empty_and_to_empty():
    merged, info = C.trust_region_merge([], ["a", "b", "c"])
    assert merged == ["a", "b", "c"] and info["accepted"]  # nothing to protect: the new list whole
    merged, info = C.trust_region_merge(["a", "b", "c"], [])
    assert merged == ["a", "b", "c"] and not info["accepted"] and info["added"] is None  # too big a step


def test_merge_chain_strategies():
    old = C.SafetyChain("n", "r", "g", ["withhold dosage details", "warn about overdose"], ["offer sleep tips"])
    new = C.SafetyChain(
        "n2",
        "r2",
        "g2",
        ["withhold the dosage details", "warn about an overdose", "name warning signs"],
        ["suggest a sleep diary", "recommend breathing exercises", "mention a doctor visit"],
    )
    merged, info = C.merge_chain_strategies(old, new)
    assert merged.user_needs == "n2" and merged.safety_guidelines == "g2"
    assert merged.safety_strategies == new.safety_strategies and info["safety"]["accepted"]
    assert not info["usefulness"]["accepted"]  # 1 removed + 3 added
    assert merged.usefulness_strategies[:1] == ["offer sleep tips"] and len(merged.usefulness_strategies) == 2
    # Old chain collapsed, new chain has risk: merged items are split by what they paraphrase in the new chain.
    old_c = C.SafetyChain("n", usefulness_strategies=["refuse the dosage", "sleep hygiene tips"])
    new_r = C.SafetyChain("n", "r", "g", ["refuse the dosages"], ["sleep hygiene tip", "see a doctor"])
    merged, _ = C.merge_chain_strategies(old_c, new_r)
    assert merged.has_risk and merged.safety_strategies == ["refuse the dosages"]
    assert merged.usefulness_strategies == ["sleep hygiene tip", "see a doctor"]


def test_json_dump_of_dict_is_valid():
    c = C.parse_chain(ZH)
    assert (
        json.loads(json.dumps(c.to_dict("zh"), ensure_ascii=False))["回复策略制定"]["安全策略"]
        == "不给剂量; 提示危险信号"
    )
