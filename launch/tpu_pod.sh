#!/usr/bin/env bash
# Run an oyster_jax experiment on every worker of a Cloud TPU VM slice (single host or pod).
#
#   launch/tpu_pod.sh --name my-v5p --zone us-east5-a --accelerator v5p-64 \
#       --config qwen3_14b_sft --workdir gs://my-bucket/runs/sft [--create] [--dry_run] \
#       [-- --config.sft.num_steps=2000 ...]
#
# --config is a bundled experiment by name (configs/experiments/NAME.py, e.g. qwen3_14b_sft) or the path of a
# config file inside this checkout (e.g. configs/experiments/qwen3_14b_sft.py); both are shipped to the workers.
#
# Steps: (1) reuse the TPU VM, or create it with --create; (2) pack this checkout (.git, .venv/, runs/,
# checkpoints/ and caches excluded) and copy it to every worker; (3) install `.[tpu]` into a venv on every
# worker; (4) start `python -m oyster_jax.main` on all workers at once, detached, with OYSTER_TPU_POD=1 so
# oyster_jax.distributed.initialize() insists on finding the whole slice; (5) stream worker 0's log
# (Ctrl-C stops the stream, not the job). --dry_run prints every command instead of running it.
# Other actions: --attach (stream worker 0's log again), --stop (stop the job on all workers).
set -euo pipefail
SCRIPT=tpu_pod.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE --config NAME|FILE --workdir gs://... [options] [-- MAIN_ARGS]

required
  --name NAME           TPU VM name (reused when it exists)
  --zone ZONE           e.g. us-east5-a
  --accelerator TYPE    e.g. v5p-64, v5litepod-16, v4-32, v6e-64 (needed with --create)
  --config NAME|FILE    experiment config: a bundled name (configs/experiments/NAME.py), e.g. qwen3_14b_sft,
                        or a config file inside this checkout, e.g. configs/experiments/qwen3_14b_sft.py
  --workdir URL         gs://bucket/path: checkpoints and metrics (shared by all workers)
options
  --project ID          GCP project (default: gcloud's configured project)
  --version RUNTIME     TPU software version (default: chosen from --accelerator)
  --create              create the TPU VM when it does not exist
  --spot                with --create: a Spot VM (cheaper, can be preempted)
  --python BIN          python on the workers (default python3.11; installed with apt when missing)
  --remote_dir DIR      code directory on the workers, relative to home (default oyster_jax)
  --setup CMD           a shell command run in the code directory on every worker after the install,
                        e.g. downloading the base model (each worker needs its own copy):
                        --setup 'huggingface-cli download Qwen/Qwen3-14B --local-dir checkpoints/Qwen3-14B'
  --attach              only stream worker 0's log of the running job
  --stop                stop the running job on all workers
  --dry_run             print every command instead of running it
  -h, --help            this message
Everything after `--` is passed to `python -m oyster_jax.main` (e.g. --config.sft.num_steps=100).
EOF
}

