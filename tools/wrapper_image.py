"""Build the Chutes image that wraps an existing service image (any distro, with or without Python).

`build_wrapper_image()` returns a `chutes.image.Image`; `str(image)` is its Dockerfile. Python is never
compiled: the image's own Python >= 3.10 is used, else the distro's package. The SDK's runtime goes
into a venv of its own so the service keeps the base image's packages, PATH and working directory
(recorded in BASE_ENV_FILE for the service launcher).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from tools.constants import APP_DIR, ENV_KEY_RE
from tools.errors import ImageConfigError
from tools.routes import manifest_path

if TYPE_CHECKING:  # chutes.image is imported when an image is built, not when this module is
    from chutes.image import Image

STATE_DIR = "/opt/chutes-wrappers"
VENV_DIR = f"{STATE_DIR}/venv"
# KEY=VALUE lines (WORKDIR, PATH, PYTHONPATH) as the base image had them.
BASE_ENV_FILE = f"{STATE_DIR}/base.env"
RUN_USER = "chutes"
HOME_DIR = f"/home/{RUN_USER}"
CACHE_DIR = f"{HOME_DIR}/.cache"
# What Docker/podman use when an image defines no PATH (debootstrap and other imported images).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# How the image setup script starts the line saying why it failed (read by tools/cli_chutes.py).
SETUP_ERROR = "chutes-wrappers: error: "

# Tried in this order after an explicit `python=`: conda first, then the newest versioned name.
PYTHON_CANDIDATES = (
    "/opt/conda/bin/python",
    "python3.13",
    "python3.12",
    "python3.11",
    "python3.10",
    "python3",
    "python",
)
DISTROS = ("auto", "debian", "alpine", "rhel")
# Package managers per distro family, in detection order.
_MANAGERS = {"debian": ("apt-get",), "alpine": ("apk",), "rhel": ("dnf", "microdnf", "yum")}

PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._:=~/-]*$")
PYTHON_RE = re.compile(r"^[A-Za-z0-9_./+-]+$")
VERSION_RE = re.compile(r"^[A-Za-z0-9.+!-]+$")


def build_wrapper_image(
    username: str,
    name: str,
    tag: str,
    base_image: str,
    *,
    env: Mapping[str, str] | None = None,
    module_file: str | None = None,
    python: str | None = None,
    distro: str = "auto",
    readme: str = "",
    apt_packages: Sequence[str] = (),
    extra_packages: Sequence[str] = (),
    chutes_version: str | None = None,
) -> "Image":
    """A Chutes-compatible image: `base_image` + the Chutes runtime in a venv + a non-root `chutes` user.

    env: CHUTE_ENV, baked into the image. module_file: the deploy module (default: the caller), used to
    find `<module>.routes.json`. python: a Python to prefer. distro: "auto" detects the package manager;
    "debian", "alpine" or "rhel" emit only that branch. apt_packages/extra_packages: distro packages to
    install. chutes_version: defaults to the installed SDK's, so the `pip install chutes==X` that
    `chutes build --local` appends is a no-op.
    """
    from chutes.image import Image

    if module_file is None:
        module_file = caller_file()
    script = setup_script(
        python=python,
        distro=distro,
        packages=[*apt_packages, *extra_packages],
        chutes_version=chutes_version or _installed_chutes_version(),
    )
    env_line = env_directive_args(env or {})

    image = Image(username=username, name=name, tag=tag, readme=readme).from_base(base_image)
    # Cache order: what never changes first, what changes most (our code, the manifest) last.
    image.set_user("root")
    image.run_command(script)
    _append_env(image, env_line)
    image.with_entrypoint([])
    image.set_user(RUN_USER)
    image.set_workdir(APP_DIR)
    for source, dest in context_files(module_file):
        image.add(source, dest, chown=f"{RUN_USER}:{RUN_USER}")
    return image


# --------------------------------------------------------------------------------------------------
# ENV


def quote_env_value(key: str, value: object) -> str:
    """A value as a double-quoted Dockerfile word: backslash, double quote and `$` escaped."""
    if value is None:
        raise ImageConfigError(f"CHUTE_ENV[{key!r}] is None", "give it a string value")
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ImageConfigError(
            f"CHUTE_ENV[{key!r}] contains a newline, which a Dockerfile ENV cannot hold",
            "use a single-line value",
        )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def env_directive_args(user_env: Mapping[str, object]) -> str:
    """Arguments of the one ENV instruction: our runtime settings, then CHUTE_ENV (which wins)."""
    # Values here are Dockerfile words, expanded against the base image's environment.
    pairs = [
        ("PATH", f'"{VENV_DIR}/bin:${{PATH:-{DEFAULT_PATH}}}"'),
        ("HOME", f'"{HOME_DIR}"'),
        ("XDG_CACHE_HOME", f'"{CACHE_DIR}"'),
        # A base that points HF_HOME at baked-in models keeps it.
        ("HF_HOME", f'"${{HF_HOME:-{CACHE_DIR}/huggingface}}"'),
        ("PIP_CACHE_DIR", f'"{CACHE_DIR}/pip"'),
        ("PYTHONUNBUFFERED", '"1"'),
        ("PYTHONPATH", f'"{APP_DIR}${{PYTHONPATH:+:${{PYTHONPATH}}}}"'),
    ]
    for key, value in user_env.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise ImageConfigError(
                f"CHUTE_ENV key {key!r} is not a valid environment variable name",
                "use letters, digits and underscores, not starting with a digit",
            )
        pairs.append((key, quote_env_value(key, value)))
    merged = dict(pairs)  # a CHUTE_ENV key replaces ours in place
    return " ".join(f"{key}={value}" for key, value in merged.items())


def _append_env(image: "Image", args: str) -> None:
    from tools.sdk import append_env_directive

    append_env_directive(image, args)


# --------------------------------------------------------------------------------------------------
# Build context: our helpers and the route manifest, when `chutes build` runs beside them


def context_files(module_file: str | None, cwd: str | None = None) -> list[tuple[str, str]]:
    """(source relative to cwd, destination) for `tools/*.py` and `<module>.routes.json`.

    The SDK's ADD globs relative to the working directory and insists the source is inside it, and
    `chutes build` runs from the module's directory. Imported from anywhere else (tests, discovery),
    there is nothing to add and nothing fails. `tools/*.py` rather than `tools` keeps host
    __pycache__ out of the image and out of remote build uploads.
    """
    cwd = os.path.realpath(cwd or os.getcwd())
    files: list[tuple[str, str]] = []
    if os.path.isfile(os.path.join(cwd, "tools", "__init__.py")):
        files.append(("tools/*.py", f"{APP_DIR}/tools/"))
        files.append(("tools/sdk/*.py", f"{APP_DIR}/tools/sdk/"))
    if module_file:
        module_path = os.path.realpath(module_file)
        manifest = str(manifest_path(module_path))
        if os.path.isfile(manifest) and os.path.commonpath([cwd, manifest]) == cwd:
            relative = Path(os.path.relpath(manifest, cwd)).as_posix()
            files.append((relative, f"{APP_DIR}/{relative}"))
    return files


def caller_file() -> str | None:
    """The file of the first caller outside tools/ (the deploy module), or None from a prompt."""
    package_dir = os.path.dirname(os.path.realpath(__file__))
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<"):
            return None
        if not os.path.realpath(filename).startswith(package_dir + os.sep):
            return filename
        frame = frame.f_back
    return None


def _installed_chutes_version() -> str:
    try:
        from chutes._version import version
    except ImportError:  # pragma: no cover - older SDK layouts
        import chutes

        version = chutes.__version__
    return str(version)


# --------------------------------------------------------------------------------------------------
# The setup RUN: a POSIX sh script (dash, bash, busybox ash)


def setup_script(
    *,
    python: str | None = None,
    distro: str = "auto",
    packages: Sequence[str] = (),
    chutes_version: str,
) -> str:
    """The setup RUN's command, one statement per Dockerfile line."""
    if distro not in DISTROS:
        raise ImageConfigError(f"distro={distro!r} is not one of {', '.join(DISTROS)}")
    if python is not None and not PYTHON_RE.match(python):
        raise ImageConfigError(f"python={python!r} is not a plain command name or path")
    for package in packages:
        if not isinstance(package, str) or not PACKAGE_RE.match(package):
            raise ImageConfigError(f"package {package!r} is not a valid distro package name")
    if not VERSION_RE.match(chutes_version):
        raise ImageConfigError(f"chutes_version={chutes_version!r} is not a version")
    families = list(_MANAGERS) if distro == "auto" else [distro]
    return _render_run(_script_lines(python, families, list(packages), chutes_version))


