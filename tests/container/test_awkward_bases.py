"""Awkward base images, made from what these machines reach (nothing can be pulled here, so Alpine and
conda bases are not available; these are look-alikes). Each wraps and runs, or fails at build or at
run with one clear message saying why:

    debian-nopy   Debian without Python (the service is busybox httpd): the builder installs the
                  distro's python3; the chute runs.
    debian-novenv Debian's python3 without python3-venv: the builder adds the venv package; it runs.
    conda         the only Python is /opt/conda/bin/python: the builder uses it; the service keeps it.
    busybox       busybox alone, no Python, no package manager: the build fails with one line.
    exits         an entrypoint that exits at once: the chute fails at startup with the service's
                  own last lines, at once (not after the 600 s port timeout).

The builds run at the same time (they wait on the network and on pip, not on each other).
Alpine and RHEL-family branches of the builder are covered by Dockerfile-text unit tests
(tests/unit/test_wrapper_image.py).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import engine
from tools.commands.smoke import sample_wav

SKIP_REASON = engine.skip_reason() or (
    None if shutil.which("apt-get") else "the busybox bases need apt-get to fetch busybox-static"
)

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    pytest.mark.timeout(1500),
]

RUN_ID = uuid.uuid4().hex[:8]
HTTPD_PORT = engine.free_port()
WHISPER_PORT = engine.free_port()

NO_PYTHON_LINE = re.compile(
    r"^chutes-wrappers: (?:error: )?this base image has no Python >= 3\.10 that can create a venv, and no way to install"
    r" one \(package managers tried: apt-get, apk, dnf, microdnf, yum\); use a Debian/Ubuntu, Alpine or"
    r" RHEL-family base or any image with python3 >= 3\.10 and its venv module$"
)


@dataclass
class Case:
    key: str
    make_base: Callable[[engine.Podman], str]
    values: dict
    base: str = ""
    project: Path | None = None
    build: subprocess.CompletedProcess | None = None

    @property
    def module(self) -> str:
        return f"deploy_awk_{self.key.replace('-', '_')}_{RUN_ID}"

    @property
    def image(self) -> str:
        return f"localhost/cw-awk-{self.key}:{RUN_ID}"

    @property
    def log(self) -> str:
        return self.build.stdout + self.build.stderr


def cases() -> dict[str, Case]:
    return {
        "debian-nopy": Case("debian-nopy", engine.debian_nopython_base, {
            "SERVICE_PORTS": [HTTPD_PORT],
            "ENTRYPOINT": ["/usr/local/bin/busybox", "httpd", "-f", "-v", "-p", str(HTTPD_PORT), "-h", "/srv/www"],
            "CHUTE_STATIC_ROUTES": [{"path": "/cgi-bin/status", "method": "GET", "port": HTTPD_PORT,
                                     "target_path": "/cgi-bin/status", "query_params": ["model"],
                                     "request": {"kind": "none"}, "response": {"kind": "json"}}],
        }),
        "debian-novenv": Case("debian-novenv", engine.debian_novenv_base, {
            "SERVICE_PORTS": [WHISPER_PORT],
            "ENTRYPOINT": ["python3", "/srv/whisper/whisper_like.py", "--host", "0.0.0.0", "--port", str(WHISPER_PORT)],
            "CHUTE_STATIC_ROUTES": [{"path": "/whoami", "method": "GET", "port": WHISPER_PORT, "target_path": "/whoami",
                                     "request": {"kind": "none"}, "response": {"kind": "json"}}],
        }),
        "conda": Case("conda", engine.conda_base, {
            "SERVICE_PORTS": [WHISPER_PORT],
            "ENTRYPOINT": ["python", "/srv/whisper/whisper_like.py", "--host", "0.0.0.0", "--port", str(WHISPER_PORT)],
            "CHUTE_STATIC_ROUTES": [
                {"path": "/inference", "method": "POST", "port": WHISPER_PORT, "target_path": "/inference",
                 "request": {"kind": "multipart", "file_fields": ["file"]}, "response": {"kind": "json"}},
                {"path": "/whoami", "method": "GET", "port": WHISPER_PORT, "target_path": "/whoami",
                 "request": {"kind": "none"}, "response": {"kind": "json"}},
            ],
        }),
        "busybox": Case("busybox", engine.busybox_base, {
            "SERVICE_PORTS": [HTTPD_PORT],
            "ENTRYPOINT": ["httpd", "-f", "-p", str(HTTPD_PORT)],
            "CHUTE_STATIC_ROUTES": [],
        }),
        "exits": Case("exits", engine.exits_base, {
            "SERVICE_PORTS": [8080],
            "ENTRYPOINT": [engine.START_ASR],
            "CHUTE_STATIC_ROUTES": [],
        }),
    }


@pytest.fixture(scope="module")
def podman():
    with engine.podman_engine() as instance:
        yield instance


@pytest.fixture(scope="module")
def builds(podman, tmp_path_factory) -> dict[str, Case]:
    """Every case's `./deploy.sh --build MODULE --local --yes`, all at once; images removed after."""
    env = engine.project_env(podman)
    all_cases = cases()

    def build(case: Case) -> Case:
        case.base = case.make_base(podman)
        case.project = tmp_path_factory.mktemp(f"awk-{case.key}")
        engine.make_project(case.project, case.module, {
            "CHUTE_NAME": f"cw-awk-{case.key}",
            "CHUTE_TAG": RUN_ID,
            "CHUTE_BASE_IMAGE": case.base,
            "CHUTE_ROUTE_OVERRIDES": {},
            **case.values,
        })
        case.build = engine.deploy_sh(case.project, "--build", case.module, "--local", "--yes", env=env)
        return case

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(all_cases)) as pool:
            yield {case.key: case for case in pool.map(build, all_cases.values())}
    finally:
        for case in all_cases.values():
            for name in podman.containers(f"label=chutes-wrappers.module={case.module}", "label=cw-test=1"):
                podman.remove_container(name)
            podman.remove_image(case.image)


