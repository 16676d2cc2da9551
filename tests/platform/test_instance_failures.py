"""Issue 18: no caller can fail an instance, and what the platform does with one that keeps failing.

On Chutes an instance that fails 7 calls in a row is disabled, then deleted (chutes-api cd60d64,
api/chute/util.py:1937-1967, api/instance/util.py:284-336), so any call a caller can shape into an
instance failure takes a deployment down. Each test calls the chute through the local gateway
(tools/platform/gateway.py) and reads its count of failures.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest
import requests

from tests.platform.conftest import copy_module, demo_service, platform_for
from tests.platform.test_contract import MODULE as CONTRACT_MODULE
from tools.platform.gateway import NO_INSTANCES, NO_TARGETS, OVERLOAD

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failures")
    directory = copy_module(tmp, "deploy_contract", CONTRACT_MODULE)
    with demo_service(tmp) as service, platform_for("deploy_contract:chute", directory, service, tmp,
                                                    CONTRACT_SERVICE_KEY="k") as platform:
        yield platform, service, tmp / "platform.log"


def failures(platform) -> int:
    return platform.stats()["instance_failures"]


def body_of(answer: requests.Response):
    """The service's JSON, whole or as the stream of text the gateway sends for a stream call."""
    return json.loads(answer.content)


# --- `stream` from the query string and from every JSON value ------------------------------------


@pytest.mark.parametrize("method, path, query, body, streamed", [
    ("GET", "/v1/models", "stream=1", None, True),
    ("GET", "/v1/models", "stream=false", None, True),  # a query value is a string: "false" is true
    ("GET", "/v1/models", "stream=", None, False),
    ("GET", "/v1/models", "stream=1&stream=", None, False),  # the last value of a repeated key
    ("GET", "/health", "stream=1", None, True),  # the health cord too (it was the SDK's own handler)
    ("POST", "/v1/echo", "stream=true", {"x": 1}, True),
    ("POST", "/v1/echo", "stream=true", {"x": 1, "stream": False}, False),  # the body's key wins
    ("POST", "/v1/echo", "stream=true", {"x": 1, "stream": None}, False),
    ("POST", "/v1/echo", "", {"stream": 2**62}, True),
    ("POST", "/v1/echo", "", {"stream": 0.0}, False),
    ("POST", "/v1/echo", "", {"stream": "false"}, True),
    ("POST", "/v1/echo", "", {"stream": ""}, False),
    ("POST", "/v1/echo", "", {"stream": [0]}, True),
    ("POST", "/v1/echo", "", {"stream": []}, False),
    ("POST", "/v1/echo", "", {"stream": {"a": None}}, True),
    ("POST", "/v1/echo", "", {"stream": {}}, False),
    ("GET", "/nocontent", "stream=1", None, True),  # an empty answer as a stream: an empty 200
])
def test_stream_from_the_query_or_any_json_value_gives_the_services_answer(stack, method, path, query, body, streamed):
    platform, service, _ = stack
    before = failures(platform)
    url = f"{platform.url}{path}" + (f"?{query}" if query else "")
    answer = requests.request(method, url, json=body, timeout=60)
    assert failures(platform) == before, platform.stats()["last_failure"]
    assert answer.status_code == 200, answer.text[:300]
    content_type = answer.headers["content-type"].split(";")[0]
    assert content_type == ("text/event-stream" if streamed else "application/json") or path == "/nocontent"
    if path == "/v1/echo":
        assert body_of(answer) == {"echo": body}
    elif path == "/v1/models":
        assert body_of(answer) == requests.get(f"{service}/v1/models", timeout=30).json()
    elif path == "/health":
        assert body_of(answer)["status"] == "healthy"
    else:
        assert answer.content == b""


# --- what the platform itself cannot carry --------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"n": 36893488147419103232}', b'{"text": "\\ud800"}'])
def test_a_body_the_gateway_cannot_encode_fails_the_instance_as_on_chutes_and_frees_its_slot(stack, raw):
    """chutes-api util.py:779 writes the body with orjson, which refuses integers beyond 64 bits and
    lone surrogates that Starlette's `request.json()` accepted: inside `invoke`'s `except Exception`,
    an instance failure no chute can prevent (README, "On Chutes"). The local gateway does the same,
    answers the API's 500 and releases the call's slot (it leaked, and every later call was a 429)."""
    platform, _, _ = stack
    before = platform.stats()
    answer = requests.post(f"{platform.url}/v1/echo", data=raw, headers={"Content-Type": "application/json"}, timeout=60)
    after = platform.stats()
    assert answer.status_code == 500 and answer.json() == {"detail": NO_TARGETS}
    assert after["instance_failures"] == before["instance_failures"] + 1
    assert "cannot encode the caller's body" in after["last_failure"]
    assert after["in_flight"] == 0 and after["calls"] == before["calls"]  # never sent
    for stream in ("", "?stream=1"):  # both paths release their slot
        requests.post(f"{platform.url}/v1/echo{stream}", data=raw, headers={"Content-Type": "application/json"}, timeout=60)
        assert platform.stats()["in_flight"] == 0
    assert requests.post(f"{platform.url}/v1/echo", json={"ok": 1}, timeout=60).json() == {"echo": {"ok": 1}}


