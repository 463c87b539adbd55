"""Attention benchmark: our Pallas flash kernel vs the XLA path (and cuDNN on NVIDIA GPUs).

    python -m oyster_jax.bench.attention --seq 1024,2048,4096,8192,16384,32768 --heads 40 --kv_heads 8 \\
        --head_dim 128 --dtype bfloat16 --json runs/bench_attention.json     # Qwen3-14B attention shape
    python -m oyster_jax.bench.attention --smoke                             # tiny, CPU, interpret mode

For every sequence length and implementation it times the forward and the forward+backward (dq, dk, dv)
of causal attention, and reports milliseconds and TFLOP/s. FLOPs are causal-aware: only visible
(query, key) pairs count, 4*H FLOPs each for the forward (QK^T, PV) and 10*H more for the backward
(QK^T recomputed, dV, dP, dQ, dK), i.e. forward+backward = 3.5x forward as in the FlashAttention
papers; every implementation is charged the same count. An implementation that runs out of
memory is reported as OOM, not as an error. Writes a JSON file (and a PNG of TFLOP/s) with --json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from oyster_jax.kernels.flash_attention import flash_attention
from oyster_jax.models.attention import xla_attention


def visible_pairs(T: int, S: int, causal: bool) -> int:
    """(query, key) pairs that a right-aligned causal mask leaves visible (all T*S without one)."""
    if not causal:
        return T * S
    off = S - T
    return sum(max(0, min(S, t + off + 1)) for t in range(T))


def attention_flops(B: int, T: int, S: int, N: int, H: int, causal: bool, backward: bool) -> float:
    per_pair = (4 + 10) * H if backward else 4 * H  # 2 FLOPs per MAC; 2 matmuls forward, 5 backward
    return float(B * N * visible_pairs(T, S, causal) * per_pair)


def implementations(platform: str, interpret: bool) -> dict:
    impls = {
        "pallas": lambda q, k, v, causal: flash_attention(q, k, v, causal=causal, interpret=interpret),
        "xla": lambda q, k, v, causal: xla_attention(q, k, v, causal=causal),
    }
    if platform == "gpu":
        impls["cudnn"] = lambda q, k, v, causal: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="cudnn"
        )
    return impls


def _time(fn, args, iters: int, warmup: int) -> float:
    """Median milliseconds of `fn(*args)` (already compiled by the warm-up calls)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _is_oom(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def bench_one(impl, B, T, N, K, H, dtype, causal, iters, warmup) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(T), 4)
    q = jax.random.normal(keys[0], (B, T, N, H), dtype)
    k = jax.random.normal(keys[1], (B, T, K, H), dtype)
    v = jax.random.normal(keys[2], (B, T, K, H), dtype)
    d_out = jax.random.normal(keys[3], (B, T, N, H), dtype)
    fwd = jax.jit(lambda q, k, v: impl(q, k, v, causal))

    @jax.jit
    def fwd_bwd(q, k, v, d_out):
        out, vjp = jax.vjp(lambda q, k, v: impl(q, k, v, causal), q, k, v)
        return out, *vjp(d_out)

    result = {}
    for name, fn, args, backward in (("fwd", fwd, (q, k, v), False), ("fwd_bwd", fwd_bwd, (q, k, v, d_out), True)):
        try:
            ms = _time(fn, args, iters, warmup)
        except Exception as e:  # noqa: BLE001  (a failed or OOM configuration is a result, not a crash)
            result[f"{name}_ms"] = None
            result[f"{name}_status"] = "OOM" if _is_oom(e) else f"error: {type(e).__name__}: {str(e)[:200]}"
            continue
        result[f"{name}_ms"] = ms
        result[f"{name}_tflops"] = attention_flops(B, T, T, N, H, causal, backward) / (ms * 1e-3) / 1e12
        result[f"{name}_status"] = "ok"
    return result


