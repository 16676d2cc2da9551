"""Faults through real proxy cords (issue 14, items 1-5): a misbehaving service
(tests/support/bad_upstream.py) behind the real chute, called over a raw socket so that every header
line, repeats included, and the exact end of the HTTP message can be seen.

What the caller must get:
  1. a header value from the caller (`content_type`, `<field>_filename`, `<field>_content_type`, a data
     URL's media type) with CR, LF or NUL: 400 JSON {"detail"} naming the field;
  2. one Date and one Server header; repeated headers kept repeated; headers named in the service's
     Connection field, and Proxy-Connection, dropped (RFC 9110 §7.6.1);
  3. a malformed answer (bad, negative or conflicting Content-Length, not HTTP, a 64 KiB header,
     300 headers): 502 JSON whose detail names the call (`GET /path`);
  4. a stream the service breaks off: the HTTP response does not end cleanly (no final chunk, or
     fewer bytes than its Content-Length, or a reset); on an SSE answer the last thing sent is
     tools.runtime.cords.request.SSE_ERROR_EVENT;
  5. headers on time but a body slower than the route's timeout: 504 JSON "within <timeout>s".
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port, stop_process
from tests.support import bad_upstream
from tools.runtime.cords.answer import SSE_ERROR_EVENT

pytestmark = pytest.mark.integration

ROUTE_TIMEOUT = 1  # seconds, the override of GET /slow-body

# The SSE error event a proxy cord sends before ending a broken-off event stream abnormally, as
# tools/runtime/cords/answer.py defines it: event: error\ndata: {"detail": "<what happened>"}\n\n
SSE_ERROR_PREFIX, SSE_ERROR_SUFFIX = (part.encode() for part in SSE_ERROR_EVENT.split("{}"))

MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import add_health_cord, load_route_manifest, parse_service_ports, register_passthrough_routes

    SERVICE_PORTS = parse_service_ports(os.environ["BAD_UPSTREAM_PORT"])
    KILL_PORT = int(os.environ["KILL_UPSTREAM_PORT"])
    NONE = {"kind": "none"}
    SSE = {"kind": "stream", "content_type": "text/event-stream"}
    GETS = ["/json", "/no-content", "/date-server", "/repeated", "/hop", "/length-abc", "/length-negative",
            "/length-twice", "/not-http", "/huge-header", "/many-headers", "/short-body", "/long-cut",
            "/stream-cut", "/slow-body"]
    CHUTE_STATIC_ROUTES = [{"path": path, "method": "GET", "target_path": path, "request": NONE} for path in GETS] + [
        {"path": "/sse-cut", "method": "GET", "target_path": "/sse-cut", "request": NONE, "stream": True, "response": SSE},
        {"path": "/sse-kill", "method": "GET", "target_path": "/sse-kill", "request": NONE, "stream": True,
         "response": SSE, "port": KILL_PORT},
        {"path": "/upload", "method": "POST", "target_path": "/json",
         "request": {"kind": "multipart", "file_fields": ["file"]}},
        {"path": "/raw", "method": "POST", "target_path": "/json",
         "request": {"kind": "raw", "content_type": "application/octet-stream"}},
    ]
    # every route is a proxy cord (tools/runtime/cords/), the answer path under test
    CHUTE_ROUTE_OVERRIDES = {"GET /slow-body": {"timeout": %d}}

    chute = Chute(username="test", name="faults", image="unused")
    add_health_cord(chute, SERVICE_PORTS)
    register_passthrough_routes(chute, load_route_manifest(static_routes=CHUTE_STATIC_ROUTES), SERVICE_PORTS[0],
                                overrides=CHUTE_ROUTE_OVERRIDES)
    """
) % ROUTE_TIMEOUT


# --------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: headers exactly as sent, and whether the message ended as its framing says


