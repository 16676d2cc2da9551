#!/usr/bin/env bash
# Summary: one-shot environment setup for chutes-wrappers.
#
# Creates a Python 3.10+ virtualenv (default .venv), installs requirements.txt (and
# requirements-dev.txt with --dev), then prints what it found: Python, container engines,
# nvidia-smi, the Chutes config. Interactive runs without a Chutes config offer `chutes register`.
#
# A second run is a no-op: after a successful install a stamp file inside the venv records a
# sha256 of the requirement files, the venv's Python version and the dev flag; when it matches,
# pip is not run at all.
#
# Testing hook: with SETUP_SH_SOURCE_ONLY=1, `source setup.sh` defines the functions and returns
# without running main (tests call backup_config this way).
set -euo pipefail

readonly STAMP_NAME=".chutes-wrappers-stamp"
SETUP_DIR="$PWD" # this script's directory (pure bash: PATH may hold nothing but a Python)
if [[ "${BASH_SOURCE[0]}" == */* ]]; then SETUP_DIR="$(cd -- "${BASH_SOURCE[0]%/*}" && pwd)"; fi
readonly SETUP_DIR
readonly MIN_PY_MAJOR=3
readonly MIN_PY_MINOR=10
PYTHON_CANDIDATES=(python3.13 python3.12 python3.11 python3.10 python3)

# Options (set once by parse_args).
OPT_DEV=0
OPT_YES=0
OPT_FORCE=0
OPT_REGISTER=0
OPT_LINK=0
OPT_VENV=""
OPT_PYTHON=""
ORIG_PWD="$PWD"

# Colours (set by init_colours; empty means plain text).
C_OUT_BOLD="" C_OUT_GREEN="" C_OUT_YELLOW="" C_OUT_RESET=""
C_ERR_RED="" C_ERR_YELLOW="" C_ERR_RESET=""

usage() {
  cat <<'EOF'
Usage: ./setup.sh [options]

Set up the chutes-wrappers environment: a Python 3.10+ virtualenv with the dependencies.
Safe to re-run: when nothing changed it finishes in seconds without calling pip.

Options:
  --dev             also install the test dependencies (requirements-dev.txt)
  -y, --yes         non-interactive: ask nothing, take the defaults (no registration)
  --venv PATH       virtualenv location (default: .venv next to this script;
                    env: CHUTES_WRAPPERS_VENV)
  --python PATH     interpreter for a new venv (default: first Python 3.10+ among
                    python3.13, python3.12, python3.11, python3.10, python3)
  --register        run `chutes register` even if a Chutes config exists
                    (the existing config is backed up first, mode 600)
  --link-hotkey     use an existing Chutes account: pick its hotkey from your bittensor
                    wallets or paste its seed (hidden; read from stdin when it is not a
                    terminal), check it with the API, write the config (backup first, mode 600)
  --force           re-run pip even if the venv is up to date
  -h, --help        show this help

Also non-interactive when stdin is not a terminal or CI=true.
The Chutes config is ~/.chutes/config.ini, or $CHUTES_CONFIG_PATH when set.
EOF
}

init_colours() {
  if [[ -z "${NO_COLOR:-}" && -t 1 ]]; then
    C_OUT_BOLD=$'\033[1m' C_OUT_GREEN=$'\033[32m' C_OUT_YELLOW=$'\033[33m' C_OUT_RESET=$'\033[0m'
  fi
  if [[ -z "${NO_COLOR:-}" && -t 2 ]]; then
    C_ERR_RED=$'\033[31m' C_ERR_YELLOW=$'\033[33m' C_ERR_RESET=$'\033[0m'
  fi
}

info() { printf '%s\n' "$*"; }
ok() { printf '%s%s%s\n' "$C_OUT_GREEN" "$*" "$C_OUT_RESET"; }
warn() { printf '%swarning:%s %s\n' "$C_ERR_YELLOW" "$C_ERR_RESET" "$*" >&2; }
err() { printf '%serror:%s %s\n' "$C_ERR_RED" "$C_ERR_RESET" "$*" >&2; }

# Usage: die_usage MESSAGE — one error line, then the usage, exit 2.
die_usage() {
  err "$1"
  usage >&2
  exit 2
}

# Usage: abs_path PATH — PATH made absolute against the directory setup.sh was started from.
abs_path() {
  local path="$1"
  if [[ "$path" != /* ]]; then
    path="$ORIG_PWD/$path"
  fi
  while [[ "$path" == */ && "$path" != / ]]; do
    path="${path%/}"
  done
  printf '%s\n' "$path"
}