def built(case: Case) -> Case:
    assert case.build.returncode == 0, engine._tail(case.log, 80)
    return case


@pytest.fixture
def run_docker(podman, builds):
    """`./deploy.sh --run-docker MODULE --port P` of a built case, healthy; Ctrl-C'd afterwards."""
    started: list[tuple[Case, engine.Background]] = []

    def start(case: Case) -> str:
        port = engine.free_port()
        proc = engine.Background(["./deploy.sh", "--run-docker", case.module, "--port", str(port)],
                                 cwd=case.project, env=engine.project_env(podman), log=case.project / "run.log")
        started.append((case, proc))
        base_url = f"http://127.0.0.1:{port}"
        engine.wait_for_health(base_url, 300, proc.alive, lambda: proc.output)
        return base_url

    yield start
    for case, proc in started:
        proc.interrupt()
        assert podman.containers(f"label=chutes-wrappers.module={case.module}") == []


# --------------------------------------------------------------------------------------------------
# Debian without Python


def test_debian_base_without_python_really_has_none(podman, builds):
    proc = podman("run", "--rm", "--pull=never", builds["debian-nopy"].base,
                  "sh", "-c", "command -v python3 || command -v python || echo none")
    assert proc.stdout.strip() == "none"


def test_debian_base_without_python_gets_the_distro_python(builds):
    case = built(builds["debian-nopy"])
    assert "chutes-wrappers: using /usr/bin/python3.11 (Python 3.11)" in engine.wrapper_lines(case.log)


def test_debian_base_without_python_wraps_and_runs(builds, run_docker):
    base_url = run_docker(built(builds["debian-nopy"]))
    status, _, body = engine.http_json("GET", base_url + "/cgi-bin/status?model=tiny")
    assert status == 200, body
    assert json.loads(body) == {"service": "busybox-httpd", "method": "GET", "query": "model=tiny"}


# --------------------------------------------------------------------------------------------------
# Debian's python3 without its venv module


def test_debian_python_without_venv_gets_the_venv_package_and_runs(builds, run_docker):
    case = built(builds["debian-novenv"])
    assert "chutes-wrappers: using /usr/bin/python3.11 (Python 3.11)" in engine.wrapper_lines(case.log)
    assert "python3.11-venv" in case.log  # what the builder installed for it
    status, _, body = engine.http_json("GET", run_docker(case) + "/whoami")
    assert status == 200, body
    assert json.loads(body)["executable"] == "/usr/bin/python3"


