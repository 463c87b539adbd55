"""Lingo-BP throughput: queries per minute at several concurrency levels.

    python -m oyster_jax.csa.throughput                       # scripted local server, 50 ms per request
    python -m oyster_jax.csa.throughput --latency 0.2 --queries 64 --concurrency 1,4,16
    python -m oyster_jax.csa.throughput --policy openai:http://127.0.0.1:8000/v1#tiny \
        --judge openai:http://127.0.0.1:8000/v1#tiny --queries 16 --rounds 1

Without --policy/--judge it starts the scripted OpenAI-compatible server (oyster_jax.csa.scripted) on
127.0.0.1 with an artificial per-request latency, so the number measures the engine's concurrency, not a
model. Each level runs in a fresh temporary output directory. Prints one line per level and a summary.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from oyster_jax import cli
from oyster_jax.csa import lingo_bp
from oyster_jax.csa.scripted import ScriptedLingo
from oyster_jax.llm.spec import backend_from_spec
from oyster_jax.llm.testing import FakeOpenAIServer


def _queries(n: int, path: str | None) -> list[lingo_bp.Query]:
    if path:
        return lingo_bp.read_queries(path)[:n]
    return [lingo_bp.Query(id=f"tp{i}", query=f"benchmark question {i}", language="en") for i in range(n)]


def measure(policy_spec, judge_spec, queries, concurrency, rounds, timeout=120.0, max_tokens=None) -> dict:

    options = {"max_concurrency": concurrency, "max_batch": concurrency, "timeout": timeout}
    policy = backend_from_spec(policy_spec, **options)
    judge = policy if judge_spec == policy_spec else backend_from_spec(judge_spec, **options)
    config = lingo_bp.EngineConfig(rounds=rounds)
    if max_tokens:
        config.policy_sampling = {**config.policy_sampling, "max_tokens": max_tokens}
    engine = lingo_bp.Engine(policy, judge, config=config)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.monotonic()
        result = lingo_bp.run(queries, engine, out, concurrency=concurrency, progress=False, plot=False, fsync=True)
        wall = time.monotonic() - t0
    requests = sum(getattr(b, "requests", 0) for b in {id(policy): policy, id(judge): judge}.values())
    peak = max(getattr(b, "peak_in_flight", 0) for b in (policy, judge))
    for b in {id(policy): policy, id(judge): judge}.values():
        b.close()
    return {
        "concurrency": concurrency,
        "queries": len(queries),
        "finished": len(queries) - result.summary["failed"],
        "wall_s": round(wall, 2),
        "queries_per_min": round(60.0 * len(queries) / wall, 1),
        "requests": requests,
        "peak_in_flight": peak,
    }


def main(argv=None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", help="SPEC; default: the scripted local server")
    p.add_argument("--judge", help="SPEC, or 'scripted' for the scripted server; default: same as --policy")
    p.add_argument("--max_tokens", type=int, default=None, help="policy max_tokens (e.g. for a local tiny model)")
    p.add_argument("--input", help="queries JSONL (default: synthetic queries)")
    p.add_argument("--queries", type=int, default=48)
    p.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--latency", type=float, default=0.05, help="scripted server: seconds per request")
    p.add_argument("--warmup", action="store_true", help="run each level once unmeasured first (compiles, caches)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    queries = _queries(args.queries, args.input)
    server = None
    if args.policy is None or args.judge == "scripted":
        server = FakeOpenAIServer(ScriptedLingo(), latency=args.latency).start()
        scripted = f"openai:{server.base_url}#scripted"
        where = f"judge: scripted server, {args.latency * 1000:.0f} ms/request"
        args.policy = args.policy or scripted
        args.judge = scripted if args.judge in (None, "scripted") else args.judge
    judge = args.judge or args.policy
    where = f"policy: {args.policy}; " + (where if server else f"judge: {judge}")
    results = []
    try:
        for c in levels:
            if args.warmup:
                measure(args.policy, judge, queries, c, args.rounds, max_tokens=args.max_tokens)
            r = measure(args.policy, judge, queries, c, args.rounds, max_tokens=args.max_tokens)
            results.append(r)
            print(
                f"concurrency {c:>3}: {r['finished']}/{r['queries']} queries in {r['wall_s']:.1f}s = "
                f"{r['queries_per_min']:.1f} queries/min ({r['requests']} requests, peak {r['peak_in_flight']} "
                f"in flight)",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
    by_level = {r["concurrency"]: r for r in results}  # the last measurement of each level
    if len(by_level) > 1:
        lo, hi = by_level[min(by_level)], by_level[max(by_level)]
        print(f"[{where}] concurrency {hi['concurrency']} vs {lo['concurrency']}: "
              f"{hi['queries_per_min'] / lo['queries_per_min']:.1f}x queries/min")  # fmt: skip
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
