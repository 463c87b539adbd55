#!/usr/bin/env bash
# The one prepared accelerator run of the attention benchmark (written for one NVIDIA H200; runs on any
# GPU or TPU host with jax, flax, numpy, matplotlib and tqdm). From the repository root, with OUT set:
#
#     OUT=/path/to/results bash oyster_jax/bench/device_run.sh
#
# Writes into $OUT: bench_attention.log (everything printed), bench_attention.json (rows, checks,
# tune_rows, meta.tuning; rewritten after every phase, so a run cut short keeps what it measured) and
# bench_attention.png. Exits with the benchmark's status: 1 when a pallas check failed, 124 when it ran
# past BENCH_TIMEOUT_S.
#
# Time (an estimate, not measured): ~0.5 min start-up, ~1.5 min checks (pallas defaults, cuDNN and the
# tuned pallas at 1024..8192 against the float32 reference), <= 3 min tuning (--tune_budget_s 180, shared
# out by stage, plus the candidate in flight; 10 forward, 6 dq and 6 dk/dv candidates at T = 8192), ~2.5
# min sweep (4 implementations x 6 lengths x forward and forward+backward, mostly compile time): ~6-7 min.
# BENCH_TIMEOUT_S (default 540) stops it before a 10-minute device call ends.
set -euo pipefail

: "${OUT:?set OUT to the folder for the results}"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export TQDM_DISABLE=1 # the progress bar would crowd the tables out of a short output tail
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
log=$OUT/bench_attention.log

{
    nvidia-smi -L || echo "nvidia-smi: not available"
    "$PYTHON" - <<'PY'
import importlib.metadata as metadata
import sys

import jax

print("python", sys.version.split()[0])
for dist in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "flax", "numpy", "matplotlib", "tqdm"):
    try:
        print(dist, metadata.version(dist))
    except metadata.PackageNotFoundError:
        print(dist, "not installed")
print("devices", jax.devices())
PY
} 2>&1 | tee "$log"

status=0
timeout "${BENCH_TIMEOUT_S:-540}" "$PYTHON" -m oyster_jax.bench.attention \
    --check --tune 8192 --tune_budget_s 180 \
    --seq 1024,2048,4096,8192,16384,32768 --heads 40 --kv_heads 8 --head_dim 128 --dtype bfloat16 --batch 1 \
    --json "$OUT/bench_attention.json" 2>&1 | tee -a "$log" || status=$?
echo "bench exit status: $status" | tee -a "$log"
exit "$status"
