"""Calls a service never saw must not fail (issue 18): kept-alive connections the service closes.

A server may close a kept-alive connection whenever it likes (RFC 9112 §9.3), and uvicorn does so
right after an app raised: Starlette answers 500, then the connection is closed without a
`Connection: close`. The chute's pool had already taken the connection back, so the next POST on it
met a closed socket: a 502, an instance failure on Chutes, for a call the service never received
(every one of 50 in a row, measured with uvicorn 0.3x/h11). aiohttp resends idempotent methods once
itself; tools/runtime/cords/pool.py `resend_on_stale` resends the others, on the rule browsers
follow: only after a *reused* connection ended before any answer, never after a fresh one (that one
the service may have acted on). On the platform's path (node runner and local gateway).
"""

from __future__ import annotations

import contextlib
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import PYTHON, ROOT, free_port, stop_process, wait_for_port
from tests.platform.conftest import platform_for
from tests.support import bad_upstream

pytestmark = pytest.mark.integration

MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import register_passthrough_routes

    RAISING, BAD = int(os.environ["RAISING_PORT"]), int(os.environ["BAD_UPSTREAM_PORT"])
    JSON = {"kind": "json"}
    ROUTES = [
        {"path": "/raise", "method": "POST", "request": JSON, "port": RAISING},
        {"path": "/echo", "method": "POST", "request": JSON, "port": RAISING},
        {"path": "/echo", "method": "PATCH", "request": JSON, "port": RAISING},
        {"path": "/json", "method": "GET", "request": {"kind": "none"}, "port": BAD},
        {"path": "/arm-hang-up", "method": "GET", "request": {"kind": "none"}, "port": BAD},
        {"path": "/json", "method": "POST", "request": JSON, "port": BAD},
        {"path": "/hang-up", "method": "POST", "request": JSON, "port": BAD},
    ]
    chute = Chute(username="test", name="closed", image="unused", concurrency=8)
    register_passthrough_routes(chute, ROUTES, RAISING)
    """
)


@contextlib.contextmanager
def raising_app(tmp):
    port = free_port()
    with open(tmp / "uvicorn.log", "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "uvicorn", "tests.support.raising_app:app", "--http", "h11",
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, proc)
            yield port
        finally:
            stop_process(proc)


@pytest.fixture(scope="module")
def chute(tmp_path_factory):
    """(platform, the bad upstream's URL)."""
    tmp = tmp_path_factory.mktemp("closed")
    (tmp / "deploy_closed.py").write_text(MODULE)
    upstream, bad_port = bad_upstream.start()
    try:
        with raising_app(tmp) as port, platform_for("deploy_closed:chute", tmp, f"http://127.0.0.1:{port}", tmp,
                                                    RAISING_PORT=str(port), BAD_UPSTREAM_PORT=str(bad_port)) as platform:
            yield platform, f"http://127.0.0.1:{bad_port}"
    finally:
        stop_process(upstream)


def failures(platform) -> int:
    return platform.stats()["instance_failures"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_an_apps_error_fails_only_its_own_call_not_the_next_ones(chute, method):
    """Callers at once, a few of them hitting the app's bug: each of those is the service's own
    failure; every other call is answered (six bugs at most: seven in a row would disable the instance)."""
    platform, _ = chute
    before = failures(platform)

    def call(index: int) -> tuple[int, int, object]:
        if index % 6 == 0:
            answer = requests.post(f"{platform.url}/raise", json={"i": index}, timeout=60)
        else:
            answer = requests.request(method, f"{platform.url}/echo", json={"i": index}, timeout=60)
        return index, answer.status_code, answer.json()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(36)))
    bugs = [index for index, status, _ in results if index % 6 == 0]
    assert all(status == 500 for index, status, _ in results if index in bugs), results  # the platform's answer to a 502
    answered = [(index, status, body) for index, status, body in results if index not in bugs]
    assert answered == [(index, 200, {"echo": {"i": index}}) for index, _, _ in answered], \
        platform.stats()["last_failure"]
    assert failures(platform) == before + len(bugs), platform.stats()["last_failure"]
    assert "instance answered 502" in platform.stats()["last_failure"]


def seen(upstream: str, path: str) -> list[dict]:
    return [entry for entry in requests.get(f"{upstream}/seen", timeout=30).json()["seen"] if entry["path"] == path]


def test_a_post_on_a_connection_the_service_closed_is_sent_again_and_answered(chute):
    platform, upstream = chute
    before, posts = failures(platform), len(seen(upstream, "/json"))
    assert requests.get(f"{platform.url}/json", timeout=60).status_code == 200
    assert requests.get(f"{platform.url}/arm-hang-up", timeout=60).status_code == 200
    answer = requests.post(f"{platform.url}/json", json={"x": 1}, timeout=60)
    assert answer.status_code == 200 and answer.json()["method"] == "POST", answer.text[:300]
    assert failures(platform) == before
    new = [entry for entry in seen(upstream, "/json")[posts:] if entry["method"] == "POST"]
    # the service read the first one on a kept-alive connection and dropped it; the resent one it answered
    assert [(entry["first_on_connection"], entry["dropped"]) for entry in new][0] == (False, True), new
    assert new[-1]["dropped"] is False and len(new) >= 2, new


def test_a_post_dropped_on_a_fresh_connection_is_not_sent_again(chute):
    platform, upstream = chute
    requests.get(f"{platform.url}/json", timeout=60)  # a kept-alive connection in the pool
    before, sent = failures(platform), len(seen(upstream, "/hang-up"))
    answer = requests.post(f"{platform.url}/hang-up", json={"x": 1}, timeout=60)
    assert answer.status_code == 500 and failures(platform) == before + 1  # the service's own failure
    assert "closed the connection" in platform.stats()["last_failure"]
    tries = seen(upstream, "/hang-up")[sent:]
    # resent only while the connection it went on was a reused one; the one on a fresh connection is the last
    assert [entry["first_on_connection"] for entry in tries][-1] is True, tries
    assert all(not entry["first_on_connection"] for entry in tries[:-1]) and len(tries) <= 3, tries
