"""`--smoke` (the stack `--run` starts) on a service that opens its port seconds before it can answer:
on both paths (the chute on a node behind the local gateway, and `--dev`) nothing but the readiness
probe reaches the service before it is ready, and every call answers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import PYTHON, ROOT, free_port

pytestmark = pytest.mark.integration

DELAY_S = 4.0

MODULE = textwrap.dedent(
    """
    import sys
    from chutes.chute import Chute
    from tools.chute_wrappers import add_health_cord, attach_service, load_route_manifest, register_passthrough_routes

    CHUTE_NAME = "slow-ready"
    CHUTE_TAG = "v1"
    CHUTE_BASE_IMAGE = "example/slow:latest"
    SERVICE_PORTS = [{port}]
    SERVICE_READY_PATHS = {{{port}: "/ready"}}
    HOST_COMMAND = [sys.executable, {script!r}, "--port", "{port}", "--delay", "{delay}", "--log", {log!r}]
    CHUTE_STATIC_ROUTES = [{{"path": "/predict", "method": "POST", "example": {{"x": 1}}}}]
    chute = Chute(username="test", name=CHUTE_NAME, image="unused", concurrency=4)
    add_health_cord(chute, SERVICE_PORTS, ready_paths=SERVICE_READY_PATHS)
    register_passthrough_routes(chute, load_route_manifest(static_routes=CHUTE_STATIC_ROUTES), SERVICE_PORTS[0])
    attach_service(chute, None, SERVICE_PORTS, ready_paths=SERVICE_READY_PATHS)
    """
)


@pytest.mark.parametrize("dev", [False, True], ids=["gateway", "dev"])
def test_a_service_that_opens_its_port_early_is_never_called_early(tmp_path, dev):
    port, log = free_port(), tmp_path / "requests.log"
    (tmp_path / "deploy_slowready.py").write_text(MODULE.format(
        port=port, script=str(ROOT / "tests" / "support" / "slow_ready.py"), delay=DELAY_S, log=str(log)))
    started = time.monotonic()
    done = subprocess.run(
        [PYTHON, "-m", "tools.commands.smoke", str(tmp_path / "deploy_slowready.py"), "--port", str(free_port()),
         "--logging-port", str(free_port()), *(["--dev"] if dev else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started >= DELAY_S
    assert "2 ok" in done.stdout and "0 failed" in done.stdout, done.stdout
    lines = log.read_text().splitlines()
    early = [line for line in lines if line.startswith("early")]
    assert early and set(early) == {"early GET /ready"}, lines  # only the readiness probe came early
    assert "ready POST /predict" in lines and "ready GET /ready" in lines


def test_the_timeout_error_names_the_last_answer(tmp_path):
    port, log = free_port(), tmp_path / "requests.log"
    (tmp_path / "deploy_slowready.py").write_text(MODULE.format(
        port=port, script=str(ROOT / "tests" / "support" / "slow_ready.py"), delay=600, log=str(log)))
    done = subprocess.run(
        [PYTHON, "-m", "tools.commands.smoke", str(tmp_path / "deploy_slowready.py"), "--port", str(free_port()),
         "--logging-port", str(free_port()), "--timeout", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"port {port} accepts connections but is not ready after 2s" in lines[0]
    assert "GET /ready answers 2xx; its last answer: answered 503 '{\"detail\": \"loading\"}'" in lines[0]
