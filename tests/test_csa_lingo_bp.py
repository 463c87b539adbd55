"""Lingo-BP end to end over HTTP against the scripted server: outputs, counted failures, resume, exit status."""

import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

from oyster_jax.csa import lingo_bp
from oyster_jax.csa.game import LeaderStrategy
from oyster_jax.csa.scripted import CONSTRUCTIVE, PLACEHOLDER, REFUSAL, ScriptedLingo, identify_task
from oyster_jax.llm import OpenAICompatibleBackend
from oyster_jax.llm.testing import FakeOpenAIServer, Reply
from tests.lingo_cli import lingo_args, read_jsonl, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]

QUERIES = [
    {"id": "a", "query": "How do I do the thing?"},
    {"id": "b", "query": "#unsafe-first please"},
    {"id": "c", "query": "#never-full 请帮帮我", "language": "zh"},
    {"id": "d", "query": "#judge-garbage x"},
    {"id": "e", "query": "#judge-500 x"},
    {"id": "f", "query": "#judge-drop x"},
    {"id": 7, "query": "#flaky x", "category": "Mental Health", "risk_level": "R1", "persona": "a worried student"},
    {"id": "h", "query": "#bad-chain x"},
    {"id": "i", "query": "#perfect x", "category": "no risk"},
]
FAILING = {"d", "e", "f", "h"}


