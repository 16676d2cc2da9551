"""Issue 18, done when: random caller input through the local gateway and the node never fails the
instance unless the service itself failed, and the answer is the service's.

Hypothesis draws what a caller can send to a deployed chute: a method, a public path (ours, and ones
no cord serves), a query string with or without `stream` (repeated keys, blank values), and a body:
none, not JSON, JSON that is no object, or an object holding JSON values of every type, with or
without a `stream` key of any type, up to a few MiB. After each call the gateway's count of instance
failures must not have moved, no call slot may be left taken, and the answer must be the service's
(in whole or as the stream the gateway makes of it, as the gateway's own `stream` rule says).

What the platform itself cannot carry (chutes-api cd60d64, api/chute/util.py:779: orjson refuses an
integer beyond 64 bits and a lone surrogate, and writes NaN/Infinity as null, so `"stream": NaN` is
true to the gateway and false to every node) may fail the instance; README, "On Chutes", says so.
The demo service never fails on these routes, so any other failure is the chute's.
"""

from __future__ import annotations

import hashlib
import json
import math
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.platform.conftest import copy_module, demo_service, platform_for
from tests.platform.test_contract import MODULE as CONTRACT_MODULE

pytestmark = pytest.mark.integration

BODY_METHODS = ("POST", "PUT", "PATCH")
STREAM_CORDS = {"/v1/stream"}  # cords that always stream (the gateway sets stream = True for them)
PATHS = ["/v1/inspect", "/v1/echo", "/v1/models", "/health", "/v1/text", "/v1/blob", "/v1/chunked",
         "/v1/typed", "/nocontent", "/v1/empty", "/missing", "/unprocessable", "/proxy", "/v1/stream", "/nope",
         "/ping"]
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("properties")
    directory = copy_module(tmp, "deploy_contract", CONTRACT_MODULE)
    with demo_service(tmp) as service, platform_for("deploy_contract:chute", directory, service, tmp,
                                                    CONTRACT_SERVICE_KEY="k") as platform:
        yield platform.url  # only the URL: Hypothesis prints its arguments, and the platform holds a key


def stats_of(url: str) -> dict:
    return requests.get(f"{url}/_gateway/stats", timeout=30).json()


# --- what a caller can send -----------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX)
           | st.integers().map(lambda n: n * 2**64 + 5)  # beyond 64 bits
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["", "0", "false", "true", "\ud800", "héllo ✓ 🎉"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
KEYS = st.text(max_size=8).filter(lambda key: key not in ("_query", "a", "stream"))
QUERY_KEYS = st.sampled_from(["stream", "stream", "limit", "size", "count", "x"]) | st.text(max_size=6)
QUERY_VALUES = st.sampled_from(["", "0", "1", "false", "true", "2", "65536", "1500000", "a+b c&d=e"]) | st.text(max_size=10)
SIZES = st.sampled_from([0, 0, 0, 100, 70_000, 1 << 20, 3 << 20])  # a large string in the body, now and then


@st.composite
def bodies(draw):
    """(raw bytes to send or None, the decoded JSON or a marker)."""
    kind = draw(st.sampled_from(["object"] * 8 + ["none", "not-json", "list", "scalar"]))
    if kind == "none":
        return None, None
    if kind == "not-json":
        return b"{not json", "not-json"
    if kind in ("list", "scalar"):
        value = draw(st.lists(JSON_VALUES, max_size=3) if kind == "list" else SCALARS)
        return json.dumps(value).encode(), value
    body = draw(st.dictionaries(KEYS, JSON_VALUES, max_size=4))
    if draw(st.booleans()):
        body["stream"] = draw(JSON_VALUES)
    size = draw(SIZES)
    if size:
        body["blob"] = "x" * size
    return json.dumps(body).encode(), body  # NaN and Infinity as JSON's non-standard words, as Python writes them


CALLS = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "POST", "GET"]),
    st.sampled_from(PATHS),
    st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=3),
    bodies(),
)


# --- what the gateway and the platform make of it -------------------------------------------------


def walk(value):
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def platform_cannot_carry(body) -> bool:
    """What orjson cannot write (util.py:779), or a `stream` it writes as null although it is true."""
    for item in walk(body):
        if isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            return True
        if isinstance(item, str) and any(0xD800 <= ord(ch) <= 0xDFFF for ch in item):
            return True
    stream = body.get("stream") if isinstance(body, dict) else None
    return isinstance(stream, float) and not math.isfinite(stream)


def as_sent(value):
    """The body as the node receives it: orjson writes NaN and Infinity as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: as_sent(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_sent(item) for item in value]
    return value


def gateway_params(pairs) -> dict:
    """`request.query_params._dict`: the last value of a repeated key (router.py:459)."""
    params: dict = {}
    for key, value in pairs:
        params[key] = value
    return params


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(call=CALLS)
def test_random_caller_input_never_fails_the_instance_and_gets_the_services_answer(stack, call):
    method, path, pairs, (raw, body) = call
    before = stats_of(stack)
    url = f"{stack}{path}" + (f"?{urlencode(pairs)}" if pairs else "")
    headers = {"Content-Type": "application/json"} if raw is not None else {}
    answer = requests.request(method, url, data=raw, headers=headers, timeout=120)
    after = stats_of(stack)
    sent_body = body if method in BODY_METHODS else {}
    reaches_a_cord = answer.status_code not in (404, 405) and path not in ("/nope", "/ping")
    platform_may_fail = reaches_a_cord and isinstance(sent_body, dict) and platform_cannot_carry(sent_body)
    context = (method, url[:200], raw[:200] if raw else raw, answer.status_code, answer.content[:300], after["last_failure"])

    assert after["in_flight"] == 0, context
    if platform_may_fail:
        assert after["instance_failures"] - before["instance_failures"] <= 1, context
        # a success clears the streak, so such calls never add up to a disabled instance here
        assert requests.get(f"{stack}/v1/models", timeout=30).status_code == 200
        return
    assert after["instance_failures"] == before["instance_failures"], context

    # The gateway's own answers to what is no call of a cord
    if path == "/ping":  # answered by the API before anything else (api/main.py:274-281)
        assert answer.status_code == (200 if method == "GET" else 405), context
        return
    if method in BODY_METHODS and (raw is None or body == "not-json"):
        assert answer.status_code == 400 and "invalid request JSON payload" in answer.json()["detail"], context
        return
    if not isinstance(sent_body, dict):
        assert answer.status_code == 500, context  # router.py:460 `.get` on a list: AttributeError
        return
    if method == "HEAD":  # no cord serves HEAD (the HTTP server answers it); the answer has no body
        assert answer.status_code == 404, context
        return
    if answer.status_code == 404 and answer.content == b'{"detail":"No matching cord found!"}':
        return
    assert answer.status_code in (200, 400), context  # a 400 is the service's 4xx or the caller's mistake

    if answer.status_code != 200:
        return
    params = gateway_params(pairs)
    streamed = bool(sent_body.get("stream", params.get("stream", False))) or path in STREAM_CORDS
    media = answer.headers.get("content-type", "").split(";")[0]
    assert (media == "text/event-stream") is streamed or path == "/v1/stream", context
    if path == "/v1/echo":
        assert json.loads(answer.content) == {"echo": as_sent(sent_body)}, context
    elif path == "/v1/inspect":
        seen = json.loads(answer.content)
        assert seen["method"] == method, context
        assert [tuple(pair) for pair in seen["query"]] == list(params.items()), context
        if method in BODY_METHODS:
            assert seen["body_sha256"] == hashlib.sha256(json.dumps(as_sent(sent_body)).encode()).hexdigest(), context
