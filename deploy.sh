#!/usr/bin/env bash
# Summary: build, run, deploy and manage wrapped chutes: a numbered menu, or one action per run.
# Usage: ./deploy.sh                         the menu
#        ./deploy.sh ACTION [ARGS] [OPTIONS]  one action (see --help); --yes answers every question
#
# A thin front: it parses flags, asks questions and hands the work to `python -m tools.<x>` in the
# project's venv (which runs the real `chutes` CLI, the container engine, or the Chutes API). Every
# action is one cmd_<action> function; the menu and --help are both generated from ACTIONS below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT
readonly BACK=97 QUIT=98 # how an action ends when the user typed b / q at one of its questions
readonly PAGE_SIZE=10

# The one table: group|flag|arguments|menu label|summary. Options named in the arguments column are
# the ones the action accepts (plus --yes and --debug, accepted everywhere).
ACTIONS=(
  "Account|--account||Account info and balance|Show your account, hotkey, API key status and balance"
  "Account|--link-hotkey||Link an existing account|Write the chutes config for an existing account's hotkey"
  "Account|--set-api-key||Save an API key|Save an API key to ~/.chutes/api_key (asked without echo)"
  "Build|--new|NAME --image IMAGE|New module from an image|Write deploy_NAME.py for a local image; offers discovery"
  "Build|--discover|MODULE [OPTIONS]|Discover routes|Run the base image, find its routes, write MODULE.routes.json"
  "Build|--validate|MODULE|Validate a module|Import the module, check manifest and routes, print its cords"
  "Build|--openapi|MODULE [--output FILE]|Write the API document|Write the chute's API as callers on Chutes call it (OpenAPI 3.1)"
  "Build|--build|MODULE [--local]|Build the image|Build the wrapper image: --local with docker/podman, else on Chutes"
  "Local testing|--run|MODULE [--port N] [--logging-port N] [--no-service] [--timeout N] [--reload] [--verbose] [--dev]|Run on this machine|Run the module's service and its chute here, called as on Chutes (--dev: SDK dev mode)"
  "Local testing|--smoke|MODULE [--port N] [--logging-port N] [--no-service] [--timeout N] [--verbose] [--call-timeout N] [--concurrency N] [--dev]|Smoke-test every cord|Call every cord once through the chute as on Chutes, a few at a time; fail if any fails"
  "Local testing|--run-docker|MODULE [--port N] [--gpus X] [--timeout N] [--image IMAGE] [--dev]|Run in a container|Run the built image with docker/podman, called as on Chutes; ports on 127.0.0.1 only"
  "Local testing|--cleanup||Remove leftover containers|Remove containers left behind by killed discovery and run-docker runs"
  "Cloud|--list-images||List images|List your images on Chutes"
  "Cloud|--list-chutes||List chutes|List your chutes on Chutes"
  "Cloud|--deploy|MODULE [--accept-fee] [--public]|Deploy a chute|Deploy the module's chute (its image must be built on Chutes)"
  "Cloud|--status|CHUTE|Chute status|Show a chute: status, instances, cords"
  "Cloud|--logs|CHUTE [--instance ID] [--backfill N]|Instance logs|Tail the log of one of the chute's instances"
  "Cloud|--warmup|CHUTE [--timeout N]|Warm up a chute|Ask Chutes to start the chute; wait until it is hot"
  "Cloud|--keep-warm|SECONDS CHUTE|Keep a chute warm|Warm the chute up every SECONDS until Ctrl-C"
  "Management|--delete|CHUTE|Delete a chute|Delete a chute (type its name or id to confirm, or --yes)"
  "Management|--delete-image|IMAGE|Delete an image|Delete an image (type its name or id to confirm, or --yes)"
  "|--help||Show this help|Show this help"
)
VALUE_OPTIONS=(--port --logging-port --timeout --call-timeout --concurrency --backfill --gpus --instance --image --output)
NUMBER_OPTIONS=(--port --logging-port --timeout --call-timeout --concurrency --backfill)
PORT_OPTIONS=(--port --logging-port) # numbers in 1-65535 (tools/runtime/constants.py checks the same for the tools)
readonly MAX_PORT=65535
FLAG_OPTIONS=(--local --accept-fee --public --no-service --reload --verbose --dev --yes --debug)
PASSTHROUGH_ACTIONS=(--discover --new) # their tool parses what follows the value

# Parsed command line (parse_args sets them once; the menu resets them per action).
ACTION="" VALUE=""
OPTIONS=() PASS=() POSITIONALS=()
MENU=0
PICKED=""
C_BOLD="" C_RED="" C_DIM="" C_RESET=""

