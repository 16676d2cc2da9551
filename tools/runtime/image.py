"""Build the Chutes image that wraps an existing service image (any distro, with or without Python).

`build_wrapper_image()` returns a `chutes.image.Image`; `str(image)` is its Dockerfile. The setup step
is tools/runtime/image_setup.sh, added to the image and run there with this module's layout as arguments.
Python is never compiled: the image's own Python >= 3.10 is used, else the distro's package. The SDK's
runtime goes into a venv of its own so the service keeps the base image's packages, PATH and working
directory (recorded in BASE_ENV_FILE for the service launcher). Only RUNTIME_FILES of tools/ go into
the image.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from tools.runtime.constants import APP_DIR, ENV_KEY_RE
from tools.runtime.errors import ImageConfigError
from tools.runtime.routes import manifest_path
from tools.runtime.sdk.rules import installed_version

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
# How the image setup script starts the line saying why it failed (read by tools/chutes_cli.py;
# tools/runtime/image_setup.sh `fail` writes it, a unit test keeps the two equal).
SETUP_ERROR = "chutes-wrappers: error: "

# The setup step: the script in the build context (relative to the project directory) and in the image.
SETUP_SCRIPT = "tools/runtime/image_setup.sh"
SETUP_SCRIPT_IN_IMAGE = f"{STATE_DIR}/image_setup.sh"

# What goes into the image, relative to the project directory: the deploy modules' API
# (tools/chute_wrappers.py, with tools/__init__.py) and this package, whole. Nothing in it imports
# anything else of tools/ (tests/unit/test_runtime_files.py imports it from a directory holding
# only these): the CLIs, discovery, the local platform and the demo stay out.
FACE_FILES = ("tools/__init__.py", "tools/chute_wrappers.py")
RUNTIME_PACKAGE = "tools/runtime"
_PROJECT = Path(__file__).resolve().parents[2]


def runtime_files(root: str | os.PathLike = _PROJECT) -> tuple[str, ...]:
    """Every file the image gets of tools/ (relative paths; no caches)."""
    package = Path(root) / RUNTIME_PACKAGE
    found = sorted(
        path.relative_to(root).as_posix() for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix == ".py"
    )
    return (*FACE_FILES, *found)


RUNTIME_FILES = runtime_files()

DISTROS = ("auto", "debian", "alpine", "rhel")

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
    "debian", "alpine" or "rhel" make the setup script try only that family's managers.
    apt_packages/extra_packages: distro packages to install. chutes_version: defaults to the installed
    SDK's, so the `pip install chutes==X` that `chutes build --local` appends is a no-op.
    """
    from chutes.image import Image

    if module_file is None:
        module_file = caller_file()
    command = setup_command(
        python=python,
        distro=distro,
        packages=[*apt_packages, *extra_packages],
        chutes_version=chutes_version or installed_version(),
    )
    env_line = env_directive_args(env or {})

    image = Image(username=username, name=name, tag=tag, readme=readme).from_base(base_image)
    # Cache order: what never changes first, what changes most (our code, the manifest) last.
    image.set_user("root")
    _append_add(image, [SETUP_SCRIPT], SETUP_SCRIPT_IN_IMAGE)
    image.run_command(command)
    _append_env(image, env_line)
    image.with_entrypoint([])
    image.set_user(RUN_USER)
    image.set_workdir(APP_DIR)
    for sources, dest in context_files(module_file):
        _append_add(image, sources, dest, chown=f"{RUN_USER}:{RUN_USER}")
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
    from tools.runtime.sdk.image import append_env_directive

    append_env_directive(image, args)