NAME="" ZONE="" ACCELERATOR="" CONFIG="" WORKDIR="" PROJECT="" VERSION=""
CREATE=0 SPOT=0 DRY_RUN=0 ACTION=run PYTHON_BIN=python3.11 REMOTE_DIR=oyster_jax SETUP=""
MAIN_ARGS=()
while (($#)); do
  case "$1" in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --accelerator) ACCELERATOR=${2:?--accelerator needs a value}; shift 2 ;;
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --version) VERSION=${2:?--version needs a value}; shift 2 ;;
    --python) PYTHON_BIN=${2:?--python needs a value}; shift 2 ;;
    --remote_dir) REMOTE_DIR=${2:?--remote_dir needs a value}; shift 2 ;;
    --setup) SETUP=${2:?--setup needs a value}; shift 2 ;;
    --create) CREATE=1; shift ;;
    --spot) SPOT=1; shift ;;
    --attach) ACTION=attach; shift ;;
    --stop) ACTION=stop; shift ;;
    --dry_run | --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9._/-]+$ && $REMOTE_DIR != /* ]] || die "--remote_dir '$REMOTE_DIR' must be a plain path relative to home"

GCLOUD_SCOPE=(--zone="$ZONE")
[[ -n $PROJECT ]] && GCLOUD_SCOPE+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
LOG="\$HOME/$REMOTE_DIR/logs/main.log"
PIDFILE="\$HOME/$REMOTE_DIR/logs/main.pid"

on_workers() { # on_workers WORKERS COMMAND: run a shell command on the given workers ("all" or an index)
  run "${TPU[@]}" ssh "$NAME" "${GCLOUD_SCOPE[@]}" --worker="$1" --command="$2"
}

stream_log() {
  # Follows worker 0's log until its job exits (tail --pid).
  on_workers 0 "tail -n +1 -F --pid=\"\$(cat $PIDFILE)\" $LOG"
}

stop_job() {
  on_workers all "if [ -f $PIDFILE ]; then kill \"\$(cat $PIDFILE)\" 2>/dev/null || true; rm -f $PIDFILE; fi"
}

case $ACTION in
  attach) stream_log; exit 0 ;;
  stop) stop_job; exit 0 ;;
esac

[[ -n $CONFIG ]] || die "--config is required"
[[ -n $WORKDIR ]] || die "--workdir is required"
[[ $WORKDIR == gs://* ]] || die "--workdir '$WORKDIR' must be a gs:// URL: every worker writes its checkpoint shards there"
# The config travels inside the code tarball, so it must live in this checkout: a bundled name is passed as it
# is (the workers' install resolves it to the shipped configs/experiments/NAME.py), a file relative to the code.
if is_config_name "$CONFIG"; then
  check_config_name "$CONFIG"
  CONFIG_ARG=$CONFIG
else
  [[ -f $CONFIG ]] || die "--config '$CONFIG' does not exist"
  CONFIG_ABS=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
  [[ $CONFIG_ABS == "$REPO"/* ]] || die "--config '$CONFIG' must be inside this checkout ($REPO) so it is shipped to the workers"
  CONFIG_ARG=${CONFIG_ABS#"$REPO"/}
fi

default_version() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# 1. The slice: reuse it, or create it.
exists=1 describe_error=""
if ((DRY_RUN)); then
  show "${TPU[@]}" describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(state)'
elif ! state=$("${TPU[@]}" describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(state)' 2>&1); then
  exists=0 describe_error=$state
else
  echo "tpu_pod.sh: reusing TPU VM $NAME (state $state)" >&2
fi
if ((CREATE)); then
  [[ -n $ACCELERATOR ]] || die "--create needs --accelerator (e.g. v5p-64)"
  if [[ -z $VERSION ]]; then
    VERSION=$(default_version "$ACCELERATOR") || die "no default runtime for --accelerator '$ACCELERATOR'; pass --version"
  fi
  create=("${TPU[@]}" create "$NAME" "${GCLOUD_SCOPE[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
  ((SPOT)) && create+=(--spot)
  if ((DRY_RUN)); then
    echo "# only when describe finds no TPU VM named $NAME:"
    show "${create[@]}"
  elif ((!exists)); then
    "${create[@]}"
  fi
elif ((!exists)); then
  die "TPU VM '$NAME' not found in zone $ZONE; pass --create (with --accelerator) to create it. gcloud said: $describe_error"
fi

# 2. Ship this checkout to every worker.
TARBALL="${TMPDIR:-/tmp}/oyster_jax-$NAME.tar.gz"
run tar -czf "$TARBALL" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=__pycache__ \
  --exclude='*.egg-info' --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./checkpoints -C "$REPO" .
run "${TPU[@]}" scp "$TARBALL" "$NAME:$REMOTE_DIR.tar.gz" "${GCLOUD_SCOPE[@]}" --worker=all
# Replace the code but keep the venv, so reinstalling is quick.
on_workers all "mkdir -p \$HOME/$REMOTE_DIR && find \$HOME/$REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} + && tar -xzf \$HOME/$REMOTE_DIR.tar.gz -C \$HOME/$REMOTE_DIR"

# 3. Install `.[tpu]` on every worker.
on_workers all "cd \$HOME/$REMOTE_DIR && (command -v $PYTHON_BIN >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q $PYTHON_BIN $PYTHON_BIN-venv)) && ([ -x .venv/bin/python ] || $PYTHON_BIN -m venv .venv) && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e \".[tpu]\""

if [[ -n $SETUP ]]; then
  on_workers all "cd \$HOME/$REMOTE_DIR && $SETUP"
fi

# 4. Start the job on all workers at once (any previous job of this launcher is stopped first: the
#    TPU chips can only be held by one process).
stop_job
main_cmd="env OYSTER_TPU_POD=1 .venv/bin/python -m oyster_jax.main --config $(printf '%q' "$CONFIG_ARG") --workdir $(printf '%q' "$WORKDIR")"
for arg in ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}; do main_cmd+=" $(printf '%q' "$arg")"; done
on_workers all "cd \$HOME/$REMOTE_DIR && mkdir -p logs && (nohup setsid $main_cmd > logs/main.log 2>&1 < /dev/null & echo \$! > logs/main.pid)"

# 5. Follow worker 0 (the only one that logs; the others print warnings and errors only).
stream_log
((DRY_RUN)) && exit 0
cat >&2 <<EOF
tpu_pod.sh: job started on all workers of $NAME with workdir $WORKDIR
  follow again:  launch/tpu_pod.sh --name $NAME --zone $ZONE${PROJECT:+ --project $PROJECT} --attach
  stop it:       launch/tpu_pod.sh --name $NAME --zone $ZONE${PROJECT:+ --project $PROJECT} --stop
  delete the VM: gcloud compute tpus tpu-vm delete $NAME --zone=$ZONE${PROJECT:+ --project=$PROJECT}
EOF