def test_ping_is_answered_by_the_api_itself(stack):
    """api/main.py:274-281: `/ping` on a chute's host never reaches a cord."""
    platform, _, _ = stack
    calls = platform.stats()["calls"]
    answer = requests.get(f"{platform.url}/ping", timeout=30)
    assert answer.status_code == 200 and answer.json() == {"message": "pong"}
    assert requests.post(f"{platform.url}/ping", json={}, timeout=30).status_code == 405
    assert platform.stats()["calls"] == calls


def test_each_call_is_one_line_in_the_gateways_log(stack):
    platform, _, log = stack

    def model_lines() -> list[str]:
        return [line for line in log.read_text().splitlines() if "GET /v1/models -> " in line]

    before = len(model_lines())  # earlier tests on this stack may have logged such calls already
    requests.get(f"{platform.url}/v1/models?stream=1", timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = model_lines()
        if len(lines) > before:  # this call's line (written when its answer ends)
            break
        time.sleep(0.1)
    assert len(lines) == before + 1, lines
    assert " stream 200 " in lines[-1] and "INSTANCE FAILURE" not in lines[-1], lines


# --- an instance that keeps failing: disabled, then deleted ----------------------------------------

FAILING = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import register_passthrough_routes

    NONE = {"kind": "none"}
    chute = Chute(username="test", name="failing", image="unused")
    register_passthrough_routes(chute, [
        {"path": "/fail", "method": "GET", "target_path": "/v1/status/500", "request": NONE},
        {"path": "/ok", "method": "GET", "target_path": "/v1/models", "request": NONE},
    ], int(os.environ["CHUTE_PORTS"]))
    """
)


def test_seven_failures_in_a_row_disable_the_instance_then_it_is_deleted(tmp_path):
    """chutes-api: failure 7 disables for 90 s (callers get 429), the next failure after that for
    180 s, the next deletes the instance after the cascade check (45 s; callers then get 503); a
    success in between starts over. Here the timings are scaled down (--disable-seconds 1)."""
    directory = copy_module(tmp_path, "deploy_failing", FAILING)
    with demo_service(tmp_path) as service, platform_for("deploy_failing:chute", directory, service, tmp_path,
                                                         gateway_options=("--disable-seconds", "1")) as platform:
        def call(path: str) -> requests.Response:
            return requests.get(f"{platform.url}{path}", timeout=30)

        for _ in range(6):
            assert call("/fail").status_code == 500
        assert call("/ok").status_code == 200  # a success clears the streak
        assert platform.stats()["consecutive_failures"] == 0
        for _ in range(7):
            assert call("/fail").json() == {"detail": NO_TARGETS}
        stats = platform.stats()
        assert stats["disable_count"] == 1 and stats["disabled_until"] > time.time()
        refused = call("/ok")  # disabled: the gateway answers without calling the instance
        assert refused.status_code == 429 and refused.json() == {"detail": OVERLOAD}
        assert platform.stats()["calls"] == stats["calls"]

        time.sleep(max(0.0, stats["disabled_until"] - time.time()) + 0.1)
        assert call("/fail").status_code == 500  # failure 8: disabled again, twice as long
        stats = platform.stats()
        assert stats["disable_count"] == 2 and stats["disabled_until"] - time.time() > 1.2
        time.sleep(max(0.0, stats["disabled_until"] - time.time()) + 0.1)
        assert call("/fail").status_code == 500  # failure 9: a third disable deletes it
        stats = platform.stats()
        assert stats["deleting_at"] is not None and call("/ok").status_code == 429
        time.sleep(max(0.0, stats["deleting_at"] - time.time()) + 0.1)
        gone = call("/ok")
        assert gone.status_code == 503 and gone.json()["detail"].startswith("No instances available (yet) for chute_id=")
        assert platform.stats()["deleted"] is True and NO_INSTANCES.split("{")[0] in gone.json()["detail"]

    log = (tmp_path / "platform.log").read_text()
    disabled = [line for line in log.splitlines() if "INSTANCE DISABLED" in line]
    assert len(disabled) == 3, log[-3000:]
    assert "INSTANCE DISABLED for 1s after 7 consecutive failures: 7x instance answered 502" in disabled[0]
    assert "the service answered 500 to GET /v1/status/500" in disabled[0]
    assert "for 2s after 8 consecutive" in disabled[1] and "then DELETED in 0.5s" in disabled[2]
    assert sum(line.startswith("INSTANCE DELETED: ") for line in log.splitlines()) == 1
