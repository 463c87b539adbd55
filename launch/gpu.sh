#!/usr/bin/env bash
# Run an oyster_jax experiment on GPUs: this node with all its GPUs, or several nodes.
#
#   launch/gpu.sh --config qwen3_14b_sft --workdir runs/sft                                   # this node
#   launch/gpu.sh --config configs/experiments/qwen3_14b_sft.py --workdir runs/sft            # (a config file)
#   launch/gpu.sh --nodes 4 --gpus_per_node 8 --partition gpu --time 24:00:00 \
#       --config qwen3_14b_sft --workdir /shared/runs/sft                                     # SLURM (sbatch)
#   launch/gpu.sh --srun --nodes 4 --config ... --workdir /shared/...                          # inside salloc
#   launch/gpu.sh --coordinator 10.0.0.1:8476 --nodes 2 --node_rank 0 --config ... --workdir ...  # no SLURM:
#                                                         run the same line on every node with its own rank
#
# One process per node drives all of that node's GPUs; oyster_jax.distributed.initialize() finds the
# coordinator, process count and id from SLURM or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
# JAX_PROCESS_ID. A multi-node workdir must be on a filesystem every node sees (or gs://).
# --config is a bundled experiment by name (configs/experiments/NAME.py, e.g. qwen3_14b_sft) or a config file's
# path. --dry_run prints every command (and the sbatch script) instead of running it.
set -euo pipefail
SCRIPT=gpu.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/gpu.sh --config NAME|FILE --workdir DIR [options] [-- MAIN_ARGS]

  --config NAME|FILE    experiment config: a bundled name (configs/experiments/NAME.py), e.g. qwen3_14b_sft,
                        or a config file, e.g. configs/experiments/qwen3_14b_sft.py
  --workdir DIR         checkpoints and metrics (shared filesystem or gs:// for several nodes)
  --nodes N             number of nodes (default 1: this node, no scheduler)
  --gpus_per_node G     GPUs per node requested from SLURM (default 8)
  --partition P         SLURM partition          --account A       SLURM account
  --time HH:MM:SS       SLURM time limit         --job_name NAME   SLURM job name (default oyster_jax)
  --cpus_per_task C     SLURM CPUs per node task (default: SLURM's)
  --srun                run with srun in the current allocation instead of submitting with sbatch
  --coordinator H:P     no SLURM: host:port of node 0; with --nodes N and --node_rank I on every node
  --node_rank I         this node's rank in 0..N-1 (with --coordinator)
  --python BIN          python to run (default: .venv/bin/python of this checkout)
  --install             first `pip install -e '.[gpu]'` with that python
  --dry_run             print every command instead of running it
  -h, --help            this message
Everything after `--` is passed to `python -m oyster_jax.main` (e.g. --config.sft.num_steps=100).
EOF
}

CONFIG="" WORKDIR="" NODES=1 GPUS_PER_NODE=8 PARTITION="" ACCOUNT="" TIME="" JOB_NAME=oyster_jax CPUS=""
SRUN=0 COORDINATOR="" NODE_RANK="" PYTHON_BIN="" INSTALL=0 DRY_RUN=0
MAIN_ARGS=()
while (($#)); do
  case "$1" in
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --nodes) NODES=${2:?--nodes needs a value}; shift 2 ;;
    --gpus_per_node) GPUS_PER_NODE=${2:?--gpus_per_node needs a value}; shift 2 ;;
    --partition) PARTITION=${2:?--partition needs a value}; shift 2 ;;
    --account) ACCOUNT=${2:?--account needs a value}; shift 2 ;;
    --time) TIME=${2:?--time needs a value}; shift 2 ;;
    --job_name) JOB_NAME=${2:?--job_name needs a value}; shift 2 ;;
    --cpus_per_task) CPUS=${2:?--cpus_per_task needs a value}; shift 2 ;;
    --srun) SRUN=1; shift ;;
    --coordinator) COORDINATOR=${2:?--coordinator needs a value}; shift 2 ;;
    --node_rank) NODE_RANK=${2:?--node_rank needs a value}; shift 2 ;;
    --python) PYTHON_BIN=${2:?--python needs a value}; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --dry_run | --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ -n $CONFIG ]] || die "--config is required"
