"""Attention benchmark: our Pallas flash kernel vs the XLA path (and cuDNN on NVIDIA GPUs).

    python -m oyster_jax.bench.attention --seq 1024,2048,4096,8192,16384,32768 --heads 40 --kv_heads 8 \\
        --head_dim 128 --dtype bfloat16 --json runs/bench_attention.json     # Qwen3-14B attention shape
    python -m oyster_jax.bench.attention --smoke                             # tiny, CPU, interpret mode
    bash oyster_jax/bench/device_run.sh    # the prepared accelerator run: --check --tune 8192, $OUT/...

For every sequence length and implementation it times the forward and the forward+backward (dq, dk, dv)
of causal attention, and reports milliseconds and TFLOP/s. FLOPs are causal-aware: only visible
(query, key) pairs count, 4*H FLOPs each for the forward (QK^T, PV) and 10*H more for the backward
(QK^T recomputed, dV, dP, dQ, dK), i.e. forward+backward = 3.5x forward as in the FlashAttention
papers; every implementation is charged the same count. An implementation that runs out of
memory is reported as OOM, not as an error. Writes a JSON file (and a PNG of TFLOP/s) with --json.

--check compares out/dq/dk/dv of the kernels as timed (interpreted only on CPU) with the float32
reference at every length <= --check_max, and the process exits 1 when a pallas check fails (cuDNN is
checked too, for information only). --tune T times a built-in list of tiles (and, on GPU, Triton warps and
pipeline stages) per kernel at length T, forward first, then dq and dk/dv as forward+backward; the main
sweep then reports the fastest as "pallas" and the built-in defaults as "pallas_default".
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from oyster_jax import cli
from oyster_jax.core.files import atomic_write_text
from oyster_jax.kernels.flash_attention import (
    GPU_BLOCKS,
    TPU_BLOCKS,
    KernelTuning,
    attention_reference,
    default_style,
    flash_attention,
    flash_attention_with_style,
)
from oyster_jax.kernels.flash_attention import api as flash_api
from oyster_jax.kernels.flash_attention import gpu as flash_gpu
from oyster_jax.kernels.flash_attention.common import KERNELS
from oyster_jax.models.attention import xla_attention

# --check: |got - want| <= tol + tol * |want| elementwise against the float32 reference (numpy's allclose
# with atol = rtol = tol). Half precision cannot beat its own rounding (2^-9 relative for bf16) and the
# kernels round probabilities and dS to it before the matmuls. tests/tolerances.py holds the same numbers.
CHECK_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-2}


def visible_pairs(T: int, S: int, causal: bool) -> int:
    """(query, key) pairs that a right-aligned causal mask leaves visible (all T*S without one)."""
    if not causal:
        return T * S
    off = S - T
    return sum(max(0, min(S, t + off + 1)) for t in range(T))


def attention_flops(B: int, T: int, S: int, N: int, H: int, causal: bool, backward: bool) -> float:
    per_pair = (4 + 10) * H if backward else 4 * H  # 2 FLOPs per MAC; 2 matmuls forward, 5 backward
    return float(B * N * visible_pairs(T, S, causal) * per_pair)


def pallas_impl(interpret: bool, tuning: KernelTuning | None = None):
    """Our kernels: the public entry point (built-in defaults) or, with `tuning`, the internal one."""
    if tuning is None:
        return lambda q, k, v, causal: flash_attention(q, k, v, causal=causal, interpret=interpret)
    style = default_style()
    return lambda q, k, v, causal: flash_attention_with_style(
        q, k, v, style=style, causal=causal, interpret=interpret, tuning=tuning
    )


def cudnn_attention(q, k, v, causal):
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")


def implementations(platform: str, interpret: bool, tuning: KernelTuning | None = None) -> dict:
    """Name -> fn(q, k, v, causal). With `tuning` (after --tune), "pallas" runs it and "pallas_default"
    the built-in defaults, so the sweep reports both."""
    impls = {"pallas": pallas_impl(interpret, tuning)}
    if tuning is not None:
        impls["pallas_default"] = pallas_impl(interpret)
    impls["xla"] = lambda q, k, v, causal: xla_attention(q, k, v, causal=causal)
    if platform == "gpu":
        impls["cudnn"] = cudnn_attention
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


def make_inputs(B: int, T: int, N: int, K: int, H: int, dtype):
    """q [B, T, N, H], k, v [B, T, K, H], d_out [B, T, N, H]: the same for every implementation at T."""
    keys = jax.random.split(jax.random.PRNGKey(T), 4)
    q = jax.random.normal(keys[0], (B, T, N, H), dtype)
    k = jax.random.normal(keys[1], (B, T, K, H), dtype)
    v = jax.random.normal(keys[2], (B, T, K, H), dtype)
    d_out = jax.random.normal(keys[3], (B, T, N, H), dtype)
    return q, k, v, d_out


def _fwd_bwd_fn(impl, causal: bool):
    @jax.jit
    def fwd_bwd(q, k, v, d_out):  # -> out, dq, dk, dv
        out, vjp = jax.vjp(lambda q, k, v: impl(q, k, v, causal), q, k, v)
        return out, *vjp(d_out)

    return fwd_bwd


def bench_one(impl, B, T, N, K, H, dtype, causal, iters, warmup, passes=("fwd", "fwd_bwd")) -> dict:
    q, k, v, d_out = make_inputs(B, T, N, K, H, dtype)
    fwd = jax.jit(lambda q, k, v: impl(q, k, v, causal))
    fwd_bwd = _fwd_bwd_fn(impl, causal)

    result = {}
    for name, fn, args, backward in (("fwd", fwd, (q, k, v), False), ("fwd_bwd", fwd_bwd, (q, k, v, d_out), True)):
        if name not in passes:
            continue
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
    w = max([7] + [len(r["impl"]) for r in rows])
    header = f"{'seq':>6} {'impl':>{w}} {'fwd ms':>10} {'fwd TF/s':>9} {'f+b ms':>10} {'f+b TF/s':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['seq']:>6} {r['impl']:>{w}} {_cell(r, 'fwd_ms', 10, '.3f')} {_cell(r, 'fwd_tflops', 9, '.4g')} "
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


# ----------------------------------------------------------------------------------------------------
# --check: the kernels as timed against the float32 reference
# ----------------------------------------------------------------------------------------------------

CHECKED = ("out", "dq", "dk", "dv")


@functools.partial(jax.jit, static_argnames="tol")
def _error_stats(got, want, tol: float):
    """(max |got - want|, max |got - want| / (tol + tol * |want|), count of non-finite `got`)."""
    want = want.astype(jnp.float32)
    finite = jnp.isfinite(got)
    err = jnp.where(finite, jnp.abs(got.astype(jnp.float32) - want), jnp.inf)
    return jnp.max(err), jnp.max(err / (tol + tol * jnp.abs(want))), jnp.sum(~finite)


def compare(got: jax.Array, want: jax.Array, tol: float) -> dict:
    """How far `got` is from `want` under the elementwise bound |got - want| <= tol + tol * |want|:
    max_err_over_tol <= 1 (and every value finite) passes."""
    max_abs, max_over_tol, nonfinite = jax.device_get(_error_stats(got, want, tol))
    nonfinite = int(nonfinite)
    return {
        "max_abs_err": float(max_abs),
        "max_err_over_tol": float(max_over_tol),
        "nonfinite": nonfinite,
        "ok": nonfinite == 0 and float(max_over_tol) <= 1.0,
    }


def _merge(a: dict, b: dict) -> dict:
    return {
        "max_abs_err": max(a["max_abs_err"], b["max_abs_err"]),
        "max_err_over_tol": max(a["max_err_over_tol"], b["max_err_over_tol"]),
        "nonfinite": a["nonfinite"] + b["nonfinite"],
        "ok": a["ok"] and b["ok"],
    }


@functools.partial(jax.jit, static_argnames="causal")
def _reference_fwd_bwd(q, k, v, d_out, causal: bool):  # float32 q, d_out [B, T, G, H]; k, v [B, T, 1, H]
    out, vjp = jax.vjp(functools.partial(attention_reference, causal=causal), q, k, v)
    return out, *vjp(d_out)


def check_one(impl, B: int, T: int, N: int, K: int, H: int, dtype, causal: bool) -> dict:
    """out, dq, dk, dv of `impl` against `attention_reference` run in float32 on the same (already
    rounded) inputs, upcast: the exact answer for those inputs."""
    tol = CHECK_TOLERANCE[jnp.dtype(dtype).name]
    row = {"seq": T, "tol": tol}
    q, k, v, d_out = make_inputs(B, T, N, K, H, dtype)
    G = N // K
    try:
        got = jax.block_until_ready(_fwd_bwd_fn(impl, causal)(q, k, v, d_out))
        stats = {}
        # One K/V head and its G query heads at a time: heads are independent, and the reference's
        # [B, G, T, T] float32 scores are 1/K of all heads' (T = 8192, N = 40, K = 8: 1.3 GB, not 10.7).
        for h in range(K):
            qh, kh = slice(h * G, (h + 1) * G), slice(h, h + 1)
            f32 = lambda x: x.astype(jnp.float32)
            want = _reference_fwd_bwd(
                f32(q[:, :, qh]), f32(k[:, :, kh]), f32(v[:, :, kh]), f32(d_out[:, :, qh]), causal=causal
            )
            parts = (got[0][:, :, qh], got[1][:, :, qh], got[2][:, :, kh], got[3][:, :, kh])
            for name, g, w in zip(CHECKED, parts, want):
                one = compare(g, w, tol)
                stats[name] = _merge(stats[name], one) if name in stats else one
            del want
    except Exception as e:  # noqa: BLE001  (a kernel that cannot run fails its check; the run goes on)
        return {**row, "ok": False, "status": "OOM" if _is_oom(e) else f"error: {type(e).__name__}: {str(e)[:300]}"}
    ok = all(stats[name]["ok"] for name in CHECKED)
    return {**row, **stats, "ok": ok, "status": "ok" if ok else "FAIL"}


def format_check(row: dict) -> str:
    label = f"check T={row['seq']} {row['impl']}{'' if row['required'] else ' (informative)'}:"
    if all(name in row for name in CHECKED):
        parts = [
            f"{n} max|err| {row[n]['max_abs_err']:.3g} ({row[n]['max_err_over_tol']:.3g} of tol)"
            + (f" {row[n]['nonfinite']} non-finite" if row[n]["nonfinite"] else "")
            for n in CHECKED
        ]
        label += " " + ", ".join(parts) + f"; tol {row['tol']:g}"
    return f"{label} -> {row['status']}"


def run_checks(impls: dict, lengths: list[int], B, N, K, H, dtype, causal, rows: list, saved=lambda: None) -> None:
    """Appends one row per (length, impl) to `rows`, calling `saved` after each. impls: name -> (fn,
    required); a required check that fails makes the process exit non-zero."""
    for T in lengths:
        for name, (fn, required) in impls.items():
            row = {"impl": name, "required": required, **check_one(fn, B, T, N, K, H, dtype, causal)}
            print(format_check(row), flush=True)
            rows.append(row)
            saved()


def exit_status(result: dict) -> int:
    """1 when a required (pallas) check failed, else 0."""
    return 1 if result.get("checks_passed") is False else 0


# ----------------------------------------------------------------------------------------------------
# --tune: tiles (and on GPU num_warps / num_stages) per kernel at one length
# ----------------------------------------------------------------------------------------------------

# (block_q, block_k, num_warps, num_stages) per GPU kernel, tried after the built-in defaults (an entry
# equal to them is not timed twice): 10 forward, 6 dq, 6 dk/dv at head_dim 128. Pruned by
# shared memory (K and V tiles of H = 128 bf16 take bk * 512 B per pipeline stage: bk = 128 fits 3 stages
# of the ~227 KB an H100/H200 block may use, not 4) and registers (a [128, 128] float32 accumulator needs
# 8 warps; dk/dv keeps two [bk, H] of them).
GPU_CANDIDATES = {
    "fwd": [
        (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 3), (128, 128, 8, 2),
        (128, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3), (64, 128, 8, 3),
    ],
    "dq": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2)],
    "dkv": [(64, 128, 8, 2), (64, 128, 8, 3), (64, 128, 4, 2), (32, 128, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2)],
}  # fmt: skip
TPU_TILES = (256, 512, 1024)  # every (block_q, block_k) pair, per kernel
SMOKE_TILES = (32, 32)  # --smoke: one candidate besides the defaults, several tiles per sequence at T = 128


def effective_config(style: str, B, T, N, K, H, dtype, tuning: KernelTuning | None) -> dict:
    """kernel -> the tiles it runs with after `fit_block` (and on GPU its num_warps / num_stages)."""
    q = jax.ShapeDtypeStruct((B, T, N, H), dtype)
    k = jax.ShapeDtypeStruct((B, T, K, H), dtype)
    p = flash_api._problem(
        q, k, None, causal=True, sm_scale=None, block_q=None, block_k=None, interpret=False, style=style,
        tuning=tuning,
    )  # fmt: skip
    config = {}
    for kernel in KERNELS:
        config[kernel] = {"block_q": getattr(p.blocks, f"{kernel}_q"), "block_k": getattr(p.blocks, f"{kernel}_k")}
        if style == "gpu":
            config[kernel]["num_warps"], config[kernel]["num_stages"] = flash_gpu.launch_config(p, kernel)
    return config


def explicit_defaults(style: str, B, T, N, K, H, dtype) -> KernelTuning:
    """The built-in choice spelled out, so every candidate and the printed result are complete."""
    if style != "gpu":
        return KernelTuning(blocks=TPU_BLOCKS)
    config = effective_config(style, B, T, N, K, H, dtype, None)
    launch = {}
    for kernel in KERNELS:
        launch[f"{kernel}_warps"] = config[kernel]["num_warps"]
        launch[f"{kernel}_stages"] = config[kernel]["num_stages"]
    return KernelTuning(blocks=GPU_BLOCKS, **launch)


def with_kernel(base: KernelTuning, kernel: str, block_q: int, block_k: int, warps, stages) -> KernelTuning:
    blocks = dataclasses.replace(base.blocks, **{f"{kernel}_q": block_q, f"{kernel}_k": block_k})
    return dataclasses.replace(base, blocks=blocks, **{f"{kernel}_warps": warps, f"{kernel}_stages": stages})


def stage_candidates(style: str, kernel: str, base: KernelTuning, smoke: bool) -> list[KernelTuning]:
    """`base` (the best so far) first, then `kernel`'s alternatives with the other kernels as in `base`."""
    warps, stages = base.launch(kernel)
    if smoke:
        specs = [(*SMOKE_TILES, warps, stages)]
    elif style == "gpu":
        specs = GPU_CANDIDATES[kernel]
    else:
        specs = [(bq, bk, None, None) for bq in TPU_TILES for bk in TPU_TILES]
    return [base] + [with_kernel(base, kernel, *spec) for spec in specs]


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def tune(
    style: str, B, T, N, K, H, dtype, causal: bool, iters: int, warmup: int, interpret: bool, smoke: bool,
    budget_s: float | None, rows: list, saved=lambda: None,
) -> KernelTuning:  # fmt: skip
    """Coordinate search: forward candidates timed as the forward, then dq and dk/dv candidates (with the
    best forward, then the best dq, fixed) as forward+backward. Returns the fastest; appends one row per
    candidate to `rows` (calling `saved` after each), and a candidate that fails to compile or runs out
    of memory is a row with its error.
    `budget_s` is shared out by stage (stage i may run until i+1 thirds of it are spent), so a slow
    forward search cannot starve dq and dk/dv; candidates past it are rows marked skipped."""
    best = explicit_defaults(style, B, T, N, K, H, dtype)
    timed = {}  # (effective config, pass) -> row: a candidate equal to one timed is not re-run
    start = time.perf_counter()
    for stage, kernel in enumerate(KERNELS):
        measure = "fwd" if kernel == "fwd" else "fwd_bwd"
        deadline = None if budget_s is None else start + budget_s * (stage + 1) / len(KERNELS)
        scored, seen = [], set()
        for candidate in stage_candidates(style, kernel, best, smoke):
            config = effective_config(style, B, T, N, K, H, dtype, candidate)
            key = (_config_key(config), measure)
            if key in seen:
                continue  # fit_block made two candidates of this stage the same
            seen.add(key)
            row = {"stage": kernel, "measure": measure, "config": config[kernel]}
            row["tuning"] = dataclasses.asdict(candidate)
            if key in timed:  # the best of the previous stage, already timed as forward+backward
                row |= {k: timed[key][k] for k in ("ms", "tflops", "status")} | {"repeat": True}
            elif deadline is not None and time.perf_counter() > deadline:
                row |= {"ms": None, "tflops": None, "status": f"skipped: tune budget {budget_s:g} s spent"}
            else:
                impl = pallas_impl(interpret, candidate)
                r = bench_one(impl, B, T, N, K, H, dtype, causal, iters, warmup, passes=(measure,))
                row |= {"ms": r[f"{measure}_ms"], "tflops": r.get(f"{measure}_tflops")}
                row["status"] = r[f"{measure}_status"]
                timed[key] = row
            rows.append(row)
            saved()
            print(format_tune_row(row), flush=True)
            if row["status"] == "ok":
                scored.append((row["ms"], candidate))
        if scored:
            best = min(scored, key=lambda mc: mc[0])[1]
        else:
            print(f"no {kernel} candidate ran: {kernel} keeps {best.blocks} and {best.launch(kernel)}")
    return best


