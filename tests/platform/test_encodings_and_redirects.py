"""What the gateway cannot carry (issue 18, item 3): a service's `Content-Encoding` and `Location`.

The gateway keeps only an answer's media type (chutes-api cd60d64, api/invocation/router.py:744-776),
so a gzip body would reach callers as unreadable bytes and a redirect as an empty 200. The cord
decodes compressed answers and follows redirects that stay on the service; anything it cannot do is a
clear 400 (never an instance failure). A misbehaving service (tests/support/bad_upstream.py) behind
the chute, on the platform's path (node and local gateway) and in the SDK's dev mode alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
import threading

import pytest
import requests

from tests.conftest import free_port, stop_process
from tests.platform.conftest import platform_for
from tests.support import bad_upstream

pytestmark = pytest.mark.integration

MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import register_passthrough_routes

    SERVICE_PORTS = [int(os.environ["CHUTE_PORTS"])]
    NONE = {"kind": "none"}
    CODINGS = ["gzip", "gzip-members", "deflate", "deflate-raw", "br", "zstd", "gzip-br", "compress", "gzip-broken"]
    ROUTES = [{"path": f"/encoded/{c}", "method": "GET", "request": NONE, "query_params": ["chunked"]} for c in CODINGS]
    ROUTES += [
        {"path": "/redirect", "method": "GET", "request": NONE, "query_params": ["to", "status"]},
        {"path": "/redirect", "method": "POST", "request": {"kind": "undeclared"}, "query_params": ["to", "status"]},
        {"path": "/redirect-loop", "method": "GET", "request": NONE},
    ]
    chute = Chute(username="test", name="codings", image="unused")
    register_passthrough_routes(chute, ROUTES, SERVICE_PORTS[0])
    """
)


@contextlib.contextmanager
def dev_chute(directory, port: int):
    """`chutes run --dev` as `deploy.sh --run --dev --no-service` starts it."""
    from tools.platform.stack import RunConfig, start_stack

    saved = dict(os.environ)
    os.environ.update(CHUTE_PORTS=str(port))
    try:
        config = RunConfig(str(directory / "deploy_codings.py"), port=free_port(), logging_port=free_port(),
                           no_service=True, quiet=True, dev=True, timeout=90)
        with start_stack(config, threading.Event()) as stack:
            yield stack.base_url, None
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module", params=["gateway", "dev"])
def chute(request, tmp_path_factory):
    """(base URL, the platform or None in dev mode, the bad upstream's URL)."""
    tmp = tmp_path_factory.mktemp(f"codings-{request.param}")
    (tmp / "deploy_codings.py").write_text(MODULE)
    upstream, port = bad_upstream.start()
    try:
        if request.param == "gateway":
            with platform_for("deploy_codings:chute", tmp, f"http://127.0.0.1:{port}", tmp) as platform:
                yield platform.url, platform, f"http://127.0.0.1:{port}"
        else:
            with dev_chute(tmp, port) as (url, _):
                yield url, None, f"http://127.0.0.1:{port}"
    finally:
        stop_process(upstream)


@pytest.fixture
def no_failure(chute):
    _, platform, _ = chute
    before = platform.stats()["instance_failures"] if platform else 0

    def check() -> None:
        if platform:
            after = platform.stats()
            assert after["instance_failures"] == before, after["last_failure"]

    return check


def caller_error(answer: requests.Response, platform) -> dict:
    """The chute's 400 body: as it is in dev mode, inside the gateway's detail on the platform."""
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    body = answer.json()
    if platform is None:
        return body
    prefix = "Invalid request: Invalid request: "
    assert body["detail"].startswith(prefix), body
    return json.loads(body["detail"][len(prefix):])