[[ -n $WORKDIR ]] || die "--workdir is required"
if is_config_name "$CONFIG"; then
  check_config_name "$CONFIG" # passed as it is: python -m oyster_jax.main resolves bundled names
else
  [[ -f $CONFIG ]] || die "--config '$CONFIG' does not exist"
  CONFIG=$(abspath "$CONFIG")
fi
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes '$NODES' must be a positive integer"
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node '$GPUS_PER_NODE' must be a positive integer"
WORKDIR=$(abspath "$WORKDIR")
PYTHON_BIN=${PYTHON_BIN:-$REPO/.venv/bin/python}
MAIN=("$PYTHON_BIN" -m oyster_jax.main --config "$CONFIG" --workdir "$WORKDIR" ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})

if [[ -n $COORDINATOR ]]; then
  MODE=coordinator
  [[ $COORDINATOR =~ ^[^:]+:[0-9]+$ ]] || die "--coordinator '$COORDINATOR' must be host:port"
  if ! [[ $NODE_RANK =~ ^[0-9]+$ ]] || ((NODE_RANK >= NODES)); then
    die "--node_rank '$NODE_RANK' must be in 0..$((NODES - 1))"
  fi
elif ((SRUN)); then
  MODE=srun
elif ((NODES > 1)); then
  MODE=sbatch
else
  MODE=local
fi
[[ $MODE == coordinator || -z $NODE_RANK ]] || die "--node_rank only makes sense with --coordinator"

cd "$REPO" # the package is imported from this checkout
if ((INSTALL)); then
  run "$PYTHON_BIN" -m pip install -q -e "${REPO}[gpu]"
fi

case $MODE in
  local)
    # One process, every local GPU (CUDA_VISIBLE_DEVICES, when set, still restricts them).
    run "${MAIN[@]}"
    ;;
  coordinator)
    run env JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NODES" JAX_PROCESS_ID="$NODE_RANK" "${MAIN[@]}"
    ;;
  srun)
    run srun --nodes="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 "${MAIN[@]}"
    ;;
  sbatch)
    [[ $WORKDIR == *://* ]] && LOGDIR=$REPO/runs/slurm || LOGDIR=$WORKDIR/slurm
    BATCH_FILE=$LOGDIR/$JOB_NAME.sbatch
    script="#!/usr/bin/env bash
#SBATCH --job-name=$JOB_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --output=$LOGDIR/%x-%j.out"
    [[ -n $CPUS ]] && script+=$'\n'"#SBATCH --cpus-per-task=$CPUS"
    [[ -n $PARTITION ]] && script+=$'\n'"#SBATCH --partition=$PARTITION"
    [[ -n $ACCOUNT ]] && script+=$'\n'"#SBATCH --account=$ACCOUNT"
    [[ -n $TIME ]] && script+=$'\n'"#SBATCH --time=$TIME"
    # One task per node; each sees all of its node's GPUs and finds the others through SLURM's variables.
    script+=$'\n'"set -euo pipefail
cd $(quote "$REPO")
srun --kill-on-bad-exit=1 $(show "${MAIN[@]}")"
    if ((DRY_RUN)); then
      echo "# $BATCH_FILE:"
      printf '%s\n' "$script" | sed 's/^/#   /'
    else
      mkdir -p "$LOGDIR"
      printf '%s\n' "$script" >"$BATCH_FILE"
    fi
    run sbatch "$BATCH_FILE"
    ((DRY_RUN)) || echo "gpu.sh: submitted $BATCH_FILE; logs in $LOGDIR/$JOB_NAME-<jobid>.out" >&2
    ;;
esac