# --------------------------------------------------------------------------------------------------
# Python only in a conda-style prefix


def test_conda_prefix_python_is_the_one_used(builds):
    case = built(builds["conda"])
    assert "chutes-wrappers: using /opt/conda/bin/python (Python 3.11)" in engine.wrapper_lines(case.log)


def test_conda_base_wraps_and_runs_with_its_own_python(builds, run_docker):
    base_url = run_docker(built(builds["conda"]))
    status, _, body = engine.http_json("GET", base_url + "/whoami")
    assert status == 200, body
    service = json.loads(body)
    assert (service["executable"], service["prefix"], service["cwd"]) == ("/opt/conda/bin/python", "/opt/conda", "/srv/whisper")
    assert service["path"].startswith("/opt/conda/bin:") and "chutes-wrappers" not in service["path"]
    assert service["uid"] != 0
    wav = sample_wav(0.5)
    status, _, body = engine.http_json("POST", base_url + "/inference", {"file_base64": base64.b64encode(wav).decode()})
    assert status == 200, body
    assert json.loads(body)["text"] == f" [0.50 s of audio, {len(wav)} bytes, model ggml-base.en.bin]"


# --------------------------------------------------------------------------------------------------
# busybox only: no Python, no package manager


def test_busybox_base_fails_at_build_with_one_clear_line(builds, podman):
    case = builds["busybox"]
    assert case.build.returncode == 1
    said = engine.wrapper_lines(case.log)
    assert len(said) == 1 and NO_PYTHON_LINE.match(said[0]), case.log[-3000:]
    last = case.build.stderr.strip().splitlines()[-1]
    assert last.startswith("deploy.sh --build: error: the local build failed"), last
    assert not podman.image_exists(case.image)


# --------------------------------------------------------------------------------------------------
# An entrypoint that exits at once


def test_entrypoint_that_exits_fails_the_chute_at_once_with_its_last_output(builds, podman):
    case = built(builds["exits"])
    name = f"cw-awk-exits-{RUN_ID}"
    engine.run_chute(podman, case.image, case.module, name)
    try:
        log = engine.wait_for_log(podman, name, "during startup; last output:", timeout=120)
    finally:
        podman.remove_container(name)
    lines = log.splitlines()
    first = next((i for i, line in enumerate(lines) if "during startup; last output:" in line), None)
    assert first is not None, engine._tail(log)
    assert lines[first].endswith("service exited with status 3 during startup; last output:"), lines[first]
    assert lines[first + 1:first + 3] == [
        "asr-server: loading model /models/ggml-base.en.bin",
        "asr-server: error: failed to open /models/ggml-base.en.bin: No such file or directory",
    ]
    assert "services ready" not in log
    assert podman.containers(f"name=^{name}$") == []


def test_run_docker_of_an_entrypoint_that_exits_fails_at_once_and_removes_the_container(builds, podman):
    """The chute's startup fails: run-docker stops at once with the service's own last lines (the node
    runner exits at once; `chutes run --dev` would sleep 60 s first, and run-docker reads its report)."""
    case = built(builds["exits"])
    proc = engine.deploy_sh(case.project, "--run-docker", case.module, "--port", str(engine.free_port()),
                            env=engine.project_env(podman), timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    error = proc.stderr
    # The startup failure ends the wait (the node runner's report of it), not the readiness timeout,
    # which has its own message.
    assert "chute startup failed" in error and "service exited with status 3 during startup" in error, error
    assert "did not answer" not in error, error
    assert "failed to open /models/ggml-base.en.bin" in error
    assert "Traceback" not in error
    assert podman.containers(f"label=chutes-wrappers.module={case.module}") == []


def test_nothing_of_the_awkward_builds_is_left(builds, podman):
    for case in builds.values():
        podman.remove_image(case.image)
        assert not podman.image_exists(case.image)
        assert podman.containers(f"label=chutes-wrappers.module={case.module}") == []
        assert engine.processes_mentioning(case.module) == []
