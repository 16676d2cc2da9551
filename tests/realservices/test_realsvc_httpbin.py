"""httpbin (psf, PyPI) on Flask, documented by flasgger: its Swagger 2.0 spec sits at `/spec.json`
and says `type: int`. Discovered, wrapped, smoke-tested and compared call by call with the chute."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json

import pytest

from tests.realservices.conftest import assert_same_answer, discover, media, write_module
from tools.runtime.routes import read_manifest_file
from tools import deploy_module
from tools.cord_table import cords_of
from tools.commands.smoke import Limits, calls_for, run_calls, summary_line, table

pytestmark = pytest.mark.realservices

OVERRIDES = {
    "POST /post": {"file_fields": {"upload": "text/plain"}},
    # /status/{codes} answers the status it is given: the made-up `1` would be httpbin's own 500
    **{f"{method} /status/{{codes}}": {"example": {"_path": {"codes": 200}}}
       for method in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    # flasgger documents /redirect-to's `url` for GET only: without it the redirect leads nowhere (the
    # cord follows redirects on the service, keeping the method: DELETE to /delete, PATCH to /patch)
    "DELETE /redirect-to": {"example": {"url": "/delete"}},
    "PATCH /redirect-to": {"example": {"_query": {"url": "/patch"}}},
}
# httpbin's /bearer wants a token the callers cannot send on Chutes: the module adds it from the
# chute's environment (a Chutes secret there).
UPSTREAM_HEADERS = {"Authorization": "Bearer ${HTTPBIN_TOKEN}"}
TOKEN = "realsvc-token-9f3a"


@pytest.fixture(scope="module")
def httpbin(realsvc_python, start_service):
    return start_service("httpbin", [str(realsvc_python), "-m", "httpbin.core", "--host", "127.0.0.1", "--port", "{port}"],
                         ready_path="/get")


@pytest.fixture(scope="module")
def wrapped(httpbin, realsvc_python, tmp_path_factory, chute_runner):
    """(discovery's stderr, the module's path, the chute runner) for httpbin."""
    directory = tmp_path_factory.mktemp("httpbin-module")
    proc = discover(httpbin, directory / "deploy_httpbin.routes.json")
    assert proc.returncode == 0, proc.stderr
    module = write_module(directory, "httpbin", httpbin.port,
                          [str(realsvc_python), "-m", "httpbin.core", "--port", str(httpbin.port)], OVERRIDES,
                          UPSTREAM_HEADERS)
    return proc.stderr, module, chute_runner(module, env={"HTTPBIN_TOKEN": TOKEN})


def test_discovery_finds_flasggers_spec_json_and_reads_type_int(wrapped):
    stderr, module, _ = wrapped
    assert "spec at /spec.json" in stderr
    assert "warning: port" in stderr and "type 'int' is not a JSON Schema type" in stderr
    routes = {(r.method, r.path): r for r in read_manifest_file(module.with_name("deploy_httpbin.routes.json")).routes}
    # `type: int` path parameters get numbers, never the word "example"
    assert routes[("GET", "/bytes/{n}")].example["_path"] == {"n": 1}
    assert routes[("GET", "/delay/{delay}")].example["_path"] == {"delay": 1}
    # httpbin declares no body for its POSTs: the caller's keys go in a JSON body, not the query string
    assert routes[("POST", "/anything")].request_kind == "undeclared"
    assert routes[("POST", "/post")].request_kind == "undeclared"
    assert routes[("GET", "/image/png")].response_kind == "binary"


def test_smoke_finishes_with_every_outcome_counted(wrapped):
    _, module, runner = wrapped
    loaded = deploy_module.load(module, keep=False)
    calls = calls_for(runner.base_url, cords_of(loaded.chute), loaded.get("CHUTE_ROUTE_OVERRIDES"))
    results = asyncio.run(run_calls(calls, Limits(call_timeout=20)))
    print(table(results))
    print(summary_line(results))
    by_label = {r.call.label: r for r in results}
    assert len(results) == len(calls) > 40
    for label in ("/get", "/uuid", "/anything", "/post", "/image/png", "/xml", "/html", "/json",
                  "GET /stream/{n}", "GET /bytes/{n}", "GET /base64/{value}"):
        assert by_label[label].ok, (label, by_label[label].status, by_label[label].problem)
    assert [r.call.label for r in results if r.outcome in ("failed", "timeout")] == [], summary_line(results)
    # what httpbin refuses is refused for its made-up input (a user `string` without a password, ...)
    assert all(r.call.made_up for r in results if r.outcome == "untried")
    assert by_label["GET /status/{codes}"].outcome == "ok"  # the module's example


def echo(body: dict) -> dict:
    """What httpbin echoes that does not depend on who called (headers and origin do)."""
    return {key: body.get(key) for key in ("args", "data", "files", "form", "json", "method")}


def test_a_post_without_declared_body_sends_the_callers_json_as_a_json_body(httpbin, wrapped):
    runner = wrapped[2]
    body = {"model": "m", "file_base64": base64.b64encode(b"abc").decode(), "n": 2}
    direct = httpbin.call("POST", "/anything", body)
    through = runner.cord("POST", "/anything", body)
    assert_same_answer(direct, through, echo)
    assert through.json()["json"] == body and through.json()["args"] == {}


def test_an_empty_object_is_sent_as_an_empty_json_body(httpbin, wrapped):
    runner = wrapped[2]
    direct = httpbin.call("POST", "/anything", {})
    through = runner.cord("POST", "/anything", {})
    assert_same_answer(direct, through, echo)
    assert through.json()["json"] == {} and through.json()["data"] == "{}"


def test_override_file_fields_make_an_undeclared_route_a_multipart_upload(httpbin, wrapped):
    runner = wrapped[2]
    direct = __import__("requests").post(httpbin.url + "/post", files={"upload": ("upload.txt", b"hello file", "text/plain")},
                                         data={"lang": "en"}, timeout=30)
    through = runner.cord("POST", "/post", {"upload_base64": base64.b64encode(b"hello file").decode(), "lang": "en"})
    assert_same_answer(direct, through, echo)
    assert through.json()["files"] == {"upload": "hello file"} and through.json()["form"] == {"lang": "en"}


def test_a_route_that_picks_its_format_by_accept_gets_its_declared_type(httpbin, wrapped):
    """Callers on Chutes send no headers; httpbin's /image answers 406 to `*/*`: the cord asks for the
    type the spec declares first."""
    runner = wrapped[2]
    direct = httpbin.call("GET", "/image", headers={"Accept": "image/webp"})
    through = runner.cord("GET", "/image")
    assert_same_answer(direct, through, body="bytes")
    assert media(through) == "image/webp"


@pytest.mark.parametrize("path", ["/image/png", "/image/jpeg", "/xml", "/html", "/deny", "/encoding/utf8"])
def test_binary_and_text_answers_are_byte_exact(httpbin, wrapped, path):
    runner = wrapped[2]
    direct = httpbin.call("GET", path)
    through = runner.cord("GET", path)
    assert_same_answer(direct, through, body="bytes")


def test_upstream_headers_come_from_the_chutes_environment_and_stay_out_of_its_log(httpbin, wrapped):
    runner = wrapped[2]
    direct = httpbin.call("GET", "/bearer", headers={"Authorization": f"Bearer {TOKEN}"})
    through = runner.cord("GET", "/bearer")
    assert_same_answer(direct, through)
    assert through.json() == {"authenticated": True, "token": TOKEN}
    assert TOKEN not in runner.log.read_text(errors="replace") and TOKEN not in wrapped[1].read_text()


def test_json_route_with_query_string_on_the_cord_url(httpbin, wrapped):
    runner = wrapped[2]
    direct = httpbin.call("GET", "/get", query={"a": "1", "b": "two"})
    through = runner.cord("GET", "/get", query={"a": "1", "b": "two"})
    assert_same_answer(direct, through, lambda body: body["args"])


@pytest.mark.parametrize("path,compare", [
    ("/base64/SFRUUEJJTiBpcyBhd2Vzb21l", "bytes"),
    ("/bytes/64", "length"),
    ("/stream-bytes/300", "length"),
    ("/status/418", "bytes"),
    ("/anything/some-thing", "json"),
])
def test_routes_with_path_parameters_through_the_catch_all(httpbin, wrapped, path, compare):
    runner = wrapped[2]
    direct = httpbin.call("GET", path)
    through = runner.templated("GET", path)
    assert_same_answer(direct, through, echo, body=compare)


def test_json_lines_stream_through_the_catch_all(httpbin, wrapped):
    """A chunked answer without a length on a cord that is not a stream cord. Fails through the
    gateway (500 "No infrastructure available"): the chute streams it, the gateway expects one body."""
    runner = wrapped[2]
    direct = httpbin.call("GET", "/stream/3")
    through = runner.templated("GET", "/stream/3")
    lines = lambda r: [json.loads(line)["id"] for line in r.text.splitlines() if line.strip()]  # noqa: E731
    assert through.status_code == 200 and media(through) == media(direct), (through.status_code, through.text[:300])
    assert lines(through) == lines(direct) == [0, 1, 2]


def test_a_server_error_is_passed_on_as_the_service_said_it(httpbin, wrapped):
    runner = wrapped[2]
    direct = httpbin.call("GET", "/status/500")
    through = runner.templated("GET", "/status/500")
    assert_same_answer(direct, through, body="bytes")


# --- what the gateway cannot carry (issue 18): Content-Encoding, Location, the service's headers ------


@pytest.mark.parametrize("path, flag", [("/gzip", "gzipped"), ("/deflate", "deflated"), ("/brotli", "brotli")])
def test_a_compressed_answer_arrives_decoded_or_as_a_400_naming_its_coding(httpbin, wrapped, path, flag):
    """httpbin compresses these whatever the request asks; the gateway keeps no Content-Encoding, so
    the chute decodes (br only where its Python has a brotli module)."""
    runner = wrapped[2]
    through = runner.cord("GET", path)
    if path == "/brotli" and importlib.util.find_spec("brotli") is None and importlib.util.find_spec("brotlicffi") is None:
        assert through.status_code == 400 and "Content-Encoding br" in through.text, through.text[:300]
        return
    assert through.status_code == 200, (through.status_code, through.content[:200])
    assert "content-encoding" not in through.headers and media(through) == "application/json"
    assert through.json()[flag] is True and through.json()["method"] == "GET"


@pytest.mark.parametrize("path", ["/redirect/3", "/relative-redirect/2", "/absolute-redirect/2"])
def test_a_redirect_on_the_service_is_followed(httpbin, wrapped, path):
    runner = wrapped[2]
    direct = httpbin.call("GET", path)  # requests follows redirects too
    through = runner.templated("GET", path)
    assert direct.url.endswith("/get") and through.status_code == 200, (through.status_code, through.text[:300])
    assert through.json()["url"].endswith("/get") and through.json()["args"] == direct.json()["args"] == {}


def test_a_redirect_elsewhere_or_too_many_is_a_400_naming_it_never_an_empty_200(httpbin, wrapped):
    runner = wrapped[2]
    away = runner.cord("GET", "/redirect-to", query={"url": "https://example.com/x", "status_code": "307"})
    assert away.status_code == 400 and "https://example.com/x" in away.text, away.text[:300]
    loop = runner.templated("GET", "/redirect/8")
    assert loop.status_code == 400 and "more than 5 times" in loop.text, loop.text[:300]


def test_the_services_own_headers_reach_callers_only_off_chutes(httpbin, wrapped):
    """README, "On Chutes": only the media type survives the gateway. The body still says it all."""
    runner = wrapped[2]
    through = runner.cord("GET", "/response-headers", query={"X-Custom": "kept-in-the-body"})
    assert through.status_code == 200 and through.json()["X-Custom"] == "kept-in-the-body"
    if through.runner == "gateway":
        assert "x-custom" not in through.headers
    else:
        assert through.headers["x-custom"] == "kept-in-the-body"


def test_the_chutes_api_document_is_valid_openapi_with_every_cord(wrapped):
    """The chute's API document (as the local gateway serves it), read by a real validator."""
    from tests.realservices.conftest import chute_document

    module, runner = wrapped[-2], wrapped[-1]
    document = chute_document(module, runner)
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert ("POST", "/proxy") in operations and ("GET", "/health") in operations and len(operations) > 5
