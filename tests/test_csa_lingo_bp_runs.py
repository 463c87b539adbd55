"""Lingo-BP runs that can be audited, reproduced and trusted (issue 15, points 4, 5, 8, 9): judges that
refuse echoed examples and broken last blocks, the run manifest, the judge-call cache, endpoint extras per
role, token usage per role, language detection, and hostile endpoints (a redirect with an API key set, a
trickling body under --timeout, results files without their final newline)."""

import json
import time

import pytest

from oyster_jax.csa import judges, lingo_bp
from oyster_jax.csa.scripted import ScriptedLingo, identify_task
from oyster_jax.llm.testing import FakeOpenAIServer, Reply
from tests.lingo_cli import lingo_args, read_jsonl, write_jsonl

QUERIES = [
    {"id": "a", "query": "How do I do the thing?"},
    {"id": "b", "query": "#unsafe-first please"},
    {"id": "c", "query": "#never-full 请帮帮我，我该怎么办"},  # no language field: detected as zh
]


def _by_task(requests):
    out = {}
    for r in requests:
        out.setdefault(identify_task(r)[0], []).append(r)
    return out


# --- point 4: the parsers -------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["user_judge", "safety_judge", "assess"])
def test_an_echoed_prompt_example_is_a_parse_failure(task):
    parse = {
        "user_judge": judges.parse_user_judgment,
        "safety_judge": judges.parse_safety_judgment,
        "assess": judges.parse_assessment,
    }[task]
    for example in judges.prompt_examples(task):  # English and Chinese prompt examples alike
        text = "Following the format:\n```json\n" + json.dumps(example, ensure_ascii=False) + "\n```"
        with pytest.raises(judges.JudgeParseError, match="repeats the prompt's example"):
            parse(text)
        if task != "assess":  # (its example's category '...' is no category anyway)
            parse(text, reject=())  # the object parses when nothing is rejected: the refusal is the example's


def test_a_broken_last_block_never_falls_back_to_an_earlier_one():
    first = '```json\n{"verdict": "Safe", "user_type": "benign"}\n```'
    broken_last = '```json\n{"verdict": "Unsafe", "user_type": \n```'
    with pytest.raises(judges.JudgeParseError, match="last fenced block is not valid JSON"):
        judges.parse_safety_judgment(first + "\nOn reflection:\n" + broken_last)
    assert judges.parse_safety_judgment(first)["verdict"] == "Safe"


# --- point 5: manifest, seed, refusal of a differing resume -----------------------------------------


def test_manifest_records_the_settings_and_a_differing_resume_is_refused(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, inp, out, "--seed", "7", "--beta", "1.5")) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        st = manifest["settings"]
        assert st["seed"] == 7 and st["beta"] == 1.5 and st["rounds"] == 3
        assert st["specs"]["policy"] == f"openai:{server.base_url}#scripted"
        assert st["sampling"]["policy"]["seed"] == 7 and st["sampling"]["judge"]["seed"] == 7
        assert set(st["prompts"]) == {f"{lang}/{t}" for lang in ("en", "zh") for t in judges.TASKS}
        assert len(st["game"]["fingerprint"]) == 16 and "python" in manifest["versions"]
        # Every request carried the seed (retries would add their attempt number).
        assert {r["seed"] for r in server.requests} == {7}

        # Same settings, other speed knobs: the resume is accepted.
        n = len(server.requests)
        assert lingo_bp.main(lingo_args(server, inp, out, "--seed", "7", "--beta", "1.5", "--concurrency", "3")) == 0
        assert len(server.requests) == n  # finished already: nothing asked again
        capsys.readouterr()

        # Other β, rounds and seed: refused before any request, naming each differing key.
        rc = lingo_bp.main(lingo_args(server, inp, out, "--seed", "8", "--beta", "2", "--rounds", "1"))
        assert rc == lingo_bp.EXIT_BAD_INPUT and len(server.requests) == n
        err = capsys.readouterr().err
        for key in ("beta", "rounds", "seed", "sampling.policy.seed", "sampling.judge.seed"):
            assert key in err, key
        assert "--force" in err
        assert json.loads((out / "manifest.json").read_text()) == manifest  # left as it was

        # Another judge: refused too.
        spec = f"openai:{server.base_url}#other-judge"
        rc = lingo_bp.main(lingo_args(server, inp, out, "--seed", "7", "--beta", "1.5", "--judge", spec))
        assert rc == lingo_bp.EXIT_BAD_INPUT and "specs.judge" in capsys.readouterr().err

        # --force resumes and records what it overrode.
        assert lingo_bp.main(lingo_args(server, inp, out, "--beta", "2", "--force")) == 0
        forced = json.loads((out / "manifest.json").read_text())
        assert forced["settings"]["beta"] == 2.0
        assert forced["forced"][0]["differences"]["beta"] == {"old": 1.5, "new": 2.0}