init_colours() {
  if [[ -z "${NO_COLOR:-}" && -t 1 ]]; then
    C_BOLD=$'\033[1m' C_DIM=$'\033[2m' C_RESET=$'\033[0m'
  fi
  if [[ -z "${NO_COLOR:-}" && -t 2 ]]; then
    C_RED=$'\033[31m'
  fi
}

err() { printf '%sdeploy.sh: error:%s %s\n' "${C_RED}" "${C_RESET}" "$*" >&2; }
die() {
  err "$*"
  exit 1
}
die_usage() {
  err "$1"
  short_usage >&2
  exit 2
}

# --------------------------------------------------------------------------------------------------
# The table

# Usage: row_field ROW N — field N (1-5) of a table row.
row_field() {
  local group flag args label summary
  IFS='|' read -r group flag args label summary <<<"$1"
  case "$2" in
    1) printf '%s' "${group}" ;;
    2) printf '%s' "${flag}" ;;
    3) printf '%s' "${args}" ;;
    4) printf '%s' "${label}" ;;
    5) printf '%s' "${summary}" ;;
  esac
}

# Usage: action_row FLAG — the table row of FLAG in ROW; false if FLAG is no action.
action_row() {
  local row
  for row in "${ACTIONS[@]}"; do
    if [[ "${row}" == *"|$1|"* && "$(row_field "${row}" 2)" == "$1" ]]; then
      ROW="${row}"
      return 0
    fi
  done
  return 1
}
ROW=""