def _script_lines(python: str | None, families: list[str], packages: list[str], version: str) -> list[str]:
    candidates = " ".join(shlex.quote(c) for c in ([python] if python else []) + list(PYTHON_CANDIDATES))
    managers = [manager for family in families for manager in _MANAGERS[family]]
    manager_names = ", ".join(managers)
    need_base = {
        ("debian",): "a Debian/Ubuntu base",
        ("alpine",): "an Alpine base",
        ("rhel",): "a RHEL-family base",
    }.get(tuple(families), "a Debian/Ubuntu, Alpine or RHEL-family base")
    user = RUN_USER
    lines = [
        "set -e",
        "umask 022",
        'say() { echo "chutes-wrappers: $*" >&2; }',
        # deploy.sh --build reports the last such line as the reason the build failed.
        f'fail() {{ echo "{SETUP_ERROR}$*" >&2; exit 1; }}',
        f"W={STATE_DIR}",
        'mkdir -p "$W"',
        # Where and how the base image runs its service: the launcher restores these for it.
        "printf '%s\\n' \"WORKDIR=$(pwd)\" \"PATH=$PATH\" \"PYTHONPATH=${PYTHONPATH:-}\""
        f' > {BASE_ENV_FILE}',
        "find_python() {",
        "PY=",
        f"for c in {candidates}; do",
        'p=$(command -v "$c" 2>/dev/null) || continue',
        "if [ -x \"$p\" ] && \"$p\" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then",
        "PY=$p",
        "return 0",
        "fi",
        "done",
        "return 1",
        "}",
        "venv_ok() { \"$PY\" -c 'import venv, ensurepip' >/dev/null 2>&1; }",
        "headers_ok() { \"$PY\" -c 'import os, sys, sysconfig;"
        " sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()[\"include\"], \"Python.h\")))'"
        " >/dev/null 2>&1; }",
        'pyver() { "$PY" -c \'import sys; print("%d.%d" % sys.version_info[:2])\'; }',
        # Package manager: install "$@" (no-op when empty).
        "PM=",
        *_detect_manager(managers),
        "pm_install() {",
        'if [ "$#" -eq 0 ]; then return 0; fi',
        *_branches(families, "install"),
        "}",
        # Build tools: installed with a record of what was new, removed again after pip.
        "pm_build_deps() {",
        'if [ "$#" -eq 0 ] || [ -z "$PM" ]; then return 0; fi',
        *_branches(families, "build_deps"),
        "}",
        "pm_remove_build_deps() {",
        *_branches(families, "remove_build_deps"),
        ":",
        "}",
        f"PKGS={shlex.quote(' '.join(packages))}",
        'if [ -n "$PKGS" ]; then',
        f'[ -n "$PM" ] || fail "cannot install $PKGS: no package manager ({manager_names}) in this base image"',
        "pm_install $PKGS",
        "fi",
        "NEED=",
        "find_python || NEED=python",
        'if [ -z "$NEED" ] && ! venv_ok; then NEED=venv; fi',
        'if [ -n "$NEED" ] && [ -n "$PM" ]; then',
        *_branches(families, "python"),
        "fi",
        "if ! find_python || ! venv_ok; then",
        f'fail "this base image has no Python >= 3.10 that can create a venv, and no way to install one'
        f' (package managers tried: {manager_names}); use {need_base} or any image with python3 >= 3.10'
        ' and its venv module"',
        "fi",
        'say "using $PY (Python $(pyver))"',
        # The user the chute runs as.
        f"if ! id {user} >/dev/null 2>&1; then",
        "if command -v useradd >/dev/null 2>&1; then",
        f"if grep -q '^{user}:' /etc/group 2>/dev/null; then G='-g {user}'; else G=-U; fi",
        f"useradd -m -d {HOME_DIR} -s /bin/sh $G {user}",
        "elif command -v adduser >/dev/null 2>&1; then",
        f"adduser -D -h {HOME_DIR} -s /bin/sh {user}",
        "else",
        "taken() { while IFS=: read -r _n _x i _r; do [ \"$i\" = \"$2\" ] && return 0; done < \"$1\"; return 1; }",
        "i=1000",
        'while taken /etc/passwd "$i" || taken /etc/group "$i"; do i=$((i + 1)); done',
        f'echo "{user}:x:$i:$i::{HOME_DIR}:/bin/sh" >> /etc/passwd',
        f'echo "{user}:x:$i:" >> /etc/group',
        "fi",
        "fi",
        f"G=$(id -g {user})",
        f"mkdir -p {CACHE_DIR} {APP_DIR}",
        f'chown -R "{user}:$G" {HOME_DIR}',
        # Only the directory: a base may keep its own (large, root-owned) files in /app.
        f'chown "{user}:$G" {APP_DIR}',
        # Compiler and Python headers: netifaces (a chutes dependency) ships no wheels.
        "BUILD=",
        "command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || BUILD=compiler",
        "headers_ok || BUILD=\"$BUILD headers\"",
        'if [ -n "$BUILD" ]; then pm_build_deps $BUILD; fi',
        f'"$PY" -m venv {VENV_DIR} || fail "$PY could not create a virtualenv in {VENV_DIR} (see above)"',
        f"if [ -f {CA_BUNDLE} ]; then export PIP_CERT={CA_BUNDLE}; fi",
        'export PIP_ROOT_USER_ACTION=ignore PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}"',
        f'"{VENV_DIR}/bin/python" -m pip install --no-cache-dir --disable-pip-version-check'
        f' "chutes=={version}" || fail "pip could not install chutes=={version} (see above);'
        ' it needs network access and a C compiler with Python headers to build netifaces"',
        "pm_remove_build_deps",
        f'chown -R "{user}:$G" {VENV_DIR}',
        'rm -f "$W/pkgs.before"',
    ]
    return lines