@dataclass
class RawAnswer:
    status: int
    headers: list[tuple[str, str]]  # names lowercased, in order, repeats kept
    body: bytes  # de-chunked
    complete: bool  # the final chunk arrived, or all Content-Length bytes; False after a cut or reset

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def one(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, f"{name}: {values}"
        return values[0]

    def json(self):
        return json.loads(self.body)

    def error(self, status: int) -> str:
        """The detail of a JSON error answer with this status."""
        assert self.status == status, (self.status, self.headers, self.body[:500])
        assert self.one("content-type").startswith("application/json"), self.headers
        assert self.complete
        detail = self.json()["detail"]
        assert isinstance(detail, str) and detail
        return detail


def raw_call(base_url: str, method: str, path: str, payload=None, timeout: float = 60) -> RawAnswer:
    url = urlsplit(base_url)
    body = b"" if payload is None else json.dumps(payload).encode()
    request = (f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    data, reset = b"", False
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(request)
        while True:
            try:
                piece = sock.recv(1 << 16)
            except ConnectionResetError:
                reset = True
                break
            if not piece:
                break
            data += piece
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no HTTP answer at all: {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
    answer = RawAnswer(status, headers, rest, complete=not reset)
    if any(v.lower() == "chunked" for v in answer.all("transfer-encoding")):
        answer.body, ended = dechunk(rest)
        answer.complete = answer.complete and ended
    elif answer.all("content-length"):
        lengths = set(answer.all("content-length"))
        length = int(lengths.pop()) if len(lengths) == 1 and answer.all("content-length")[0].isdigit() else -1
        answer.complete = answer.complete and len(rest) == length
    return answer


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body of a chunked message, and whether its final zero-length chunk arrived."""
    out = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out, True
        if len(data) < size + 2:
            return out + data[:size], False
        out, data = out + data[:size], data[size + 2:]


# --------------------------------------------------------------------------------------------------
# The stack


@pytest.fixture(scope="module")
def run_chute():
    """Start a deploy module's chute in front of a running service; returns its base URL. The SDK's
    dev mode, started by the library as `deploy.sh --run --dev --no-service` does
    (tools.platform.stack.start_stack), like tests/integration/test_proxy_cords.py; the platform's call path
    (node and gateway) replaces this one fixture."""
    import threading

    from tools.platform.stack import RunConfig, start_stack

    stacks = contextlib.ExitStack()
    saved = dict(os.environ)

    def start(directory: Path, module: str, env: dict[str, str]) -> str:
        os.environ.update(env)  # the module reads its ports at import, here and in the chute
        config = RunConfig(str(directory / f"{module}.py"), port=free_port(), logging_port=free_port(),
                           no_service=True, quiet=True, dev=True, timeout=90)
        return stacks.enter_context(start_stack(config, threading.Event())).base_url

    try:
        yield start
    finally:
        stacks.close()
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Faults:
    chute: str  # the chute's base URL
    upstream: str  # the bad upstream's, to compare with
    kill_port: int  # where GET /sse-kill goes: a bad upstream started per test by `dying_upstream`

    def call(self, method: str, path: str, payload=None) -> RawAnswer:
        return raw_call(self.chute, method, path, payload)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, run_chute):
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "deploy_faults.py").write_text(MODULE)
    upstream, port = bad_upstream.start()
    kill_port = free_port()
    try:
        chute = run_chute(tmp, "deploy_faults", {"BAD_UPSTREAM_PORT": str(port), "KILL_UPSTREAM_PORT": str(kill_port)})
        yield Faults(chute, f"http://127.0.0.1:{port}", kill_port)
    finally:
        stop_process(upstream)


@pytest.fixture
def dying_upstream(faults):
    """A bad upstream on the kill port, for one call that kills it."""
    proc, _ = bad_upstream.start(faults.kill_port)
    yield proc
    stop_process(proc)


# --------------------------------------------------------------------------------------------------
# The bad upstream itself (so a failure below is the proxy's, not the test service's)


def test_the_bad_upstream_misbehaves_as_described(faults):
    direct = raw_call(faults.upstream, "GET", "/repeated")
    assert direct.all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"] and direct.all("x-multi") == ["one", "two"]
    assert raw_call(faults.upstream, "GET", "/length-abc").one("content-length") == "abc"
    cut = raw_call(faults.upstream, "GET", "/sse-cut")
    assert cut.status == 200 and not cut.complete and cut.body == b"".join(bad_upstream.SSE_EVENTS)
    assert raw_call(faults.upstream, "GET", "/json").complete


# --------------------------------------------------------------------------------------------------
# Well-behaved answers still pass


def test_json_and_204_pass_through(faults):
    answer = faults.call("GET", "/json")
    assert answer.status == 200 and answer.complete and answer.json()["ok"] is True
    empty = faults.call("GET", "/no-content")
    assert empty.status == 204 and empty.body == b"" and empty.complete


# --------------------------------------------------------------------------------------------------
# 1. Header values from the caller

WAV = b"RIFF" + b"\0" * 40
WAV_B64 = base64.b64encode(WAV).decode()


def test_clean_header_values_from_the_caller_pass(faults):
    upload = faults.call("POST", "/upload", {"file_base64": WAV_B64, "file_filename": "clip.wav",
                                             "file_content_type": "audio/wav"})
    assert upload.status == 200 and upload.json()["content_type"].startswith("multipart/form-data")
    raw = faults.call("POST", "/raw", {"body_base64": WAV_B64, "content_type": "audio/wav"})
    assert raw.status == 200 and raw.json()["content_type"] == "audio/wav" and raw.json()["bytes"] == len(WAV)


@pytest.mark.parametrize("bad", ["\r\nX-Injected: 1", "\n", "\r", "\0"], ids=["crlf", "lf", "cr", "nul"])
@pytest.mark.parametrize(
    "route, field, payload",
    [
        ("/upload", "file_filename", lambda bad: {"file_base64": WAV_B64, "file_filename": f"clip{bad}.wav"}),
        ("/upload", "file_content_type", lambda bad: {"file_base64": WAV_B64, "file_content_type": f"audio/wav{bad}"}),
        ("/upload", "file", lambda bad: {"file": f"data:audio/wav{bad};base64,{WAV_B64}"}),
        ("/raw", "content_type", lambda bad: {"body_base64": WAV_B64, "content_type": f"audio/wav{bad}"}),
        ("/raw", "body_base64", lambda bad: {"body_base64": f"data:audio/wav{bad};base64,{WAV_B64}"}),
    ],
    ids=["filename", "file-content-type", "data-url-type", "raw-content-type", "raw-data-url-type"],
)
def test_header_value_with_a_control_character_is_a_400_naming_the_field(faults, route, field, payload, bad):
    detail = faults.call("POST", route, payload(bad)).error(400)
    assert field in detail


# --------------------------------------------------------------------------------------------------
# 2. Answer headers


def test_one_date_and_one_server_header(faults):
    for path in ("/date-server", "/json"):
        answer = faults.call("GET", path)
        assert answer.status == 200
        assert len(answer.all("date")) == 1, (path, answer.all("date"))
        assert len(answer.all("server")) == 1, (path, answer.all("server"))


def test_repeated_headers_stay_repeated(faults):
    answer = faults.call("GET", "/repeated")
    assert answer.status == 200
    assert answer.all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert answer.all("x-multi") == ["one", "two"]


def test_headers_named_in_connection_and_proxy_connection_are_dropped(faults):
    answer = faults.call("GET", "/hop")
    assert answer.status == 200 and answer.json()["ok"] is True
    assert answer.all("x-end-to-end") == ["passes"]
    assert answer.all("x-hop") == []
    assert answer.all("proxy-connection") == []
    assert all("x-hop" not in value.lower() for value in answer.all("connection"))


# --------------------------------------------------------------------------------------------------
# 3. Malformed answers


@pytest.mark.parametrize(
    "path",
    ["/length-abc", "/length-negative", "/length-twice", "/not-http", "/huge-header", "/many-headers", "/short-body"],
)
def test_malformed_answer_is_a_502_saying_what_the_service_did(faults, path):
    detail = faults.call("GET", path).error(502)
    assert f"GET {path}" in detail


# --------------------------------------------------------------------------------------------------
# 4. Streams broken off


def assert_sse_broken_off(answer: RawAnswer) -> None:
    assert answer.status == 200
    assert answer.one("content-type").startswith("text/event-stream")
    assert not answer.complete, "a broken-off stream must not end like a complete answer"
    events = b"".join(bad_upstream.SSE_EVENTS)
    assert answer.body.startswith(events), answer.body[:500]
    last = answer.body[len(events):]
    assert last.startswith(SSE_ERROR_PREFIX) and last.endswith(SSE_ERROR_SUFFIX), f"no final error event: {last!r}"
    detail = json.loads(last[len(SSE_ERROR_PREFIX):-len(SSE_ERROR_SUFFIX)])["detail"]
    assert isinstance(detail, str) and detail


def test_sse_cut_after_two_events_ends_abnormally_after_an_error_event(faults):
    assert_sse_broken_off(faults.call("GET", "/sse-cut"))


def test_sse_of_a_service_killed_mid_stream_ends_abnormally_after_an_error_event(faults, dying_upstream):
    answer = faults.call("GET", "/sse-kill")
    assert dying_upstream.wait(10) == -9  # the service really died mid-stream
    assert_sse_broken_off(answer)


@pytest.mark.parametrize("path", ["/stream-cut", "/long-cut"])
def test_a_binary_stream_cut_short_ends_abnormally(faults, path):
    answer = faults.call("GET", path)
    assert answer.status == 200
    assert not answer.complete, "a broken-off stream must not end like a complete answer"
    if path == "/stream-cut":
        assert answer.body == b"".join(bad_upstream.SSE_EVENTS)  # what came is passed on, unchanged
    else:
        assert 0 < len(answer.body) <= bad_upstream.CUT_SENT


# --------------------------------------------------------------------------------------------------
# 5. A slow body


def test_body_slower_than_the_route_timeout_is_a_504(faults):
    assert faults.call("GET", "/slow-body?seconds=0").json() == {"late": True}
    detail = faults.call("GET", f"/slow-body?seconds={ROUTE_TIMEOUT + 3}").error(504)
    assert f"within {ROUTE_TIMEOUT}s" in detail
