"""The real-services tier: servers nobody on this project wrote, installed from PyPI into their own
virtualenv, wrapped as README says (discover, write the module, smoke), then called directly and
through the chute and compared.

The virtualenvs live in ~/.cache/chutes-wrappers/venvs/realsvc[-<name>]-<key>, keyed by their
requirements file and the Python version, built once (under a lock) and reused by every rerun: one for
the web services (requirements.txt), one for the model servers (requirements-models.txt: MLServer
and Gradio 5, whose pins would fight the first's). How long each first install took is kept beside it
(`install-seconds`) and printed in the summary.

How the chute is called is one fixture, `chute_runner`, run once per entry of RUNNERS: the platform's
path (the chute on a node behind the local gateway, tools/platform/gateway.py) and the SDK's dev server
(`chutes run --dev`). Every differential test runs on each.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from tests.conftest import PYTHON, ROOT, free_port, stop_process, wait_for_port
from tools.runtime.constants import SERVICE_EXTERNAL_ENV

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
VENVS = Path(os.environ.get("CHUTES_WRAPPERS_CACHE", Path.home() / ".cache" / "chutes-wrappers")) / "venvs"
CHUTES = ROOT / ".venv" / "bin" / "chutes"
INSTALL_TIMEOUT = 1200
# How the tier reaches a chute, each a full run of every test module: "gateway" (as callers reach a
# chute on Chutes) and "dev" (`chutes run --dev`, as `deploy.sh --run --dev`).
RUNNERS = ("gateway", "dev")


REQUIREMENTS_MODELS = HERE / "requirements-models.txt"


def venv_key(requirements: Path = REQUIREMENTS) -> str:
    """What the venv depends on: the pinned requirements and this Python's version."""
    digest = hashlib.sha256(requirements.read_bytes() + sys.version.split()[0].encode()).hexdigest()
    return digest[:16]


def venv_name(requirements: Path) -> str:
    stem = requirements.stem.removeprefix("requirements").strip("-")
    return f"realsvc-{stem + '-' if stem else ''}{venv_key(requirements)}"


def ensure_venv(requirements: Path = REQUIREMENTS) -> tuple[Path, float | None]:
    """The virtualenv of `requirements`, created if missing; returns (its python, seconds the install
    took now or None when it already existed). Concurrent runs wait for one another on a lock."""
    VENVS.mkdir(parents=True, exist_ok=True)
    final = VENVS / venv_name(requirements)
    python = final / "bin" / "python"
    with open(VENVS / f"{venv_name(requirements)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "install-seconds").is_file():
            return python, None
        shutil.rmtree(final, ignore_errors=True)
        started = time.monotonic()
        try:
            # created at its final path (venv scripts record it), published by the marker file last
            subprocess.run([sys.executable, "-m", "venv", str(final)], check=True, capture_output=True,
                           timeout=120)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "-r", str(requirements)], check=True, capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(final, ignore_errors=True)
            tail = "\n".join((exc.stderr or "").strip().splitlines()[-5:]) if isinstance(exc.stderr, str) else ""
            raise RuntimeError(f"installing the real services failed: {tail}") from None
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        (final / "install-seconds").write_text(f"{seconds:.1f}\n")
        return python, seconds


def tier_python(request, requirements: Path) -> Path:
    try:
        python, seconds = ensure_venv(requirements)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"real services not installable here: {str(exc).splitlines()[0]}")
    recorded = (python.parent.parent / "install-seconds").read_text().strip()
    note = f"real services venv {python.parent.parent.name}: " + (
        f"installed now in {seconds:.1f}s" if seconds is not None else f"reused (first install took {recorded}s)")
    request.config.stash.setdefault(_NOTES, []).append(note)
    return python


@pytest.fixture(scope="session")
def realsvc_python(request) -> Path:
    """The python of the tier's own virtualenv (httpbin, flasgger, stubllm, kinto)."""
    return tier_python(request, REQUIREMENTS)


@pytest.fixture(scope="session")
def models_python(request) -> Path:
    """The python of the model servers' virtualenv (MLServer, Gradio 5)."""
    return tier_python(request, REQUIREMENTS_MODELS)


_NOTES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for note in config.stash.get(_NOTES, []):
        terminalreporter.write_line(note)


# --------------------------------------------------------------------------------------------------
# Services