# Usage: takes_value FLAG — true when the action's arguments start with a value (MODULE, CHUTE, ...).
takes_value() {
  action_row "$1" || return 1
  local args
  args="$(row_field "${ROW}" 3)"
  [[ -n "${args}" && "${args}" != \[* ]]
}

# Usage: allows_option ACTION OPTION — the option is named in the action's arguments, or is global.
allows_option() {
  [[ "$2" == --yes || "$2" == --debug ]] && return 0
  action_row "$1" || return 1
  local args
  args="$(row_field "${ROW}" 3)"
  [[ " ${args//[\[\]]/ } " == *" $2 "* ]]
}

in_list() {
  local needle="$1" item
  shift
  for item in "$@"; do
    [[ "${item}" == "${needle}" ]] && return 0
  done
  return 1
}

synopsis() {
  printf 'Usage: ./deploy.sh                          the numbered menu\n'
  printf '       ./deploy.sh ACTION [ARGS] [OPTIONS]   one action, for scripts\n'
}

# Usage: short_usage — the synopsis, the usage of the action being parsed, and where to read more.
short_usage() {
  synopsis
  if [[ -n "${ACTION}" ]] && action_row "${ACTION}"; then
    printf '       ./deploy.sh %s %s\n' "${ACTION}" "$(row_field "${ROW}" 3)"
  fi
  printf 'Run ./deploy.sh --help for every action and option.\n'
}

usage() {
  local row group flag args label summary last=""
  synopsis
  for row in "${ACTIONS[@]}"; do
    IFS='|' read -r group flag args label summary <<<"${row}"
    [[ -n "${group}" ]] || continue
    if [[ "${group}" != "${last}" ]]; then
      printf '\n%s:\n' "${group}"
      last="${group}"
    fi
    if ((${#flag} + ${#args} + 1 <= 40)); then
      printf '  %-40s %s\n' "${flag} ${args}" "${summary}"
    else
      printf '  %s %s\n  %-40s %s\n' "${flag}" "${args}" "" "${summary}"
    fi
  done
  cat <<'EOF'

Options:
  --help, -h       show this help
  --yes, -y        answer yes to every question (build, deploy, delete: also the SDK's own y/n
                   prompts), and skip discovery before a build: unattended runs need no keyboard
  --debug          show tracebacks, and the chutes CLI's debug output
  --local          --build: build on this machine with docker or podman (no upload, no balance)
  --accept-fee     --deploy: accept the deployment fee without asking
  --public         --deploy: make the chute public (needs the permission on your account)
  --port N         --run, --smoke, --run-docker: the chute's port (default 8000)
  --dev            --run, --smoke, --run-docker: the SDK's dev server (chutes run --dev) instead of
                   the chute as on a Chutes node behind the local gateway
  --reload         --run: restart the chute (not the service) when the module, its manifest or a
                   file of tools/ changes, and print which cords changed
  --verbose        --run: also the SDK's own debug chatter; --smoke: the service's and chute's logs
  --output FILE    --openapi: where to write the document ('-': print it); else MODULE.openapi.json
                   beside the module
  --timeout N      seconds to wait: for the service and chute (--run, --smoke: 120),
                   the container (--run-docker: 600), the chute to get hot (--warmup: 600)
  --gpus X         --run-docker: auto (default: only with a GPU runtime), none, all, N, or 0,1
  --call-timeout N --smoke: seconds for one call (default 20); a stream is read 3 s, then "streams"
  --concurrency N  --smoke: calls at once (default 4, at most the chute's concurrency)

MODULE is deploy_<name> (a deploy_*.py beside deploy.sh) or a path to one; CHUTE and IMAGE are a
name or an id. --discover and --new pass the options after their value to their tool
(python -m tools.discover_routes --help, python -m tools.commands.new --help).

Examples:
  ./deploy.sh --validate deploy_myservice
  ./deploy.sh --build deploy_myservice --local --yes
  ./deploy.sh --run deploy_myservice --port 9000
  ./deploy.sh --run deploy_myservice --reload
  ./deploy.sh --deploy deploy_myservice --accept-fee --yes
  ./deploy.sh --keep-warm 300 myservice
  ./deploy.sh --delete myservice --yes
EOF
}

# --------------------------------------------------------------------------------------------------
# Arguments

# Usage: need_value FLAG REMAINING NEXT — a value must follow FLAG.
need_value() {
  if (($2 < 2)) || [[ -z "$3" || "$3" == --* ]]; then
    die_usage "$1 needs a value"
  fi
}

# Usage: is_port DIGITS — in 1-65535 (more than 5 significant digits would overflow Bash's arithmetic).
is_port() {
  [[ "$1" =~ ^0*([0-9]{1,5})$ ]] && ((10#${BASH_REMATCH[1]} >= 1 && 10#${BASH_REMATCH[1]} <= MAX_PORT))
}

parse_args() {
  local arg
  while (($# > 0)); do
    arg="$1"
    [[ "${arg}" == -y ]] && arg=--yes
    if [[ -n "${VALUE}" ]] && in_list "${ACTION}" "${PASSTHROUGH_ACTIONS[@]}"; then
      case "${arg}" in
        --yes) OPTIONS+=(--yes) ;;
        *) PASS+=("$1") ;;
      esac
      shift
      continue
    fi
    case "${arg}" in
      -h | --help)
        usage
        exit 0
        ;;
      --*)
        if action_row "${arg}"; then
          [[ -z "${ACTION}" ]] || die_usage "one action at a time (${ACTION} and ${arg})"
          ACTION="${arg}"
          if takes_value "${arg}"; then
            need_value "${arg}" "$#" "${2:-}"
            VALUE="$2"
            shift
          fi
        elif in_list "${arg}" "${VALUE_OPTIONS[@]}"; then
          need_value "${arg}" "$#" "${2:-}"
          if in_list "${arg}" "${NUMBER_OPTIONS[@]}" && [[ ! "$2" =~ ^[0-9]+$ ]]; then
            die_usage "${arg} needs a number, got '$2'"
          fi
          if in_list "${arg}" "${PORT_OPTIONS[@]}" && ! is_port "$2"; then
            die_usage "${arg} needs a port number (1-${MAX_PORT}), got '$2'"
          fi
          OPTIONS+=("${arg}" "$2")
          shift
        elif in_list "${arg}" "${FLAG_OPTIONS[@]}"; then
          OPTIONS+=("${arg}")
        else
          die_usage "unknown option '${arg}'"
        fi
        ;;
      *) POSITIONALS+=("${arg}") ;;
    esac
    shift
  done
  check_args
}

check_args() {
  local i option
  if [[ -z "${ACTION}" ]]; then
    if ((${#OPTIONS[@]} + ${#POSITIONALS[@]} > 0)); then
      die_usage "no action given (options need an action, e.g. --build MODULE --local)"
    fi
    return 0
  fi
  for ((i = 0; i < ${#OPTIONS[@]}; i++)); do
    option="${OPTIONS[i]}"
    allows_option "${ACTION}" "${option}" || die_usage "${option} does not apply to ${ACTION}"
    in_list "${option}" "${VALUE_OPTIONS[@]}" && i=$((i + 1))
  done
  if [[ "${ACTION}" == --keep-warm ]]; then
    [[ "${VALUE}" =~ ^[0-9]+$ && "${VALUE}" != 0 ]] || die_usage "--keep-warm needs a number of seconds first, got '${VALUE}'"
    ((${#POSITIONALS[@]} == 1)) || die_usage "--keep-warm needs SECONDS and then one CHUTE (e.g. --keep-warm 300 myservice)"
  elif ((${#POSITIONALS[@]} > 0)); then
    die_usage "unexpected argument '${POSITIONALS[0]}' for ${ACTION}"
  fi
  check_logging_port
}

# Usage: check_logging_port — the chute's logging port, port+1 unless given, must be a port too.
check_logging_port() {
  local port
  port="$(option_value --port)"
  [[ -n "${port}" && -z "$(option_value --logging-port)" ]] || return 0
  case "${ACTION}" in
    --run | --smoke | --run-docker)
      if ((10#${port} + 1 > MAX_PORT)); then
        die_usage "--port ${port}: the chute's logging port would be $((10#${port} + 1)), above ${MAX_PORT}; pick a lower --port or give --logging-port"
      fi
      ;;
  esac
}

# Usage: has_option OPTION — given on the command line.
has_option() { in_list "$1" "${OPTIONS[@]}"; }

# Usage: option_value OPTION — its value, or nothing.
option_value() {
  local i
  for ((i = 0; i + 1 < ${#OPTIONS[@]}; i++)); do
    if [[ "${OPTIONS[i]}" == "$1" ]]; then
      printf '%s' "${OPTIONS[i + 1]}"
      return 0
    fi
  done
}

# --------------------------------------------------------------------------------------------------
# Python, questions, pickers

# Usage: venv_dir — CHUTES_WRAPPERS_VENV, a relative one taken from the caller's directory (as setup.sh
# does), else ROOT/.venv.
venv_dir() {
  local venv="${CHUTES_WRAPPERS_VENV:-${ROOT}/.venv}"
  [[ "${venv}" == /* ]] || venv="${CALLER_DIR}/${venv}"
  printf '%s' "${venv%/}"
}
VENV=""

venv_python() {
  if [[ ! -x "${VENV}/bin/python" ]]; then
    die "no Python environment at ${VENV} (run ./setup.sh first)"
  fi
  printf '%s\n' "${VENV}/bin/python"
}

# Usage: tool MODULE ARGS... — run python -m tools.MODULE in the venv.
tool() {
  local python
  python="$(venv_python)" || return 1
  "${python}" -m "tools.$1" "${@:2}"
}

# Usage: exec_tool MODULE ARGS... — the same, replacing this shell (its exit status is the tool's).
# Every long action ends with it: a signal sent to deploy.sh alone (`kill PID`, a process manager, a CI
# runner) then reaches the tool, which cleans up (containers, children) instead of running on orphaned.
exec_tool() {
  local python
  python="$(venv_python)" || exit 1
  exec "${python}" -m "tools.$1" "${@:2}"
}


# Usage: can_ask — questions can be answered: the menu, or a terminal.
can_ask() { ((MENU)) || [[ -t 0 ]]; }

# Usage: ask PROMPT [DEFAULT] — one answer in ANSWER. In the menu, b goes back and q (or the end of
# input) quits, whatever the question.
ask() {
  ANSWER=""
  printf '%s' "$1"
  if ! read -r ANSWER; then
    printf '\n'
    ((MENU)) && exit "${QUIT}"
    die "no answer (end of input)"
  fi
  ANSWER="${ANSWER#"${ANSWER%%[![:space:]]*}"}"
  ANSWER="${ANSWER%"${ANSWER##*[![:space:]]}"}"
  if ((MENU)); then
    case "${ANSWER}" in
      b | B) exit "${BACK}" ;;
      q | Q) exit "${QUIT}" ;;
    esac
  fi
  [[ -n "${ANSWER}" ]] || ANSWER="${2:-}"
}
ANSWER=""

# Usage: confirm QUESTION [DEFAULT y|n] — --yes says yes; without a way to ask, it is an error.
confirm() {
  local hint="[y/N]"
  [[ "${2:-n}" == y ]] && hint="[Y/n]"
  has_option --yes && return 0
  can_ask || die "${ACTION} needs an answer to \"$1\": run it in a terminal, or add --yes"
  ask "$1 ${hint} " "${2:-n}"
  [[ "${ANSWER}" == [yY] || "${ANSWER}" == [yY][eE][sS] ]]
}

# Usage: locate_module MODULE — its absolute path, by tools.deploy_module's rule (beside deploy.sh,
# else in the current directory; a path is relative to the current directory).
locate_module() { tool deploy_module locate "$1" --cwd "${CALLER_DIR}"; }

# Usage: module_label MODULE_PATH — the module's name, as questions show it.
module_label() {
  local name="${1##*/}"
  printf '%s' "${name%.py}"
}

# Usage: manifest_of MODULE_PATH — the route manifest discovery writes for it.
manifest_of() { tool deploy_module manifest "$1"; }

# Usage: pick_module PURPOSE — a deploy module in PICKED: by number or typed name; b, q.
pick_module() {
  local -a modules=()
  local file i
  for file in "${ROOT}"/deploy_*.py; do
    [[ -f "${file}" ]] && modules+=("$(basename "${file}" .py)")
  done
  printf '\n%sModules%s (deploy_*.py in %s):\n' "${C_BOLD}" "${C_RESET}" "${ROOT}"
  for i in "${!modules[@]}"; do
    printf '  %2d) %s\n' "$((i + 1))" "${modules[i]}"
  done
  ((${#modules[@]})) || printf '  (none yet: copy deploy_example.py, or use "New module from an image")\n'
  while true; do
    ask "Module to $1 (number or name; b back, q quit): "
    case "${ANSWER}" in
      "") continue ;;
      b | B) return "${BACK}" ;;
      q | Q) exit "${QUIT}" ;;
    esac
    if [[ "${ANSWER}" =~ ^[0-9]+$ ]]; then
      if ((10#${ANSWER} >= 1 && 10#${ANSWER} <= ${#modules[@]})); then
        PICKED="${modules[10#${ANSWER} - 1]}"
        return 0
      fi
      err "no module number ${ANSWER}"
      continue
    fi
    PICKED="${ANSWER}"
    return 0
  done
}

# Usage: pick_remote chutes|images PURPOSE — an id (or a typed name or id) in PICKED; pages of
# PAGE_SIZE from the API; n/p page, b back, q quit.
pick_remote() {
  local kind="$1" page=0 total=0 pages listing line id name extra i
  local -a ids=() names=() extras=()
  while true; do
    listing="$(tool commands.pick list "${kind}" --page "${page}" --limit "${PAGE_SIZE}")" || return 1
    ids=() names=() extras=()
    while IFS=$'\t' read -r id name extra; do
      if [[ "${id}" == TOTAL ]]; then
        total="${name}"
      elif [[ -n "${id}" ]]; then
        ids+=("${id}") names+=("${name}") extras+=("${extra}")
      fi
    done <<<"${listing}"
    pages=$(((total + PAGE_SIZE - 1) / PAGE_SIZE))
    printf '\n%s%s%s (page %d of %d, %d in all):\n' "${C_BOLD}" "${kind^}" "${C_RESET}" "$((page + 1))" "$((pages > 0 ? pages : 1))" "${total}"
    for i in "${!ids[@]}"; do
      printf '  %2d) %-32s %s(%s, %s)%s\n' "$((i + 1))" "${names[i]}" "${C_DIM}" "${ids[i]}" "${extras[i]}" "${C_RESET}"
    done
    ((${#ids[@]})) || printf '  (no %s in your account)\n' "${kind}"
    line="number, or type a name or id"
    ((page + 1 < pages)) && line+="; n next page"
    ((page > 0)) && line+="; p previous page"
    while true; do
      ask "${kind^} to $2 (${line}; b back, q quit): "
      case "${ANSWER}" in
        "") continue ;;
        b | B) return "${BACK}" ;;
        q | Q) exit "${QUIT}" ;;
        n | N)
          if ((page + 1 < pages)); then
            page=$((page + 1))
            break
          fi
          err "this is the last page"
          continue
          ;;
        p | P)
          if ((page > 0)); then
            page=$((page - 1))
            break
          fi
          err "this is the first page"
          continue
          ;;
      esac
      if [[ "${ANSWER}" =~ ^[0-9]+$ ]] && ((10#${ANSWER} >= 1 && 10#${ANSWER} <= ${#ids[@]})); then
        PICKED="${ids[10#${ANSWER} - 1]}"
      else
        PICKED="${ANSWER}"
      fi
      return 0
    done
  done
}

# Usage: value_or_pick_module PURPOSE — VALUE, else a picked module; its absolute path in PICKED.
value_or_pick_module() {
  local given="${VALUE}"
  if [[ -z "${given}" ]]; then
    pick_module "$1" || return
    given="${PICKED}"
  fi
  PICKED="$(locate_module "${given}")" || exit # 1, or 2 for a name no file can have
}

# Usage: value_or_pick_remote KIND PURPOSE — VALUE (or the positional for --keep-warm), else picked.
value_or_pick_remote() {
  local given="${VALUE}"
  [[ "${ACTION}" == --keep-warm ]] && given="${POSITIONALS[0]:-}"
  if [[ -n "${given}" ]]; then
    PICKED="${given}"
    return 0
  fi
  pick_remote "$1" "$2"
}

# --------------------------------------------------------------------------------------------------
# Actions: one cmd_<action> per table row

# Usage: require_account — fail early (before any question) when no Chutes account is configured.
require_account() { tool commands.account check; }

cmd_account() { tool commands.account info "${DEBUG_ARGS[@]}"; }
cmd_link_hotkey() { tool commands.account link "${DEBUG_ARGS[@]}"; }
cmd_set_api_key() { tool commands.account set-api-key "${DEBUG_ARGS[@]}"; }

cmd_new() {
  local name="${VALUE}"
  local -a extra=("${PASS[@]}")
  if [[ -z "${name}" ]]; then
    ask "Chute name (lowercase letters, digits, '-', '_'; b back, q quit): "
    [[ -n "${ANSWER}" ]] || return "${BACK}"
    name="${ANSWER}"
    ask "Local image holding the service (e.g. myorg/myservice:latest): "
    [[ -n "${ANSWER}" ]] || die "an image is needed"
    extra+=(--image "${ANSWER}")
  fi
  if [[ -n "$(option_value --image)" ]]; then extra+=(--image "$(option_value --image)"); fi
  if has_option --yes; then extra+=(--yes); fi
  tool commands.new "${name}" "${extra[@]}" "${DEBUG_ARGS[@]}"
}

# Usage: discover_command MODULE_PATH [OPTIONS...] — DISCOVER_CMD: the tool and arguments of route
# discovery for a module (asking for delays on a terminal).
discover_command() {
  DISCOVER_CMD=(discover_routes --chute-file "$1" "${@:2}")
  if [[ -t 0 ]] && ! has_option --yes; then
    DISCOVER_CMD+=(--interactive)
  fi
}
DISCOVER_CMD=()

# Usage: discover MODULE_PATH [OPTIONS...] — route discovery for a module, when more follows it.
discover() {
  discover_command "$@"
  tool "${DISCOVER_CMD[@]}"
}

cmd_discover() {
  value_or_pick_module "discover routes for" || return
  discover_command "${PICKED}" "${PASS[@]}" "${DEBUG_ARGS[@]}"
  exec_tool "${DISCOVER_CMD[@]}"
}

cmd_validate() {
  value_or_pick_module validate || return
  tool commands.validate "${PICKED}" "${DEBUG_ARGS[@]}"
}

cmd_openapi() {
  value_or_pick_module "write the API document of" || return
  local -a cmd=(commands.openapi "${PICKED}")
  if [[ -n "$(option_value --output)" ]]; then
    cmd+=(--output "$(output_path "$(option_value --output)")")
  fi
  tool "${cmd[@]}" "${DEBUG_ARGS[@]}"
}

# Usage: output_path PATH — a relative path taken from the caller's directory (deploy.sh runs in ROOT).
output_path() {
  if [[ "$1" == /* || "$1" == - ]]; then printf '%s' "$1"; else printf '%s/%s' "${CALLER_DIR}" "$1"; fi
}

cmd_build() {
  value_or_pick_module build || return
  local module="${PICKED}" manifest
  local -a cmd=(commands.build "${module}" "${DEBUG_ARGS[@]}")
  if ((MENU)) && ! has_option --local; then
    ask "Build locally with docker/podman, or remotely on Chutes (needs a \$50 balance)? [L/r] " l
    [[ "${ANSWER}" == [rR] ]] || OPTIONS+=(--local)
  fi
  if has_option --local; then cmd+=(--local); else require_account; fi
  manifest="$(manifest_of "${module}")"
  if [[ ! -f "${manifest}" ]]; then
    if has_option --yes || ! can_ask; then
      printf 'No route manifest (%s): building with CHUTE_STATIC_ROUTES only.\n' "${manifest##*/}"
    elif confirm "No route manifest (${manifest##*/}). Discover the routes first?" y; then
      if ! discover "${module}"; then
        confirm "Discovery failed. Build anyway?" || return 1
      fi
    fi
  fi
  if ! has_option --local; then
    confirm "Upload $(module_label "${module}")'s build context to Chutes for a remote build?" || {
      printf 'Cancelled: nothing was uploaded.\n'
      return 0
    }
  fi
  exec_tool "${cmd[@]}"
}

cmd_run() {
  value_or_pick_module "run in dev mode" || return
  exec_tool commands.run "${PICKED}" "${RUN_OPTIONS[@]}"
}

cmd_smoke() {
  value_or_pick_module smoke-test || return
  exec_tool commands.smoke "${PICKED}" "${RUN_OPTIONS[@]}"
}

cmd_run_docker() {
  value_or_pick_module "run in a container" || return
  local -a cmd=(commands.run_docker "${PICKED}")
  local option
  for option in --port --gpus --timeout --image; do
    if [[ -n "$(option_value "${option}")" ]]; then
      cmd+=("${option}" "$(option_value "${option}")")
    fi
  done
  if has_option --dev; then cmd+=(--dev); fi
  exec_tool "${cmd[@]}" "${DEBUG_ARGS[@]}"
}

cmd_cleanup() {
  local status=0
  tool discover_routes --cleanup || status=1
  tool commands.run_docker --cleanup || status=1
  return "${status}"
}

cmd_list_images() { tool commands.listing images "${DEBUG_ARGS[@]}"; }
cmd_list_chutes() { tool commands.listing chutes "${DEBUG_ARGS[@]}"; }

cmd_deploy() {
  value_or_pick_module deploy || return
  local module="${PICKED}"
  local -a cmd=(commands.deploy "${module}" "${DEBUG_ARGS[@]}")
  require_account
  if ! has_option --accept-fee && ! has_option --yes && can_ask; then
    if ! confirm "Deploying charges a fee to your Chutes balance. Accept it?"; then
      printf 'Cancelled: nothing was deployed (the fee was not accepted).\n'
      return 0
    fi
    OPTIONS+=(--accept-fee)
  fi
  if ((MENU)) && ! has_option --public; then
    confirm "Make the chute public (needs that permission on your account)?" && OPTIONS+=(--public)
  fi
  has_option --accept-fee && cmd+=(--accept-fee)
  has_option --public && cmd+=(--public)
  confirm "Deploy $(module_label "${module}") to Chutes now?" || {
    printf 'Cancelled: nothing was deployed.\n'
    return 0
  }
  exec_tool "${cmd[@]}"
}

cmd_status() {
  value_or_pick_remote chutes "show" || return
  tool commands.status "${PICKED}" "${DEBUG_ARGS[@]}"
}

cmd_logs() {
  value_or_pick_remote chutes "tail the logs of" || return
  local -a cmd=(commands.logs "${PICKED}")
  local option
  for option in --instance --backfill; do
    if [[ -n "$(option_value "${option}")" ]]; then
      cmd+=("${option}" "$(option_value "${option}")")
    fi
  done
  exec_tool "${cmd[@]}" "${DEBUG_ARGS[@]}"
}

cmd_warmup() {
  value_or_pick_remote chutes "warm up" || return
  local -a cmd=(commands.warmup "${PICKED}")
  if [[ -n "$(option_value --timeout)" ]]; then
    cmd+=(--timeout "$(option_value --timeout)")
  fi
  exec_tool "${cmd[@]}" "${DEBUG_ARGS[@]}"
}

cmd_keep_warm() {
  local seconds="${VALUE}"
  if [[ -z "${seconds}" ]]; then
    ask "Seconds between warmups [300]: " 300
    [[ "${ANSWER}" =~ ^[0-9]+$ && "${ANSWER}" != 0 ]] || die "a positive number of seconds is needed, got '${ANSWER}'"
    seconds="${ANSWER}"
  fi
  value_or_pick_remote chutes "keep warm" || return
  exec_tool commands.keep_warm "${PICKED}" --interval "${seconds}" "${DEBUG_ARGS[@]}"
}

# Usage: delete_remote chutes|images — resolve, confirm by typing the name or id, delete.
delete_remote() {
  local kind="$1" singular="${1%s}" resolved id name
  value_or_pick_remote "${kind}" delete || return
  resolved="$(tool commands.pick resolve "${kind}" "${PICKED}")" || return 1
  IFS=$'\t' read -r id name <<<"${resolved}"
  printf 'Delete %s %s (id %s)? This cannot be undone.\n' "${singular}" "${name}" "${id}"
  if ! has_option --yes; then
    can_ask || die "${ACTION} needs a confirmation: run it in a terminal, or add --yes"
    ask "Type the ${singular}'s name or id to delete it (anything else keeps it): "
    if [[ "${ANSWER}" != "${id}" && "${ANSWER}" != "${name}" ]]; then
      die "'${ANSWER}' is neither ${name} nor ${id}: nothing was deleted"
    fi
  fi
  tool commands.delete "${kind}" "${id}" "${DEBUG_ARGS[@]}"
}

cmd_delete() { delete_remote chutes; }
cmd_delete_image() { delete_remote images; }
cmd_help() { usage; }

# Usage: command_of FLAG — the cmd_ function of an action flag.
command_of() {
  local name="${1#--}"
  printf 'cmd_%s' "${name//-/_}"
}

# --------------------------------------------------------------------------------------------------
# The menu

# Usage: menu_entries — MENU_FLAGS, MENU_LEFT and MENU_RIGHT: numbered entries in two columns.
menu_entries() {
  local row group flag label last="" n=0 side=LEFT line
  MENU_FLAGS=() MENU_LEFT=() MENU_RIGHT=()
  for row in "${ACTIONS[@]}"; do
    IFS='|' read -r group flag _ label _ <<<"${row}"
    [[ -n "${group}" ]] || continue
    [[ "${group}" == Cloud ]] && side=RIGHT
    if [[ "${group}" != "${last}" ]]; then
      line="${C_BOLD}${group}${C_RESET}"
      if [[ "${side}" == LEFT ]]; then MENU_LEFT+=("${line}"); else MENU_RIGHT+=("${line}"); fi
      last="${group}"
    fi
    n=$((n + 1))
    MENU_FLAGS+=("${flag}")
    printf -v line '  %2d) %s' "${n}" "${label}"
    if [[ "${side}" == LEFT ]]; then MENU_LEFT+=("${line}"); else MENU_RIGHT+=("${line}"); fi
  done
}
MENU_FLAGS=() MENU_LEFT=() MENU_RIGHT=()

show_menu() {
  local i rows left plain
  printf '\n%schutes-wrappers%s: deploy menu %s(%s)%s\n\n' "${C_BOLD}" "${C_RESET}" "${C_DIM}" "${ROOT}" "${C_RESET}"
  rows=$((${#MENU_LEFT[@]} > ${#MENU_RIGHT[@]} ? ${#MENU_LEFT[@]} : ${#MENU_RIGHT[@]}))
  for ((i = 0; i < rows; i++)); do
    left="${MENU_LEFT[i]:-}"
    plain="${left//"${C_BOLD}"/}"
    plain="${plain//"${C_RESET}"/}" # colour codes take no room on screen
    if [[ -n "${MENU_RIGHT[i]:-}" ]]; then
      printf '%s%*s%s\n' "${left}" "$((40 - ${#plain}))" "" "${MENU_RIGHT[i]}"
    else
      printf '%s\n' "${left}"
    fi
  done
  printf '\n   q) Quit\n\n'
}

run_menu() {
  local status choice flag
  MENU=1
  menu_entries
  trap 'printf "\n"' INT
  while true; do
    show_menu
    printf 'Choose 1-%d, or q: ' "${#MENU_FLAGS[@]}"
    if ! read -r choice; then
      printf '\n'
      return 0
    fi
    case "${choice}" in
      q | Q | quit | exit) return 0 ;;
      "") continue ;;
    esac
    if [[ ! "${choice}" =~ ^[0-9]+$ ]] || ((10#${choice} < 1 || 10#${choice} > ${#MENU_FLAGS[@]})); then
      err "no menu entry '${choice}'"
      continue
    fi
    flag="${MENU_FLAGS[10#${choice} - 1]}"
    ACTION="${flag}" VALUE="" OPTIONS=() PASS=() POSITIONALS=()
    derive_options
    printf '\n%s== %s ==%s\n' "${C_BOLD}" "$(action_row "${flag}" && row_field "${ROW}" 4)" "${C_RESET}"
    # A subshell with its own `set -e`: a failing action ends it, never the menu.
    set +e
    (
      set -e
      "$(command_of "${flag}")"
    )
    status=$?
    set -e
    case "${status}" in
      0 | "${BACK}") ;;
      "${QUIT}") return 0 ;;
      130) printf '%s: interrupted; back to the menu\n' "${flag}" ;;
      *) printf '%s%s failed (exit %d); back to the menu%s\n' "${C_RED}" "${flag}" "${status}" "${C_RESET}" ;;
    esac
  done
}

# Usage: derive_options — RUN_OPTIONS (for run_local/smoke: all but --yes) and DEBUG_ARGS from OPTIONS.
derive_options() {
  local option
  RUN_OPTIONS=() DEBUG_ARGS=()
  for option in "${OPTIONS[@]}"; do
    [[ "${option}" == --yes ]] || RUN_OPTIONS+=("${option}")
  done
  if has_option --debug; then DEBUG_ARGS=(--debug); fi
}
RUN_OPTIONS=() DEBUG_ARGS=()
CALLER_DIR="${PWD}" # where the user ran deploy.sh: module paths are relative to it

main() {
  init_colours
  parse_args "$@"
  CALLER_DIR="${PWD}"
  VENV="$(venv_dir)"
  cd "${ROOT}"
  derive_options
  if [[ -z "${ACTION}" ]]; then
    run_menu
    return 0
  fi
  "$(command_of "${ACTION}")"
}

main "$@"
