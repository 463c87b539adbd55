"""The one judge client (Lingo-BP and both evaluation harnesses): parse retries, their sampling, give-up."""

import asyncio

import pytest
from eval_fakes import ScriptedBackend, json_block

from oyster_jax.core.chain import ChainParseError
from oyster_jax.csa.judge_client import JudgeClient, JudgeFailed, content_parser, retry_sampling
from oyster_jax.csa.judges import JudgeParseError, parse_safety_judgment
from oyster_jax.eval.common import LLMJudge
from oyster_jax.llm.base import BackendError

MSG = [{"role": "user", "content": "judge this"}]
GREEDY = {"temperature": 0.0, "max_tokens": 64}


def test_retry_sampling_rule():
    assert retry_sampling(GREEDY, 0) == GREEDY
    assert retry_sampling(GREEDY, 1) == {"temperature": 0.7, "max_tokens": 64, "seed": 1}
    assert retry_sampling(GREEDY, 3) == {"temperature": 0.7, "max_tokens": 64, "seed": 3}
    assert retry_sampling({**GREEDY, "seed": 10}, 2)["seed"] == 12  # a caller's seed moves on, never repeats
    assert retry_sampling(GREEDY, 2, {"temperature": 1.0}) == {"temperature": 1.0, "max_tokens": 64, "seed": 2}
    assert retry_sampling(GREEDY, 1, {}) == {**GREEDY, "seed": 1}


def test_unparseable_answers_are_asked_again_until_one_parses():
    answers = iter(["no json", '```json\n{"verdict": "perhaps"}\n```', json_block({"verdict": "Unsafe"})])
    backend = ScriptedBackend(lambda p, s, n: next(answers))
    stats = {}
    answer = asyncio.run(
        JudgeClient(backend, retries=3).ask(
            MSG, content_parser(parse_safety_judgment), task="safety_judge", sampling=GREEDY, stats=stats
        )
    )
    assert answer.value["verdict"] == "Unsafe" and answer.attempts == 3
    assert [s for _, s in backend.calls] == [GREEDY, retry_sampling(GREEDY, 1), retry_sampling(GREEDY, 2)]
    tasks = {
        "safety_judge": {
            "calls": 3,
            "parse_failures": 2,
            "errors": 0,
            "cached": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
    }
    assert stats == {"calls": 3, "parse_failures": {"safety_judge": 2}, "tasks": tasks}


def test_an_answer_that_never_parses_raises_judge_failed():
    backend = ScriptedBackend(lambda p, s, n: "still no json")
    stats = {}
    with pytest.raises(JudgeFailed, match=r"user_judge: no parseable answer in 4 attempts") as e:
        asyncio.run(
            JudgeClient(backend, retries=3).ask(
                MSG, content_parser(parse_safety_judgment), task="user_judge", sampling=GREEDY, stats=stats
            )
        )
    assert e.value.attempts == 4 and e.value.last_error == str(_parse_error_of("still no json"))
    assert len(backend.calls) == 4 and stats["calls"] == 4 and stats["parse_failures"] == {"user_judge": 4}
    assert stats["tasks"]["user_judge"]["parse_failures"] == 4


def test_every_call_is_logged_with_its_raw_text_parse_error_and_attempt():
    """The audit trail: an echoed prompt example and a broken last block are failures, logged raw."""
    example = {
        "user_type": "benign",
        "risk_intent": "...",
        "adapted_guideline": "...",
        "next_turn": "...",
        "verdict": "Safe",
        "suggestion": "...",
    }
    echoed = "Here is the format:\n" + json_block(example)
    broken_last = json_block({"verdict": "Safe"}) + '\nrevised:\n```json\n{"verdict": "Unsa\n```'
    answers = iter([echoed, broken_last, json_block({"verdict": "Unsafe"})])
    backend = ScriptedBackend(lambda p, s, n: next(answers))
    log, stats = [], {}
    answer = asyncio.run(
        JudgeClient(backend, retries=3).ask(
            MSG, content_parser(parse_safety_judgment), task="safety_judge", sampling=GREEDY, stats=stats, log=log
        )
    )
    assert answer.value["verdict"] == "Unsafe"  # the broken "Unsafe" never became the earlier "Safe"
    assert [e["attempt"] for e in log] == [1, 2, 3]
    assert [e["content"] for e in log] == [echoed, broken_last, json_block({"verdict": "Unsafe"})]
    assert "repeats the prompt's example" in log[0]["parse_error"]
    assert "the last fenced block is not valid JSON" in log[1]["parse_error"]
    assert log[2]["parse_error"] is None and log[2]["messages"] == MSG
    assert [e["sampling"] for e in log] == [GREEDY, retry_sampling(GREEDY, 1), retry_sampling(GREEDY, 2)]
    assert stats["tasks"]["safety_judge"]["parse_failures"] == 2


def _parse_error_of(text):
    try:
        parse_safety_judgment(text)
    except JudgeParseError as e:
        return e
    raise AssertionError("expected a parse error")


def test_chain_parse_errors_retry_and_other_errors_do_not():
    def chain_parser(reasoning, content):
        if content == "bad chain":
            raise ChainParseError("no chain")
        return content

    answers = iter(["bad chain", "a chain"])
    backend = ScriptedBackend(lambda p, s, n: next(answers))
    assert asyncio.run(JudgeClient(backend, retries=1).ask(MSG, chain_parser, task="c", sampling={})).attempts == 2

    def failing(prompt, sampling, n):
        raise BackendError("HTTP 500 (after 5 attempts)", retryable=True)  # the backend already retried

    backend = ScriptedBackend(failing)
    with pytest.raises(BackendError):
        asyncio.run(JudgeClient(backend, retries=3).ask(MSG, content_parser(str), task="t", sampling={}))
    assert len(backend.calls) == 1

    def buggy(reasoning, content):
        raise KeyError("a bug, not a bad answer")

    backend = ScriptedBackend(lambda p, s, n: "x")
    with pytest.raises(KeyError):
        asyncio.run(JudgeClient(backend, retries=3).ask(MSG, buggy, task="t", sampling={}))
    assert len(backend.calls) == 1


def test_eval_judge_goes_through_the_client():
    """LLMJudge reports a never-parsing answer as value None with the client's attempt count and error."""
    backend = ScriptedBackend(lambda p, s, n: "no json" if n < 3 else json_block({"verdict": "Safe"}))
    judge = LLMJudge(backend, "scripted", retries=2, max_tokens=64)
    call = asyncio.run(judge.rule("q", "a reply", None, "en"))
    assert (call.value, call.attempts, call.error) == ("Safe", 3, None)
    assert [s for _, s in backend.calls] == [GREEDY, retry_sampling(GREEDY, 1), retry_sampling(GREEDY, 2)]
    never = LLMJudge(ScriptedBackend(lambda p, s, n: "no json"), "scripted", retries=1)
    call = asyncio.run(never.rule("q", "a reply", None, "en"))
    assert call.value is None and call.attempts == 2 and call.error == str(_parse_error_of("no json"))
