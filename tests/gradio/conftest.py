"""Fixtures for the Gradio tests: Gradio in its own cached venv, the real test app, the chute in front.

Gradio is not a dependency of the toolkit: each venv is made here from a requirements file beside
this one (requirements.txt: Gradio 6; requirements-4.txt: Gradio 4) and kept under
~/.cache/chutes-wrappers/venvs/gradio-<key>, the key a digest of the pinned requirements and the
Python version, so a rerun costs nothing and a new pin gets a new venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import PYTHON, ROOT, free_port, stop_process, wait_for_port

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
REQUIREMENTS_4 = HERE / "requirements-4.txt"
VENV_ROOT = Path(os.environ.get("CW_VENV_CACHE") or Path.home() / ".cache" / "chutes-wrappers" / "venvs")
READY_MARK = ".complete"  # written last: a venv without it was cut short and is made again
INSTALL_TIMEOUT = 900


def venv_key(requirements: Path) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()[:12]


def gradio_venv(requirements: Path = REQUIREMENTS) -> Path:
    """The cached venv's directory, made (under a lock, so parallel runs wait) when missing."""
    venv = VENV_ROOT / f"gradio-{venv_key(requirements)}"
    if (venv / READY_MARK).exists():
        return venv
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(VENV_ROOT / f"gradio-{venv_key(requirements)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / READY_MARK).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        try:
            base = getattr(sys, "_base_executable", None) or sys.executable
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(requirements)],
                           check=True, capture_output=True, timeout=INSTALL_TIMEOUT)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            stderr = (getattr(exc, "stderr", b"") or b"").decode("utf-8", "replace").strip().splitlines()
            reason = f"cannot install Gradio for the tests ({stderr[-1] if stderr else exc})"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        (venv / READY_MARK).write_text(requirements.read_text())
    return venv


@pytest.fixture(scope="session")
def gradio_python() -> Path:
    """The Python of the Gradio venv."""
    return gradio_venv() / "bin" / "python"


@dataclass
class GradioApp:
    url: str
    port: int
    temp_dir: Path


@pytest.fixture(scope="session")
def gradio_app(gradio_python, tmp_path_factory):
    """tests/gradio/app.py served by real Gradio 6 on a free loopback port; stopped at the end."""
    yield from serve_app(gradio_python, tmp_path_factory.mktemp("gradio"))


@pytest.fixture(scope="session")
def gradio4_app(tmp_path_factory):
    """The same app served by Gradio 4 (no /gradio_api prefix)."""
    yield from serve_app(gradio_venv(REQUIREMENTS_4) / "bin" / "python", tmp_path_factory.mktemp("gradio4"))