def _cell(row: dict, key: str, width: int, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        status = row.get(key.replace("_ms", "_status").replace("_tflops", "_status"), "")
        return f"{'OOM' if status == 'OOM' else 'n/a':>{width}}"
    return f"{value:>{width}{fmt}}"


def format_table(rows: list[dict]) -> str:
    header = f"{'seq':>6} {'impl':>7} {'fwd ms':>10} {'fwd TF/s':>9} {'f+b ms':>10} {'f+b TF/s':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['seq']:>6} {r['impl']:>7} {_cell(r, 'fwd_ms', 10, '.3f')} {_cell(r, 'fwd_tflops', 9, '.4g')} "
            f"{_cell(r, 'fwd_bwd_ms', 10, '.3f')} {_cell(r, 'fwd_bwd_tflops', 9, '.4g')}"
        )
    return "\n".join(lines)


def write_plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in zip(axes, ("fwd_tflops", "fwd_bwd_tflops"), ("forward", "forward + backward")):
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = [(r["seq"], r[key]) for r in rows if r["impl"] == impl and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("TFLOP/s (causal-aware)")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", default="1024,2048,4096,8192,16384,32768", help="comma-separated lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=40, help="query heads N")
    parser.add_argument("--kv_heads", type=int, default=8, help="key/value heads K (N % K == 0)")
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no_causal", action="store_true", help="full (non-causal) attention")
    parser.add_argument("--impls", default=None, help="subset, e.g. pallas,cudnn (default: all available)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="write results here (and a PNG beside it)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, kernels interpreted: a CPU check")
    args = parser.parse_args(argv)

    platform = jax.default_backend()
    if args.smoke:
        args.seq, args.heads, args.kv_heads, args.head_dim = "64,128", 4, 2, 64
        args.iters, args.warmup, args.dtype = 1, 1, "float32"
    seqs = [int(s) for s in args.seq.split(",") if s]
    if args.heads % args.kv_heads:
        parser.error(f"--heads {args.heads} must be a multiple of --kv_heads {args.kv_heads}")
    interpret = platform == "cpu"
    impls = implementations(platform, interpret)
    if args.impls:
        wanted = args.impls.split(",")
        unknown = [i for i in wanted if i not in impls]
        if unknown:
            parser.error(f"--impls {unknown} not available on {platform}; have {sorted(impls)}")
        impls = {i: impls[i] for i in wanted}
    causal = not args.no_causal
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    meta = {
        "date": datetime.date.today().isoformat(),
        "platform": platform,
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "batch": args.batch,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "dtype": args.dtype,
        "causal": causal,
        "interpret": interpret,
        "iters": args.iters,
        "command": "python -m oyster_jax.bench.attention " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    rows = []
    configs = [(T, name) for T in seqs for name in impls]
    for T, name in tqdm(configs, desc="attention configs"):
        r = bench_one(
            impls[name], args.batch, T, args.heads, args.kv_heads, args.head_dim, dtype, causal, args.iters, args.warmup
        )
        rows.append({"seq": T, "impl": name, **r})

    title = (
        f"{device.device_kind} · B={args.batch} N={args.heads} K={args.kv_heads} H={args.head_dim} "
        f"{args.dtype} {'causal' if causal else 'full'}{' · interpret' if interpret else ''}"
    )
    print(title)
    print(format_table(rows))
    summary = _speedups(rows)
    for line in summary:
        print(line)
    result = {"meta": meta, "rows": rows, "summary": summary}
    if args.json:
        out = pathlib.Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        write_plot(rows, out.with_suffix(".png"), title)
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def _speedups(rows: list[dict]) -> list[str]:
    """One line per length: forward+backward speed-up of pallas over each other implementation."""
    lines = []
    for T in dict.fromkeys(r["seq"] for r in rows):
        by_impl = {r["impl"]: r for r in rows if r["seq"] == T}
        mine = by_impl.get("pallas", {}).get("fwd_bwd_ms")
        if mine is None:
            continue
        parts = []
        for other, r in by_impl.items():
            if other != "pallas":
                theirs = r.get("fwd_bwd_ms")
                parts.append(f"{theirs / mine:.2f}x vs {other}" if theirs else f"{other} {r.get('fwd_bwd_status')}")
        lines.append(f"T={T}: pallas fwd+bwd {mine:.3f} ms" + (" (" + ", ".join(parts) + ")" if parts else ""))
    return lines


if __name__ == "__main__":
    main()
