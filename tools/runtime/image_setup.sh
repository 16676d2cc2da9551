#!/bin/sh
# Summary: the wrapper image's setup step: a Python >= 3.10 with venv, the non-root user, the Chutes
#          SDK in a venv of its own, and the base image's environment recorded for the launcher.
# Usage:   image_setup.sh --chutes-version V --distro auto|debian|alpine|rhel --state-dir DIR
#                         --venv DIR --base-env FILE --app-dir DIR --user NAME --home DIR
#                         --cache-dir DIR --ca-bundle FILE [--python PY] [PACKAGE...]
#
# tools/runtime/image.py ADDs this file into the image and RUNs it as root with the layout it owns
# (paths, user name) as arguments; PACKAGEs are extra distro packages to install. POSIX sh: it runs
# under the base image's own /bin/sh (dash, bash, busybox ash). Never compiles Python: the image's own
# Python is used, else the distro's package.
#
# CW_IMAGE_SETUP_LIB=1 when sourcing defines the functions without running main (unit tests).

set -eu
umask 022

say() { echo "chutes-wrappers: $*" >&2; }
# deploy.sh --build reports the last such line as the reason the build failed
# (the prefix is tools/runtime/image.py SETUP_ERROR).
fail() {
    echo "chutes-wrappers: error: $*" >&2
    exit 1
}

# Tried in this order after an explicit --python: conda first, then the newest versioned name.
PYTHON_CANDIDATES="/opt/conda/bin/python python3.13 python3.12 python3.11 python3.10 python3 python"

PYTHON=""
PY=""
PM=""
APT_UPDATED=""

# Package managers tried for a distro family (in detection order), and the bases to suggest.
managers_for() {
    case "$1" in
        auto) echo "apt-get apk dnf microdnf yum" ;;
        debian) echo "apt-get" ;;
        alpine) echo "apk" ;;
        rhel) echo "dnf microdnf yum" ;;
        *) return 1 ;;
    esac
}

bases_for() {
    case "$1" in
        debian) echo "a Debian/Ubuntu base" ;;
        alpine) echo "an Alpine base" ;;
        rhel) echo "a RHEL-family base" ;;
        *) echo "a Debian/Ubuntu, Alpine or RHEL-family base" ;;
    esac
}

# PM: the first of the distro's package managers present (apt-get is called "apt"), or empty.
detect_manager() {
    PM=""
    for m in $(managers_for "$1"); do
        if command -v "$m" >/dev/null 2>&1; then
            if [ "$m" = apt-get ]; then PM=apt; else PM=$m; fi
            return 0
        fi
    done
}

# PY: the first candidate that is a Python >= 3.10.
find_python() {
    PY=""
    for c in $PYTHON $PYTHON_CANDIDATES; do
        p=$(command -v "$c" 2>/dev/null) || continue
        if [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
            PY=$p
            return 0
        fi
    done
    return 1
}

venv_ok() { "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; }

headers_ok() {
    "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1
}

pyver() { "$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# Install "$@" with the detected package manager (nothing to do when empty).
pm_install() {
    if [ "$#" -eq 0 ]; then return 0; fi
    case "$PM" in
        apt)
            # A broken third-party source (an expired CUDA repo key) must not stop the install.
            if [ -z "$APT_UPDATED" ]; then
                apt-get update -q || say "apt-get update had errors; trying anyway"
                APT_UPDATED=1
            fi
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
            ;;
        apk) apk add --no-cache "$@" ;;
        dnf | microdnf | yum) "$PM" install -y "$@" ;;
        *) return 1 ;;
    esac
}

# The distro's Python, or only its venv module when the Python is there ($1: python or venv).
pm_install_python() {
    case "$PM" in
        apt)
            if [ "$1" = python ]; then
                pm_install python3 python3-venv python3-pip ca-certificates
            else
                pm_install "python$(pyver)-venv" || pm_install python3-venv
            fi
            ;;
        # musl: no wheels for some chutes dependencies, so the build tools always come along.
        apk) pm_install python3 py3-pip ;;
        dnf | microdnf | yum)
            if [ "$1" = python ]; then
                pm_install python3.11 python3.11-pip || pm_install python3 python3-pip
            fi
            ;;
    esac
}