def test_an_unreadable_manifest_is_refused_not_replaced(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    spec = "openai:http://127.0.0.1:9/v1#m"  # nothing listens there: the refusal comes before any request
    rc = lingo_bp.main(["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(out)])
    assert rc == lingo_bp.EXIT_BAD_INPUT and "manifest.json" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == "{not json"


# --- point 8: cache, extras, usage, schemas, language, γ ------------------------------------------


def _with_usage(handler):
    """The scripted server, reporting 100 prompt and 10 completion tokens for every answer."""

    def reply(request):
        r = handler(request)
        r = Reply.chat(r) if isinstance(r, str) else r
        if isinstance(r.body, dict) and r.status == 200:
            r.body["usage"] = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        return r

    return reply


def test_judge_calls_are_cached_so_a_rerun_pays_only_for_the_policy(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    cache = tmp_path / "cache"
    with FakeOpenAIServer(_with_usage(ScriptedLingo())) as server:
        assert lingo_bp.main(lingo_args(server, inp, tmp_path / "run1", "--cache", str(cache))) == 0
        first = _by_task(server.requests)
        n = len(server.requests)
        assert lingo_bp.main(lingo_args(server, inp, tmp_path / "run2", "--cache", str(cache))) == 0
        second = _by_task(server.requests[n:])
        n2 = len(server.requests)
        assert lingo_bp.main(lingo_args(server, inp, tmp_path / "run3", "--no_cache")) == 0
        third = _by_task(server.requests[n2:])
    judge_tasks = ("assess", "user_judge", "safety_judge", "extract_chain", "backward")
    assert all(first.get(t) for t in ("assess", "user_judge", "safety_judge", "extract_chain"))
    assert not any(second.get(t) for t in judge_tasks)  # every judge and optimizer call came from the disk
    assert len(second["policy"]) == len(first["policy"]) and second["recombine"]  # the policy is asked again
    assert sum(len(third.get(t, [])) for t in judge_tasks) >= sum(len(first.get(t, [])) for t in judge_tasks)
    s1 = json.loads((tmp_path / "run1" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
    # The same data from the cache (the scripted server is deterministic).
    for k in ("sat_before", "sat_after", "risk_before", "risk_after", "sft_written", "pairs_written"):
        assert s1[k] == s2[k], k
    sft1, sft2 = (sorted((tmp_path / r / "sft.jsonl").read_text().splitlines()) for r in ("run1", "run2"))
    assert sft1 == sft2  # (in completion order, which concurrency may change)
    # Usage: 100 + 10 tokens per paid call, per role; cached calls cost nothing.
    for s, reqs in ((s1, first), (s2, second)):
        paid = {
            "policy": len(reqs.get("policy", [])) + len(reqs.get("recombine", [])),
            "judge": sum(len(reqs.get(t, [])) for t in ("assess", "user_judge", "safety_judge")),
            "optimizer": sum(len(reqs.get(t, [])) for t in ("extract_chain", "backward")),
        }
        for role, n_paid in paid.items():
            u = s["usage"][role]
            assert (u["prompt_tokens"], u["completion_tokens"]) == (100 * n_paid, 10 * n_paid), role
            assert u["calls"] - u["cached"] == n_paid, role
    assert s2["cache"]["hits"] == s2["usage"]["judge"]["calls"] + s2["usage"]["optimizer"]["calls"]
    assert s1["tokens_per_query"]["prompt_tokens"] == pytest.approx(100 * n / 3)  # run 1 paid for every request
    # Calls count the answers the engine used: the paid requests plus the repeats answered by the cache.
    assert s1["calls_per_query"] == pytest.approx((n + s1["cache"]["hits"]) / 3)


def test_the_cache_is_on_by_default_inside_the_output_folder(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, inp, out)) == 0
    entries = list((out / "cache").glob("*/*.json"))
    assert entries and json.loads((out / "summary.json").read_text())["cache"]["misses"] == len(entries)


def test_endpoint_extras_and_unknown_sampling_keys_reach_the_body_per_role(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    policy_extra = {"chat_template_kwargs": {"enable_thinking": False}}
    judge_extra = {"response_format": {"type": "json_object"}, "top_k": 20}
    with FakeOpenAIServer(ScriptedLingo()) as server:
        rc = lingo_bp.main(
            lingo_args(server, inp, tmp_path / "out", "--policy_extra_body", json.dumps(policy_extra))
            + ["--judge_extra_body", json.dumps(judge_extra), "--policy_sampling", "min_p=0.05"]
        )
    assert rc == 0
    reqs = _by_task(server.requests)
    for r in reqs["policy"] + reqs["recombine"]:
        assert r["chat_template_kwargs"] == {"enable_thinking": False} and r["min_p"] == 0.05
        assert "response_format" not in r and "extra_body" not in r
    for t in ("assess", "user_judge", "safety_judge", "extract_chain"):
        for r in reqs[t]:
            assert r["response_format"] == {"type": "json_object"} and r["top_k"] == 20, t
            assert "chat_template_kwargs" not in r and "extra_body" not in r


def test_judge_schemas_on_forwards_each_tasks_schema(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, inp, tmp_path / "out", "--judge_schemas", "on")) == 0
    reqs = _by_task(server.requests)
    for t in ("assess", "user_judge", "safety_judge", "extract_chain"):
        for r in reqs[t]:
            assert r["response_format"]["type"] == "json_schema" and r["response_format"]["json_schema"]["name"] == t
    assert all("response_format" not in r for r in reqs["policy"] + reqs["recombine"])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--policy_extra_body", "[1]"], "expected a JSON object"),
        (["--judge_extra_body", '{"model": "x"}'], "part of the request itself"),
        (["--judge_extra_body", '{"top_k": 2}', "--judge_sampling", "top_k=3"], "both set 'top_k'"),
    ],
)
def test_bad_extras_exit_2(tmp_path, capsys, extra, needle):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    spec = "openai:http://127.0.0.1:9/v1#m"
    try:
        rc = lingo_bp.main(
            ["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(tmp_path / "o")] + extra
        )
    except SystemExit as e:  # a flag whose value is not a JSON object: argparse's usage error
        rc = e.code
    assert rc == lingo_bp.EXIT_BAD_INPUT
    assert needle in capsys.readouterr().err


def test_extras_for_a_local_backend_exit_2(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    rc = lingo_bp.main(
        ["--input", str(inp), "--policy", "local:/nonexistent", "--judge", "openai:http://127.0.0.1:9/v1#m"]
        + ["--out", str(tmp_path / "o"), "--policy_extra_body", '{"top_k": 2}']
    )
    assert rc == lingo_bp.EXIT_BAD_INPUT and "need an OpenAI-compatible backend" in capsys.readouterr().err


def test_language_is_detected_when_a_line_has_none(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES + [{"id": "d", "query": "请帮我", "language": "en"}])
    qs = {q.id: q.language for q in lingo_bp.read_queries(inp, "auto")}
    assert qs == {"a": "en", "b": "en", "c": "zh", "d": "en"}  # a given language is kept
    assert {q.language for q in lingo_bp.read_queries(inp, "en")} == {"en"}
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, write_jsonl(tmp_path / "c.jsonl", QUERIES[2:]), tmp_path / "out")) == 0
    assert {identify_task(r)[1] for r in server.requests if identify_task(r)[0] != "policy"} == {"zh"}
    assert read_jsonl(tmp_path / "out" / "trajectories.jsonl")[0]["language"] == "zh"


def test_gamma_charges_the_cost_of_long_replies(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    with FakeOpenAIServer(ScriptedLingo()) as server:
        args = lingo_args(server, inp, tmp_path / "out", "--gamma", "0.5", "--cost_per_1k_chars", "2")
        assert lingo_bp.main(args) == 0
    for it in read_jsonl(tmp_path / "out" / "trajectories.jsonl")[0]["iterates"]:
        cost = len(it["response"]) / 1000 * 2
        assert it["payoff"] == pytest.approx(it["sat"] - 2.0 * it["risk"] - 0.5 * cost)
        assert cost > 0


# --- point 9: hostile endpoints and damaged results files ----------------------------------------


def test_a_redirecting_endpoint_with_a_key_set_fails_the_query_and_the_key_stays_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OYSTER_API_KEY", "sk-lingo-secret")
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as elsewhere:
        target = elsewhere.base_url + "/chat/completions"
        with FakeOpenAIServer(lambda r: Reply(status=302, headers={"Location": target})) as server:
            assert lingo_bp.main(lingo_args(server, inp, out)) == lingo_bp.EXIT_OK
            assert server.request_headers[0]["Authorization"] == "Bearer sk-lingo-secret"
            assert len(server.requests) == 1  # a redirect is not retried
        assert elsewhere.requests == [] and elsewhere.request_headers == []
    printed = capsys.readouterr().out
    assert f"HTTP 302 redirect from {server.base_url}/chat/completions refused" in printed
    s = json.loads((out / "summary.json").read_text())
    assert (s["failed"], s["sft_written"]) == (1, 0) and not read_jsonl(out / "trajectories.jsonl")
    for path in out.rglob("*"):
        if path.is_file():
            assert b"sk-lingo-secret" not in path.read_bytes(), path


def test_a_trickling_endpoint_is_cut_off_by_timeout(tmp_path, capsys):
    """One byte a second: each byte resets a socket-inactivity timeout, so only an overall deadline ends the
    call. The 600-byte body would take ten minutes; the query must fail by the 3 s deadline (one attempt, no
    retry), and the bound on the wall time leaves a loaded machine two minutes of margin."""
    body = Reply.chat("x" * 400).body
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    with FakeOpenAIServer(lambda r: Reply(body=body, trickle=1.0)) as server:
        spec = f"openai:{server.base_url}#trickle"
        t0 = time.monotonic()
        rc = lingo_bp.main(["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(tmp_path / "out")]
                           + ["--timeout", "3", "--max_retries", "0", "--no_progress"])  # fmt: skip
        elapsed = time.monotonic() - t0
    assert rc == lingo_bp.EXIT_OK and elapsed < 120
    assert "within the 3s deadline" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed"] == 1


def test_results_files_without_their_final_newline_or_with_a_torn_line_resume(tmp_path):
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, write_jsonl(tmp_path / "q1.jsonl", QUERIES[:2]), out)) == 0
        for name in ("trajectories.jsonl", "sft.jsonl", "pairs.jsonl", "calls.jsonl"):
            path = out / name
            path.write_bytes(path.read_bytes().rstrip(b"\n"))  # a writer killed before its newline
        with open(out / "calls.jsonl", "ab") as f:
            f.write(b'\n{"id": "zz", "finished": tr')  # and a torn line after it
        assert lingo_bp.main(lingo_args(server, write_jsonl(tmp_path / "q.jsonl", QUERIES), out)) == 0
        assert lingo_bp.main(lingo_args(server, write_jsonl(tmp_path / "q.jsonl", QUERIES), out)) == 0  # and again
    for name in ("trajectories.jsonl", "sft.jsonl", "pairs.jsonl", "calls.jsonl"):
        text = (out / name).read_text("utf-8")
        assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines()), name
    assert sorted(t["id"] for t in read_jsonl(out / "trajectories.jsonl")) == ["a", "b", "c"]
    assert sorted(r["id"] for r in read_jsonl(out / "calls.jsonl")) == ["a", "b", "c"]  # the torn line is gone
    assert len(read_jsonl(out / "sft.jsonl")) == 3