@dataclass
class Service:
    """A third-party server running on a free loopback port."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None, query: dict | None = None, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, json=body, params=query, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def start_service(tmp_path_factory) -> Iterator[Callable[..., Service]]:
    """start(name, argv with {port}, cwd=..., ready_path=..., env=...) -> a Service once `ready_path`
    answers 2xx (None: once its port accepts connections); all stopped at the end."""
    started: list[Service] = []

    def start(name: str, argv: list[str], cwd: Path | None = None, ready_path: str | None = "/", timeout: float = 90,
              env: dict[str, str] | None = None, port: int | None = None) -> Service:
        port = port or free_port()
        work = cwd or tmp_path_factory.mktemp(name)
        log = work / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([arg.format(port=port) for arg in argv], cwd=work, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        service = Service(name, port, proc, log)
        started.append(service)
        try:
            wait_for_port(port, proc, timeout=timeout)
            deadline = time.monotonic() + timeout
            while ready_path is not None and not ready(service.url + ready_path):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not get ready")
                time.sleep(0.1)
        except Exception as exc:
            raise AssertionError(f"{name} did not start: {exc}\n{log.read_text()[-3000:]}") from None
        return service

    yield start
    for service in reversed(started):
        stop_process(service.proc)


def ready(url: str) -> bool:
    """GET `url` answers 2xx (a service still loading may hold the request: a short timeout)."""
    try:
        return requests.get(url, timeout=5).ok
    except requests.RequestException:
        return False


# --------------------------------------------------------------------------------------------------
# Discovery and the deploy module, as README says


def discover(service: Service, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m tools.discover_routes --base-url URL -o out` (README, "Route discovery")."""
    return subprocess.run(
        [PYTHON, "-m", "tools.discover_routes", "--base-url", service.url, "-o", str(out), "--plain", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def write_module(directory: Path, name: str, service_port: int, host_command: list[str] | None = None,
                 overrides: dict | None = None, upstream_headers: dict | None = None) -> Path:
    """deploy_<name>.py from tests/realservices/deploy_template.py.tmpl (the README's module shape)."""
    template = string.Template((HERE / "deploy_template.py.tmpl").read_text())
    text = template.substitute(
        NAME=name, PORT=service_port, HOST_COMMAND=repr(host_command),
        OVERRIDES=json.dumps(overrides or {}, indent=4), UPSTREAM_HEADERS=json.dumps(upstream_headers or {}),
    )
    path = directory / f"deploy_{name}.py"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------
# Calling the chute


@dataclass
class ChuteRunner:
    """Calls a running chute the way its callers do: JSON to a cord's public path and method."""

    name: str
    base_url: str
    catch_all: str = "/proxy"
    log: Path | None = None

    def cord(self, method: str, public_path: str, body: Any = None, query: dict | None = None,
             stream: bool = False) -> requests.Response:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response = requests.request(method, self.base_url + public_path, data=data, headers=headers, params=query,
                                    timeout=60, stream=stream)
        response.runner = self.name  # what the comparisons expect of errors depends on the path taken
        return response

    def templated(self, method: str, path: str, body: Any = None, query: dict | None = None,
                  body_key: str = "json", stream: bool = False) -> requests.Response:
        """A route with path parameters, through the catch-all cord."""
        payload: dict[str, Any] = {"method": method, "path": path}
        if query:
            payload["query"] = query
        if body is not None:
            payload[body_key] = body
        return self.cord("POST", self.catch_all, payload, stream=stream)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""


def chute_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, **(extra or {}), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env[SERVICE_EXTERNAL_ENV] = "1"  # the tests start the service: the chute only waits for its port
    return env


def start_gateway_chute(module: Path, stack: contextlib.ExitStack, env: dict[str, str] | None = None) -> ChuteRunner:
    """The chute on a node behind the local gateway (tools/platform/gateway.py), as callers reach it on Chutes."""
    from tools.platform.stack import start_platform

    log_path = module.with_suffix(".platform.log")
    log = stack.enter_context(open(log_path, "wb"))
    runner = ChuteRunner("gateway", "", log=log_path)
    try:
        platform = stack.enter_context(start_platform(f"{module.stem}:chute", module.parent, env=chute_env(env),
                                                      log=log, timeout=120))
    except Exception as exc:
        log.flush()
        raise AssertionError(f"the chute did not start: {exc}\n{runner.tail()}") from None
    runner.base_url = platform.url
    return runner


def start_dev_chute(module: Path, stack: contextlib.ExitStack, env: dict[str, str] | None = None) -> ChuteRunner:
    """The real `chutes run <module>:chute --dev` on a free port (README, "Running on this machine")."""
    port, logging_port = free_port(), free_port()
    log = module.with_suffix(".chute.log")
    env = dict(chute_env(env), CHUTES_EXECUTION_CONTEXT="REMOTE")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(CHUTES) if CHUTES.exists() else shutil.which("chutes"), "run", f"{module.stem}:chute", "--dev",
             "--host", "127.0.0.1", "--port", str(port), "--logging-port", str(logging_port)],
            cwd=module.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stack.callback(stop_process, proc)
    runner = ChuteRunner("dev", f"http://127.0.0.1:{port}", log=log)
    try:
        wait_for_port(port, proc, timeout=120)
    except Exception as exc:
        raise AssertionError(f"the chute did not start: {exc}\n{runner.tail()}") from None
    return runner


STARTERS = {"gateway": start_gateway_chute, "dev": start_dev_chute}


@pytest.fixture(scope="module", params=RUNNERS)
def chute_runner(request) -> Iterator[Callable[..., ChuteRunner]]:
    """start(module path, env=None) -> a ChuteRunner (`env`: more of the chute's environment, as a
    Chutes secret would give it); every chute stopped at the end of the module. Runs once per entry
    of RUNNERS: the one place that decides how the tier reaches a chute."""
    with contextlib.ExitStack() as stack:
        yield lambda module, env=None: STARTERS[request.param](module, stack, env)


def chute_document(module: Path, runner: ChuteRunner) -> dict:
    """The chute's API document, checked by a real OpenAPI validator (tests/support/openapi_check.py):
    as the local gateway serves it (GET /openapi.json), or, behind the dev server (which has none), as
    `deploy.sh --openapi` builds it from the same plan."""
    from tests.support.openapi_check import check_document

    if runner.name == "gateway":
        answer = requests.get(runner.base_url + "/openapi.json", timeout=30)
        assert answer.status_code == 200, answer.text
        document = answer.json()
    else:
        from tools import deploy_module
        from tools.platform.openapi_doc import build_document

        document = build_document(deploy_module.load(module, keep=False).chute, local_url=runner.base_url)
    check_document(document)
    return document


# --------------------------------------------------------------------------------------------------
# Comparing answers


def media(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def status_class(response: requests.Response) -> str:
    return f"{response.status_code // 100}xx"


def assert_same_answer(direct: requests.Response, through: requests.Response,
                       normalise: Callable[[Any], Any] = lambda body: body, body: str = "json") -> None:
    """Same status class, same media type, same body (JSON after `normalise`, else bytes or length);
    an error answer as the platform's contract passes it on (`assert_error_passed_on`)."""
    context = f"direct {direct.status_code} {media(direct)} {direct.content[:300]!r}\n" \
              f"through {through.status_code} {media(through)} {through.content[:300]!r}"
    assert status_class(through) == status_class(direct), context
    if direct.status_code >= 400:
        assert_error_passed_on(direct, through)
        return
    assert media(through) == media(direct), context
    if body == "json":
        assert normalise(through.json()) == normalise(direct.json()), context
    elif body == "bytes":
        assert through.content == direct.content, context
    elif body == "length":
        assert len(through.content) == len(direct.content), context


def assert_error_passed_on(direct: requests.Response, through: requests.Response) -> None:
    """The service's error as the chute must pass it on (tools/runtime/cords/answer.py):
    the status class kept (the gateway lets only 400 and 429 through as the caller's), JSON holding
    the service's own JSON object unchanged at the top (an OpenAI client still finds "error"), and
    the service's status and body text as `upstream_status` and `upstream_body` (README, the error
    table with its "On Chutes" column).

    Through the gateway (tools/platform/gateway.py, after chutes-api `_invoke_one`/`invoke`) the caller gets
    the chute's 400 as 400 `{"detail": "Invalid request: Invalid request: <the chute's body>"}`, and
    for 429 and 5xx only the gateway's own body: the chute's answer is checked inside that detail,
    and only the status class otherwise."""
    context = f"direct {direct.status_code} {direct.content[:300]!r}\nthrough {through.status_code} {through.content[:300]!r}"
    assert status_class(through) == status_class(direct), context
    if direct.status_code == 429 or (direct.status_code >= 400 and direct.status_code != 429 and
                                     direct.status_code < 500):
        assert through.status_code == (429 if direct.status_code == 429 else 400), context
    assert media(through) == "application/json", context
    data = through.json()
    if getattr(through, "runner", "dev") == "gateway":
        if through.status_code != 400:
            return  # the platform answers 429 and 5xx with its own body
        detail = data.get("detail", "")
        assert detail.startswith("Invalid request: Invalid request: "), context
        data = json.loads(detail.removeprefix("Invalid request: ").removeprefix("Invalid request: "))
    assert data.get("upstream_status") == direct.status_code, context
    try:
        own = direct.json()
    except ValueError:
        own = None
    if isinstance(own, dict):
        assert {key: data.get(key) for key in own} == own, context
    assert data.get("upstream_body") == direct.text, context
