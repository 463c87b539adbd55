# shellcheck shell=bash
# Shared by launch/*.sh (sourced, not run): printing and running commands, with --dry_run support.
# The caller sets DRY_RUN=0|1 and SCRIPT (its name, for error messages).

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
