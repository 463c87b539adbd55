"""The audit trail of Lingo-BP's model calls and the accounting built on it.

Every call the engine makes (each attempt of each task, judges, optimizer and policy alike) is logged by
the judge client (`JudgeClient.ask(log=...)`) with its raw reasoning and content, parse error (None when it
parsed), attempt number, sampling, usage, finish reason and whether it came from the call cache. The engine
writes one line per processed query to `calls.jsonl` beside `trajectories.jsonl`:

    {"id": "<query id>", "finished": true | false, "calls": [{task, attempt, backend, messages, sampling,
     reasoning, content, parse_error, usage, finish_reason, cached, elapsed_s} | {..., error}, ...]}

A query that failed and was retried on resume has one line per try (the file is an audit log: lines are
never superseded or removed). Per-task counters (`JudgeClient` `stats["tasks"]`) go into each trajectory
as `tasks`, and `totals` / `role_usage` / `parse_failure_rates` sum them for `summary.json`.
"""

from __future__ import annotations

from oyster_jax.csa.judge_client import TASK_COUNTERS

__all__ = [
    "CALLS_NAME",
    "ROLE_OF_TASK",
    "ROLES",
    "TASKS",
    "calls_record",
    "parse_failure_rates",
    "role_usage",
    "totals",
]

CALLS_NAME = "calls.jsonl"
# Which model answers each task: the judge (assessment and both judges), the optimizer (chain extraction and
# backward step), the policy (its first answer and each recombination).
ROLE_OF_TASK = {
    "assess": "judge",
    "user_judge": "judge",
    "safety_judge": "judge",
    "extract_chain": "optimizer",
    "backward": "optimizer",
    "policy": "policy",
    "recombine": "policy",
}
TASKS = tuple(ROLE_OF_TASK)
ROLES = ("policy", "judge", "optimizer")
_USAGE_KEYS = ("calls", "cached", "prompt_tokens", "completion_tokens")


def calls_record(query_id: str, calls: list[dict], finished: bool) -> dict:
    return {"id": query_id, "finished": bool(finished), "calls": list(calls)}


def totals(per_query: list[dict]) -> dict[str, dict]:
    """Sum per-query `tasks` counters: task -> {calls, parse_failures, errors, cached, prompt_tokens,
    completion_tokens}, every task of the engine present (zeros when it never ran)."""
    out = {task: dict.fromkeys(TASK_COUNTERS, 0) for task in TASKS}
    for tasks in per_query:
        for task, counters in (tasks or {}).items():
            row = out.setdefault(task, dict.fromkeys(TASK_COUNTERS, 0))
            for key in TASK_COUNTERS:
                row[key] += int(counters.get(key, 0))
    return out


def role_usage(task_totals: dict[str, dict]) -> dict[str, dict]:
    """role -> {calls, cached, prompt_tokens, completion_tokens}; tokens count paid calls only."""
    out = {role: dict.fromkeys(_USAGE_KEYS, 0) for role in ROLES}
    for task, row in task_totals.items():
        role = out.setdefault(ROLE_OF_TASK.get(task, task), dict.fromkeys(_USAGE_KEYS, 0))
        for key in _USAGE_KEYS:
            role[key] += row.get(key, 0)
    return out


def parse_failure_rates(task_totals: dict[str, dict]) -> dict[str, float | None]:
    """task -> parse failures / calls that returned an answer (None when the task never got one)."""
    out = {}
    for task, row in task_totals.items():
        answered = row["calls"] - row["errors"]
        out[task] = row["parse_failures"] / answered if answered > 0 else None
    return out
