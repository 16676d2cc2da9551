"""Issue 11 "Deliver 3": every rule of the cords' platform contract, called through the local gateway.

The chute is a test module with deploy_example's manifest plus static routes to the demo service's
contract routes (tools/demo_service.py `add_contract_routes`). Each test compares what a caller gets
through the gateway with what the service answers directly, and asserts that the call failed no
instance (the gateway's count), except where the service itself is unreachable.
"""

from __future__ import annotations

import base64
import json
import textwrap

import pytest
import requests

from tests.platform.conftest import copy_module, demo_service, platform_for

pytestmark = pytest.mark.integration

MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import add_health_cord, load_route_manifest, parse_service_ports, register_passthrough_routes

    SERVICE_PORTS = parse_service_ports(os.environ["CHUTE_PORTS"])
    NONE = {"kind": "none"}
    STATIC = [
        {"path": "/v1/inspect", "method": "GET", "request": NONE, "query_params": ["a", "b"]},
        {"path": "/v1/inspect", "method": "DELETE", "request": NONE, "query_params": ["a", "b"]},
        {"path": "/v1/inspect", "method": "POST", "query_params": ["a"]},
        {"path": "/v1/chunked", "method": "GET", "request": NONE, "query_params": ["count"]},
        {"path": "/v1/stream/utf8", "method": "POST", "stream": True, "query_params": ["count"],
         "response": {"kind": "stream", "content_type": "text/event-stream"}},
        {"path": "/v1/stream/bytes", "method": "GET", "stream": True, "request": NONE, "query_params": ["size", "chunk"],
         "response": {"kind": "stream", "content_type": "application/octet-stream"}},
        {"path": "/v1/empty", "method": "GET", "request": NONE, "response": {"kind": "text", "content_type": "text/plain"}},
        {"path": "/v1/typed", "method": "GET", "request": NONE, "response": {"kind": "binary", "content_type": "application/xml"}},
        {"path": "/nocontent", "method": "GET", "target_path": "/v1/status/204", "request": NONE},
        {"path": "/missing", "method": "GET", "target_path": "/v1/status/404", "request": NONE},
        {"path": "/unprocessable", "method": "GET", "target_path": "/v1/status/422", "request": NONE},
    ]
    chute = Chute(username="test", name="contract", image="unused", concurrency=8)
    add_health_cord(chute, SERVICE_PORTS)
    register_passthrough_routes(chute, load_route_manifest(static_routes=STATIC), SERVICE_PORTS[0], catch_all="/proxy",
                                upstream_headers={"X-Service-Key": "key-${CONTRACT_SERVICE_KEY}", "X-Fixed": "yes"})
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    directory = copy_module(tmp, "deploy_contract", MODULE)
    with demo_service(tmp) as service, platform_for("deploy_contract:chute", directory, service, tmp,
                                                    CONTRACT_SERVICE_KEY="from-the-environment") as platform:
        yield platform, service


@pytest.fixture
def no_failure(stack):
    """Call it at the end of a test: asserts that the test's calls failed no instance."""
    platform, _ = stack
    before = platform.stats()["instance_failures"]

    def check() -> None:
        after = platform.stats()
        assert after["instance_failures"] == before, f"the call failed the instance: {after['last_failure']}"

    return check


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=60, **kwargs)


def bare(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip()


# --- every route's parameters arrive ----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_query_string_reaches_a_cord_without_body(stack, no_failure, method):
    platform, _ = stack
    answer = requests.request(method, f"{platform.url}/v1/inspect?a=1&b=two", timeout=60)
    no_failure()
    assert answer.status_code == 200, answer.text
    assert answer.json()["method"] == method
    assert answer.json()["query"] == [["a", "1"], ["b", "two"]]


def test_query_string_reaches_a_post_cord_with_its_body(stack, no_failure):
    platform, _ = stack
    answer = requests.post(f"{platform.url}/v1/inspect?a=1", json={"x": 1}, timeout=60)
    no_failure()
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["query"] == [["a", "1"]]
    assert data["body_bytes"] > 0 and bare(data["content_type"]) == "application/json"


def test_query_object_in_the_body_reaches_the_service(stack, no_failure):
    platform, _ = stack
    answer = requests.post(f"{platform.url}/v1/inspect", json={"_query": {"a": "7"}, "x": 1}, timeout=60)
    no_failure()
    assert answer.status_code == 200, answer.text
    assert ["a", "7"] in answer.json()["query"]


def test_readme_query_calls_give_the_services_answer(stack, no_failure):
    platform, service = stack
    for path in ("/v1/models?limit=2", "/v1/blob?size=65536"):
        direct, through = get(service + path), get(platform.url + path)
        assert through.status_code == 200, (path, through.text)
        assert through.content == direct.content or through.json() == direct.json(), path
    no_failure()
    assert len(get(platform.url + "/v1/models?limit=2").json()["data"]) == 2


# --- no caller mistake and no upstream 4xx is an instance failure ------------------------------


def upstream_error(answer: requests.Response) -> dict:
    """The {"detail", "upstream_status", "upstream_body"} object a 4xx carries.

    Through the real gateway only a miner 400 reaches the caller as a 4xx, and its body becomes
    {"detail": "Invalid request: Invalid request: <the chute's answer text>"} (chutes-api
    api/chute/util.py `_invoke_one` + `invoke`, api/invocation/router.py `_invoke`)."""
    detail = answer.json()["detail"]
    prefix = "Invalid request: Invalid request: "
    assert isinstance(detail, str) and detail.startswith(prefix), detail
    inner = json.loads(detail[len(prefix):])
    return inner.get("detail") if isinstance(inner.get("detail"), dict) else inner


@pytest.mark.parametrize("path,status", [("/missing", 404), ("/unprocessable", 422)])
def test_upstream_4xx_is_a_caller_4xx_not_an_instance_failure(stack, no_failure, path, status):
    platform, _ = stack
    answer = get(platform.url + path)
    no_failure()
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    error = upstream_error(answer)
    assert error["upstream_status"] == status and "detail" in error and "upstream_body" in error


def test_upstream_400_on_a_binary_route_is_a_caller_400(stack, no_failure):
    platform, _ = stack
    answer = requests.post(f"{platform.url}/tts_to_audio", json={"text": ""}, timeout=60)
    no_failure()
    assert answer.status_code == 400, (answer.status_code, answer.headers, answer.content[:200])
    assert upstream_error(answer)["upstream_status"] == 400


def test_catch_all_call_matching_no_template_is_a_caller_4xx(stack, no_failure):
    platform, _ = stack
    answer = requests.post(f"{platform.url}/proxy", json={"method": "GET", "path": "/no/such/route"}, timeout=60)
    no_failure()
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)