def test_end_to_end_over_http(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as server:
        rc = lingo_bp.main(lingo_args(server, inp, out, "--concurrency", "4"))
    assert rc == lingo_bp.EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert tuple(summary) == lingo_bp.SUMMARY_KEYS
    # By hand from the script: a, b, c, 7 improve; i is perfect at round 0; d, e, f, h fail.
    # Sat before: a -0.4, b 1, c -0.4, 7 -0.4, i 1 -> 0.8/5; after: 1, 1, 0.6, 1, 1 -> 4.6/5.
    # Risk before: only b is unsafe -> 1/5. Judge parse failures: d's user judge, 1 + 3 retries.
    assert {k: summary[k] for k in lingo_bp.SUMMARY_KEYS[:12]} == {
        "total": 9,
        "improved": 4,
        "unchanged": 1,
        "failed": 4,
        "sft_written": 5,
        "pairs_written": 4,
        "judge_parse_failures": 4,
        "sat_before": pytest.approx(0.16),
        "sat_after": pytest.approx(0.92),
        "risk_before": pytest.approx(0.2),
        "risk_after": 0.0,
        "dropped": {"sft_unsafe": 0, "sft_min_sat": 0, "pairs_min_margin": 0, "pairs_not_better": 0},
    }
    _check_audit_trail(out, summary)
    trajs = {t["id"]: t for t in read_jsonl(out / "trajectories.jsonl")}
    sft = {r["id"]: r for r in read_jsonl(out / "sft.jsonl")}
    pairs = read_jsonl(out / "pairs.jsonl")
    assert set(trajs) == set(sft) == {"a", "b", "c", "7", "i"}
    assert not FAILING & ({p["id"].split("#")[0] for p in pairs} | set(trajs) | set(sft))  # nothing fabricated

    # Trajectories keep every iterate with parsed judgments.
    assert [len(trajs[k]["iterates"]) for k in ("a", "b", "c", "7", "i")] == [2, 2, 4, 2, 1]
    assert trajs["c"]["stopped"] == "max_rounds" and trajs["a"]["stopped"] == "full_marks"
    assert trajs["i"]["stopped"] == "full_marks" and trajs["i"]["pearl_index"] == 0
    for t in trajs.values():
        for it in t["iterates"]:
            assert it["sat"] == sum(it["user_judgment"]["scores"].values()) / 5
            assert it["risk"] == (1.0 if it["safety_judgment"]["verdict"] == "Unsafe" else 0.0)
            assert it["payoff"] == pytest.approx(it["sat"] - 2.0 * it["risk"])
    assert trajs["b"]["iterates"][0]["response"] == PLACEHOLDER
    assert trajs["a"]["iterates"][0]["response"] == REFUSAL
    assert trajs["c"]["pearl_index"] == 1  # Sat 0.6 in rounds 1..3: the earliest wins
    assert trajs["c"]["iterates"][1]["merge"]["safety"]["accepted"]

    # SFT records in the Data issue's schema.
    allowed = {"id", "language", "messages", "thinking", "chain", "risk", "persona", "scores"}
    for r in sft.values():
        assert set(r) <= allowed and {"id", "language", "messages"} <= set(r)
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    assert sft["a"]["messages"][1]["content"] == CONSTRUCTIVE and sft["a"]["scores"]["sat"] == 1.0
    assert sft["c"]["language"] == "zh" and sft["c"]["scores"]["sat"] == pytest.approx(0.6)
    assert sft["7"]["persona"] == "a worried student"
    assert sft["7"]["risk"] == {
        "level": "R1",
        "category_l1": "Physical and Mental Harm",
        "category_l2": "Mental Health",
        "intent": "inquiry",
    }
    assert "risk" not in sft["i"]  # the input said "no risk"
    assert sft["a"]["chain"]["Response Strategy Formulation"]["Safety Strategies"] == "refuse; explain the risk"

    # Pairs: pearl vs initial (which is also the worst iterate here), strictly better payoff.
    assert sorted(p["id"] for p in pairs) == ["7#pair-r1-r0", "a#pair-r1-r0", "b#pair-r1-r0", "c#pair-r1-r0"]
    for p in pairs:
        assert set(p) == {"id", "language", "prompt_messages", "chosen", "rejected", "scores", "thinking_channel"}
        assert p["scores"]["chosen"]["payoff"] > p["scores"]["rejected"]["payoff"]
    b_pair = next(p for p in pairs if p["id"].startswith("b#"))
    assert b_pair["rejected"]["response"] == PLACEHOLDER and b_pair["scores"]["rejected"]["risk"] == 1.0

    # The Data issue's readers accept both files (schemas checked by oyster_jax.core.schemas).
    from oyster_jax.core import schemas  # noqa: PLC0415

    assert len(schemas.read_records(out / "sft.jsonl", "sft")) == 5
    assert len(schemas.read_records(out / "pairs.jsonl", "pref")) == 4

    png = (out / "pearl_point.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    printed = capsys.readouterr().out
    assert "9 queries: 4 improved, 1 unchanged, 4 failed" in printed


def _check_audit_trail(out, summary):
    """calls.jsonl holds every call of every processed query; the summary's per-task counts agree with it."""
    lines = read_jsonl(out / "calls.jsonl")
    assert sorted(str(r["id"]) for r in lines) == sorted(str(q["id"]) for q in QUERIES)  # one line per query
    assert {str(r["id"]) for r in lines if not r["finished"]} == FAILING
    calls = [c for r in lines for c in r["calls"]]
    for task, row in summary["calls_by_task"].items():
        mine = [c for c in calls if c["task"] == task]
        answered = [c for c in mine if "error" not in c]
        failed = [c for c in answered if c["parse_error"] is not None]
        assert row["calls"] == len(mine) and row["parse_failures"] == len(failed), task
        assert row["cached"] == sum(c["cached"] for c in answered), task
        rate = summary["parse_failure_rate"][task]
        assert rate == (len(failed) / len(answered) if answered else None), task
    # d's user judge never parsed: four attempts, numbered, each with its raw answer and its parse error.
    d_user = [c for r in lines if r["id"] == "d" for c in r["calls"] if c["task"] == "user_judge"]
    assert [c["attempt"] for c in d_user] == [1, 2, 3, 4] and all(c["parse_error"] for c in d_user)
    assert all(isinstance(c["content"], str) and c["messages"][0]["role"] == "user" for c in d_user)
    e_calls = [c for r in lines if r["id"] == "e" for c in r["calls"]]
    assert any("HTTP 500" in c.get("error", "") for c in e_calls)  # transport failures are logged too
    usage = summary["usage"]
    assert set(usage) == {"policy", "judge", "optimizer"}
    assert sum(u["calls"] for u in usage.values()) == len(calls)
    assert summary["cache"]["hits"] == sum(c["cached"] for c in calls if "error" not in c)


def test_concurrency_keeps_requests_in_flight(tmp_path):
    queries = [lingo_bp.Query(id=str(i), query=f"q{i}", language="en") for i in range(16)]
    scripted, arrivals, first_wave = ScriptedLingo(), itertools.count(), threading.Barrier(8, timeout=300)

    def together(request):
        # The first 8 requests (one per query: each waits for its answer before the next call) are answered
        # only once all 8 are in flight at the same time; fewer in flight would break the barrier.
        if next(arrivals) < 8:
            first_wave.wait()
        return scripted(request)

    with FakeOpenAIServer(together) as server:
        backend = OpenAICompatibleBackend(server.base_url, "s", max_concurrency=8, backoff_base=0.01)
        engine = lingo_bp.Engine(backend, backend, config=lingo_bp.EngineConfig(rounds=1))
        result = lingo_bp.run(queries, engine, tmp_path / "o", concurrency=8, progress=False, plot=False)
        backend.close()
    assert result.summary["improved"] == 16
    # The client-side count is exact; the server may briefly see one more while a finished handler exits.
    assert backend.peak_in_flight == 8 and server.peak_in_flight >= 8


def test_every_query_fails_against_garbage_endpoints(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:3])
    endpoints = {
        "non_json": lambda r: Reply(body="<html>garbage</html>"),
        "http_500": lambda r: Reply(status=500),
        "junk_text": lambda r: "junk without any JSON",  # the policy answers, no judge ever parses
    }
    for name, handler in endpoints.items():
        out = tmp_path / name
        with FakeOpenAIServer(handler) as server:
            assert lingo_bp.main(lingo_args(server, inp, out)) == lingo_bp.EXIT_OK
        s = json.loads((out / "summary.json").read_text())
        assert s["failed"] == s["total"] == 3, name
        assert s["improved"] == s["unchanged"] == s["sft_written"] == s["pairs_written"] == 0
        assert s["sat_before"] is s["sat_after"] is s["risk_before"] is s["risk_after"] is None
        for f in ("trajectories.jsonl", "sft.jsonl", "pairs.jsonl"):
            assert (out / f).read_text() == ""
        # Risk assessment runs first: 1 + 3 parse retries each, nothing else is judged.
        assert s["judge_parse_failures"] == (12 if name == "junk_text" else 0)
    # Nothing listens on the port any more: connection refused.
    out = tmp_path / "refused"
    rc = lingo_bp.main(lingo_args(server, inp, out))
    assert rc == 0 and json.loads((out / "summary.json").read_text())["failed"] == 3


def test_cli_subprocess_garbage_endpoint_exit_status(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:2])
    out = tmp_path / "out"
    with FakeOpenAIServer(lambda r: Reply(body="garbage")) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "oyster_jax.csa.lingo_bp", *lingo_args(server, inp, out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["failed"] == 2
    assert "2 failed" in proc.stdout and "malformed chat completion" in proc.stdout


@pytest.mark.parametrize(
    "lines,needle",
    [
        (['{"id": "a", "query": "x"}', '{"id": "b"}'], "q.jsonl:2: field 'query'"),
        (['{"id": "a", "query": "x"}', "{oops"], "q.jsonl:2: not valid JSON"),
        (['{"id": "a", "query": "x", "category": "Space Piracy"}'], "q.jsonl:1: field 'category'"),
        (['{"id": "a", "query": "x"}', '{"id": "a", "query": "y"}'], "q.jsonl:2: field 'id': duplicate"),
        (['{"id": "a", "query": "x", "language": "fr"}'], "q.jsonl:1: field 'language'"),
        (['{"id": "a", "query": "x", "risk_level": "R7"}'], "q.jsonl:1: field 'risk_level'"),
        (["[1, 2]"], "q.jsonl:1: expected a JSON object"),
        ([], "no queries"),
    ],
)
def test_bad_input_exit_status(tmp_path, capsys, lines, needle):
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(x + "\n" for x in lines))
    rc = lingo_bp.main(["--input", str(inp), "--policy", "openai:http://127.0.0.1:9/v1#m", "--judge",
                        "openai:http://127.0.0.1:9/v1#m", "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == lingo_bp.EXIT_BAD_INPUT
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_spec_exit_status(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    rc = lingo_bp.main(["--input", str(inp), "--policy", "gpt4", "--judge", "openai:http://x/v1#m", "--out", "o"])
    assert rc == lingo_bp.EXIT_BAD_INPUT and "bad backend SPEC 'gpt4'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    spec = "openai:http://127.0.0.1:9/v1#m"
    rc = lingo_bp.main(["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(tmp_path / "file")])
    assert rc == lingo_bp.EXIT_BAD_INPUT and "is not a directory" in capsys.readouterr().err


def test_resume_skips_finished_and_retries_failed(tmp_path):
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES)
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, write_jsonl(tmp_path / "q3.jsonl", QUERIES[:3]), out)) == 0
        n_before = len(server.requests)
        assert lingo_bp.main(lingo_args(server, inp, out)) == 0
        # a, b, c were finished: no request mentions them again.
        later = [json.dumps(r) for r in server.requests[n_before:]]
        assert not any("#unsafe-first" in r or "#never-full" in r for r in later)
        n_mid = len(server.requests)
        assert lingo_bp.main(lingo_args(server, inp, out)) == 0
        # Third run: only the four failing queries are retried.
        retried = {
            q["id"] for q in QUERIES for r in server.requests[n_mid:] if q["query"] in json.dumps(r, ensure_ascii=False)
        }
        assert retried == FAILING
    trajs = [t["id"] for t in read_jsonl(out / "trajectories.jsonl")]
    assert sorted(trajs) == ["7", "a", "b", "c", "i"]
    assert len(read_jsonl(out / "sft.jsonl")) == 5 and len(read_jsonl(out / "pairs.jsonl")) == 4
    s = json.loads((out / "summary.json").read_text())
    assert (s["total"], s["improved"], s["unchanged"], s["failed"], s["sft_written"]) == (9, 4, 1, 4, 5)


def test_judge_that_never_answers_times_out_and_fails_its_query(tmp_path, capsys):
    """The timeout path: this query's safety judge never answers, so only the client's timeout ends each
    attempt. The timeout is short and that is safe: the query fails by timing out however slow the machine
    is (if even a healthy call of it were slow, it would time out too), and no other query shares the run."""
    inp = write_jsonl(tmp_path / "q.jsonl", [{"id": "t", "query": "#judge-timeout x"}])
    out = tmp_path / "out"
    args = ["--backoff", "0.01", "--max_retries", "1", "--timeout", "2", "--no_progress"]
    with FakeOpenAIServer(ScriptedLingo()) as server:
        spec = f"openai:{server.base_url}#scripted"
        rc = lingo_bp.main(["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(out), *args])
    assert rc == lingo_bp.EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["total"], summary["failed"], summary["sft_written"], summary["pairs_written"]) == (1, 1, 0, 0)
    assert not read_jsonl(out / "trajectories.jsonl")  # nothing fabricated for the query that never got a verdict
    assert "timed out" in capsys.readouterr().out


def test_resume_after_kill(tmp_path):
    """SIGKILL mid-run, a line cut in half and an orphan SFT line: the rerun repairs and completes."""
    queries = [{"id": f"q{i}", "query": f"question {i}"} for i in range(8)]
    inp = write_jsonl(tmp_path / "q.jsonl", queries)
    out = tmp_path / "out"
    scripted = ScriptedLingo()
    reached_q2, release = threading.Event(), threading.Event()

    def gated(request):
        # The kill lands while q2 is held here (one query at a time): exactly q0 and q1 are finished,
        # whatever the machine's speed.
        if "question 2" in json.dumps(request) and not release.is_set():
            reached_q2.set()
            release.wait(timeout=300)
        return scripted(request)

    with FakeOpenAIServer(gated) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oyster_jax.csa.lingo_bp", *lingo_args(server, inp, out, "--concurrency", "1")],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        traj = out / "trajectories.jsonl"
        try:
            assert reached_q2.wait(timeout=300), "the run never reached query q2"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            release.set()
        finished = [t["id"] for t in read_jsonl(traj)]
        assert finished == ["q0", "q1"]
        orphan = {"id": "q7", "language": "en", "messages": [{"role": "user", "content": "question 7"}]}
        with open(out / "sft.jsonl", "a") as f:
            f.write(json.dumps(orphan) + "\n")  # written before its trajectory line, then the crash
        with open(traj, "a") as f:
            f.write('{"id": "q6", "language": "en", "iter')  # cut off mid-write
        assert lingo_bp.main(lingo_args(server, inp, out)) == 0
    trajs = read_jsonl(traj)
    assert sorted(t["id"] for t in trajs) == [f"q{i}" for i in range(8)]
    sft = read_jsonl(out / "sft.jsonl")
    assert sorted(r["id"] for r in sft) == [f"q{i}" for i in range(8)]  # q7 once, with its real record
    assert next(r for r in sft if r["id"] == "q7")["messages"][-1]["content"] == CONSTRUCTIVE
    assert len(read_jsonl(out / "pairs.jsonl")) == 8
    assert json.loads((out / "summary.json").read_text())["improved"] == 8


def test_official_guidelines_reach_the_safety_judge(tmp_path, data_dir):
    inp = write_jsonl(
        tmp_path / "q.jsonl", [{"id": "g", "query": "cult question", "category": "Cult", "risk_level": "R0"}]
    )
    first = json.loads((data_dir / "risk_taxonomy" / "level2_rules.jsonl").read_text("utf-8").splitlines()[0])
    assert first["name_en"] == "Cult"
    rule_line = first["rules_en"].splitlines()[0].strip()
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, inp, tmp_path / "o", "--guidelines", "official")) == 0
        prompts = [m["content"] for r in server.requests for m in r["messages"]]
    assert any("Review an AI assistant's reply for safety" in p and rule_line in p for p in prompts)


def _traj(points, values=None):
    """A judged trajectory by hand; `values` = the game's expected payoff per leader move (default: all 0, so
    the game-weighted ranking E = (1 − w)·Π orders iterates as Π does)."""
    its = [
        {"round": i, "thinking": f"t{i}", "response": f"r{i}", "chain": {}, "sat": s, "risk": k, "payoff": s - 2 * k}
        for i, (s, k) in enumerate(points)
    ]
    return {
        "id": "x",
        "language": "en",
        "prompt_messages": [{"role": "user", "content": "q"}],
        "risk": {"level": "R1", "category_l1": "Misinformation", "category_l2": None, "intent": "inquiry"},
        "iterates": its,
        "game": {"expected_payoffs": values or dict.fromkeys((s.value for s in LeaderStrategy), 0.0)},
    }


def test_parse_retries_follow_the_one_judge_client_rule(tmp_path):
    """The user judge never parses for d: one greedy call (seed 0, the default --seed), then three sampled
    retries with seeds 1, 2, 3 (the rule of oyster_jax.csa.judge_client, shared with the evaluation harnesses)."""
    inp = write_jsonl(tmp_path / "q.jsonl", [q for q in QUERIES if q["id"] == "d"])
    with FakeOpenAIServer(ScriptedLingo()) as server:
        assert lingo_bp.main(lingo_args(server, inp, tmp_path / "out")) == lingo_bp.EXIT_OK
    user = [r for r in server.requests if identify_task(r)[0] == "user_judge"]
    assert [(r.get("temperature"), r.get("seed")) for r in user] == [(0.0, 0), (0.7, 1), (0.7, 2), (0.7, 3)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["judge_parse_failures"] == 4


def test_a_damaged_output_line_is_named_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    damaged = '{"id": "x"}\nnot json\n{"id": "y"}\n'
    (out / "trajectories.jsonl").write_text(damaged)
    spec = "openai:http://127.0.0.1:9/v1#m"
    inp = write_jsonl(tmp_path / "q.jsonl", QUERIES[:1])
    rc = lingo_bp.main(["--input", str(inp), "--policy", spec, "--judge", spec, "--out", str(out), "--no-progress"])
    assert rc == lingo_bp.EXIT_BAD_INPUT and "trajectories.jsonl:2: not a JSON record" in capsys.readouterr().err
    assert (out / "trajectories.jsonl").read_text() == damaged


def test_build_records_selection_rules():
    t = _traj([(-0.4, 0), (1.0, 1), (0.6, 0), (0.6, 0)])
    sft, pairs = lingo_bp.build_records(t, ("initial", "worst"))
    assert t["pearl_index"] == 2 and t["outcome"] == "improved"
    assert sft[0]["messages"][-1]["content"] == "r2" and sft[0]["thinking"] == "t2"
    assert [p["rejected"]["response"] for p in pairs] == ["r0", "r1"]
    _, pairs_all = lingo_bp.build_records(_traj([(-0.4, 0), (1.0, 1), (0.6, 0), (0.6, 0)]), ("all",))
    assert [p["rejected"]["response"] for p in pairs_all] == ["r0", "r1"]  # r3 ties the pearl: no pair
    t = _traj([(1.0, 1), (0.6, 1)])
    sft, pairs = lingo_bp.build_records(t)
    assert sft == [] and pairs == [] and t["pearl_index"] is None and t["outcome"] == "unchanged"
    assert t["after"]["round"] == 0  # best by Π when nothing is safe


def test_throughput_tool_smoke(capsys):
    from oyster_jax.csa import throughput  # noqa: PLC0415

    assert throughput.main(["--queries", "8", "--concurrency", "1,4", "--latency", "0.02", "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["concurrency"] for r in results] == [1, 4]
    assert all(r["finished"] == 8 and r["requests"] == 8 * 9 for r in results)
    assert results[0]["peak_in_flight"] == 1 and results[1]["peak_in_flight"] == 4