def serve_app(gradio_python: Path, tmp: Path):
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "files"), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    (tmp / "files").mkdir()
    log = open(tmp / "app.log", "wb")
    proc = subprocess.Popen([str(gradio_python), str(HERE / "app.py"), str(port)], cwd=tmp, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for_port(port, proc, timeout=120)
            wait_for_config(f"http://127.0.0.1:{port}", proc)
        except Exception as exc:
            raise AssertionError(f"the Gradio app did not start: {exc}\n{(tmp / 'app.log').read_text()[-3000:]}")
        yield GradioApp(f"http://127.0.0.1:{port}", port, tmp / "files")
    finally:
        stop_process(proc)
        log.close()


def wait_for_config(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/config", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/config did not answer within {timeout}s")


MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import load_route_manifest, parse_service_ports, register_passthrough_routes

    CHUTE_NAME = "gradio-app"
    SERVICE_PORTS = parse_service_ports(os.environ["CHUTE_PORTS"])
    chute = Chute(username="test", name=CHUTE_NAME, image="unused")
    register_passthrough_routes(chute, load_route_manifest(), SERVICE_PORTS[0], timeout=60)
    """
)


@pytest.fixture(scope="session")
def gradio_module(gradio_app, tmp_path_factory) -> Path:
    """A deploy module for the app, its manifest written by the real discovery CLI."""
    tmp = tmp_path_factory.mktemp("gradio-module")
    (tmp / "deploy_gradioapp.py").write_text(MODULE)
    manifest = tmp / "deploy_gradioapp.routes.json"
    done = subprocess.run(
        [PYTHON, str(ROOT / "tools" / "discover_routes.py"), "--base-url", gradio_app.url, "--plain",
         "-o", str(manifest)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tmp


def chutes_cli() -> str:
    local = ROOT / ".venv" / "bin" / "chutes"
    return str(local) if local.exists() else shutil.which("chutes")


@pytest.fixture(scope="session", params=["dev", "platform"])
def chute_url(request, gradio_module, gradio_app, tmp_path_factory):
    """Where callers reach the chute: `chutes run --dev` of the module, and the local platform (the
    node as `chutes run` serves it on a GPU node, the gateway in front: tools/platform/gateway.py)."""
    tmp = tmp_path_factory.mktemp(f"gradio-{request.param}")
    if request.param == "platform":
        from tests.platform.conftest import platform_for

        with platform_for("deploy_gradioapp:chute", gradio_module, gradio_app.url, tmp) as platform:
            yield platform.url
        return
    chute_port, logging_port = free_port(), free_port()
    env = dict(os.environ, CHUTE_PORTS=str(gradio_app.port), CHUTES_EXECUTION_CONTEXT="REMOTE",
               PYTHONPATH=str(ROOT))
    log = open(tmp / "chute.log", "wb")
    proc = subprocess.Popen(
        [chutes_cli(), "run", "deploy_gradioapp:chute", "--dev", "--host", "127.0.0.1", "--port", str(chute_port),
         "--logging-port", str(logging_port)],
        cwd=gradio_module, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        try:
            wait_for_port(chute_port, proc, timeout=90)
        except Exception:
            raise AssertionError((tmp / "chute.log").read_text()[-3000:])
        yield f"http://127.0.0.1:{chute_port}"
    finally:
        stop_process(proc)
        log.close()


# --------------------------------------------------------------------------------------------------
# The app called directly, through Gradio's own two-step HTTP API: what the chute must equal


@dataclass
class Direct:
    """Gradio's two-step API, spoken plainly with requests."""

    url: str
    prefix: str = "/gradio_api"

    def upload(self, data: bytes, filename: str, content_type: str) -> dict:
        answer = requests.post(f"{self.url}{self.prefix}/upload", files={"files": (filename, data, content_type)},
                               timeout=30)
        answer.raise_for_status()
        return {"path": answer.json()[0], "orig_name": filename, "meta": {"_type": "gradio.FileData"}}

    def events(self, api_name: str, data: list) -> list[tuple[str, object]]:
        joined = requests.post(f"{self.url}{self.prefix}/call/{api_name}", json={"data": data}, timeout=30)
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        out = []
        with requests.get(f"{self.url}{self.prefix}/call/{api_name}/{event_id}", stream=True, timeout=60) as answer:
            event = None
            for line in answer.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event != "heartbeat":
                    out.append((event, json.loads(line[5:])))
        return out

    def result(self, api_name: str, data: list):
        events = self.events(api_name, data)
        kind, value = events[-1]
        assert kind == "complete", events
        return value

    def in_session(self, api_name: str, data: list, session_hash: str) -> list:
        """One call in a session of the caller's (POST .../call with `session_hash`, then the session's
        queue stream), as a browser tab makes it: a gr.State keeps its value between such calls."""
        joined = requests.post(f"{self.url}{self.prefix}/call/{api_name}",
                               json={"data": data, "session_hash": session_hash}, timeout=30)
        joined.raise_for_status()
        with requests.get(f"{self.url}{self.prefix}/queue/data", params={"session_hash": session_hash},
                          stream=True, timeout=60) as answer:
            for line in answer.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed" and message.get("event_id") == joined.json()["event_id"]:
                        assert message["success"], message
                        return message["output"]["data"]
        raise AssertionError(f"no result for {api_name}")

    def file(self, value: dict) -> tuple[bytes, str]:
        answer = requests.get(f"{self.url}{self.prefix}/file={value['path']}", timeout=30)
        answer.raise_for_status()
        return answer.content, answer.headers["content-type"]


@pytest.fixture(scope="session")
def direct(gradio_app) -> Direct:
    return Direct(gradio_app.url)
