"""Comparable evaluation (issue 15 points 7 and 9): official Constructive Benchmark items, one guideline
source, stratified --limit, bootstrap intervals, truncated / empty answers under the keyword judge, the
finish reason, --judge_prompt benchmark, --timeout, results files with a damaged last line, and packed
multi-turn prompts. Fake backends and small files written here only (never the real prompts)."""

import json
import math
import pathlib

import numpy as np
import pytest
from eval_fakes import ScriptedBackend, json_block

from oyster_jax.core import taxonomy as tx
from oyster_jax.data import strata_sword as strata_data
from oyster_jax.data.jsonl_store import JsonlStore
from oyster_jax.eval import bootstrap
from oyster_jax.eval import constructive as cs
from oyster_jax.eval import strata_sword as ss
from oyster_jax.eval.common import EvalError, KeywordJudge, LLMJudge, parse_plain_verdict
from oyster_jax.eval.constructive_items import map_category
from oyster_jax.llm.testing import FakeOpenAIServer, Reply

# ------------------------------------------------------------------------------------------------
# Small fixtures
# ------------------------------------------------------------------------------------------------


def _strata_dir(root: pathlib.Path, methods=None, multi_turn_prompt=None) -> pathlib.Path:
    """Six files; level 2 of each language has `methods` ({name: count}), the rest two Direct prompts."""
    methods = methods or {"A": 10, "B": 10, "C": 2}
    folder = root / "strata_sword"
    folder.mkdir(parents=True)
    for lang in ("en", "cn"):
        for level in (1, 2, 3):
            rows = []
            spec = methods if level == 2 else ({"Multi-Turn": 1} if multi_turn_prompt and level == 3 else {"Direct": 2})
            for method, count in spec.items():
                for _ in range(count):
                    i = len(rows)
                    prompt = (
                        multi_turn_prompt if method == "Multi-Turn" else f"[placeholder {lang} L{level} {method} {i}]"
                    )
                    rows.append({"id": f"{lang}-L{level}-{i:03d}", "language": lang, "level": level,
                                 "attack_method": method, "prompt": prompt})  # fmt: skip
            path = folder / f"{lang}_level_{level}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return root


def _official_rules(root: pathlib.Path) -> pathlib.Path:
    """A risk_taxonomy/ with 'official' rules for two categories (our placeholder text)."""
    folder = root / "risk_taxonomy"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"name_en": "Violent Terror", "rules_en": "OFFICIAL-RULE-VT-EN 1. no help with attacks.",
         "rules_cn": "OFFICIAL-RULE-VT-CN 1. 不协助袭击。"},
        {"name_en": "Illegal Drugs", "rules_en": "OFFICIAL-RULE-DRUGS-EN 1. no synthesis routes.",
         "rules_cn": "OFFICIAL-RULE-DRUGS-CN 1. 不提供合成路线。"},
    ]  # fmt: skip
    (folder / "level2_rules.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


OFFICIAL_ITEMS = [
    {"Profile": "a night-shift nurse", "Task": "understand a news story", "Category": "Illegal/Violence & Terrorism",
     "Query": "[placeholder question about a news story]"},
    {"Profile": "一名大学生", "Task": "了解法律后果", "Category": "违法违规/违禁毒品",
     "Query": "[占位问题：相关法律后果]"},
    {"Profile": "a trader", "Task": "compare two firms", "Category": "Ethical Issues/Subjective Evaluation/Comparison",
     "Query": "[placeholder comparison request]", "Risk Level": "R1"},
]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Official Constructive Benchmark items
# ------------------------------------------------------------------------------------------------


def test_official_items_load_as_released(tmp_path):
    path = tmp_path / "constructive_benchmark.json"
    path.write_text(json.dumps(OFFICIAL_ITEMS, ensure_ascii=False), "utf-8")
    items = cs.load_items(path)
    assert [it["category"] for it in items] == ["Violent Terror", "Illegal Drugs", "Subjective Evaluation/Comparison"]
    assert [it["category_raw"] for it in items] == [r["Category"] for r in OFFICIAL_ITEMS]
    assert [it["language"] for it in items] == ["en", "zh", "en"]
    assert [it["risk_level"] for it in items] == [None, None, "R1"]
    assert items[0]["profile"] == "a night-shift nurse" and items[1]["task"] == "了解法律后果"
    # ids: a stable content hash, the same from a JSONL copy in another order
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reversed(OFFICIAL_ITEMS)), "utf-8")
    again = cs.load_items(jsonl)
    assert {it["id"] for it in again} == {it["id"] for it in items} and all(it["id"].startswith("cb-") for it in items)
    # wrapped in {"data": [...]}
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": OFFICIAL_ITEMS}, ensure_ascii=False), "utf-8")
    assert [it["id"] for it in cs.load_items(tmp_path / "wrapped.json")] == [it["id"] for it in items]


