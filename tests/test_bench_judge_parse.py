"""`python -m oyster_jax.bench.judge_parse`: the per-task counts read from Lingo-BP's calls.jsonl, and one short
run of the tiny random-weight model as judge without constrained decoding (every judge answer fails to parse,
so each query stops at its risk assessment after the retries)."""

import json

from oyster_jax.bench import judge_parse


def test_count_calls_counts_attempts_parse_failures_and_errors(tmp_path):
    path = tmp_path / "calls.jsonl"
    lines = [
        {"id": "a", "finished": False, "calls": [
            {"task": "assess", "attempt": 1, "parse_error": "JudgeParseError: no JSON"},
            {"task": "assess", "attempt": 2, "parse_error": None},
            {"task": "policy", "attempt": 1, "parse_error": None},
            {"task": "user_judge", "attempt": 1, "error": "timeout"},
        ]},
        {"id": "b", "finished": True, "calls": [{"task": "assess", "attempt": 1, "parse_error": "x"}]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert judge_parse.count_calls(path) == {
        "assess": {"calls": 3, "parse_failures": 2, "errors": 0},
        "policy": {"calls": 1, "parse_failures": 0, "errors": 0},
        "user_judge": {"calls": 1, "parse_failures": 0, "errors": 1},
    }


def test_unconstrained_tiny_judge_fails_every_assessment(tmp_path, capsys):
    out = tmp_path / "off"
    argv = ["--out", str(out), "--judge_schemas", "off", "--queries", "2", "--judge_retries", "1",
            "--policy_max_tokens", "4", "--judge_max_tokens", "24", "--concurrency", "2"]  # fmt: skip
    assert judge_parse.main(argv) == 0
    result = json.loads((out / "judge_parse.json").read_text())
    # 2 queries x (1 + 1 retry) risk assessments, none parsed; no query got further than its assessment.
    assert result["by_task"] == {"assess": {"calls": 4, "parse_failures": 4, "errors": 0}}
    assert (result["judge_calls"], result["judge_parse_failures"], result["finished"]) == (4, 4, 0)
    summary = json.loads((out / "lingo" / "summary.json").read_text())
    assert summary["failed"] == 2 and summary["calls_by_task"]["assess"]["parse_failures"] == 4
    assert "assess" in capsys.readouterr().out