def _detect_manager(managers: list[str]) -> list[str]:
    lines = []
    for index, manager in enumerate(managers):
        keyword = "if" if index == 0 else "elif"
        value = "apt" if manager == "apt-get" else manager
        lines += [f"{keyword} command -v {manager} >/dev/null 2>&1; then", f"PM={value}"]
    lines.append("fi")
    return lines


def _branches(families: list[str], action: str) -> list[str]:
    """`if [ "$PM" = ... ]` blocks implementing one action for each package-manager family."""
    lines: list[str] = []
    first = True
    for family in families:
        body = _FAMILY_ACTIONS[family][action]
        if not body:
            continue
        test = {
            "debian": '[ "$PM" = apt ]',
            "alpine": '[ "$PM" = apk ]',
            "rhel": '[ "$PM" = dnf ] || [ "$PM" = microdnf ] || [ "$PM" = yum ]',
        }[family]
        lines += [f"{'if' if first else 'elif'} {test}; then", *body]
        first = False
    if lines:
        lines.append("fi")
    return lines


# Each action, per family. Build deps: "$@" holds the words "compiler" and/or "headers".
_FAMILY_ACTIONS: dict[str, dict[str, list[str]]] = {
    "debian": {
        "install": [
            # A broken third-party source (an expired CUDA repo key) must not stop the install.
            'if [ -z "$APT_UPDATED" ]; then apt-get update -q || say "apt-get update had errors; trying anyway"; APT_UPDATED=1; fi',
            'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"',
        ],
        "python": [
            'if [ "$NEED" = python ]; then',
            "pm_install python3 python3-venv python3-pip ca-certificates",
            "else",
            'pm_install "python$(pyver)-venv" || pm_install python3-venv',
            "fi",
        ],
        "build_deps": [
            "P=",
            'for d in "$@"; do',
            'if [ "$d" = compiler ]; then P="$P gcc libc6-dev"; else P="$P python$(pyver)-dev"; fi',
            "done",
            "dpkg-query -W -f '${Package}\\n' | sort > \"$W/pkgs.before\"",
            "pm_install $P",
        ],
        "remove_build_deps": [
            'if [ -f "$W/pkgs.before" ]; then',
            "NEW=$(dpkg-query -W -f '${Package}\\n' | sort | comm -13 \"$W/pkgs.before\" -)",
            'if [ -n "$NEW" ]; then DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $NEW; fi',
            "fi",
            'if [ -n "$APT_UPDATED" ]; then apt-get clean; rm -rf /var/lib/apt/lists/*; fi',
        ],
    },
    "alpine": {
        "install": ['apk add --no-cache "$@"'],
        # musl: no wheels for some chutes dependencies, so the build tools always come along.
        "python": ["pm_install python3 py3-pip"],
        "build_deps": [
            "P='gcc musl-dev linux-headers libffi-dev'",
            'for d in "$@"; do if [ "$d" = headers ]; then P="$P python3-dev"; fi; done',
            "apk add --no-cache --virtual .chutes-build-deps $P",
        ],
        "remove_build_deps": [
            "apk del --no-cache .chutes-build-deps >/dev/null 2>&1 || true",
        ],
    },
    "rhel": {
        "install": ['"$PM" install -y "$@"'],
        "python": [
            'if [ "$NEED" = python ]; then',
            "pm_install python3.11 python3.11-pip || pm_install python3 python3-pip",
            "fi",
        ],
        "build_deps": [
            "P=",
            'for d in "$@"; do',
            'if [ "$d" = compiler ]; then P="$P gcc"; else P="$P python$(pyver)-devel"; fi',
            "done",
            "rpm -qa --qf '%{NAME}\\n' | sort > \"$W/pkgs.before\"",
            "pm_install $P",
        ],
        "remove_build_deps": [
            'if [ -f "$W/pkgs.before" ]; then',
            "NEW=$(rpm -qa --qf '%{NAME}\\n' | sort | comm -13 \"$W/pkgs.before\" -)",
            'if [ -n "$NEW" ]; then "$PM" remove -y $NEW; fi',
            "fi",
            '"$PM" clean all >/dev/null 2>&1 || true',
        ],
    },
}

# Lines after which the next statement follows without a `;`.
_OPEN_ENDINGS = (" then", " do", " else", "{", "||", "&&", "|")


def _render_run(lines: list[str]) -> str:
    """Statements joined into one shell command, one per Dockerfile line (backslash-continued).

    Docker removes each backslash-newline, so the joined text must be valid on one line: `;` after
    each statement except after `then`, `do`, `else` and `{`. Nesting is indented for the build log.
    """
    out: list[str] = []
    depth = 0
    for index, line in enumerate(lines):
        line = line.strip()
        closes = line in ("fi", "done", "}", "else") or line.startswith("elif ")
        opens = line == "else" or line.endswith(_OPEN_ENDINGS)
        depth = max(depth - closes, 0)
        indent = "    " * (depth + 1) if index else ""
        if index == len(lines) - 1:
            out.append(indent + line)
        elif opens:
            out.append(indent + line + " \\")
        else:
            out.append(indent + line + "; \\")
        depth += opens
    return "\n".join(out)
