"""`./deploy.sh --run MODULE --reload` and the log of `--run`, as a developer sees them: save a change,
the chute restarts beside the running one (the service untouched, no call refused meanwhile), the
output says which cords changed; a module that breaks leaves the last good chute serving; a new
HOST_COMMAND restarts the service. `--run` shows one line per call and hides the SDK's chatter
unless `--verbose`.

The project is copied into a temporary folder for these runs (deploy.sh, tools/, the example), so a
test can edit a file of tools/ as a developer would, with the project's own virtualenv.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port, port_open

pytestmark = pytest.mark.integration

SERVICE_PID = re.compile(r"\[service\] INFO: +Started server process \[(\d+)\]")


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project (what --run reads: deploy.sh, tools/, the example module and manifest)."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("deploy.sh", "deploy_example.py", "deploy_example.routes.json"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "tools", copy / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


class Run:
    """`deploy.sh --run` in the background, its output collected in a file."""

    def __init__(self, project: Path, *extra: str):
        self.port = free_port()
        self.service_port = free_port()
        self.log = project.parent / f"run-{self.port}.log"
        self._out = open(self.log, "wb")
        env = dict(os.environ, CHUTE_PORTS=str(self.service_port), CHUTES_WRAPPERS_VENV=str(ROOT / ".venv"))
        self.proc = subprocess.Popen(
            [str(project / "deploy.sh"), "--run", "deploy_example", "--port", str(self.port),
             "--logging-port", str(free_port()), *extra],
            cwd=project, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120, after: int = 0) -> str:
        """Until `text` appears in the output after position `after`; returns the output from there."""
        deadline = time.monotonic() + timeout
        while text not in self.output[after:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"--run exited {self.proc.returncode} before {text!r}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output[-4000:]}")
            time.sleep(0.05)
        return self.output[after:]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def service_pids(self) -> list[int]:
        return [int(pid) for pid in SERVICE_PID.findall(self.output)]

    def stop(self) -> int:
        os.kill(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()


@pytest.fixture
def run():
    runs: list[Run] = []

    def start(project: Path, *extra: str) -> Run:
        runs.append(Run(project, *extra))
        return runs[-1]

    yield start
    for one in runs:
        one.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Caller(threading.Thread):
    """Calls a cord in a loop until stopped; every answer's status (or error) is kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.outcomes, self.halt = url, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.outcomes.append(requests.post(self.url, json={"n": 1}, timeout=30).status_code)
            except requests.RequestException as exc:
                self.outcomes.append(type(exc).__name__)
            time.sleep(0.02)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_a_saved_change_restarts_the_chute_beside_the_running_one_and_says_what_changed(project, run):
    module = project / "deploy_example.py"
    chute = run(project, "--reload")
    chute.wait_for("--reload: watching")
    (service_pid,) = chute.service_pids()
    assert requests.post(chute.url("/v1/echo"), json={"a": 1}, timeout=30).json() == {"echo": {"a": 1}}

    # a new static route and a new timeout: the cords added and changed, while calls keep being answered
    caller = Caller(chute.url("/v1/echo"))
    caller.start()
    mark = len(chute.output)
    edit(module, '{"path": "/v1/echo", "method": "POST", "target_path": "/v1/echo"},',
         '{"path": "/v1/echo", "method": "POST", "target_path": "/v1/echo"},\n'
         '    {"path": "/v1/echo_again", "method": "POST", "target_path": "/v1/echo"},')
    edit(module, '"timeout": 300}', '"timeout": 200}')
    said = chute.wait_for("reload: the new chute took calls", after=mark)
    time.sleep(1)  # the old chute is stopped after the new one took over
    caller.halt.set()
    caller.join()
    assert "reload: deploy_example.py changed" in said
    assert "reload:   + POST /v1/echo_again -> POST :%d/v1/echo" % chute.service_port in said
    assert "reload:   ~ POST /inference: timeout 300.0 -> 200.0" in said
    assert f"the service kept running (pid {service_pid})" in said
    assert caller.outcomes and set(caller.outcomes) == {200}, caller.outcomes
    assert requests.post(chute.url("/v1/echo_again"), json={"b": 2}, timeout=30).json() == {"echo": {"b": 2}}
    assert chute.service_pids() == [service_pid] and alive(service_pid)

    # a module that no longer imports: one line, and the last good chute keeps serving
    mark = len(chute.output)
    edit(module, "CHUTE_TAGLINE = ", "CHUTE_TAGLINE = undefined_name or ")
    said = chute.wait_for("the last good chute keeps serving", after=mark)
    (line,) = [line for line in said.splitlines() if line.startswith("reload: ") and "keeps serving" in line]
    assert "NameError: name 'undefined_name' is not defined" in line
    assert requests.post(chute.url("/v1/echo_again"), json={"c": 3}, timeout=30).status_code == 200

    # fixed again, and the manifest edited: the route it no longer lists is gone
    mark = len(chute.output)
    edit(module, "CHUTE_TAGLINE = undefined_name or ", "CHUTE_TAGLINE = ")
    chute.wait_for("reload: the new chute took calls", after=mark)
    mark = len(chute.output)
    manifest = project / "deploy_example.routes.json"
    edit(manifest, '"path": "/v1/text"', '"path": "/v1/texts"')
    said = chute.wait_for("reload: the new chute took calls", after=mark)
    assert "reload: deploy_example.routes.json changed" in said
    assert "reload:   - GET /v1/text" in said and "reload:   + GET /v1/texts" in said
    assert requests.get(chute.url("/v1/text"), timeout=30).status_code == 404

    # a file of tools/: the new chute runs the new code
    mark = len(chute.output)
    edit(project / "tools" / "chute_wrappers.py", '"status": "healthy" if', '"status": "hale and hearty" if')
    said = chute.wait_for("reload: the new chute took calls", after=mark)
    assert "reload: tools/chute_wrappers.py changed" in said and "reload:   no cord changed" in said
    assert requests.get(chute.url("/health"), timeout=30).json()["status"] == "hale and hearty"
    assert chute.service_pids() == [service_pid]

    assert chute.stop() == 130
    assert not alive(service_pid) and not port_open(chute.port) and not port_open(chute.service_port)


