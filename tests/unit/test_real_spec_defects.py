"""Discovery on specs as real services write them: common locations, and defects tolerated with a
warning (type aliases, missing responses, $refs to nowhere) instead of a crash or a wrong example."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools.discover_routes import (
    Bounds, Config, Display, Outcome, PortWatch, discover, eager_count, judge_outcomes, summary,
)
from tools.runtime.errors import WrapperError
from tools.discovery.openapi import EAGER_PROBES, PROBE_PATHS, convert_document


def swagger(paths: dict, **extra) -> dict:
    return {"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def test_common_spec_locations_are_probed_most_common_first():
    for path in ("/spec.json", "/apispec_1.json", "/v1/openapi.json", "/api/openapi.json", "/openapi.yaml",
                 "/swagger/v1/swagger.json", "/api-docs", "/v2/api-docs", "/v3/api-docs"):
        assert path in PROBE_PATHS
    assert PROBE_PATHS[:2] == ("/openapi.json", "/swagger.json")
    # flasgger's default is polled before the service answers, the rare ones only after
    assert PROBE_PATHS.index("/apispec_1.json") < EAGER_PROBES <= PROBE_PATHS.index("/api/openapi.json")
    assert len(set(PROBE_PATHS)) == len(PROBE_PATHS)
    assert eager_count(("/v1/__api__",) + PROBE_PATHS) == EAGER_PROBES + 1


def test_type_int_parameters_get_numbers_not_the_word_example_and_a_warning():
    doc = swagger({
        "/status/{codes}": {"get": {"parameters": [{"name": "codes", "in": "path", "type": "int", "required": True}],
                                    "responses": {"200": {"description": "ok"}}}},
        "/delay": {"get": {"parameters": [{"name": "seconds", "in": "query", "type": "Integer", "required": True},
                                          {"name": "ratio", "in": "query", "type": "float", "required": True}],
                           "responses": {"200": {"description": "ok"}}}},
    })
    conversion = convert_document(doc, 1, "t")
    routes = {r.path: r for r in conversion.routes}
    assert routes["/status/{codes}"].example == {"_path": {"codes": 1}}
    assert routes["/delay"].example == {"seconds": 0, "ratio": 0.0}
    text = "\n".join(conversion.warnings)
    assert "type 'int' is not a JSON Schema type (at /paths/~1status~1{codes}/get/parameters/0)" in text
    assert "type 'int'" in text and "read as 'integer'" in text
    assert "type 'float'" in text and "'number'" in text
    assert "type 'Integer'" in text


def test_an_example_holding_a_type_key_is_data_and_left_alone():
    doc = swagger({"/r": {"post": {"parameters": [{"name": "b", "in": "body", "schema": {
        "type": "object", "example": {"type": "int", "n": 1}}}], "responses": {"200": {"description": "ok"}}}}})
    conversion = convert_document(doc, 1, "t")
    assert conversion.routes[0].example == {"type": "int", "n": 1}
    assert conversion.warnings == []


def test_operations_without_responses_convert_as_json_with_one_warning():
    doc = swagger({"/a": {"post": {}}, "/b": {"get": {"responses": None}}, "/c": {"get": {"responses": {}}}})
    conversion = convert_document(doc, 1, "t")
    assert {r.path: r.response_kind for r in conversion.routes} == {"/a": "json", "/b": "json", "/c": "json"}
    no_responses = [w for w in conversion.warnings if "declare no responses" in w]
    assert no_responses == ["POST /a and 1 more declare no responses; their answers are taken as JSON"]


def test_refs_to_nowhere_are_empty_schemas_with_a_warning():
    doc = {"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": {
        "/items/{item_id}": {"get": {"parameters": [{"$ref": "#/components/parameters/Missing"},
                                                    {"name": "item_id", "in": "path", "required": True,
                                                     "schema": {"$ref": "#/components/schemas/Nope"}}],
                                     "responses": {"200": {"$ref": "#/components/responses/Gone"}}}},
        "/make": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/x/y"}}}},
                           "responses": {"200": {"description": "ok"}}}},
    }}
    conversion = convert_document(doc, 1, "t")
    routes = {r.path: r for r in conversion.routes}
    assert routes["/items/{item_id}"].example == {"_path": {"item_id": 1}}  # id-like, typeless: a number
    assert routes["/make"].request_kind == "json" and routes["/make"].example == {}
    text = "\n".join(conversion.warnings)
    for ref in ("#/components/parameters/Missing", "#/components/schemas/Nope", "#/components/responses/Gone", "#/x/y"):
        assert f"$ref '{ref}' points to nothing" in text


def test_a_post_without_declared_body_is_undeclared_and_a_get_is_none():
    doc = swagger({"/v1/chat/completions": {"post": {"responses": {"200": {"description": "ok"}}}},
                   "/items": {"get": {"responses": {"200": {"description": "ok"}}},
                              "put": {"parameters": [{"name": "force", "in": "query", "type": "boolean", "required": True}],
                                      "responses": {"200": {"description": "ok"}}}}})
    routes = {(r.method, r.path): r for r in convert_document(doc, 1, "t").routes}
    assert routes[("POST", "/v1/chat/completions")].request_kind == "undeclared"
    assert routes[("GET", "/items")].request_kind == "none"
    assert routes[("PUT", "/items")].request_kind == "undeclared"
    assert routes[("PUT", "/items")].example == {"force": False}


def test_no_spec_error_names_the_paths_tried_and_probe_path():
    with pytest.raises(WrapperError) as info:
        judge_outcomes({8020: Outcome("no_spec", "answers HTTP")}, "http://127.0.0.1:8020", [], ("/mine", "/openapi.json"))
    assert "tried /mine, /openapi.json" in str(info.value)
    assert "--probe-path" in info.value.hint


def test_a_spec_on_a_rarer_path_waits_for_the_more_common_ones_to_answer():
    from tools.discover_routes import Answer

    paths = ["/openapi.json", "/swagger.json"]
    watch = PortWatch(1, "http://x:1", paths, 0.0)
    watch.answers["/swagger.json"] = Answer("spec", "HTTP 200", {"swagger": "2.0"})
    assert watch.evaluate(0.1, Bounds(10, 10, 1)) is None
    watch.answers["/openapi.json"] = Answer("spec", "HTTP 200", {"openapi": "3.0.0"})
    assert watch.evaluate(0.2, Bounds(10, 10, 1)).url.endswith("/openapi.json")


class _Server:
    """A service that serves its spec at one path only and counts the probes it sees before it is up."""

    def __init__(self, spec_path: str, body: bytes):
        hits: list[str] = []
        self.hits = hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                if self.path == spec_path:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_discovery_finds_flasggers_spec_json_and_prints_its_defects(tmp_path):
    import json

    doc = swagger({"/status/{codes}": {"get": {"parameters": [{"name": "codes", "in": "path", "type": "int"}]}},
                   "/anything": {"post": {"responses": {"200": {"description": "ok"}}}}})
    with _Server("/spec.json", json.dumps(doc).encode()) as server:
        out = tmp_path / "m.json"
        result = discover(Config(base_url=f"http://127.0.0.1:{server.port}", output=str(out), no_spec_grace=0.5),
                          Display(live=False))
    assert result.outcomes[server.port].url.endswith("/spec.json")
    routes = {r.path: r for r in result.manifest.routes}
    assert routes["/status/{codes}"].example == {"_path": {"codes": 1}}
    assert routes["/anything"].request_kind == "undeclared"
    text = summary(result)
    assert f"warning: port {server.port}: type 'int'" in text
    assert "declare no responses" in text
    assert json.loads(out.read_text())["version"] == 3


def test_discovery_with_no_spec_anywhere_says_probe_path(tmp_path):
    with _Server("/elsewhere.json", b"{}") as server:
        with pytest.raises(WrapperError) as info:
            discover(Config(base_url=f"http://127.0.0.1:{server.port}", output=str(tmp_path / "m.json"),
                            no_spec_grace=0.3), Display(live=False))
    assert "/spec.json" in str(info.value) and "--probe-path" in info.value.hint


def test_rare_locations_are_probed_only_once_the_port_answers(monkeypatch):
    import tools.discover_routes as discovery
    from tools.discover_routes import Answer, Prober

    seen: list[str] = []
    up = threading.Event()

    def fake_probe(url, timeout=5.0):
        seen.append(url.split(":1", 1)[1])
        return Answer("absent", "HTTP 404") if up.is_set() else Answer("no_answer", "connection refused")

    monkeypatch.setattr(discovery, "probe", fake_probe)
    watch = PortWatch(1, "http://h:1", list(PROBE_PATHS), 0.0)
    prober = Prober([watch], interval=0.01)
    prober.start()
    try:
        deadline = time.monotonic() + 5
        while len(seen) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(seen) == set(PROBE_PATHS[:EAGER_PROBES])  # while it starts: the common few only
        up.set()
        while set(seen) != set(PROBE_PATHS) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(seen) == set(PROBE_PATHS)  # once it answers: every location
    finally:
        prober.stop()
