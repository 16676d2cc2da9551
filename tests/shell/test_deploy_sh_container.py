"""deploy.sh --run-docker with real podman: ready with the cord table, Ctrl-C removes the container; a
container that dies at startup is reported with its last output and removed too.

The image is the cached Debian+Python test base (tests/container/engine.py) plus a stand-in `chutes`
that serves HTTP on the port it is given (or dies, for a module named *crash*): what is tested here
is deploy.sh's engine handling, not the Chutes runtime (the container tier builds the real one and
calls it through the local gateway), so these runs take --dev (`chutes run --dev` in the container).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import free_port, port_open
from tests.container import engine
from tests.shell.test_deploy_sh import DEPLOY, clean_env, example_copy

pytestmark = [pytest.mark.shell, pytest.mark.container]

FAKE_CHUTES = """#!/usr/bin/env python3
import sys, http.server, socketserver
args = sys.argv[1:]
if any("crash" in a for a in args):
    print("loading weights from /models/x.bin: not found", flush=True)
    sys.exit(3)
port = int(args[args.index("--port") + 1])
print(f"stand-in chute on {port}", flush=True)
socketserver.TCPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("0.0.0.0", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


@pytest.fixture(scope="module")
def podman():
    reason = engine.skip_reason()
    if reason:
        pytest.skip(reason)
    with engine.podman_engine() as instance:
        yield instance


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory):
    base = engine.debian_python_base(podman)
    context = tmp_path_factory.mktemp("standin")
    (context / "chutes").write_text(FAKE_CHUTES)
    (context / "Containerfile").write_text(
        f"FROM {base}\nCOPY chutes /usr/local/bin/chutes\nRUN chmod 755 /usr/local/bin/chutes && mkdir -p /app\n")
    ref = f"localhost/cw-test-rundocker:{uuid.uuid4().hex[:8]}"
    podman("build", "-t", ref, "-f", str(context / "Containerfile"), str(context), timeout=600)
    yield ref
    podman.remove_image(ref)


def leftovers(podman, module: str) -> list[str]:
    """run-docker containers of this module (unique per test: other runs may share the engine)."""
    out = podman("ps", "-a", "-q", "--filter", "label=chutes-wrappers=run-docker",
                 "--filter", f"label=chutes-wrappers.module={module}", check=False).stdout
    return out.split()


def env_for(podman, home):
    return clean_env(home, PATH=podman.env["PATH"], CONTAINERS_CONF=podman.env["CONTAINERS_CONF"],
                     CHUTES_CONTAINER_ENGINE="podman --cgroup-manager=cgroupfs --runtime runc",
                     CHUTE_PORTS=str(free_port()))


def test_run_docker_gets_ready_prints_cords_and_ctrl_c_removes_the_container(podman, image, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    name = f"deploy_ok_{uuid.uuid4().hex[:8]}"
    module = example_copy(tmp_path / f"{name}.py", manifest=True)
    port = free_port()
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(DEPLOY), "--run-docker", str(module), "--dev", "--image", image, "--port", str(port),
                                 "--timeout", "120"], env=env_for(podman, home), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while "ready: streaming the container's log" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            assert port_open(port)
            assert len(leftovers(podman, name)) == 1
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(120) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert f"POST   /tts_to_audio" in text and f"curl -sS -X POST http://127.0.0.1:{port}/tts_to_audio" in text
    assert "[container] stand-in chute on" in text and f"removed container chute-{name}-" in text
    assert not leftovers(podman, name) and not port_open(port)


def test_run_docker_container_that_dies_shows_its_output_and_is_removed(podman, image, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    name = f"deploy_crash_{uuid.uuid4().hex[:8]}"
    module = example_copy(tmp_path / f"{name}.py", manifest=True)
    result = subprocess.run([str(DEPLOY), "--run-docker", str(module), "--dev", "--image", image, "--port", str(free_port())],
                            env=env_for(podman, home), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the container exited with status 3 before the chute answered" in result.stderr
    assert "loading weights from /models/x.bin: not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not leftovers(podman, name)
