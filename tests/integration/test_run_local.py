"""`deploy.sh --run`: the demo service and the real `chutes run --dev` of deploy_example, called for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time

import pytest
import requests

from tests.conftest import ROOT, free_port, port_open

pytestmark = pytest.mark.integration


class RunDev:
    """`./deploy.sh --run` in the background, its output collected in a file."""

    def __init__(self, tmp_path, module: str, *extra: str, env: dict | None = None):
        self.port = free_port()
        self.logging_port = free_port()
        self.log = tmp_path / f"run-{self.port}.log"
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(ROOT / "deploy.sh"), "--run", module, "--port", str(self.port),
             "--logging-port", str(self.logging_port), *extra],
            cwd=tmp_path,  # deploy.sh must work from any directory
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **(env or {})),
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                raise AssertionError(f"deploy.sh exited {self.proc.returncode} before {text!r}:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output[-3000:]}")
            time.sleep(0.1)

    def interrupt(self, timeout: float = 30) -> int:
        os.kill(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def run_dev(tmp_path):
    runs: list[RunDev] = []

    def start(module: str, *extra: str, env: dict | None = None) -> RunDev:
        run = RunDev(tmp_path, module, *extra, env=env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def test_example_runs_on_the_demo_service_and_every_json_cord_answers(run_dev):
    service_port = free_port()
    run = run_dev("deploy_example", env={"CHUTE_PORTS": str(service_port)})
    run.wait_for("ready: streaming logs")
    out = run.output

    # the cord table with ready-to-paste curl lines, and the reported limitations
    assert f"curl -sS -X POST http://127.0.0.1:{run.port}/v1/echo -H 'Content-Type: application/json'" in out
    assert f"POST   /tts_to_audio" in out and f":{service_port}/tts_to_audio/" in out
    assert f"curl -sS -X POST http://127.0.0.1:{run.port}/tts_to_audio -o response.wav" in out
    assert "GET /v1/models/{model_id} (path parameter {model_id}" in out and "reachable through /proxy" in out

    health = requests.get(run.url("/health"), timeout=10)
    assert health.status_code == 200
    ports = {str(service_port): "ok"}  # deploy_example waits for, and reports, the demo's /health
    assert health.json() == {"status": "healthy", "live": True, "ready": True, "ports": ports, "readiness": ports}

    echo = requests.post(run.url("/v1/echo"), json={"message": "hi", "n": [1, 2]}, timeout=10)
    assert echo.status_code == 200 and echo.json() == {"echo": {"message": "hi", "n": [1, 2]}}

    models = requests.get(run.url("/v1/models"), timeout=10)
    assert models.status_code == 200 and models.json()["object"] == "list"
    # --run goes through the local gateway: the query string reaches the service, as on Chutes
    assert len(requests.get(run.url("/v1/models?limit=2"), timeout=10).json()["data"]) == 2

    slow = requests.get(run.url("/v1/slow"), timeout=10)
    assert slow.status_code == 200 and "slept" in slow.json()

    with requests.post(run.url("/v1/stream"), json={"count": 3}, stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        events = [line.decode() for line in stream.iter_lines() if line.startswith(b"data: ")]
    assert len(events) == 4 and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["index"] == 0

    # Ctrl-C stops the chute and the service, and a normal stop is no crash
    assert run.interrupt() == 130
    assert not port_open(run.port) and not port_open(service_port)
    assert "Traceback" not in run.output and "CancelledError" not in run.output


def test_service_that_dies_at_startup_is_reported_and_nothing_is_left(run_dev, tmp_path):
    module = tmp_path / "deploy_dies.py"
    module.write_text(
        textwrap.dedent(
            f"""
            import sys
            from chutes.chute import Chute
            SERVICE_PORTS = [{free_port()}]
            HOST_COMMAND = [sys.executable, "-c", "print('weights not found: /models/x.bin'); raise SystemExit(4)"]
            chute = Chute(username="t", name="dies", image="unused")
            """
        )
    )
    run = run_dev(str(module))
    assert run.proc.wait(60) == 1
    out = run.output
    assert "service exited with status 4" in out and "weights not found" in out
    assert "starting chute" not in out
    assert "Traceback" not in out


def test_port_in_use_is_one_clear_line(run_dev):
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    try:
        run = run_dev("deploy_example", env={"CHUTE_PORTS": str(taken)})
        assert run.proc.wait(60) == 1
    finally:
        blocker.close()
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert lines[-1].startswith(f"deploy.sh --run: error: port {taken} (service port of deploy_example) is already in use")
    assert "Traceback" not in run.output


@pytest.mark.parametrize(
    "source, expected",
    [
        ("SERVICE_PORTS = []\nchute = None\n", "has no SERVICE_PORTS"),
        ("import nonexistent_package_xyz\n", "cannot import deploy_bad.py: ModuleNotFoundError"),
        ("def broken(:\n", "deploy_bad.py line 1"),
        (
            "from tools.chute_wrappers import load_route_manifest\n"
            "load_route_manifest(static_routes=[{'path': '/a', 'port': 'x'}])\n",
            "CHUTE_STATIC_ROUTES: route 0: key 'port'",
        ),
    ],
)
def test_bad_modules_fail_with_one_line(run_dev, tmp_path, source, expected):
    (tmp_path / "deploy_bad.py").write_text(source)
    run = run_dev(str(tmp_path / "deploy_bad.py"))
    assert run.proc.wait(60) == 1
    assert expected in run.output
    assert "Traceback" not in run.output


def test_unknown_module_and_bad_flags(tmp_path):
    result = subprocess.run([str(ROOT / "deploy.sh"), "--run", "deploy_nope"], capture_output=True, text=True)
    assert result.returncode == 1 and "no deploy module deploy_nope.py" in result.stderr
    result = subprocess.run([str(ROOT / "deploy.sh"), "--run", "deploy_example", "--port"], capture_output=True, text=True)
    assert result.returncode == 2 and "--port needs a value" in result.stderr
    result = subprocess.run([str(ROOT / "deploy.sh"), "--frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option '--frobnicate'" in result.stderr


def test_smoke_calls_every_cord_of_the_example_and_passes(tmp_path):
    service_port, port = free_port(), free_port()
    result = subprocess.run(
        [str(ROOT / "deploy.sh"), "--smoke", "deploy_example", "--port", str(port), "--logging-port", str(free_port())],
        capture_output=True, text=True, timeout=180, env=dict(os.environ, CHUTE_PORTS=str(service_port)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith(("GET ", "POST "))}
    assert "200" in rows["/tts_to_audio"] and "proxy json->audio/wav" in rows["/tts_to_audio"]
    assert "proxy multipart->application/json" in rows["/inference"]
    assert "proxy json->stream" in rows["/v1/stream"]
    assert "catch-all" in rows["GET"]  # "POST  GET /v1/models/{model_id}  catch-all ..."
    assert "proxy raw->application/json" in rows["/v1/audio/raw"] and "200" in rows["/v1/audio/raw"]
    assert "13 passed, 0 failed" in result.stdout
    assert not port_open(port) and not port_open(service_port)


def test_smoke_fails_when_a_cord_fails(tmp_path):
    module = tmp_path / "deploy_failing.py"
    service_port = free_port()
    module.write_text(
        textwrap.dedent(
            f"""
            import sys
            from chutes.chute import Chute
            from tools.chute_wrappers import register_passthrough_routes
            SERVICE_PORTS = [{service_port}]
            HOST_COMMAND = [sys.executable, {str(ROOT / "tools" / "demo_service.py")!r}, "--port", "{service_port}"]
            chute = Chute(username="t", name="failing", image="unused")
            register_passthrough_routes(chute, [
                {{"path": "/ok", "method": "GET", "target_path": "/health", "request": {{"kind": "none"}}}},
                {{"path": "/boom", "method": "GET", "target_path": "/v1/status/500", "request": {{"kind": "none"}},
                  "response": {{"kind": "text"}}}},
            ], SERVICE_PORTS[0])
            """
        )
    )
    result = subprocess.run(
        [str(ROOT / "deploy.sh"), "--smoke", str(module), "--port", str(free_port()), "--logging-port", str(free_port())],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 1
    assert "1 passed, 1 failed" in result.stdout
    boom = next(line for line in result.stdout.splitlines() if "/boom" in line)
    # the cord answers 502 (the service failed); the gateway counts that against the instance and,
    # with no other instance to retry on, answers 500 as the Chutes API does
    assert "HTTP 500" in boom
