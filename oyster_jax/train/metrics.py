"""Step metrics: FLOPs and MFU, the measured matmul roofline, metrics.jsonl + TensorBoard, and the PNG of curves."""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from oyster_jax.models import ModelConfig
from oyster_jax.train import workdir as workdir_lib

# Curves drawn in the PNG, in this order, when present.
PLOTTED = (
    "loss",
    "nll_loss",
    "learning_rate",
    "grad_norm",
    "rewards/accuracies",
    "rewards/margins",
    "log_odds_ratio",
    "tokens_per_s",
    "mfu",
)


def train_flops_per_step(cfg: ModelConfig, batch_rows: int, seq_len: int, reference_forward: bool = False) -> float:
    """Forward + backward FLOPs of one step over `batch_rows` rows of `seq_len` (causal-aware attention).

    Count the rows the step actually runs (`layout.rows` x `layout.row_len`: one row per pair under prompt
    sharing). A frozen reference model adds one forward pass (a third of forward + backward).
    """
    flops = cfg.flops_per_token(seq_len) * batch_rows * seq_len
    return flops * (4.0 / 3.0) if reference_forward else flops


# Dense bf16 matmul peak per chip in FLOP/s (vendor datasheets, without sparsity), matched against
# `device.device_kind` in this order (the more specific names first).
PEAK_BF16_FLOPS = (
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports "TPU v5"
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("a100", 312e12),
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
)


def table_peak_flops(device_kind: str, dtype: str) -> float | None:
    """The chip's published dense peak for `dtype` compute, or None when the table does not know it (an
    unknown chip, or compute in another dtype than bfloat16)."""
    if dtype != "bfloat16":
        return None
    kind = device_kind.lower()
    return next((flops for name, flops in PEAK_BF16_FLOPS if name in kind), None)


def peak_flops_per_device(stated_tflops: float, device, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device that MFU is measured against, where it comes from).

    `stated_tflops` (config.peak_tflops) wins; otherwise the per-chip table; on CPU, which has no
    published peak, this process's measured matmul rate (`measure_matmul_flops`), labelled as such; a chip
    neither the table nor the config knows gets None: no MFU is logged rather than a wrong one.
    """
    if stated_tflops and stated_tflops > 0:
        return float(stated_tflops) * 1e12, "config.peak_tflops"
    if device.platform == "cpu":
        rate = measure_matmul_flops(jnp.dtype(dtype))
        return rate, f"measured {dtype} 512x512 matmul on this CPU (no published peak)"
    peak = table_peak_flops(device.device_kind, dtype)
    if peak is None:
        return None, f"unknown for {device.device_kind!r} with {dtype} compute: set config.peak_tflops for MFU"
    return peak, f"{device.device_kind} {dtype} dense peak (train/metrics.py table)"


def throughput(flops_per_step: float, tokens_per_step: int, seconds: float, peak_total: float | None) -> dict:
    """tokens_per_s (token positions the step ran, padding included), tflops_per_s and mfu (when the peak
    of all devices, `peak_total`, is known) of one step that took `seconds`."""
    out = {"tokens_per_s": tokens_per_step / seconds, "tflops_per_s": flops_per_step / seconds / 1e12}
    if peak_total:
        out["mfu"] = flops_per_step / seconds / peak_total
    return out


def measure_matmul_flops(dtype=jnp.float32, n: int = 512, seconds: float = 1.0) -> float:
    """FLOP/s of a square matmul on the default device: the roofline CPU MFU is measured against.

    On CPU (no published peak) this is the honest denominator: what this process can get from the cores.
    """
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = math.inf
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(4):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / 4)
    return 2.0 * n**3 / best


class MetricsWriter:
    """Appends one JSON line per step to `metrics.jsonl` and mirrors scalars to TensorBoard.

    For a `gs://` directory both files are written to a local staging directory and copied up every
    `sync_seconds` and at `close()`: object stores have no append, and tensorboardX cannot write there.
    """

    def __init__(self, directory, resume_step: int = 0, sync_seconds: float = 60.0):
        self.directory = workdir_lib.resolve(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remote = workdir_lib.is_remote(self.directory)
        if self._remote:
            local = pathlib.Path(tempfile.mkdtemp(prefix="oyster_metrics_"))
        else:
            local = pathlib.Path(self.directory)
        self._local = local
        self._sync_seconds = sync_seconds
        self._last_sync = time.monotonic()
        # A resumed run redoes the steps after its checkpoint: drop their lines from the killed run.
        remote_jsonl = self.directory / "metrics.jsonl"
        if remote_jsonl.exists():
            kept = [line for line in remote_jsonl.read_text().splitlines() if _step_of(line) <= resume_step]
            workdir_lib.write_text(local / "metrics.jsonl", "".join(line + "\n" for line in kept))
        self.jsonl = local / "metrics.jsonl"
        self._file = self.jsonl.open("a")
        self._tb = None
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(local / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # pragma: no cover - tensorboardX is a pinned dependency
            pass

    def write(self, step: int, scalars: dict) -> None:
        record = {"step": int(step)} | json_safe(scalars)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._remote and time.monotonic() - self._last_sync > self._sync_seconds:
            self._sync()

    def _sync(self) -> None:
        """Copy the staged files up (whole files: each sync replaces the previous copy)."""
        if self._tb is not None:
            self._tb.flush()
        for src in self._local.rglob("*"):
            if src.is_file():
                dst = self.directory / src.relative_to(self._local).as_posix()
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._remote:
            self._sync()
            shutil.rmtree(self._local, ignore_errors=True)


def _plain(v):
    """A JSON value: floats as floats, NaN/Inf as None (strict JSON; the curves show a gap there)."""
    v = np.asarray(v)
    if v.ndim == 0:
        f = float(v)
        return f if math.isfinite(f) else None
    return [_plain(x) for x in v]


def json_safe(scalars: dict) -> dict:
    """`scalars` with every value made strict-JSON (non-finite -> None)."""
    return {k: _plain(v) for k, v in scalars.items()}


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable line (cut by a kill) is dropped


def read_jsonl(path) -> list[dict]:
    path = workdir_lib.resolve(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_curves(records_by_stage: dict[str, list[dict]], out_png, title: str = "") -> epath.Path | None:
    """One panel per metric, one line per stage (x = global step across stages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in PLOTTED if any(k in r for recs in records_by_stage.values() for r in recs)]
    if not keys:
        return None
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    offset = 0
    for i, (stage, recs) in enumerate(records_by_stage.items()):
        steps = np.array([r["step"] for r in recs]) + offset
        for ax, k in zip(axes.flat, keys):
            ys = np.asarray([r.get(k, np.nan) for r in recs], float)
            if not np.all(np.isnan(ys)):
                ax.plot(steps, ys, label=stage, color=f"C{i}")
        if recs:
            offset = steps.max()
    for ax, k in zip(axes.flat, keys):
        ax.set_title(k, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=f"C{i}", label=stage) for i, stage in enumerate(records_by_stage)]
    axes.flat[0].legend(handles=handles, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png = workdir_lib.resolve(out_png)
    with out_png.open("wb") as f:  # through epath, so a gs:// workdir gets its plot too
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out_png