# --- compressed answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "gzip-members", "deflate", "deflate-raw", "br", "zstd", "gzip-br"])
@pytest.mark.parametrize("chunked", ["", "?chunked=1"])
def test_a_compressed_answer_reaches_the_caller_decoded(chute, no_failure, coding, chunked):
    url, _, _ = chute
    if coding in ("br", "gzip-br"):
        pytest.importorskip("brotli")
    if coding == "zstd":
        pytest.importorskip("backports.zstd")
    answer = requests.get(f"{url}/encoded/{coding}{chunked}", headers={"Accept-Encoding": "identity"}, timeout=60)
    no_failure()
    assert answer.status_code == 200, answer.text[:300]
    assert "content-encoding" not in answer.headers
    assert answer.headers["content-type"].split(";")[0] == "application/json"
    assert json.loads(answer.content) == bad_upstream.ENCODED_JSON


def test_a_coding_the_chute_cannot_decode_is_a_400_naming_it(chute, no_failure):
    url, platform, _ = chute
    answer = requests.get(f"{url}/encoded/compress", timeout=60)
    no_failure()
    error = caller_error(answer, platform)
    assert "Content-Encoding compress, which this chute cannot decode" in error["detail"]
    assert error["upstream_status"] == 200


def test_a_compressed_body_that_does_not_decode_is_the_services_failure(chute):
    url, platform, _ = chute
    answer = requests.get(f"{url}/encoded/gzip-broken", timeout=60)
    if platform is None:
        assert answer.status_code == 502 and "gzip body that does not decode" in answer.json()["detail"]
    else:  # a malformed answer of the service: an instance failure, as the README's error table says
        assert answer.status_code == 500
        assert "gzip body that does not decode" in platform.stats()["last_failure"]


def test_the_service_is_asked_for_no_compression(chute, no_failure):
    """The pool sends `Accept-Encoding: identity`, so services that honour it never compress."""
    url, _, _ = chute
    answer = requests.get(f"{url}/redirect?status=302&to=/json", headers={"Accept-Encoding": "gzip"}, timeout=60)
    no_failure()
    assert answer.status_code == 200 and json.loads(answer.content)["accept_encoding"] == "identity"


# --- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, to", [("302", "/json"), ("301", "/json?x=1"), ("308", "json"),
                                        ("302", "ABSOLUTE/json")])
def test_a_redirect_to_the_service_itself_is_followed(chute, no_failure, status, to):
    url, _, upstream = chute
    to = to.replace("ABSOLUTE", upstream)
    answer = requests.get(f"{url}/redirect", params={"status": status, "to": to}, timeout=60)
    no_failure()
    assert answer.status_code == 200, answer.text[:300]
    echo = json.loads(answer.content)
    assert echo["path"] == "/json" and echo["method"] == "GET"


@pytest.mark.parametrize("status, method, sent", [("307", "POST", True), ("308", "POST", True),
                                                  ("303", "GET", False), ("302", "GET", False), ("301", "GET", False)])
def test_a_redirected_post_keeps_or_drops_its_method_and_body_as_rfc_9110_says(chute, no_failure, status, method, sent):
    url, _, _ = chute
    answer = requests.post(f"{url}/redirect?status={status}&to=/json", json={"text": "keep me"}, timeout=60)
    no_failure()
    assert answer.status_code == 200, answer.text[:300]
    echo = json.loads(answer.content)
    assert echo["method"] == method and (echo["bytes"] > 0) is sent


@pytest.mark.parametrize("to", ["https://example.com/elsewhere", "http://127.0.0.1:9/other-port", "//example.com/x"])
def test_a_redirect_elsewhere_is_a_400_naming_the_location(chute, no_failure, to):
    url, platform, _ = chute
    answer = requests.get(f"{url}/redirect", params={"status": "302", "to": to}, timeout=60)
    no_failure()
    error = caller_error(answer, platform)
    assert error["location"] == to and error["upstream_status"] == 302
    assert f"redirected GET /redirect to {to}, which is not this service" in error["detail"]


def test_a_redirect_loop_is_a_400_after_five_hops(chute, no_failure):
    url, platform, _ = chute
    answer = requests.get(f"{url}/redirect-loop", timeout=60)
    no_failure()
    assert "more than 5 times" in caller_error(answer, platform)["detail"]