def test_a_new_host_command_restarts_the_service_too(project, run):
    module = project / "deploy_example.py"
    chute = run(project, "--reload")
    chute.wait_for("--reload: watching")
    (first,) = chute.service_pids()
    mark = len(chute.output)
    edit(module, '"--port", str(SERVICE_PORTS[0])]', '"--port", str(SERVICE_PORTS[0]), "--log-level", "info"]')
    said = chute.wait_for("--reload: watching", after=mark, timeout=120)
    assert "HOST_COMMAND or ENTRYPOINT changed: restarting the service and the chute" in said
    (second,) = chute.service_pids()[1:]
    assert second != first and not alive(first) and alive(second)
    assert requests.post(chute.url("/v1/echo"), json={"a": 1}, timeout=30).status_code == 200
    assert chute.stop() == 130 and not alive(second)


def test_run_logs_one_line_per_call_and_hides_the_sdks_chatter_unless_verbose(project, run):
    for extra, chatter_shown in (((), False), (("--verbose",), True)):
        chute = run(project, *extra)
        chute.wait_for("ready: streaming logs")
        assert requests.post(chute.url("/v1/echo"), json={"a": 1}, timeout=30).status_code == 200
        chute.wait_for("POST /v1/echo -> /wrap_post_v1_echo whole 200")
        assert re.search(r"^\[gateway\] \d\d:\d\d:\d\d POST /v1/echo -> /wrap_post_v1_echo whole 200 \d+B [\d.]+ms$",
                         chute.output, re.M), chute.output[-2000:]
        for chatter in ("[aegis-debug]", "Decrypted request path", "Added new API route", "E2E path map"):
            assert (chatter in chute.output) is chatter_shown, (extra, chatter)
        assert "registered 10 route(s)" in chute.output  # our own lines stay
        assert "/docs" in chute.output  # where the docs page is
        assert chute.stop() == 130


def test_reload_applies_to_the_local_platform_only(project):
    proc = subprocess.run([str(project / "deploy.sh"), "--run", "deploy_example", "--reload", "--dev"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, CHUTES_WRAPPERS_VENV=str(ROOT / ".venv")))
    assert proc.returncode == 2 and "--reload restarts the chute as on a Chutes node" in proc.stderr