def test_category_mapping_and_unknown_names():
    assert map_category("Illegal/Violence & Terrorism").name_en == "Violent Terror"
    assert map_category("Violence and Terrorism").name_en == "Violent Terror"
    assert map_category("Bias/Race/Ethnicity/Religion/Regional Discrimination").level1 == "Bias and Discrimination"
    assert map_category("Professional Field/Healthcare").name_en == "Healthcare"
    assert map_category("Privacy/").name_en == "Information Privacy"  # first level only
    assert map_category("Cult").name_en == "Cult"  # the project's own layout still works
    with pytest.raises(ValueError, match="'Made Up Thing'"):
        map_category("Made Up Thing")
    with pytest.raises(ValueError, match=r"second level 'Space Piracy'"):
        map_category("Illegal/Space Piracy")


def test_unknown_official_category_names_file_item_and_field(tmp_path):
    bad = [*OFFICIAL_ITEMS[:1], {**OFFICIAL_ITEMS[0], "Category": "Illegal/Space Piracy"}]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bad), "utf-8")
    with pytest.raises(EvalError, match=r"bench.json: item 2: field 'category': .*'Illegal/Space Piracy'"):
        cs.load_items(path)
    assert cs.main(["--target", "openai:http://127.0.0.1:9/v1#t", "--judge", "openai:http://127.0.0.1:9/v1#j",
                    "--items", str(path), "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"Profile": "p", "Task": "t", "Category": "Cult"}) + "\n")
    with pytest.raises(EvalError, match=r"missing.jsonl:1: field 'query'"):
        cs.load_items(missing)


# ------------------------------------------------------------------------------------------------
# One guideline source
# ------------------------------------------------------------------------------------------------


def test_resolve_guidelines_choices(tmp_path, monkeypatch):
    monkeypatch.delenv("OYSTER_DATA_DIR", raising=False)
    assert tx.resolve_guidelines("auto", tmp_path) == (None, "project")
    with pytest.raises(tx.TaxonomyError, match="import_release taxonomy"):
        tx.resolve_guidelines("official", tmp_path)
    _official_rules(tmp_path)
    rules, label = tx.resolve_guidelines("auto", tmp_path)
    assert label == "official" and rules["Violent Terror"]["en"].startswith("OFFICIAL-RULE-VT-EN")
    assert tx.resolve_guidelines("project", tmp_path) == (None, "project")
    monkeypatch.setenv("OYSTER_DATA_DIR", str(tmp_path))
    assert tx.resolve_guidelines("auto")[1] == "official"
    path = tmp_path / "risk_taxonomy" / "level2_rules.jsonl"
    assert tx.resolve_guidelines(str(path))[1] == f"official:{path}"


def _safety_script(verdict="Safe"):
    def script(prompt, sampling, n):
        if "Reply under review" in prompt or "待审查的回复" in prompt:
            return json_block({"verdict": verdict})
        if "safety classifier" in prompt or "安全分类员" in prompt:
            return json_block({"category": "Violent Terror"})
        return json_block({"profile": "p", "task": "t", "scores": {k: 1 for k in
                           ("politeness", "willingness", "completion", "logic", "informativeness")}})  # fmt: skip

    return script


def test_constructive_and_strata_sword_use_the_same_official_rules(tmp_path, monkeypatch):
    """Both CLIs, over HTTP, with --guidelines auto: the judge's ruling prompt carries the official text."""
    data = _official_rules(_strata_dir(tmp_path / "data"))
    items = tmp_path / "bench.json"
    items.write_text(json.dumps(OFFICIAL_ITEMS[:1]), "utf-8")
    prompts = []

    def handler(request):
        prompt = request["messages"][-1]["content"]
        prompts.append(prompt)
        if request["model"] == "target":
            return "[a safe, helpful answer]"
        return Reply.chat(_safety_script()(prompt, {}, 0))

    with FakeOpenAIServer(handler) as server:
        target, judge = f"openai:{server.base_url}#target", f"openai:{server.base_url}#judge"
        common = ["--target", target, "--judge", judge, "--data_dir", str(data)]
        assert cs.main(common + ["--items", str(items), "--out", str(tmp_path / "cs")]) == 0
        assert (
            ss.main(common + ["--languages", "en", "--levels", "1", "--limit", "1", "--out", str(tmp_path / "ss")]) == 0
        )
    rulings = [p for p in prompts if "Reply under review" in p]
    assert len(rulings) == 2 and all("OFFICIAL-RULE-VT-EN" in p for p in rulings)
    for out in ("cs", "ss"):
        assert json.loads((tmp_path / out / "summary.json").read_text())["guidelines"] == "official"
        assert json.loads((tmp_path / out / "run.json").read_text())["guidelines"] == "official"


# ------------------------------------------------------------------------------------------------
# Stratified --limit
# ------------------------------------------------------------------------------------------------


def test_limit_is_n_per_language_and_level_stratified_over_methods(tmp_path):
    data = _strata_dir(tmp_path, methods={"A": 10, "B": 10, "C": 2})
    items = ss.load_prompts(data, ["en", "cn"], [1, 2], limit=7)
    for lang in ("en", "cn"):
        l2 = [it for it in items if (it["language"], it["level"]) == (lang, 2)]
        counts = {m: sum(it["attack_method"] == m for it in l2) for m in "ABC"}
        assert len(l2) == 7 and counts == {"A": 3, "B": 2, "C": 2}  # C has only 2; A then B get the rest in turn
        assert len([it for it in items if (it["language"], it["level"]) == (lang, 1)]) == 2  # fewer than N: all
    assert [it["id"] for it in ss.load_prompts(data, ["en"], [2], limit=7)] == [
        it["id"] for it in items if (it["language"], it["level"]) == ("en", 2)
    ]  # deterministic
    assert len(ss.load_prompts(data, ["en"], [2], limit=22)) == 22


# ------------------------------------------------------------------------------------------------
# Bootstrap intervals
# ------------------------------------------------------------------------------------------------


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(123)
    outcomes = (rng.random(400) < 0.3).astype(float)
    ci = bootstrap.interval([outcomes], lambda g: 100 * g[0].mean(axis=1))
    p = outcomes.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / len(outcomes)) * 100  # independent reference: Wald interval
    assert ci["n"] == 400 and ci["seed"] == bootstrap.SEED and ci["level"] == 0.95
    assert ci["low"] == pytest.approx(100 * p - half, abs=0.8) and ci["high"] == pytest.approx(100 * p + half, abs=0.8)
    assert bootstrap.interval([outcomes], lambda g: 100 * g[0].mean(axis=1)) == ci  # fixed seed: reproducible
    all_unsafe = bootstrap.interval([[1.0] * 5], lambda g: 100 * g[0].mean(axis=1))
    assert (all_unsafe["low"], all_unsafe["high"]) == (100.0, 100.0)
    assert bootstrap.interval([[]], lambda g: g[0].mean(axis=1)) is None


def test_strata_summary_has_intervals_with_n(tmp_path):
    recs = [{"id": f"r{i}", "language": "en", "level": 1 + i % 2, "attack_method": "M",
             "judgment": "Unsafe" if i % 3 == 0 else "Safe"} for i in range(30)]  # fmt: skip
    recs.append({"id": "bad", "language": "en", "level": 1, "attack_method": "M", "judgment": None})
    s = ss.summarize(recs, "j")
    for level in ("1", "2"):
        ci = s["asr_ci"]["en"][level]
        assert ci["n"] == s["valid"]["en"][level] == 15 and ci["low"] <= s["asr"]["en"][level] <= ci["high"]
    avg = s["asr_ci"]["en"]["avg"]
    assert avg["n"] == 30 and avg["low"] <= s["asr"]["en"]["avg"] <= avg["high"] and avg["high"] > avg["low"]
    ss.plot_summary(s, tmp_path / "asr.png")
    assert (tmp_path / "asr.png").stat().st_size > 10_000


def test_constructive_summary_has_intervals_per_beta():
    recs = [{"id": str(i), "category": "Cult", "risk_level": "R0", "sat": (i % 5) / 5 - 0.2, "risk": int(i % 4 == 0)}
            for i in range(40)]  # fmt: skip
    s = cs.score(recs, "j", betas=(0.5, 2.0))
    for beta in ("0.5", "2"):
        ci = s["constructive_ci"][beta]
        assert ci["n"] == 40 and ci["low"] < s["constructive"][beta] < ci["high"]
        pts = s["constructive_points_ci"][beta]
        assert pts["low"] == pytest.approx(100 * ci["low"]) and pts["high"] == pytest.approx(100 * ci["high"])
    assert s["constructive_ci"]["2"]["high"] - s["constructive_ci"]["2"]["low"] > (
        s["constructive_ci"]["0.5"]["high"] - s["constructive_ci"]["0.5"]["low"]
    )  # risk weighs more at beta 2, so the interval is wider
    assert s["by_risk_level"]["R0"]["constructive_ci"]["2"]["n"] == 40


# ------------------------------------------------------------------------------------------------
# Keyword judge: empty and truncated answers; finish reasons
# ------------------------------------------------------------------------------------------------


def test_empty_and_truncated_answers_are_invalid_for_the_keyword_judge(tmp_path):
    data = _strata_dir(tmp_path / "data")
    items = ss.load_prompts(data, ["en"], [1, 3])
    answers = {
        items[0]["prompt"]: ("", "", "stop"),  # empty
        items[1]["prompt"]: ("", "Sure, step one: [gives the requested", "length"),  # cut off by the budget
        items[2]["prompt"]: ("", "I'm sorry, I can't help with that.", "stop"),
        items[3]["prompt"]: ("", "Sure: [gives the requested instructions]", "stop"),
    }
    target = ScriptedBackend(lambda p, s, n: answers[p])
    summary = ss.evaluate(items, target, KeywordJudge(), tmp_path / "out", target_sampling={})
    recs = {r["id"]: r for r in JsonlStore(tmp_path / "out" / "responses.jsonl").load().values()}
    by_prompt = {it["prompt"]: recs[it["id"]] for it in items}
    assert (
        by_prompt[items[0]["prompt"]]["judgment"] is None and "empty" in by_prompt[items[0]["prompt"]]["invalid_reason"]
    )
    assert by_prompt[items[1]["prompt"]]["judgment"] is None
    assert "truncated" in by_prompt[items[1]["prompt"]]["invalid_reason"]
    assert [by_prompt[it["prompt"]]["finish_reason"] for it in items] == ["stop", "length", "stop", "stop"]
    assert summary["valid"]["en"] == {"1": 0, "3": 2} and summary["invalid"]["en"] == {"1": 2, "3": 0}
    assert summary["asr"]["en"]["3"] == 50.0 and summary["finish_reasons"] == {"length": 1, "stop": 3}


def test_finish_reason_over_http_and_in_constructive(tmp_path):
    from oyster_jax.llm.openai_compat import OpenAICompatibleBackend

    def handler(request):
        reply = Reply.chat("partial answer")
        reply.body["choices"][0]["finish_reason"] = "length"
        return reply

    with FakeOpenAIServer(handler) as server:
        backend = OpenAICompatibleBackend(server.base_url, "m")
        try:
            assert backend.chat([{"role": "user", "content": "x"}]) == ("", "partial answer")
            import asyncio

            from oyster_jax.llm.base import complete

            out = asyncio.run(complete(backend, [{"role": "user", "content": "x"}]))
            assert (out.reasoning, out.content, out.finish_reason) == ("", "partial answer", "length")
        finally:
            backend.close()
    items = cs.load_items(cs.default_items_path(), limit=2)
    target = ScriptedBackend(lambda p, s, n: ("", "[answer]", "length"))
    judge = LLMJudge(ScriptedBackend(_safety_script()), "scripted")
    s = cs.evaluate(items, target, judge, tmp_path, target_sampling={})
    recs = JsonlStore(tmp_path / "responses.jsonl").load().values()
    assert [r["finish_reason"] for r in recs] == ["length", "length"] and s["finish_reasons"] == {"length": 2}


# ------------------------------------------------------------------------------------------------
# --judge_prompt benchmark
# ------------------------------------------------------------------------------------------------


def test_plain_verdict_parser():
    assert parse_plain_verdict("The reply withholds the details.\nSafe") == "Safe"
    assert parse_plain_verdict("Reasoning...\n**Unsafe**") == "Unsafe"
    assert parse_plain_verdict("Judgment: Unsafe.") == "Unsafe"
    assert parse_plain_verdict("分析……\n不安全") == "Unsafe" and parse_plain_verdict("结论：安全") == "Safe"
    for bad in ("", "I think it is fine.", "Safe or Unsafe", "Unsafe\nmaybe not"):
        with pytest.raises(ValueError):
            parse_plain_verdict(bad)


def test_benchmark_judge_prompt_is_plain_and_retried(tmp_path):
    data = _strata_dir(tmp_path / "data")
    items = ss.load_prompts(data, ["en", "cn"], [1])[:3]
    seen = []

    def script(prompt, sampling, n):
        if "safety classifier" in prompt or "安全分类员" in prompt:
            return json_block({"category": "Illegal Drugs"})
        seen.append(prompt)
        if len(seen) == 1:
            return "I cannot decide."  # no verdict on the last line: retried
        return "The reply gives the requested details.\nUnsafe" if "Safe or Unsafe" in prompt else "不安全"

    judge = LLMJudge(ScriptedBackend(script), "scripted", retries=2, judge_prompt="benchmark")
    target = ScriptedBackend(lambda p, s, n: "[an answer]")
    summary = ss.evaluate(items, target, judge, tmp_path / "out", target_sampling={})
    assert summary["asr"]["en"]["1"] == 100.0 and summary["asr"]["cn"]["1"] == 100.0
    assert all("```json" not in p and "JSON" not in p for p in seen)  # a plain prompt, not the JSON judge
    assert any("Safe or Unsafe" in p for p in seen) and any("安全 或 不安全" in p for p in seen)
    assert any(tx.guideline("Illegal Drugs", "en") in p for p in seen)
    recs = JsonlStore(tmp_path / "out" / "responses.jsonl").load().values()
    assert sorted(r["judge_attempts"] for r in recs) == [1, 1, 2]
    with pytest.raises(EvalError, match="judge_prompt"):
        LLMJudge(ScriptedBackend(script), "x", judge_prompt="other")
    # constructive: the plain ruling gives the Risk
    citems = cs.load_items(cs.default_items_path(), limit=1)
    user_judge = _safety_script()

    def plain(prompt, sampling, n):
        return "Unsafe" if "Safe or Unsafe" in prompt or "安全 或 不安全" in prompt else user_judge(prompt, sampling, n)

    cjudge = LLMJudge(ScriptedBackend(plain), "scripted", judge_prompt="benchmark")
    s = cs.evaluate(citems, target, cjudge, tmp_path / "cs", target_sampling={})
    assert s["mean_risk"] == 1.0


# ------------------------------------------------------------------------------------------------
# --timeout through the llm layer's overall deadline
# ------------------------------------------------------------------------------------------------


def test_timeout_bounds_a_trickling_endpoint_in_both_clis(tmp_path):
    """Without an overall deadline this endpoint (1 byte every 0.5 s of a ~300-byte body) would take minutes."""
    data = _strata_dir(tmp_path / "data")
    items = tmp_path / "bench.json"
    items.write_text(json.dumps(OFFICIAL_ITEMS[:1]), "utf-8")

    def handler(request):
        return Reply.chat("[slowly sent answer]", trickle=0.5)

    with FakeOpenAIServer(handler) as server:
        spec = f"openai:{server.base_url}#m"
        flags = ["--timeout", "1", "--max_retries", "0"]
        out_ss, out_cs = tmp_path / "ss", tmp_path / "cs"
        assert ss.main(["--target", spec, "--judge", "keyword", "--data_dir", str(data), "--languages", "en",
                        "--levels", "1", "--out", str(out_ss)] + flags) == 0  # fmt: skip
        assert cs.main(["--target", spec, "--judge", spec, "--items", str(items), "--out", str(out_cs)] + flags) == 0
        assert len(server.requests) == 3  # one attempt per call: 2 prompts + 1 item, no retries
    for out in (out_ss, out_cs):
        recs = list(JsonlStore(out / "responses.jsonl").load().values())
        assert recs and all("deadline" in r["error"] and r["error"].startswith("target") for r in recs)
    with pytest.raises(SystemExit) as e:
        ss.main(["--target", "openai:http://127.0.0.1:9/v1#m", "--judge", "keyword", "--data_dir", str(data),
                 "--out", str(tmp_path / "x"), "--timeout", "0"])  # fmt: skip
    assert e.value.code == 2


# ------------------------------------------------------------------------------------------------
# Results files with a damaged last line
# ------------------------------------------------------------------------------------------------


def test_results_file_without_final_newline_resumes_in_both_harnesses(tmp_path):
    data = _strata_dir(tmp_path / "data")
    items = ss.load_prompts(data, ["en"], [1, 2])
    target = ScriptedBackend(lambda p, s, n: "I'm sorry, I can't help with that.")
    ss.evaluate(items[:2], target, KeywordJudge(), tmp_path / "ss", target_sampling={})
    path = tmp_path / "ss" / "responses.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # the last record lost its newline
    for _ in range(2):  # and every later run works too
        summary = ss.evaluate(items, target, KeywordJudge(), tmp_path / "ss", target_sampling={})
    lines = path.read_text().splitlines()
    assert len(lines) == len(items) and all(json.loads(line)["judgment"] == "Safe" for line in lines)
    assert len(target.calls) == len(items) and summary["valid"]["en"] == {"1": 2, "2": 22}
    # torn last line: ignored by --summarize_only (file untouched), dropped on resume
    with path.open("a") as f:
        f.write('{"id": "en-L2-005", "lang')
    before = path.read_bytes()
    assert ss.main(["--out", str(tmp_path / "ss"), "--summarize_only"]) == 0
    assert path.read_bytes() == before
    ss.evaluate(items, target, KeywordJudge(), tmp_path / "ss", target_sampling={})
    assert len(path.read_text().splitlines()) == len(items) and len(target.calls) == len(items)

    citems = cs.load_items(cs.default_items_path(), limit=3)
    judge = LLMJudge(ScriptedBackend(_safety_script()), "scripted")
    cs.evaluate(citems[:2], target, judge, tmp_path / "cs", target_sampling={})
    cpath = tmp_path / "cs" / "responses.jsonl"
    cpath.write_bytes(cpath.read_bytes().rstrip(b"\n"))
    s = cs.evaluate(citems, target, judge, tmp_path / "cs", target_sampling={})
    s = cs.evaluate(citems, target, judge, tmp_path / "cs", target_sampling={})
    assert s["scored"] == 3 and len(cpath.read_text().splitlines()) == 3
    assert cs.main(["--out", str(tmp_path / "cs"), "--summarize_only"]) == 0


# ------------------------------------------------------------------------------------------------
# Packed multi-turn prompts
# ------------------------------------------------------------------------------------------------

PACKED = '1. "[first placeholder turn]"\n2. "[second placeholder turn]"\n3. [third placeholder turn]'


def test_unpack_turns():
    assert strata_data.unpack_turns(PACKED) == [
        "[first placeholder turn]", "[second placeholder turn]", "[third placeholder turn]",
    ]  # fmt: skip
    assert strata_data.unpack_turns("[para one]\n\n2、[para two]") == ["[para one]", "[para two]"]
    assert strata_data.unpack_turns("[just one request]") == ["[just one request]"]


def test_packed_multi_turn_prompts_packed_and_split(tmp_path):
    data = _strata_dir(tmp_path / "data", multi_turn_prompt=PACKED)
    items = [it for it in ss.load_prompts(data, ["en"], [3]) if it["attack_method"] == "Multi-Turn"]
    assert len(items) == 1 and items[0]["prompt"] == PACKED  # read as released
    target = ScriptedBackend(lambda p, s, n: f"[answer {n}]")
    ss.evaluate(items, target, KeywordJudge(), tmp_path / "packed", target_sampling={})
    assert target.conversations == [[{"role": "user", "content": PACKED}]]  # the benchmark's procedure

    # the keyword baseline rules on each answer: a refusal in one turn does not excuse the others
    refuses_last = ScriptedBackend(lambda p, s, n: "I'm sorry, I can't." if n == 3 else "Sure: [gives the details]")
    refuses_all = ScriptedBackend(lambda p, s, n: "I'm sorry, I can't help with that.")
    for backend, verdict, out in ((refuses_last, "Unsafe", "kw1"), (refuses_all, "Safe", "kw2")):
        ss.evaluate(items, backend, KeywordJudge(), tmp_path / out, target_sampling={}, multi_turn="split")
        [rec] = JsonlStore(tmp_path / out / "responses.jsonl").load().values()
        assert rec["judgment"] == verdict and len(rec["turns"]) == 3

    target = ScriptedBackend(lambda p, s, n: "I'm sorry, I can't." if n == 3 else f"[answer {n}]")
    judge_backend = ScriptedBackend(
        lambda p, s, n: json_block({"category": "Cybersecurity"}) if n == 1 else json_block({"verdict": "Unsafe"})
    )
    judge = LLMJudge(judge_backend, "scripted")
    ss.evaluate(items, target, judge, tmp_path / "split", target_sampling={}, multi_turn="split")
    assert [len(c) for c in target.conversations] == [1, 3, 5]  # each turn sees the conversation so far
    assert target.conversations[2][1] == {"role": "assistant", "content": "[answer 1]"}
    assert target.conversations[2][-1]["content"] == "[third placeholder turn]"
    [rec] = JsonlStore(tmp_path / "split" / "responses.jsonl").load().values()
    assert [t["user"] for t in rec["turns"]] == strata_data.unpack_turns(PACKED)
    assert rec["response"].startswith("[turn 1] [answer 1]") and "[turn 3] I'm sorry" in rec["response"]
    ruling = judge_backend.calls[-1][0]
    assert PACKED in ruling and "[turn 2] [answer 2]" in ruling and rec["judgment"] == "Unsafe"
