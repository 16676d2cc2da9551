"""OpenAPI/Swagger documents -> manifest routes: kinds, parameters, prefixes, $refs, examples, skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tools.discovery.openapi import SpecError, convert_document, decode_document, example_of, Resolver
from tools.runtime.routes import is_valid_cord_path, parse_manifest, Manifest

ROOT = Path(__file__).resolve().parents[2]


def kinds(route) -> dict:
    data = route.to_json() if hasattr(route, "to_json") else route
    return {
        "request": data["request"],
        "response": data["response"],
        "stream": data["stream"],
        "query_params": data["query_params"],
        "path_params": data["path_params"],
    }


def by_key(routes):
    return {(r.method, r.path): r for r in routes}


def oas(paths: dict, **extra) -> dict:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def swagger(paths: dict, **extra) -> dict:
    return {"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


# --------------------------------------------------------------------------------------------------
# The demo service's own document (built in-process from its app) against the hand-written manifest


def test_demo_document_gives_the_kinds_of_the_hand_written_manifest():
    from tools.demo_service import create_app

    doc = create_app().openapi()
    conversion = convert_document(json.loads(json.dumps(doc)), 8020, "demo")
    expected = json.loads((ROOT / "deploy_example.routes.json").read_text())
    found = by_key(conversion.routes)
    for entry in expected["routes"]:
        route = found[(entry["method"], entry["path"])]
        assert kinds(route) == kinds(entry), entry["path"]
        assert route.port == 8020
    assert [(s["method"], s["path"]) for s in conversion.skipped] == [
        (s["method"], s["path"]) for s in expected["skipped"]
    ]
    assert found[("POST", "/tts_to_audio/")].public_path == "/tts_to_audio"
    assert found[("POST", "/tts_to_audio/")].target_path == "/tts_to_audio/"
    assert found[("POST", "/tts_to_audio/")].example == {"text": "Hello from chutes-wrappers", "language": "en"}
    assert found[("GET", "/v1/models/{model_id}")].public_path is None


def test_converted_manifest_reads_back_through_the_manifest_parser():
    from tools.demo_service import create_app

    conversion = convert_document(create_app().openapi(), 8020, "demo")
    data = json.loads(json.dumps(Manifest(conversion.routes, conversion.skipped).to_json()))
    again = parse_manifest(data, "roundtrip")
    assert [r.to_json() for r in again.routes] == [r.to_json() for r in conversion.routes]


# --------------------------------------------------------------------------------------------------
# Request kinds


def test_multipart_route_records_its_file_fields_including_arrays_and_optional_files():
    doc = oas({
        "/upload": {"post": {"requestBody": {"content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "audio": {"type": "string", "format": "binary"},
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "maybe": {"anyOf": [{"type": "string", "format": "binary"}, {"type": "null"}]},
                "model": {"type": "string"},
            },
        }}}}, "responses": {"200": {"description": "ok"}}}},
    })
    route = convert_document(doc, 1, "t").routes[0]
    assert route.request_kind == "multipart"
    assert route.file_fields == ("audio", "images", "maybe")


def test_multipart_encoding_content_type_marks_a_file_part():
    doc = oas({"/u": {"post": {"requestBody": {"content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": {"doc": {"type": "string"}, "meta": {"type": "object"}}},
        "encoding": {"doc": {"contentType": "application/pdf"}, "meta": {"contentType": "application/json"}},
    }}}, "responses": {}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert route.file_fields == ("doc",)


def test_urlencoded_form_is_form_and_may_carry_files():
    doc = oas({"/f": {"post": {"requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": {"q": {"type": "string"}, "blob": {"type": "string", "format": "binary"}},
    }}}}, "responses": {}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert (route.request_kind, route.file_fields) == ("form", ("blob",))


def test_json_wins_when_a_route_accepts_json_or_a_form():
    doc = oas({"/x": {"post": {"requestBody": {"content": {
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        "application/json; charset=utf-8": {"schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}},
    }}, "responses": {}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert route.request_kind == "json"
    assert route.example == {"a": 0}


def test_raw_request_bodies_are_raw_routes_with_their_media_type():
    doc = oas({
        "/raw": {"put": {"requestBody": {"content": {"application/octet-stream": {}}}, "responses": {}}},
        "/speech": {"post": {"requestBody": {"content": {"audio/*": {}, "audio/wav": {}}}, "responses": {}}},
        "/any": {"post": {"requestBody": {"content": {"*/*;q=0.5": {}, "image/*": {}}}, "responses": {}}},
    })
    routes = {r.path: r for r in convert_document(doc, 1, "t").routes}
    assert (routes["/raw"].request_kind, routes["/raw"].request_content_type) == ("raw", "application/octet-stream")
    assert routes["/speech"].request_content_type == "audio/wav"  # the concrete type, not the wildcard
    # "*/*" is JSON-compatible: JSON wins over a raw image
    assert routes["/any"].request_kind == "json"
    swagger = {"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {"/up": {"post": {
        "consumes": ["audio/wav"], "parameters": [{"name": "b", "in": "body", "schema": {"type": "string", "format": "binary"}}],
        "responses": {"200": {"description": "ok"}}}}}}
    route = convert_document(swagger, 1, "t").routes[0]
    assert (route.request_kind, route.request_content_type) == ("raw", "audio/wav")
    back = parse_manifest(Manifest(routes=[route]).to_json(), "m")
    assert back.routes[0].request_content_type == "audio/wav" and back.routes[0].request_kind == "raw"


def test_route_without_body_is_none():
    route = convert_document(oas({"/h": {"get": {"responses": {}}}}), 1, "t").routes[0]
    assert route.request_kind == "none" and route.example is None


# --------------------------------------------------------------------------------------------------
# Response kinds


@pytest.mark.parametrize(
    "content, kind, ctype",
    [
        ({"application/json": {}}, "json", "application/json"),
        ({"application/problem+json": {}}, "json", "application/problem+json"),
        ({"text/event-stream": {}}, "stream", "text/event-stream"),
        ({"application/x-ndjson": {}}, "stream", "application/x-ndjson"),
        ({"text/plain; charset=utf-8": {}}, "text", "text/plain"),
        ({"image/png": {}}, "binary", "image/png"),
        ({"application/json": {}, "audio/mpeg": {}}, "binary", "audio/mpeg"),
        ({"application/json": {}, "text/plain": {}}, "json", "application/json"),
        ({"*/*": {}}, "json", "application/json"),
    ],
)
def test_response_kind_follows_the_success_media_type(content, kind, ctype):
    doc = oas({"/r": {"get": {"responses": {"200": {"description": "ok", "content": content}}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert (route.response_kind, route.content_type, route.stream) == (kind, ctype, kind == "stream")


def test_lowest_success_code_is_used_and_error_responses_are_ignored():
    doc = oas({"/r": {"post": {"responses": {
        "422": {"description": "bad", "content": {"application/json": {}}},
        "201": {"description": "made", "content": {"image/webp": {}}},
        "202": {"description": "later", "content": {"application/json": {}}},
    }}}})
    assert convert_document(doc, 1, "t").routes[0].content_type == "image/webp"


def test_response_without_content_is_json_without_a_type():
    route = convert_document(oas({"/r": {"delete": {"responses": {"204": {"description": "gone"}}}}}), 1, "t").routes[0]
    assert (route.response_kind, route.content_type) == ("json", None)


def test_declared_response_headers_are_recorded_and_the_manifest_reads_with_or_without_them():
    """Callers on Chutes get only an answer's media type: discovery records the headers a spec says an
    answer carries, so --validate can warn (what the gateway keeps, a decoded coding or a followed
    redirect loses nothing)."""
    shared = {"X-Request-Id": {"schema": {"type": "string"}}}
    doc = oas({"/file": {"get": {"responses": {
        "200": {"description": "a file", "content": {"application/pdf": {}},
                "headers": {"Content-Disposition": {"schema": {"type": "string"}}, "Content-Type": {},
                            "x-request-id": {"$ref": "#/components/headers/X-Request-Id"}}},
        "302": {"description": "moved", "headers": {"Location": {}, "Set-Cookie": {}}},
        "404": {"description": "none", "headers": {"X-Error-Code": {}}},
    }}}, "/plain": {"get": {"responses": {"200": {"description": "ok"}}}}}, components={"headers": shared})
    routes = by_key(convert_document(doc, 1, "t").routes)
    assert routes[("GET", "/file")].response_headers == ("Content-Disposition", "x-request-id", "Set-Cookie")
    assert routes[("GET", "/plain")].response_headers == ()
    swagger_doc = swagger({"/s": {"get": {"responses": {"200": {"description": "ok", "headers": {"ETag": {"type": "string"}}}}}}})
    assert convert_document(swagger_doc, 1, "t").routes[0].response_headers == ("ETag",)
    manifest = Manifest(routes=list(routes.values()))
    written = manifest.to_json()
    assert written["routes"][0]["response"]["headers"] == ["Content-Disposition", "x-request-id", "Set-Cookie"]
    assert "headers" not in written["routes"][1]["response"]  # nothing written when there is nothing to say
    assert parse_manifest(written, "m").routes[0].response_headers == routes[("GET", "/file")].response_headers
    older = {"version": 3, "routes": [{"path": "/file", "method": "GET", "response": {"kind": "binary"}}]}
    assert parse_manifest(older, "m").routes[0].response_headers == ()


# --------------------------------------------------------------------------------------------------
# Parameters, prefixes, skips


def test_query_and_path_parameters_merge_path_level_and_operation_level():
    doc = oas({"/items/{item_id}": {
        "parameters": [{"name": "item_id", "in": "path", "required": True}, {"name": "lang", "in": "query"}],
        "get": {"parameters": [{"$ref": "#/components/parameters/Limit"}, {"name": "X-Key", "in": "header"}],
                "responses": {}},
    }}, components={"parameters": {"Limit": {"name": "limit", "in": "query"}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert route.path_params == ("item_id",)
    assert route.query_params == ("lang", "limit")
    assert route.public_path is None


@pytest.mark.parametrize(
    "servers, expected",
    [
        ([{"url": "/api/v1/"}], "/api/v1/run"),
        ([{"url": "https://example.com/base"}], "/base/run"),
        ([{"url": "http://{host}:8000/{ver}", "variables": {"host": {"default": "x"}, "ver": {"default": "v2"}}}], "/v2/run"),
        ([{"url": "/"}], "/run"),
        ([{"url": "."}], "/run"),
        ([], "/run"),
    ],
)
def test_servers_prefix_becomes_part_of_the_upstream_path(servers, expected):
    route = convert_document(oas({"/run": {"post": {"responses": {}}}}, servers=servers), 1, "t").routes[0]
    assert route.target_path == expected
    assert is_valid_cord_path(route.public_path)


def test_head_options_root_static_and_ui_routes_are_skipped_with_reasons():
    doc = oas({
        "/": {"get": {"responses": {}}},
        "/run": {"head": {"responses": {}}, "options": {"responses": {}}, "post": {"responses": {}}},
        "/static/{file}": {"get": {"responses": {}}},
        "/favicon.ico": {"get": {"responses": {}}},
        "/gradio_api/info": {"get": {"responses": {}}},
        "/__health": {"get": {"responses": {}}},
    })
    conversion = convert_document(doc, 7, "t")
    assert [(r.method, r.path) for r in conversion.routes] == [("POST", "/run")]
    reasons = {(s["method"], s["path"]): s["reason"] for s in conversion.skipped}
    assert "root path" in reasons[("GET", "/")]
    assert "HEAD" in reasons[("HEAD", "/run")] and "OPTIONS" in reasons[("OPTIONS", "/run")]
    assert "web UI" in reasons[("GET", "/static/{file}")]
    assert "static file" in reasons[("GET", "/favicon.ico")]
    assert "gradio_api" in reasons[("GET", "/gradio_api/info")]
    assert "/__" in reasons[("GET", "/__health")]
    assert all(s["port"] == 7 for s in conversion.skipped)


def test_awkward_paths_get_valid_public_paths_and_keep_their_upstream_target():
    doc = oas({"/Predict": {"post": {"responses": {}}}, "/v1/models:predict": {"post": {"responses": {}}}})
    routes = convert_document(doc, 1, "t").routes
    assert [(r.target_path, r.public_path) for r in routes] == [
        ("/Predict", "/predict"), ("/v1/models:predict", "/v1/models_predict")
    ]


# --------------------------------------------------------------------------------------------------
# $ref and cycles


def test_refs_are_followed_for_request_bodies_responses_and_schemas():
    doc = oas(
        {"/tts": {"post": {
            "requestBody": {"$ref": "#/components/requestBodies/Tts"},
            "responses": {"200": {"$ref": "#/components/responses/Audio"}},
        }}},
        components={
            "requestBodies": {"Tts": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Tts"}}}}},
            "responses": {"Audio": {"description": "wav", "content": {"audio/wav": {}}}},
            "schemas": {"Tts": {"type": "object", "required": ["text", "voice"], "properties": {
                "text": {"type": "string"}, "voice": {"$ref": "#/components/schemas/Voice"},
                "speed": {"type": "number", "default": 1.0}, "note": {"type": "string"},
            }}, "Voice": {"type": "string", "enum": ["alice", "bob"]}},
        },
    )
    route = convert_document(doc, 1, "t").routes[0]
    assert (route.request_kind, route.response_kind, route.content_type) == ("json", "binary", "audio/wav")
    assert route.example == {"text": "Hello from chutes-wrappers", "voice": "alice", "speed": 1.0}


def test_ref_cycles_do_not_loop():
    doc = oas(
        {"/tree": {"post": {
            "requestBody": {"content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/Node"}},
                                        "application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}},
            "responses": {"200": {"$ref": "#/components/responses/Loop"}},
        }}},
        components={
            "schemas": {
                "Node": {"type": "object", "required": ["name", "children", "self"], "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                    "self": {"$ref": "#/components/schemas/Node"},
                }},
                "A": {"$ref": "#/components/schemas/B"},
                "B": {"$ref": "#/components/schemas/A"},
            },
            "responses": {"Loop": {"$ref": "#/components/responses/Loop"}},
        },
    )
    route = convert_document(doc, 1, "t").routes[0]
    assert route.request_kind == "json"
    assert route.example["name"] == "string"
    json.dumps(route.example)
    resolver = Resolver(doc)
    assert example_of(resolver, {"$ref": "#/components/schemas/A"}) is None
    assert example_of(resolver, {"$ref": "#/components/schemas/A"}, top=True) == {}


def test_external_and_missing_refs_resolve_to_nothing():
    doc = oas({"/x": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "other.yaml#/S"}}}},
                              "responses": {"200": {"$ref": "#/components/responses/Nope"}}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert route.example == {} and route.response_kind == "json"


# --------------------------------------------------------------------------------------------------
# Examples


@pytest.mark.parametrize(
    "schema, expected",
    [
        ({"type": "string", "example": "ex"}, "ex"),
        ({"type": "integer", "default": 4}, 4),
        ({"type": "string", "enum": ["a", "b"]}, "a"),
        ({"type": "integer", "minimum": 3, "maximum": 9}, 3),
        ({"type": "integer", "minimum": 3, "exclusiveMinimum": True}, 4),
        ({"type": "number", "exclusiveMinimum": 0.5}, 1.5),
        ({"type": "integer", "maximum": -2}, -2),
        ({"type": "boolean"}, False),
        ({"type": ["null", "string"]}, "string"),
        ({"type": "string", "format": "date-time"}, "2024-01-01T00:00:00Z"),
        ({"type": "string", "minLength": 8}, "stringxx"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [0, 0]),
        ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"type": "object", "properties": {"b": {"const": "x"}}}]}, {"a": 0, "b": "x"}),
        ({"oneOf": [{"type": "null"}, {"type": "number"}]}, 0.0),
        ({"examples": [{"k": 1}]}, {"k": 1}),
    ],
)
def test_example_values_come_from_the_schema(schema, expected):
    assert example_of(Resolver({}), schema) == expected


def test_media_type_example_wins_over_the_schema():
    doc = oas({"/e": {"post": {"requestBody": {"content": {"application/json": {
        "schema": {"type": "object"},
        "examples": {"first": {"value": {"prompt": "hi"}}},
    }}}, "responses": {}}}})
    assert convert_document(doc, 1, "t").routes[0].example == {"prompt": "hi"}


# --------------------------------------------------------------------------------------------------
# Swagger 2.0


def test_swagger_2_body_form_files_produces_and_base_path():
    doc = swagger(
        {
            "/synth": {"post": {"parameters": [{"in": "body", "name": "b", "schema": {"$ref": "#/definitions/S"}}],
                                "produces": ["audio/wav"], "responses": {"200": {"description": "wav", "schema": {"type": "file"}}}}},
            "/upload": {"post": {"consumes": ["multipart/form-data"], "parameters": [
                {"in": "formData", "name": "file", "type": "file"}, {"in": "formData", "name": "lang", "type": "string"}],
                "responses": {"200": {"description": "ok", "schema": {"type": "object"}}}}},
            "/login-form": {"post": {"consumes": ["application/x-www-form-urlencoded"], "parameters": [
                {"in": "formData", "name": "avatar", "type": "file"}], "responses": {}}},
            "/search": {"get": {"parameters": [{"in": "query", "name": "q", "type": "string"}],
                                "produces": ["text/plain"], "responses": {"200": {"description": "t"}}}},
            "/events": {"get": {"produces": ["text/event-stream"], "responses": {"200": {"description": "s"}}}},
        },
        basePath="/api/",
        produces=["application/json"],
        definitions={"S": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}},
    )
    conversion = convert_document(doc, 5000, "t")
    assert conversion.version == "swagger 2.0"
    routes = by_key(conversion.routes)
    synth = routes[("POST", "/api/synth")]
    assert (synth.request_kind, synth.response_kind, synth.content_type) == ("json", "binary", "audio/wav")
    assert synth.example == {"text": "Hello from chutes-wrappers"}
    upload = routes[("POST", "/api/upload")]
    assert (upload.request_kind, upload.file_fields, upload.response_kind) == ("multipart", ("file",), "json")
    form = routes[("POST", "/api/login-form")]
    assert (form.request_kind, form.file_fields) == ("form", ("avatar",))
    search = routes[("GET", "/api/search")]
    assert (search.response_kind, search.content_type, search.query_params) == ("text", "text/plain", ("q",))
    assert routes[("GET", "/api/events")].response_kind == "stream"


# --------------------------------------------------------------------------------------------------
# Decoding


def test_yaml_document_is_read():
    doc = oas({"/run": {"post": {"responses": {"200": {"description": "ok"}}}}})
    text = yaml.safe_dump(doc)
    assert decode_document(text, "x", "application/yaml") == doc
    assert decode_document(text.encode(), "x", None) == doc


def test_yaml_integer_response_codes_are_understood():
    text = "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /img:\n    get:\n      responses:\n        200:\n          description: ok\n          content:\n            image/png: {}\n"
    route = convert_document(decode_document(text, "x"), 1, "x").routes[0]
    assert route.response_kind == "binary"


@pytest.mark.parametrize(
    "body, ctype, message",
    [
        ('{"openapi": "3.0.0", "paths": {', "application/json", "invalid JSON at line 1"),
        ("openapi: 3.0.0\npaths: [unclosed\n", "application/yaml", "invalid YAML"),
        ("openapi: 3.0.0\n  bad: indent\n: x\n", "text/plain", "invalid YAML"),
        ('{"openapi": "3.0.0", "info": {}, "paths": {}}', "application/json", "has no paths"),
        ('{"openapi": "3.0.0", "info": {}}', "application/json", "has no paths"),
        ('{"swagger": "1.2", "paths": {"/a": {}}}', "application/json", "not an OpenAPI 3 or Swagger 2.0"),
    ],
)
def test_broken_documents_are_one_line_errors(body, ctype, message):
    with pytest.raises(SpecError) as info:
        decode_document(body, "http://svc/openapi.json", ctype)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("http://svc/openapi.json")


@pytest.mark.parametrize(
    "body, ctype",
    [
        ("<!doctype html><html>SPA</html>", "text/html"),
        ('{"detail": "Not Found"}', "application/json"),
        ("Not Found", "text/plain"),
        ("", "application/json"),
        ("[1, 2]", "application/json"),
    ],
)
def test_bodies_that_are_not_specs_are_not_errors(body, ctype):
    assert decode_document(body, "x", ctype) is None


def test_examples_carry_form_fields_parameters_and_never_an_empty_body():
    """What --smoke sends comes from these: a discovered manifest must make callable requests."""
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/transcribe": {"post": {"requestBody": {"content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file", "model"],
                "properties": {"file": {"type": "string", "format": "binary"},
                               "model": {"type": "string", "examples": ["whisper-1"]},
                               "note": {"type": "string"}}}}}},
                "responses": {"200": {"description": "ok"}}}},
            "/models/{model_id}": {"get": {
                "parameters": [{"name": "model_id", "in": "path", "required": True,
                                "schema": {"type": "string", "example": "m-1"}},
                               {"name": "verbose", "in": "query", "schema": {"type": "boolean", "default": False}},
                               {"name": "unused", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok"}}}},
            "/items/{item_id}": {"post": {
                "parameters": [{"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 7}},
                               {"name": "dry", "in": "query", "required": True, "schema": {"type": "boolean"}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "a": {"type": "integer"}}, "required": ["a"]}}}},
                "responses": {"200": {"description": "ok"}}}},
            "/echo": {"post": {"requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": True}}}}, "responses": {"200": {"description": "ok"}}}},
            "/closed": {"post": {"requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False}}}}, "responses": {"200": {"description": "ok"}}}},
        },
    }
    routes = {r.path: r for r in convert_document(doc, 1, "t").routes}
    assert routes["/transcribe"].example == {"model": "whisper-1"}  # the file field comes from --smoke's sample
    assert routes["/models/{model_id}"].example == {"verbose": False, "_path": {"model_id": "m-1"}}
    item = routes["/items/{item_id}"].example
    assert item["_path"]["item_id"] >= 7 and isinstance(item["_path"]["item_id"], int)
    assert item["_query"] == {"dry": True} or item["_query"] == {"dry": False}
    assert isinstance(item["a"], int)
    # the SDK's passthrough sends no body at all for `{}`: a free-form object gets one entry
    assert routes["/echo"].example == {"key": "value"}
    assert routes["/closed"].example == {}


def test_swagger_form_examples_skip_file_parameters():
    doc = {
        "swagger": "2.0", "info": {"title": "t", "version": "1"},
        "paths": {"/up": {"post": {"consumes": ["multipart/form-data"], "parameters": [
            {"name": "audio", "in": "formData", "type": "file", "required": True},
            {"name": "lang", "in": "formData", "type": "string", "required": True, "enum": ["en", "de"]},
            {"name": "extra", "in": "formData", "type": "string"}],
            "responses": {"200": {"description": "ok"}}}}},
    }
    route = convert_document(doc, 1, "t").routes[0]
    assert route.request_kind == "multipart" and route.file_fields == ("audio",)
    assert route.example == {"lang": "en"}


def test_parameter_examples_maps_and_lists_are_read():
    doc = oas({"/m/{a}/{b}": {"get": {"parameters": [
        {"name": "a", "in": "path", "required": True, "schema": {"type": "string"},
         "examples": {"first": {"value": "from-map"}, "second": {"value": "other"}}},
        {"name": "b", "in": "path", "required": True, "schema": {"type": "string"}, "examples": ["from-list"]},
    ], "responses": {}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert route.example == {"_path": {"a": "from-map", "b": "from-list"}}


def test_an_upload_declared_as_a_url_in_a_multipart_body_is_a_file_and_multipart_wins_over_json():
    """drf-spectacular (COMPONENT_SPLIT_REQUEST off) declares a FileField as `format: uri`, and with DRF's
    default parsers offers JSON, a form and multipart for one serializer: a file needs multipart."""
    upload = {"type": "object", "properties": {"file": {"type": "string", "format": "uri"},
                                               "note": {"type": "string", "default": "n"},
                                               "homepage": {"type": "string", "format": "uri"}},
              "required": ["file"]}
    doc = oas({"/api/upload/": {"post": {"requestBody": {"content": {
        "application/json": {"schema": upload}, "application/x-www-form-urlencoded": {"schema": upload},
        "multipart/form-data": {"schema": upload}}}, "responses": {"200": {"description": "ok"}}}}})
    route = convert_document(doc, 1, "t").routes[0]
    assert (route.request_kind, route.file_fields) == ("multipart", ("file",))
    assert route.example == {"note": "n"}
    from tools.cord_table import Cord, curl_line
    from tools.runtime.cords.request import kind_of

    line = curl_line("http://x", Cord("POST", "/api/upload", "", False, example=route.example,
                                      file_fields=kind_of(route).caller_files(route), route=route))
    assert '\\"file_base64\\": \\"$(base64 -w0 FILE)\\"' in line and '"https://example.com"' not in line


def test_an_example_is_marked_made_up_when_a_value_was_built_by_type():
    doc = oas({
        "/spec": {"post": {"requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {"n": {"type": "integer", "default": 3}}, "required": ["n"]}}}},
            "responses": {}}},
        "/made": {"post": {"requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}},
            "responses": {}}},
        "/models/{model_name}/ready": {"get": {"parameters": [
            {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}], "responses": {}}},
        "/models/{model_id}": {"get": {"parameters": [
            {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string", "example": "m1"}}],
            "responses": {}}},
        "/plain": {"get": {"responses": {}}},
    })
    routes = {r.path: r for r in convert_document(doc, 1, "t").routes}
    assert routes["/spec"].example_source == "spec" and routes["/made"].example_source == "generated"
    assert routes["/models/{model_name}/ready"].example_source == "generated"
    assert routes["/models/{model_id}"].example_source == "spec"
    assert routes["/plain"].example is None and routes["/plain"].example_source is None
    again = parse_manifest(json.loads(json.dumps(Manifest(list(routes.values())).to_json())), "m")
    assert {r.path: r.example_source for r in again.routes} == {p: r.example_source for p, r in routes.items()}