parse_args() {
  local arg value
  while (($# > 0)); do
    arg="$1"
    shift
    case "$arg" in
      -h | --help)
        usage
        exit 0
        ;;
      --dev) OPT_DEV=1 ;;
      -y | --yes) OPT_YES=1 ;;
      --force) OPT_FORCE=1 ;;
      --register) OPT_REGISTER=1 ;;
      --link-hotkey) OPT_LINK=1 ;;
      --venv | --python)
        if (($# == 0)) || [[ -z "$1" || "$1" == -* ]]; then
          die_usage "$arg needs a value (a path)"
        fi
        value="$1"
        shift
        if [[ "$arg" == --venv ]]; then OPT_VENV="$value"; else OPT_PYTHON="$value"; fi
        ;;
      --venv=* | --python=*)
        value="${arg#*=}"
        [[ -n "$value" ]] || die_usage "${arg%%=*} needs a value (a path)"
        if [[ "$arg" == --venv=* ]]; then OPT_VENV="$value"; else OPT_PYTHON="$value"; fi
        ;;
      *) die_usage "unknown option: $arg" ;;
    esac
  done
  if ((OPT_REGISTER && OPT_LINK)); then
    die_usage "--register and --link-hotkey exclude each other (a new account, or an existing one)"
  fi
}

# Usage: is_interactive — true when we may ask the user questions.
is_interactive() {
  case "${CI:-}" in
    true | TRUE | True | 1) return 1 ;;
  esac
  [[ -t 0 && "$OPT_YES" == 0 ]]
}

# Usage: confirm QUESTION — ask a y/N question; default No.
confirm() {
  local answer=""
  printf '%s [y/N] ' "$1"
  read -r answer || answer=""
  [[ "$answer" == [yY] || "$answer" == [yY][eE][sS] ]]
}

