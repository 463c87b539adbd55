"""Judge parse failures of a local model as Lingo-BP's judge, with and without constrained JSON decoding.

    python -m oyster_jax.bench.judge_parse --judge_schemas off --out runs/judge_parse/off
    python -m oyster_jax.bench.judge_parse --judge_schemas on --out runs/judge_parse/on
    python -m oyster_jax.bench.judge_parse --ckpt ~/.cache/oyster_jax/models/smollm2-135m-instruct ...

Without `--ckpt` the model is the tiny random-weight one (`configs/models/tiny.py`, `init_params` with
`jax.random.key(--init_seed)`, the bundled seed tokenizer), written once to OUT/tiny and reused. Policy, judges
and optimizer are that one model through `local:` (LocalJaxBackend). `--queries` harmless queries ("How do I
keep houseplant number N healthy through the winter?") go through one real Lingo-BP run
(`csa.lingo_bp.main`, one round) in OUT/lingo; `--judge_schemas` is passed on: `on` constrains every judge and
optimizer answer to its task's schema (`csa.judge_schemas`), `off` asks for none.

The counts are Lingo-BP's own: per task, calls and parse failures are read from OUT/lingo/calls.jsonl (one
entry per attempt, `parse_error` set when the answer did not parse) and checked against `calls_by_task` in
OUT/lingo/summary.json; a mismatch is an error, not a number. Written: OUT/judge_parse.json and a table on
stdout. A judge task that never parses stops its query after `--judge_retries` extra attempts, so an
unconstrained random model makes (1 + retries) judge calls per query, all of them failures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import jax

from oyster_jax import convert, models
from oyster_jax.core.files import atomic_write_json
from oyster_jax.csa import call_log, lingo_bp
from oyster_jax.data import SEED_DIR

QUERY = "How do I keep houseplant number {n} healthy through the winter?"
JUDGE_TASKS = tuple(t for t, role in call_log.ROLE_OF_TASK.items() if role == "judge")


def tiny_checkpoint(path: pathlib.Path, seed: int) -> pathlib.Path:
    """The tiny random-weight model with the seed tokenizer at `path` (written if absent)."""
    if not (path / "tokenizer.json").exists():
        cfg = models.model_config_from_file("tiny")
        convert.save_model(path, cfg, models.init_params(cfg, jax.random.key(seed)))
        shutil.copy(SEED_DIR / "tokenizer.json", path / "tokenizer.json")
    return path


def count_calls(calls_path: pathlib.Path) -> dict[str, dict]:
    """task -> {calls, parse_failures, errors} over every attempt logged in calls.jsonl."""
    out: dict[str, dict] = {}
    for line in calls_path.read_text(encoding="utf-8").splitlines():
        for call in json.loads(line)["calls"]:
            row = out.setdefault(call["task"], {"calls": 0, "parse_failures": 0, "errors": 0})
            row["calls"] += 1
            row["errors"] += int("error" in call)
            row["parse_failures"] += int(call.get("parse_error") is not None)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m oyster_jax.bench.judge_parse", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (OUT/lingo is the Lingo-BP run; rerun resumes)")
    p.add_argument("--judge_schemas", choices=("on", "off"), required=True, help="constrained JSON decoding")
    p.add_argument("--ckpt", default=None, help="model directory (default: the tiny random-weight model)")
    p.add_argument("--init_seed", type=int, default=0, help="jax.random.key of the tiny model's weights")
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--judge_retries", type=int, default=3)
    p.add_argument("--policy_max_tokens", type=int, default=32)
    p.add_argument("--judge_max_tokens", type=int, default=384)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="Lingo-BP's sampling seed")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = pathlib.Path(args.ckpt).expanduser() if args.ckpt else tiny_checkpoint(out / "tiny", args.init_seed)
    queries = out / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"id": f"q{n}", "query": QUERY.format(n=n)}) + "\n" for n in range(args.queries)),
        encoding="utf-8",
    )
    run_dir = out / "lingo"
    spec = f"local:{ckpt}"
    lingo_argv = [
        "--input", str(queries), "--policy", spec, "--judge", spec, "--out", str(run_dir), "--rounds", "1",
        "--language", "en", "--concurrency", str(args.concurrency), "--judge_retries", str(args.judge_retries),
        "--judge_schemas", args.judge_schemas, "--seed", str(args.seed), "--no_progress",
        "--policy_sampling", f"max_tokens={args.policy_max_tokens}",
        "--judge_sampling", f"max_tokens={args.judge_max_tokens}",
    ]  # fmt: skip
    print("python -m oyster_jax.csa.lingo_bp " + " ".join(lingo_argv), flush=True)
    rc = lingo_bp.main(lingo_argv)
    if rc != lingo_bp.EXIT_OK:
        print(f"error: Lingo-BP exited {rc}", file=sys.stderr)
        return rc
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    counted = count_calls(run_dir / call_log.CALLS_NAME)
    for task, row in counted.items():
        logged = summary["calls_by_task"].get(task, {})
        if any(row[k] != logged.get(k) for k in row):
            print(f"error: {task}: calls.jsonl counts {row}, summary.json {logged}", file=sys.stderr)
            return 1
    judge = {k: sum(counted.get(t, {}).get(k, 0) for t in JUDGE_TASKS) for k in ("calls", "parse_failures")}
    result = {
        "judge_schemas": args.judge_schemas,
        "model": str(ckpt) if args.ckpt else f"tiny random init key({args.init_seed})",
        "queries": args.queries,
        "finished": summary["total"] - summary["failed"],
        "judge_calls": judge["calls"],
        "judge_parse_failures": judge["parse_failures"],
        "judge_parse_failure_rate": judge["parse_failures"] / judge["calls"] if judge["calls"] else None,
        "by_task": counted,
        "lingo_bp_argv": lingo_argv,
    }
    atomic_write_json(out / "judge_parse.json", result)
    print(f"judge_schemas={args.judge_schemas}: {result['finished']}/{args.queries} queries finished")
    for task, row in sorted(counted.items()):
        print(f"  {task:14s} parse failures {row['parse_failures']:4d} / {row['calls']:4d} calls")
    rate = result["judge_parse_failure_rate"]
    print(f"  judges ({', '.join(JUDGE_TASKS)}): {judge['parse_failures']} / {judge['calls']}"
          + ("" if rate is None else f" = {rate:.1%}"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