# Installed package names, one a line, sorted (to remove exactly what the build tools added).
pm_list() {
    case "$PM" in
        apt) dpkg-query -W -f '${Package}\n' | sort ;;
        dnf | microdnf | yum) rpm -qa --qf '%{NAME}\n' | sort ;;
    esac
}

# Compiler ($1 = yes) and Python headers ($2 = yes), recorded so pm_remove_build_deps can undo them:
# netifaces (a chutes dependency) ships no wheels.
pm_build_deps() {
    need_cc=$1
    need_headers=$2
    if [ -z "$PM" ]; then return 0; fi
    set --
    case "$PM" in
        apt)
            if [ "$need_cc" = yes ]; then set -- "$@" gcc libc6-dev; fi
            if [ "$need_headers" = yes ]; then set -- "$@" "python$(pyver)-dev"; fi
            ;;
        apk)
            set -- gcc musl-dev linux-headers libffi-dev
            if [ "$need_headers" = yes ]; then set -- "$@" python3-dev; fi
            apk add --no-cache --virtual .chutes-build-deps "$@"
            return 0
            ;;
        dnf | microdnf | yum)
            if [ "$need_cc" = yes ]; then set -- "$@" gcc; fi
            if [ "$need_headers" = yes ]; then set -- "$@" "python$(pyver)-devel"; fi
            ;;
    esac
    if [ "$#" -eq 0 ]; then return 0; fi
    pm_list >"$STATE_DIR/pkgs.before"
    pm_install "$@"
}

