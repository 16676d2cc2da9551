#!/usr/bin/env bash
# Summary: build, run, deploy and manage wrapped chutes.
# Usage: ./deploy.sh --run MODULE [--port N] [--logging-port N] [--no-service] [--debug]
#        ./deploy.sh --smoke MODULE [--port N] [--verbose]
#        ./deploy.sh --help
#
# Thin front: it parses flags and hands the work to `python -m tools.<x>` in the project's venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# One table for --help (and, later, the menu): flag|arguments|summary
COMMANDS=(
  "--run|MODULE [--port N] [--logging-port N] [--no-service]|Run the module's service and its chute on this machine (dev mode)"
  "--smoke|MODULE [--port N] [--verbose]|Call every cord once through the chute in dev mode; fail if any fails"
  "--help||Show this help"
)

usage() {
  local row flag args summary
  printf 'Usage: ./deploy.sh ACTION [OPTIONS]\n\nActions:\n'
  for row in "${COMMANDS[@]}"; do
    IFS='|' read -r flag args summary <<<"${row}"
    printf '  %-10s %-52s %s\n' "${flag}" "${args}" "${summary}"
  done
  printf '\nOptions:\n  %-63s %s\n' "--debug" "Show Python tracebacks on errors"
  printf '\nExample: ./deploy.sh --run deploy_example\n'
}

die_usage() {
  printf 'deploy.sh: error: %s\n\n' "$1" >&2
  usage >&2
  exit 2
}

venv_python() {
  local venv="${CHUTES_WRAPPERS_VENV:-${ROOT}/.venv}"
  if [[ ! -x "${venv}/bin/python" ]]; then
    printf 'deploy.sh: error: no Python environment at %s (run ./setup.sh first)\n' "${venv}" >&2
    exit 1
  fi
  printf '%s\n' "${venv}/bin/python"
}

need_value() {
  # $1 flag, $2 number of remaining args (including the flag), $3 the next arg (maybe empty)
  if (($2 < 2)) || [[ "$3" == --* ]]; then
    die_usage "$1 needs a value"
  fi
}

run_tool() {
  # $1 python module under tools/, then its arguments
  local tool="$1"
  shift
  local python
  python="$(venv_python)"
  cd "${ROOT}"
  exec "${python}" -m "tools.${tool}" "$@"
}

main() {
  local action="" module="" arg
  local -a options=()
  if (($# == 0)); then
    usage
    exit 0
  fi
  while (($# > 0)); do
    arg="$1"
    case "${arg}" in
      -h | --help)
        usage
        exit 0
        ;;
      --run | --smoke)
        [[ -z "${action}" ]] || die_usage "one action at a time (${action} and ${arg})"
        need_value "${arg}" "$#" "${2:-}"
        action="${arg}"
        module="$2"
        shift 2
        ;;
      --port | --logging-port | --timeout)
        need_value "${arg}" "$#" "${2:-}"
        [[ "$2" =~ ^[0-9]+$ ]] || die_usage "${arg} needs a number, got '$2'"
        options+=("${arg}" "$2")
        shift 2
        ;;
      --no-service | --debug | --verbose)
        options+=("${arg}")
        shift
        ;;
      *)
        die_usage "unknown option '${arg}'"
        ;;
    esac
  done
  case "${action}" in
    --run) run_tool run_dev "${module}" "${options[@]}" ;;
    --smoke) run_tool smoke "${module}" "${options[@]}" ;;
    *) die_usage "no action given" ;;
  esac
}

main "$@"
