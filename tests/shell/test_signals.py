"""Signals sent to deploy.sh alone (`kill PID`, as a process manager or CI runner sends them, not to
its process group): every long action stops, and leaves no process and no container behind.

Each run carries a unique marker in its environment; every process that inherited it (the tool,
podman's `logs -f` and `wait`, the service, the chute) is found through /proc, wherever it went.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import account  # noqa: F401  (the fixture: a fake Chutes API and an account)
from tests.conftest import free_port, port_open
from tests.shell.test_deploy_sh import DEPLOY, clean_env

pytestmark = pytest.mark.shell

SIGNALS = pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
MARKER = "CW_SIGNAL_TEST"


def processes_with(marker: str) -> list[str]:
    """Live processes whose environment holds `marker` ("pid command line" each)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"{MARKER}={marker}".encode() in (entry / "environ").read_bytes():
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name} {cmdline.strip()}")
        except OSError:
            continue
    return found


class Run:
    """deploy.sh in its own session, output in files; `signal` reaches deploy.sh's pid only."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str], cwd: Path):
        self.marker = uuid.uuid4().hex
        self.out, self.err = tmp_path / f"{self.marker}.out", tmp_path / f"{self.marker}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([str(DEPLOY), *args], env=dict(env, **{MARKER: self.marker}), cwd=cwd,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            assert self.proc.poll() is None, f"deploy.sh exited {self.proc.returncode}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout}s:\n{self.output[-3000:]}"
            time.sleep(0.1)

    def signal(self, signum: int, timeout: float = 60) -> int:
        os.kill(self.proc.pid, signum)  # deploy.sh alone, not its process group
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"deploy.sh still running {timeout}s after {signum!r}:\n{self.output[-3000:]}")

    def leftovers(self, grace: float = 10) -> list[str]:
        """Processes of this run still alive `grace` seconds after deploy.sh ended (children may be
        finishing their own cleanup); an orphan that carries on is still there."""
        deadline = time.monotonic() + grace
        while (left := processes_with(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for line in processes_with(self.marker):  # what a failing test left: not for the next one
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def deploy_sh(tmp_path):
    runs: list[Run] = []

    def start(*args: str, env: dict[str, str], cwd: Path) -> Run:
        run = Run(tmp_path, list(args), env, cwd)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


# --- --keep-warm -------------------------------------------------------------------------------------


@SIGNALS
def test_keep_warm_stops_on_a_signal_to_deploy_sh(account, deploy_sh, signum):  # noqa: F811
    account.state.add_chute("myservice")
    chute_id = next(iter(account.state.chutes))
    run = deploy_sh("--keep-warm", "1", "myservice", env=account.env, cwd=account.home)
    run.wait_for(r"\] myservice: hot", timeout=60)
    code = run.signal(signum)
    assert code == 0, run.output
    assert re.search(r"stopped keeping myservice warm after \d+ warmup\(s\), 0 failed", run.output)
    assert run.leftovers() == []
    warmed = account.state.warmups.get(chute_id, 0)
    time.sleep(2.5)  # two intervals: an orphan would have warmed it again by now
    assert account.state.warmups.get(chute_id, 0) == warmed
    account.assert_no_secret(run.output)


# --- --discover --base-url ---------------------------------------------------------------------------

URL_MODULE = """
CHUTE_NAME = "sigtest"
CHUTE_BASE_IMAGE = "unused:latest"
SERVICE_PORTS = [{port}]
"""


@SIGNALS
def test_discover_base_url_stops_on_a_signal_to_deploy_sh(tmp_path, deploy_sh, signum):
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()  # nothing listens: discovery waits for the service to start
    module = tmp_path / "deploy_sigurl.py"
    module.write_text(URL_MODULE.format(port=port))
    run = deploy_sh("--discover", str(module), "--base-url", f"http://127.0.0.1:{port}", "--startup-delay", "600",
                    "--plain", env=clean_env(home), cwd=tmp_path)
    run.wait_for(r"probing http://127\.0\.0\.1:\d+", timeout=60)
    time.sleep(0.5)  # into the probing loop
    code = run.signal(signum)
    assert code == 128 + signum, run.output
    assert "discovery interrupted by" in run.output and "Traceback" not in run.output
    assert run.leftovers() == []
    assert not (tmp_path / "deploy_sigurl.routes.json").exists()


# --- --discover with a container ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman():
    from tests.container import engine

    reason = engine.skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with engine.podman_engine() as instance:
        yield instance


@pytest.fixture(scope="module")
def busybox(podman) -> str:
    from tests.container import engine

    return engine.busybox_base(podman)


CONTAINER_MODULE = """
CHUTE_NAME = "sigtest"
CHUTE_BASE_IMAGE = {image!r}
SERVICE_PORTS = [8020]
ENTRYPOINT = ["sleep", "600"]
"""


def containers_of(podman, module: str) -> list[str]:
    return podman("ps", "-a", "--format", "{{.Names}}", "--filter", "label=chutes-wrappers",
                  "--filter", f"label=chutes-wrappers.module={module}").stdout.split()


@pytest.mark.container
@SIGNALS
def test_discover_container_stops_on_a_signal_to_deploy_sh(tmp_path, deploy_sh, podman, busybox, signum):
    from tests.container import engine

    home = tmp_path / "home"
    home.mkdir()
    name = f"deploy_sig{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text(CONTAINER_MODULE.format(image=busybox))
    env = dict(podman.env, HOME=str(home), NO_COLOR="1",
               CHUTES_CONTAINER_ENGINE="podman " + " ".join(engine.PODMAN_GLOBAL_FLAGS))
    env = {k: v for k, v in env.items() if not k.startswith(("CHUTE_", "PYTEST_"))}
    try:
        run = deploy_sh("--discover", str(module), "--free-host-ports", "--startup-delay", "600", "--plain",
                        env=env, cwd=tmp_path)
        run.wait_for(r"starting \S+ as chutes-discovery", timeout=120)
        deadline = time.monotonic() + 120
        while not containers_of(podman, name):  # the container is up: discovery is waiting on it
            assert time.monotonic() < deadline and run.proc.poll() is None, run.output
            time.sleep(0.2)
        time.sleep(1)  # `logs -f` and `wait` are running beside it
        code = run.signal(signum, timeout=120)
        assert code == 128 + signum, run.output
        assert "discovery interrupted by" in run.output
        assert run.leftovers() == []
        assert containers_of(podman, name) == []
        assert not (tmp_path / f"{name}.routes.json").exists()
    finally:
        for leftover in containers_of(podman, name):
            podman.remove_container(leftover)


# --- --run -------------------------------------------------------------------------------------------


@SIGNALS
def test_run_stops_the_service_and_the_chute_on_a_signal_to_deploy_sh(tmp_path, deploy_sh, signum):
    home = tmp_path / "home"
    home.mkdir()
    service_port, port, logging_port = free_port(), free_port(), free_port()
    run = deploy_sh("--run", "deploy_example", "--port", str(port), "--logging-port", str(logging_port),
                    env=clean_env(home, CHUTE_PORTS=str(service_port)), cwd=tmp_path)
    run.wait_for("ready: streaming logs", timeout=180)
    assert port_open(port) and port_open(service_port)
    code = run.signal(signum)
    assert code == 130, run.output
    assert run.leftovers() == []
    assert not port_open(port) and not port_open(service_port) and not port_open(logging_port)