pm_remove_build_deps() {
    case "$PM" in
        apt | dnf | microdnf | yum)
            if [ -f "$STATE_DIR/pkgs.before" ]; then
                new=$(pm_list | comm -13 "$STATE_DIR/pkgs.before" -)
                # $new is a list of package names, one a word: split on purpose.
                # shellcheck disable=SC2086
                if [ -n "$new" ]; then
                    if [ "$PM" = apt ]; then
                        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $new
                    else
                        "$PM" remove -y $new
                    fi
                fi
            fi
            ;;
        apk) apk del --no-cache .chutes-build-deps >/dev/null 2>&1 || true ;;
    esac
    case "$PM" in
        apt) if [ -n "$APT_UPDATED" ]; then apt-get clean && rm -rf /var/lib/apt/lists/*; fi ;;
        dnf | microdnf | yum) "$PM" clean all >/dev/null 2>&1 || true ;;
    esac
    rm -f "$STATE_DIR/pkgs.before"
}

# Is $2 a uid (or gid) in the passwd (or group) file $1?
id_taken() {
    while IFS=: read -r _name _x id _rest; do
        if [ "$id" = "$2" ]; then return 0; fi
    done <"$1"
    return 1
}

# The user the chute runs as, with whatever tool the base has (or by hand, for busybox-only bases).
create_user() {
    if id "$RUN_USER" >/dev/null 2>&1; then return 0; fi
    if command -v useradd >/dev/null 2>&1; then
        if grep -q "^$RUN_USER:" /etc/group 2>/dev/null; then
            useradd -m -d "$HOME_DIR" -s /bin/sh -g "$RUN_USER" "$RUN_USER"
        else
            useradd -m -d "$HOME_DIR" -s /bin/sh -U "$RUN_USER"
        fi
    elif command -v adduser >/dev/null 2>&1; then
        adduser -D -h "$HOME_DIR" -s /bin/sh "$RUN_USER"
    else
        i=1000
        while id_taken /etc/passwd "$i" || id_taken /etc/group "$i"; do i=$((i + 1)); done
        echo "$RUN_USER:x:$i:$i::$HOME_DIR:/bin/sh" >>/etc/passwd
        echo "$RUN_USER:x:$i:" >>/etc/group
    fi
}

usage_error() { fail "image_setup.sh: $*"; }

main() {
    SDK_VERSION=""
    DISTRO=""
    STATE_DIR=""
    VENV_DIR=""
    BASE_ENV_FILE=""
    APP_DIR=""
    RUN_USER=""
    HOME_DIR=""
    CACHE_DIR=""
    CA_BUNDLE=""
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --chutes-version | --distro | --state-dir | --venv | --base-env | --app-dir | --user | --home | \
                --cache-dir | --ca-bundle | --python)
                [ "$#" -ge 2 ] || usage_error "$1 needs a value"
                case "$1" in
                    --chutes-version) SDK_VERSION=$2 ;;
                    --distro) DISTRO=$2 ;;
                    --state-dir) STATE_DIR=$2 ;;
                    --venv) VENV_DIR=$2 ;;
                    --base-env) BASE_ENV_FILE=$2 ;;
                    --app-dir) APP_DIR=$2 ;;
                    --user) RUN_USER=$2 ;;
                    --home) HOME_DIR=$2 ;;
                    --cache-dir) CACHE_DIR=$2 ;;
                    --ca-bundle) CA_BUNDLE=$2 ;;
                    --python) PYTHON=$2 ;;
                esac
                shift 2
                ;;
            --) shift && break ;;
            -*) usage_error "unknown option $1" ;;
            *) break ;;
        esac
    done
    for value in "$SDK_VERSION" "$DISTRO" "$STATE_DIR" "$VENV_DIR" "$BASE_ENV_FILE" "$APP_DIR" \
        "$RUN_USER" "$HOME_DIR" "$CACHE_DIR" "$CA_BUNDLE"; do
        [ -n "$value" ] || usage_error "missing a required option (see its Usage)"
    done
    managers=$(managers_for "$DISTRO") || usage_error "--distro $DISTRO is not one of auto, debian, alpine, rhel"
    manager_names=$(echo "$managers" | sed 's/ /, /g')

    mkdir -p "$STATE_DIR"
    # Where and how the base image runs its service: the launcher restores these for it.
    printf '%s\n' "WORKDIR=$(pwd)" "PATH=$PATH" "PYTHONPATH=${PYTHONPATH:-}" >"$BASE_ENV_FILE"

    detect_manager "$DISTRO"
    if [ "$#" -gt 0 ]; then
        [ -n "$PM" ] || fail "cannot install $*: no package manager ($manager_names) in this base image"
        pm_install "$@"
    fi

    need=""
    find_python || need=python
    if [ -z "$need" ] && ! venv_ok; then need=venv; fi
    if [ -n "$need" ] && [ -n "$PM" ]; then pm_install_python "$need"; fi
    if ! find_python || ! venv_ok; then
        fail "this base image has no Python >= 3.10 that can create a venv, and no way to install one" \
            "(package managers tried: $manager_names); use $(bases_for "$DISTRO") or any image with" \
            "python3 >= 3.10 and its venv module"
    fi
    say "using $PY (Python $(pyver))"

    create_user
    group=$(id -g "$RUN_USER")
    mkdir -p "$CACHE_DIR" "$APP_DIR"
    chown -R "$RUN_USER:$group" "$HOME_DIR"
    # Only the directory: a base may keep its own (large, root-owned) files in it.
    chown "$RUN_USER:$group" "$APP_DIR"

    need_cc=no
    need_headers=no
    if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then need_cc=yes; fi
    headers_ok || need_headers=yes
    if [ "$need_cc" = yes ] || [ "$need_headers" = yes ]; then pm_build_deps "$need_cc" "$need_headers"; fi

    "$PY" -m venv "$VENV_DIR" || fail "$PY could not create a virtualenv in $VENV_DIR (see above)"
    if [ -f "$CA_BUNDLE" ]; then export PIP_CERT="$CA_BUNDLE"; fi
    export PIP_ROOT_USER_ACTION=ignore PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}"
    # aiohttp >= 3.12: the cords' connection pool resends through a client middleware (cords/pool.py)
    "$VENV_DIR/bin/python" -m pip install --no-cache-dir --disable-pip-version-check "chutes==$SDK_VERSION" \
        "aiohttp>=3.12" ||
        fail "pip could not install chutes==$SDK_VERSION (see above); it needs network access and a C" \
            "compiler with Python headers to build netifaces"
    pm_remove_build_deps
    chown -R "$RUN_USER:$group" "$VENV_DIR"
}

if [ "${CW_IMAGE_SETUP_LIB:-}" != 1 ]; then
    main "$@"
fi