def format_tune_row(row: dict) -> str:
    c = row["config"]
    launch = f"{c.get('num_warps', '-'):>5} {c.get('num_stages', '-'):>6}"
    ms = f"{row['ms']:>9.3f}" if row["ms"] is not None else f"{'-':>9}"
    tflops = f"{row['tflops']:>7.4g}" if row.get("tflops") is not None else f"{'-':>7}"
    status = row["status"] + (" (timed above)" if row.get("repeat") else "")
    tile = f"{c['block_q']:>5} x {c['block_k']:<5}"
    return f"{row['stage']:>5} {row['measure']:>7} {tile} {launch} {ms} {tflops}  {status}"


TUNE_HEADER = f"{'stage':>5} {'timed':>7} {'tile q x k':>13} {'warps':>5} {'stages':>6} {'ms':>9} {'TF/s':>7}  status"


def paste_lines(style: str, tuning: KernelTuning, config: dict, head_dim: int) -> list[str]:
    """Lines to adopt the chosen tuning: the defaults in common.py (and, on GPU, gpu.launch_config's
    numbers for this head size), and the KernelTuning that reproduces it."""
    lines = [f"{'GPU_BLOCKS' if style == 'gpu' else 'TPU_BLOCKS'} = {tuning.blocks!r}"]
    if style == "gpu":
        launch = "; ".join(f"{k} {config[k]['num_warps']} warps {config[k]['num_stages']} stages" for k in KERNELS)
        lines.append(f"# gpu.launch_config for head_dim {head_dim}: {launch}")
    lines.append(f"tuning = {tuning!r}")
    return lines


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", default="1024,2048,4096,8192,16384,32768", help="comma-separated lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=40, help="query heads N")
    parser.add_argument("--kv_heads", type=int, default=8, help="key/value heads K (N %% K == 0)")
    parser.add_argument("--head_dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no_causal", action="store_true", help="full (non-causal) attention")
    parser.add_argument("--impls", default=None, help="subset, e.g. pallas,cudnn (default: all available)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="write results here (and a PNG beside it)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, kernels interpreted: a CPU check")
    parser.add_argument("--check", action="store_true", help="compare with the float32 reference first")
    parser.add_argument("--check_max", type=int, default=8192, help="--check lengths up to this one")
    parser.add_argument("--tune", type=int, default=None, metavar="T", help="tune the pallas kernels at length T")
    parser.add_argument("--tune_budget_s", type=float, default=None, help="skip the candidates left after this")
    args = parser.parse_args(argv)

    platform = jax.default_backend()
    if args.smoke:
        args.seq, args.heads, args.kv_heads, args.head_dim = "64,128", 4, 2, 64
        args.iters, args.warmup, args.dtype = 1, 1, "float32"
    seqs = [int(s) for s in args.seq.split(",") if s]
    if args.heads % args.kv_heads:
        parser.error(f"--heads {args.heads} must be a multiple of --kv_heads {args.kv_heads}")
    interpret = platform == "cpu"
    # Names only here: "pallas" is rebuilt with the chosen tuning once --tune has run.
    available = implementations(platform, interpret, KernelTuning() if args.tune else None)
    wanted = list(available)
    if args.impls:
        wanted = args.impls.split(",")
        unknown = [i for i in wanted if i not in available]
        if unknown:
            parser.error(f"--impls {unknown} not available on {platform}; have {sorted(available)}")
    causal = not args.no_causal
    dtype = jnp.dtype(args.dtype)
    shape = (args.batch, args.heads, args.kv_heads, args.head_dim)  # B, N, K, H
    style = default_style()
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
    rows: list[dict] = []
    result = {"meta": meta, "rows": rows, "summary": []}
    out = pathlib.Path(args.json) if args.json else None

    def save() -> None:  # after every phase, so a run cut short still leaves what it measured
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, json.dumps(result, indent=2))

    checks: list[dict] = []
    check_lengths = [T for T in seqs if T <= args.check_max] if args.check else []
    if check_lengths:
        result["checks"] = checks
        to_check = {"pallas_default" if args.tune else "pallas": (pallas_impl(interpret), True)}
        if platform == "gpu":
            to_check["cudnn"] = (cudnn_attention, False)
        run_checks(to_check, check_lengths, args.batch, *shape[1:], dtype, causal, checks, save)

    tuning = None
    if args.tune:
        B, N, K, H = shape
        print(f"tune T={args.tune} ({style} kernels): the forward timed alone, dq and dk/dv as forward+backward")
        print(TUNE_HEADER)
        start = time.perf_counter()
        result["tune_rows"] = tune_rows = []
        tuning = tune(
            style, B, args.tune, N, K, H, dtype, causal, args.iters, args.warmup, interpret, args.smoke,
            args.tune_budget_s, tune_rows, save,
        )  # fmt: skip
        config = effective_config(style, B, args.tune, N, K, H, dtype, tuning)
        is_default = _config_key(config) == _config_key(effective_config(style, B, args.tune, N, K, H, dtype, None))
        meta["tuning"] = {
            "seq": args.tune,
            "style": style,
            "chosen": dataclasses.asdict(tuning),
            "effective": config,
            "is_default": is_default,
            "paste": paste_lines(style, tuning, config, H),
            "budget_s": args.tune_budget_s,
            "elapsed_s": time.perf_counter() - start,
        }
        print("chosen" + (" (the built-in defaults)" if is_default else "") + "; to adopt it:")
        for line in meta["tuning"]["paste"]:
            print("    " + line)
        save()
        if check_lengths and not is_default:
            tuned = {"pallas": (pallas_impl(interpret, tuning), True)}
            run_checks(tuned, check_lengths, B, N, K, H, dtype, causal, checks, save)
    if check_lengths:
        result["checks_passed"] = all(c["ok"] for c in checks if c["required"])

    impls = implementations(platform, interpret, tuning)
    impls = {name: impls[name] for name in wanted}
    configs = [(T, name) for T in seqs for name in impls]
    for T, name in tqdm(configs, desc="attention configs"):
        r = bench_one(impls[name], args.batch, T, *shape[1:], dtype, causal, args.iters, args.warmup)
        rows.append({"seq": T, "impl": name, **r})
        save()

    title = (
        f"{device.device_kind} · B={args.batch} N={args.heads} K={args.kv_heads} H={args.head_dim} "
        f"{args.dtype} {'causal' if causal else 'full'}{' · interpret' if interpret else ''}"
    )
    print(title)
    print(format_table(rows))
    result["summary"] = _speedups(rows)
    for line in result["summary"]:
        print(line)
    if check_lengths:
        required = [c for c in checks if c["required"]]
        failed = [c for c in required if not c["ok"]]
        informative = [c for c in checks if not c["required"] and not c["ok"]]
        print(f"checks: {len(required) - len(failed)} of {len(required)} pallas checks passed")
        for c in failed + informative:
            print("    " + format_check(c))
    if out is not None:
        save()
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
    sys.exit(exit_status(main()))
