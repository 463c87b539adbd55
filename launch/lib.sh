# shellcheck shell=bash
# Shared by launch/*.sh (sourced, not run): printing and running commands, with --dry_run support.
# The caller sets DRY_RUN=0|1, SCRIPT (its name, for error messages) and REPO (the checkout).

die() {
  echo "${SCRIPT:-launch}: $*" >&2
  exit 2
}

# One command per line; arguments with shell-special characters single-quoted, so the line can be pasted.
quote() {
  local arg=$1 flag=""
  if [[ $arg =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
    printf '%s' "$arg"
    return
  fi
  if [[ $arg =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then # --flag='value' reads better than '--flag=value'
    flag=${BASH_REMATCH[1]} arg=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$flag" "${arg//\'/\'\\\'\'}"
}

show() {
  local out="" arg
  for arg in "$@"; do out+="$(quote "$arg") "; done
  printf '%s\n' "${out% }"
}

# run CMD ARGS...: execute, or with DRY_RUN=1 print it.
run() {
  if ((DRY_RUN)); then show "$@"; else "$@"; fi
}

# abspath PATH: absolute form of a local path (which need not exist yet); URLs such as gs://... unchanged.
abspath() {
  case $1 in
    *://*) printf '%s' "$1" ;;
    /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$PWD" "${1#./}" ;;
  esac
}

# --config takes a bundled experiment by name (tiny_csa, qwen3_14b_sft: configs/experiments/NAME.py, which
# the package ships as oyster_jax.configs and `python -m oyster_jax.main --config NAME` resolves) or the path
# of a config file. As in oyster_jax.main: a value ending in .py or holding a / is a path, anything else a name.
is_config_name() {
  [[ $1 != *.py && $1 != */* ]]
}

# bundled_experiments: the names --config accepts, comma-separated (private modules _x.py left out).
bundled_experiments() {
  local path out=""
  for path in "$REPO"/configs/experiments/*.py; do
    path=${path##*/}
    [[ $path == _* ]] || out+="${out:+, }${path%.py}"
  done
  printf '%s' "$out"
}

# check_config_name NAME: dies unless NAME is one of this checkout's bundled experiments.
check_config_name() {
  [[ $1 =~ ^[A-Za-z][A-Za-z0-9_]*$ && -f $REPO/configs/experiments/$1.py ]] ||
    die "--config '$1' is not a bundled experiment (bundled: $(bundled_experiments)); or give the path of a .py config file"
}