def _append_add(image: "Image", sources: Sequence[str], dest: str, chown: str | None = None) -> None:
    """One ADD; what `chutes build` uploads for it is every file of it that exists here (a directory's
    runtime files, no caches), so importing a module where they are absent (in the image) never fails."""
    from tools.runtime.sdk.image import append_add_directive

    upload = []
    for source in sources:
        if os.path.isdir(source):
            upload += [path for path in runtime_files(os.getcwd()) if path.startswith(source.rstrip("/") + "/")]
        elif os.path.isfile(source):
            upload.append(source)
    append_add_directive(image, list(sources), dest, chown, upload)


# --------------------------------------------------------------------------------------------------
# Build context: our runtime files and the route manifest, when `chutes build` runs beside them


def context_files(module_file: str | None, cwd: str | None = None) -> list[tuple[tuple[str, ...], str]]:
    """(sources relative to cwd, destination) per ADD: the deploy modules' API, the runtime package
    whole, then `<module>.routes.json`.

    `chutes build` runs from the module's directory and sends only files inside it. Imported from
    anywhere else (tests, discovery), there is nothing to add and nothing fails. The CLIs, the demo
    and host __pycache__ stay out of the image and out of remote build uploads (`_append_add`).
    """
    cwd = os.path.realpath(cwd or os.getcwd())
    adds: list[tuple[tuple[str, ...], str]] = []
    if os.path.isfile(os.path.join(cwd, "tools", "__init__.py")):
        adds.append((FACE_FILES, f"{APP_DIR}/tools/"))
        adds.append(((RUNTIME_PACKAGE,), f"{APP_DIR}/{RUNTIME_PACKAGE}/"))
    if module_file:
        module_path = os.path.realpath(module_file)
        manifest = str(manifest_path(module_path))
        if os.path.isfile(manifest) and os.path.commonpath([cwd, manifest]) == cwd:
            relative = Path(os.path.relpath(manifest, cwd)).as_posix()
            adds.append(((relative,), f"{APP_DIR}/{relative}"))
    return adds


def caller_file() -> str | None:
    """The file of the first caller outside tools/ (the deploy module), or None from a prompt."""
    package_dir = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # tools/
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<"):
            return None
        if not os.path.realpath(filename).startswith(package_dir + os.sep):
            return filename
        frame = frame.f_back
    return None


# --------------------------------------------------------------------------------------------------
# The setup RUN: tools/runtime/image_setup.sh with this module's layout as arguments


def setup_command(
    *,
    python: str | None = None,
    distro: str = "auto",
    packages: Sequence[str] = (),
    chutes_version: str,
) -> str:
    """The setup RUN's command: the script in the image with its arguments, one option a line.

    Every value is checked here, so a bad one is an error at import rather than in the build log.
    """
    if distro not in DISTROS:
        raise ImageConfigError(f"distro={distro!r} is not one of {', '.join(DISTROS)}")
    if python is not None and not PYTHON_RE.match(python):
        raise ImageConfigError(f"python={python!r} is not a plain command name or path")
    for package in packages:
        if not isinstance(package, str) or not PACKAGE_RE.match(package):
            raise ImageConfigError(f"package {package!r} is not a valid distro package name")
    if not VERSION_RE.match(chutes_version):
        raise ImageConfigError(f"chutes_version={chutes_version!r} is not a version")
    options = [
        ("--chutes-version", chutes_version),
        ("--distro", distro),
        *([("--python", python)] if python else []),
        ("--state-dir", STATE_DIR),
        ("--venv", VENV_DIR),
        ("--base-env", BASE_ENV_FILE),
        ("--app-dir", APP_DIR),
        ("--user", RUN_USER),
        ("--home", HOME_DIR),
        ("--cache-dir", CACHE_DIR),
        ("--ca-bundle", CA_BUNDLE),
    ]
    lines = [f"sh {SETUP_SCRIPT_IN_IMAGE}", *(f"{flag} {shlex.quote(value)}" for flag, value in options)]
    if packages:
        lines.append("-- " + " ".join(shlex.quote(package) for package in packages))
    # Docker joins backslash-continued lines; one option a line keeps the build log readable.
    return " \\\n    ".join(lines)