# Usage: python_version PYTHON — print X.Y.Z of the interpreter; fails if it does not run.
python_version() {
  local out
  out="$("$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" || return 1
  [[ "$out" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
  printf '%s\n' "$out"
}

# Usage: version_supported X.Y.Z — true for 3.10 and newer.
version_supported() {
  [[ "$1" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
  local major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  ((major > MIN_PY_MAJOR || (major == MIN_PY_MAJOR && minor >= MIN_PY_MINOR)))
}

# Usage: find_python — print the interpreter for a new venv, or explain and exit 1.
find_python() {
  local fix="install Python ${MIN_PY_MAJOR}.${MIN_PY_MINOR}+ or pass --python PATH to one"
  local candidate path version
  if [[ -n "$OPT_PYTHON" ]]; then
    if [[ "$OPT_PYTHON" == */* ]]; then
      path="$(abs_path "$OPT_PYTHON")"
    else
      path="$(command -v -- "$OPT_PYTHON" || true)"
    fi
    if [[ -z "$path" || ! -e "$path" ]]; then
      err "--python $OPT_PYTHON: no such interpreter; $fix"
      exit 1
    fi
    if ! version="$(python_version "$path")"; then
      err "--python $OPT_PYTHON does not run as Python; $fix"
      exit 1
    fi
    if ! version_supported "$version"; then
      err "--python $OPT_PYTHON is Python $version; chutes-wrappers needs ${MIN_PY_MAJOR}.${MIN_PY_MINOR}+: $fix"
      exit 1
    fi
    printf '%s\n' "$path"
    return 0
  fi
  local seen=""
  for candidate in "${PYTHON_CANDIDATES[@]}"; do
    path="$(command -v -- "$candidate" || true)"
    [[ -n "$path" ]] || continue
    # pyenv shims exist for every version but fail unless that version is active.
    version="$(python_version "$path")" || continue
    if version_supported "$version"; then
      printf '%s\n' "$path"
      return 0
    fi
    seen+="${seen:+, }$candidate is $version"
  done
  err "no Python ${MIN_PY_MAJOR}.${MIN_PY_MINOR}+ found${seen:+ ($seen)}; $fix"
  exit 1
}

# Usage: venv_healthy VENV — true when VENV's python runs and is 3.10+.
venv_healthy() {
  local version
  [[ -x "$1/bin/python" ]] || return 1
  version="$(python_version "$1/bin/python")" || return 1
  version_supported "$version"
}

# Usage: ensure_venv VENV PYTHON — create VENV if missing, recreate it if broken.
ensure_venv() {
  local venv="$1" python="$2" existed=0
  if venv_healthy "$venv"; then
    return 0
  fi
  local -a cmd=("$python" -m venv "$venv")
  if [[ -e "$venv" ]]; then
    existed=1
    if [[ ! -d "$venv" ]]; then
      err "$venv exists and is not a directory; pass --venv PATH to use another location"
      exit 1
    fi
    if [[ -f "$venv/pyvenv.cfg" ]]; then
      warn "$venv is broken (its python does not run or is older than ${MIN_PY_MAJOR}.${MIN_PY_MINOR}); recreating it"
      cmd=("$python" -m venv --clear "$venv")
    elif [[ -n "$(ls -A -- "$venv")" ]]; then
      err "$venv exists but is not a virtualenv; remove it or pass --venv PATH"
      exit 1
    fi
  fi
  info "Creating virtualenv $venv with $python ($(python_version "$python"))"
  if ! "${cmd[@]}"; then
    if ((existed == 0)); then
      rm -rf -- "$venv"
    fi
    err "could not create the virtualenv with $python -m venv (on Debian/Ubuntu: apt install python3-venv)"
    exit 1
  fi
}

# Usage: requirement_key VENV_PYTHON KIND FILE... — sha256 over KIND, the venv's Python version
# and the files' names and contents.
requirement_key() {
  local python="$1"
  shift
  "$python" - "$@" <<'PY'
import hashlib
import sys

kind, files = sys.argv[1], sys.argv[2:]
digest = hashlib.sha256()
digest.update(f"{kind}\0{sys.version}\0".encode())
for name in files:
    with open(name, "rb") as handle:
        digest.update(name.encode() + b"\0" + handle.read() + b"\0")
print(digest.hexdigest())
PY
}

# Usage: install_requirements VENV — pip install unless the stamp says it is already done.
# The stamp holds "runtime <key>" and, after a --dev install, also "dev <key>": the dev set
# includes the runtime set, so a later plain run is satisfied by a dev install.
install_requirements() {
  local venv="$1"
  local python="$venv/bin/python" stamp="$venv/$STAMP_NAME"
  local runtime_key dev_key="" want req="requirements.txt" label="runtime"
  runtime_key="$(requirement_key "$python" runtime requirements.txt)"
  want="runtime $runtime_key"
  if ((OPT_DEV)); then
    dev_key="$(requirement_key "$python" dev requirements.txt requirements-dev.txt)"
    want="dev $dev_key"
    req="requirements-dev.txt"
    label="runtime + dev"
  fi
  if ((OPT_FORCE == 0)) && [[ -f "$stamp" ]] && grep -qxF -- "$want" "$stamp"; then
    ok "Dependencies up to date ($label); pip not run (--force to reinstall)"
    return 0
  fi
  rm -f -- "$stamp"
  if ! "$python" -m pip --version >/dev/null 2>&1; then
    "$python" -m ensurepip --default-pip >/dev/null
  fi
  info "Installing dependencies ($label) from $req into $venv ..."
  local status=0
  "$python" -m pip install -q --disable-pip-version-check -r "$req" || status=$?
  if ((status != 0)); then
    err "pip install -r $req failed (exit $status); see pip's output above, fix it and re-run ./setup.sh"
    exit 1
  fi
  {
    printf 'runtime %s\n' "$runtime_key"
    if [[ -n "$dev_key" ]]; then printf 'dev %s\n' "$dev_key"; fi
  } >"$stamp"
  ok "Dependencies installed ($label)"
}

# Usage: config_path — where the chutes CLI reads its config.
config_path() {
  printf '%s\n' "${CHUTES_CONFIG_PATH:-$HOME/.chutes/config.ini}"
}

# Usage: backup_config FILE — copy FILE to FILE.bak.<YYYYmmdd-HHMMSS> (mode 600, never
# overwriting an older backup) and print the backup's path. FILE itself is left untouched.
# The rule lives in tools/private_files.py (standard library only), shared with tools/commands/account.py.
backup_config() {
  "${BACKUP_PYTHON:-python3}" "$SETUP_DIR/tools/private_files.py" backup "$1"
}

# Usage: maybe_register VENV — offer or run `chutes register`; returns 1 if it was run and failed.
maybe_register() {
  local venv="$1" config backup
  config="$(config_path)"
  if ((OPT_REGISTER == 0)); then
    [[ ! -e "$config" ]] && is_interactive || return 0
    confirm "No Chutes config at $config. Register a Chutes account now (chutes register)?" || return 0
  fi
  if [[ -e "$config" ]]; then
    backup="$(BACKUP_PYTHON="$venv/bin/python" backup_config "$config")"
    info "Backed up the existing Chutes config to $backup"
  fi
  if ! "$venv/bin/chutes" register; then
    err "chutes register failed; run it again later with: $venv/bin/chutes register"
    return 1
  fi
  # chutes writes the config (hotkey seed included) with the default umask: keep it private.
  if [[ -f "$config" ]]; then
    chmod 600 -- "$config"
  fi
}

# Usage: link_hotkey VENV REPO — write the Chutes config for an existing account's hotkey.
# The seed is asked by the Python tool (no echo) or read from stdin; it never passes through here.
link_hotkey() {
  local venv="$1" repo="$2"
  if ! (cd -- "$repo" && "$venv/bin/python" -m tools.commands.account link); then
    err "linking the hotkey failed (see above); nothing was changed. Try again with: ./setup.sh --link-hotkey"
    return 1
  fi
}

# Usage: docker_status — one phrase: is docker installed, does its daemon answer.
docker_status() {
  command -v docker >/dev/null 2>&1 || {
    printf 'not found\n'
    return 0
  }
  if ! command -v timeout >/dev/null 2>&1; then
    printf 'found (daemon not checked: no timeout command)\n'
  elif timeout 5 docker info >/dev/null 2>&1; then
    printf 'found, daemon answers\n'
  else
    printf 'found, daemon not reachable (start it, or use podman)\n'
  fi
}

# Usage: display_path PATH — PATH relative to the starting directory when inside it.
display_path() {
  local path="$1"
  if [[ "$path" == "$ORIG_PWD"/* ]]; then
    printf '%s\n' "${path#"$ORIG_PWD"/}"
  else
    printf '%s\n' "$path"
  fi
}

summary() {
  local venv="$1" repo="$2" config version engine_ok=0 deploy
  config="$(config_path)"
  version="$(python_version "$venv/bin/python")"
  deploy="$(display_path "$repo/deploy.sh")"
  [[ "$deploy" == */* ]] || deploy="./$deploy"
  printf '\n%sSummary%s\n' "$C_OUT_BOLD" "$C_OUT_RESET"
  printf '  %-14s %s\n' "Python" "$version ($venv/bin/python)"
  printf '  %-14s %s\n' "docker" "$(docker_status)"
  if command -v podman >/dev/null 2>&1; then
    printf '  %-14s %s\n' "podman" "found"
    engine_ok=1
  else
    printf '  %-14s %s\n' "podman" "not found"
  fi
  command -v docker >/dev/null 2>&1 && engine_ok=1
  if command -v nvidia-smi >/dev/null 2>&1; then
    printf '  %-14s %s\n' "nvidia-smi" "found"
  else
    printf '  %-14s %s\n' "nvidia-smi" "not found (no local GPU runs; deploying still works)"
  fi
  if [[ -e "$config" ]]; then
    printf '  %-14s %s\n' "Chutes config" "present ($config)"
  else
    printf '  %-14s %s\n' "Chutes config" "not present ($config); run: chutes register (or ./setup.sh --link-hotkey for an existing account)"
  fi
  if ((engine_ok == 0)); then
    printf '  %s%s%s\n' "$C_OUT_YELLOW" "No container engine: install docker or podman for discovery and local builds." "$C_OUT_RESET"
  fi
  printf '\nNext:\n  source %s/bin/activate\n  %s --run deploy_example\n' "$(display_path "$venv")" "$deploy"
}

main() {
  init_colours
  parse_args "$@"
  local repo src="${BASH_SOURCE[0]}" venv python status=0
  if [[ "$src" == */* ]]; then
    cd -- "${src%/*}/"
  fi
  repo="$PWD"
  if [[ -n "$OPT_VENV" ]]; then
    venv="$(abs_path "$OPT_VENV")"
  elif [[ -n "${CHUTES_WRAPPERS_VENV:-}" ]]; then
    venv="$(abs_path "$CHUTES_WRAPPERS_VENV")"
  else
    venv="$repo/.venv"
  fi
  python="$(find_python)"
  ensure_venv "$venv" "$python"
  install_requirements "$venv"
  if ((OPT_LINK)); then
    link_hotkey "$venv" "$repo" || status=1
  else
    maybe_register "$venv" || status=1
  fi
  summary "$venv" "$repo"
  return "$status"
}

if [[ "${SETUP_SH_SOURCE_ONLY:-}" == 1 && "${BASH_SOURCE[0]}" != "$0" ]]; then
  return 0
fi
main "$@"
