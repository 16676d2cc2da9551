"""The real `chutes build --local` of a wrapper image on podman, and what ends up in the image.

The first run makes the Debian base with debootstrap (~1 min, then cached) and the build pip-installs
chutes inside the image (a few minutes); the wrapper image is removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[2]
CHUTES_CLI = Path(sys.executable).parent / "chutes"
TRICKY_VALUE = 'two words "quoted" $HOME back\\slash'
SKIP_REASON = engine.skip_reason()

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    pytest.mark.timeout(2400),
]

DEPLOY_MODULE = """\
from chutes.chute import Chute
from tools.runtime.image import build_wrapper_image

image = build_wrapper_image("test", {name!r}, {tag!r}, {base!r}, env={{"CW_TRICKY": {tricky!r}}})
chute = Chute(username="test", name="cwtest", image=image)
"""


@dataclass
class Build:
    ref: str
    returncode: int
    log: str
    seconds: float


@pytest.fixture(scope="module")
def podman():
    with engine.podman_engine() as instance:
        yield instance


@pytest.fixture(scope="module")
def base_image(podman) -> str:
    return engine.debian_python_base(podman)


def chutes_build(podman, workdir: Path, module: str, name: str, tag: str, base: str) -> Build:
    """Run the real `chutes build MODULE:chute --local` from `workdir` (a project copy) with the docker shim."""
    (workdir / f"{module}.py").write_text(DEPLOY_MODULE.format(name=name, tag=tag, base=base, tricky=TRICKY_VALUE))
    env = podman.env
    env.pop("PYTHONPATH", None)  # `tools` must come from the project copy, as for a user
    started = time.monotonic()
    proc = subprocess.run(
        [str(CHUTES_CLI), "build", f"{module}:chute", "--local"],
        cwd=workdir,
        env=env,
        input="y\n",
        capture_output=True,
        text=True,
        timeout=2000,
    )
    return Build(f"localhost/{name}:{tag}", proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)


def project_copy(tmp_path_factory) -> Path:
    """A directory laid out like a user's project: a real copy of tools/ (symlinks would not reach the
    build), plus a host __pycache__ that must stay out of the image."""
    workdir = tmp_path_factory.mktemp("cwbuild")
    shutil.copytree(ROOT / "tools", workdir / "tools", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (workdir / "tools" / "__pycache__").mkdir()
    (workdir / "tools" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"not bytecode")
    return workdir


@pytest.fixture(scope="module")
def build(podman, base_image, tmp_path_factory):
    workdir = project_copy(tmp_path_factory)
    (workdir / "deploy_cwtest.routes.json").write_text('{"routes": []}\n')
    tag = uuid.uuid4().hex[:10]
    result = chutes_build(podman, workdir, "deploy_cwtest", "cw-test-wrapper", tag, base_image)
    try:
        if result.returncode == 0:
            added = podman.image_size(result.ref) - podman.image_size(base_image)
            print(f"\n[wrapper image] chutes build --local: {result.seconds:.0f} s, +{added / 1e6:.0f} MB over the base")
        yield result
    finally:
        podman.remove_image(result.ref)


@pytest.fixture(scope="module")
def image(build) -> str:
    if build.returncode != 0:
        pytest.fail(f"chutes build --local failed ({build.returncode}):\n{engine._tail(build.log, 60)}")
    return build.ref


def run(podman, image: str, *command: str, user: str | None = None) -> subprocess.CompletedProcess:
    return podman("run", "--rm", *(["--user", user] if user else []), image, *command, check=False, timeout=300)


def test_chutes_build_local_succeeds(build):
    assert build.returncode == 0, engine._tail(build.log, 60)
    assert "Successfully tagged" in build.log


def test_appended_pip_install_of_chutes_is_a_noop(image, build):
    appended = build.log.split("pip install chutes==", 1)[1].split("STEP", 1)[0]
    assert "Requirement already satisfied: chutes==" in appended
    assert "Downloading" not in appended and "Installing collected" not in appended


def test_image_runs_as_the_chutes_user(podman, image):
    proc = run(podman, image, "id", "-un")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "chutes"


def test_chutes_and_our_tools_import_from_app(podman, image):
    proc = run(podman, image, "python", "-c", "import os, chutes, tools.chute_wrappers; print(os.getcwd())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "/app"


def test_project_files_are_in_app_without_host_bytecode(podman, image):
    proc = run(podman, image, "sh", "-c", "cd /app && find . -path ./.cache -prune -o -print | sort")
    assert proc.returncode == 0, proc.stderr
    listing = set(proc.stdout.split())
    for name in ("./deploy_cwtest.py", "./deploy_cwtest.routes.json", "./tools/__init__.py", "./tools/chute_wrappers.py",
                 "./tools/runtime/image.py", "./tools/runtime/cords/handler.py", "./tools/runtime/sdk/node.py"):
        assert name in listing
    # the runtime package keeps its tree; nothing of the developer's machine rides along, no host bytecode
    assert not any("__pycache__" in path for path in listing)
    assert not any(path.startswith(("./tools/commands", "./tools/platform", "./tools/discovery")) for path in listing)


def test_base_workdir_and_path_are_recorded(podman, image):
    proc = run(podman, image, "cat", "/opt/chutes-wrappers/base.env")
    assert proc.returncode == 0, proc.stderr
    recorded = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert recorded["WORKDIR"] == "/srv/demo"  # the base's WORKDIR
    assert "/usr/bin" in recorded["PATH"] and "chutes-wrappers" not in recorded["PATH"]


def test_entrypoint_is_cleared(podman, image):
    entrypoint = podman("image", "inspect", "--format", "{{json .Config.Entrypoint}}", image).stdout.strip()
    assert json.loads(entrypoint) in (None, [])


def test_chute_env_value_survives_the_dockerfile(podman, image):
    proc = run(podman, image, "printenv", "CW_TRICKY")
    assert proc.stdout.rstrip("\n") == TRICKY_VALUE


def test_chutes_cli_runs_in_the_image(podman, image):
    proc = run(podman, image, "chutes", "--help")
    assert proc.returncode == 0, proc.stderr


def test_no_world_writable_paths_are_added(podman, image, base_image):
    # -xdev keeps /proc, /sys and /dev out; the usual sticky temp dirs are allowed.
    find = (
        "find / -xdev \\( -path /tmp -o -path /var/tmp -o -path /dev/shm \\) -prune"
        " -o ! -type l -perm -0002 -print"
    )

    def writable(ref: str) -> set[str]:
        proc = run(podman, ref, "sh", "-c", find, user="root")
        assert proc.returncode == 0, proc.stderr
        return set(proc.stdout.split())

    assert writable(image) - writable(base_image) == set()


def test_base_without_python_or_package_manager_fails_with_one_clear_message(podman, tmp_path_factory):
    if not shutil.which("apt-get"):
        pytest.skip("apt-get is needed to fetch busybox-static for a Python-less base")
    base = engine.busybox_base(podman)
    workdir = project_copy(tmp_path_factory)
    result = chutes_build(podman, workdir, "deploy_cwnopy", "cw-test-nopy", uuid.uuid4().hex[:10], base)
    try:
        assert result.returncode != 0
        messages = [line for line in result.log.splitlines() if line.startswith("chutes-wrappers: ")]
        assert len(messages) == 1, result.log[-3000:]
        assert "no Python >= 3.10" in messages[0] and "base" in messages[0]
    finally:
        podman.remove_image(result.ref)