def test_catch_all_upstream_404_is_a_caller_4xx(stack, no_failure):
    platform, _ = stack
    answer = requests.post(f"{platform.url}/proxy", json={"method": "GET", "path": "/v1/models/nope"}, timeout=60)
    no_failure()
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    assert upstream_error(answer)["upstream_status"] == 404


# --- streams, binary answers, chunked answers -------------------------------------------------


def test_stream_lines_carry_whole_utf8_text(stack, no_failure):
    platform, service = stack
    direct = requests.post(f"{service}/v1/stream/utf8?count=3", timeout=60)
    through = requests.post(f"{platform.url}/v1/stream/utf8?count=3", json={}, timeout=60)
    no_failure()
    assert through.status_code == 200, through.text
    assert through.content.decode("utf-8") == direct.text
    assert "héllo wörld ✓ 🎉" in through.content.decode("utf-8")


def test_binary_stream_reaches_the_caller_intact(stack, no_failure):
    """The gateway decodes every stream line as UTF-8, so a binary stream travels as base64 text
    (tools/runtime/sdk/call.py `_lines`: pieces cut at multiples of 3 bytes, so the whole answer decodes at once)."""
    platform, service = stack
    path = "/v1/stream/bytes?size=5000&chunk=999"
    direct, through = get(service + path), get(platform.url + path)
    no_failure()
    assert through.status_code == 200, through.text[:300]
    assert bare(through.headers.get("content-type")) == "text/event-stream"  # router.py `_invoke`: any stream
    assert base64.b64decode(through.content, validate=True) == direct.content


@pytest.mark.parametrize("size", [300_000, 3 * 1024 * 1024])
def test_binary_answer_intact_small_and_large(stack, no_failure, size):
    """Above the proxy's SMALL_BODY (1 MiB) the cord streams the service's answer itself."""
    platform, service = stack
    path = f"/v1/blob?size={size}"
    direct, through = get(service + path), get(platform.url + path)
    no_failure()
    assert through.status_code == 200, through.text[:300]
    assert len(through.content) == size and through.content == direct.content
    assert bare(through.headers.get("content-type")) == "application/octet-stream"


def test_chunked_answer_on_a_non_stream_route_is_sent_whole(stack, no_failure):
    platform, service = stack
    direct, through = get(service + "/v1/chunked?count=200"), get(platform.url + "/v1/chunked?count=200")
    no_failure()
    assert through.status_code == 200, through.text[:300]
    assert bare(through.headers.get("content-type")) == "application/json"
    assert through.json() == direct.json() and len(through.json()) == 200


@pytest.mark.parametrize("path,body", [("/v1/echo", {"stream": True, "x": 1}), ("/v1/inspect", {"stream": True})])
def test_stream_true_in_the_body_of_a_json_cord(stack, no_failure, path, body):
    """The gateway reads the answer as a stream when the caller's body says "stream": true."""
    platform, service = stack
    direct = requests.post(service + path, json=body, timeout=60)
    through = requests.post(platform.url + path, json=body, timeout=60)
    no_failure()
    assert through.status_code == 200, through.text[:300]
    through_json, direct_json = json.loads(through.content), direct.json()
    if path == "/v1/inspect":  # the chute adds the module's upstream headers
        through_json.pop("headers"), direct_json.pop("headers")
    assert through_json == direct_json


# --- content type, 204 and empty bodies -------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/typed", "/v1/text", "/v1/models", "/health"])
def test_content_type_is_kept(stack, no_failure, path):
    platform, service = stack
    through, direct = get(platform.url + path), get(service + path)
    no_failure()
    assert through.status_code == 200, through.text[:300]
    assert bare(through.headers.get("content-type")) == bare(direct.headers.get("content-type"))
    if path in ("/v1/typed", "/v1/text"):
        assert through.content == direct.content


def test_204_reaches_the_caller_as_an_empty_success(stack, no_failure):
    platform, _ = stack
    answer = get(platform.url + "/nocontent")
    # the gateway never passes the instance's status on (router.py `_invoke`): 200, empty
    no_failure()
    assert answer.status_code in (200, 204), answer.text[:300]
    assert answer.content == b""


def test_empty_body_reaches_the_caller_empty(stack, no_failure):
    platform, _ = stack
    answer = get(platform.url + "/v1/empty")
    no_failure()
    assert answer.status_code == 200, answer.text[:300]
    assert answer.content == b"" and bare(answer.headers.get("content-type")) == "text/plain"


def test_upstream_headers_reach_the_service_with_values_from_the_chutes_environment(stack, no_failure):
    platform, _ = stack
    seen = get(f"{platform.url}/v1/inspect").json()["headers"]
    assert seen["x-service-key"] == "key-from-the-environment" and seen["x-fixed"] == "yes"
    no_failure()
