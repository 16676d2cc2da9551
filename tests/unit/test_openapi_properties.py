"""Property tests: random valid OpenAPI 3 / Swagger 2 documents never crash the converter, and every
public path they yield is valid for the Chutes SDK."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.discovery.openapi import OPERATION_KEYS, convert_document, decode_document
from tools.runtime.routes import BODY_METHODS, REQUEST_KINDS, Manifest, is_valid_cord_path, parse_manifest

SCHEMA_NAMES = ["S0", "S1", "S2", "S3"]
SEGMENT_CHARS = "abcxyzABZ019_-.~:@é %"

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_ABC019-", min_size=1, max_size=8)
segment = st.one_of(
    st.text(alphabet=SEGMENT_CHARS, min_size=0, max_size=10),
    names.map(lambda name: "{" + name + "}"),
    st.sampled_from(["static", "docs", "__x", "v1", "favicon.ico", "gradio_api", "models:predict"]),
)
paths = st.lists(segment, min_size=0, max_size=4).map(lambda segs: "/" + "/".join(segs))
media_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/problem+json", "multipart/form-data",
    "application/x-www-form-urlencoded", "text/plain", "text/event-stream", "application/x-ndjson",
    "audio/wav", "image/png", "application/octet-stream", "*/*", "text/html", "multipart/mixed",
])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=10))
refs = st.sampled_from(SCHEMA_NAMES).map(lambda name: {"$ref": f"#/components/schemas/{name}"})


def leaf_schema() -> st.SearchStrategy:
    base = st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer", "number", "boolean", "null", "file"])},
        optional={
            "format": st.sampled_from(["binary", "byte", "date-time", "uuid", "int64", "email"]),
            "example": scalars,
            "default": scalars,
            "enum": st.lists(scalars, max_size=3),
            "minimum": st.integers(-100, 100) | st.floats(-1e9, 1e9),
            "maximum": st.integers(-100, 100),
            "exclusiveMinimum": st.booleans() | st.integers(-5, 5),
            "minLength": st.integers(0, 80),
            "maxLength": st.integers(0, 80),
            "contentMediaType": st.just("image/png"),
        },
    )
    return st.one_of(base, refs, st.just({}), st.fixed_dictionaries({"type": st.lists(
        st.sampled_from(["string", "null", "integer", "object", "array"]), max_size=3)}))


schemas = st.recursive(
    leaf_schema(),
    lambda children: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(names, children, max_size=4)},
            optional={"required": st.lists(names, max_size=3), "additionalProperties": st.booleans()},
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": children}, optional={"minItems": st.integers(0, 5)}),
        st.fixed_dictionaries({"anyOf": st.lists(children, max_size=3)}),
        st.fixed_dictionaries({"oneOf": st.lists(children, max_size=3)}),
        st.fixed_dictionaries({"allOf": st.lists(children, max_size=3)}),
    ),
    max_leaves=12,
)
parameters = st.lists(
    st.fixed_dictionaries({"name": names, "in": st.sampled_from(["query", "path", "header", "cookie"])},
                          optional={"schema": schemas, "required": st.booleans()}),
    max_size=4,
)
content = st.dictionaries(
    media_types,
    st.fixed_dictionaries({}, optional={
        "schema": schemas,
        "example": scalars,
        "encoding": st.dictionaries(names, st.fixed_dictionaries({}, optional={"contentType": media_types}), max_size=2),
    }),
    max_size=3,
)
response_codes = st.sampled_from(["200", "201", "204", "2XX", "default", "404", "500"])
oas3_operation = st.fixed_dictionaries(
    {"responses": st.dictionaries(response_codes, st.fixed_dictionaries({"description": st.just("r")}, optional={
        "content": content}), max_size=3)},
    optional={
        "parameters": parameters,
        "requestBody": st.one_of(st.fixed_dictionaries({"content": content}, optional={"required": st.booleans()}),
                                 st.just({"$ref": "#/components/requestBodies/B"})),
        "operationId": names,
    },
)
methods = st.sampled_from(list(OPERATION_KEYS) + ["GET", "Post"])
servers = st.lists(
    st.fixed_dictionaries({"url": st.sampled_from(["/", "/api", "https://h.example/v1/", "http://{h}/{v}", ".", "", "/a b/%zz"])},
                          optional={"variables": st.just({"v": {"default": "v9"}})}),
    max_size=2,
)


@st.composite
def openapi3_documents(draw) -> dict:
    doc = {
        "openapi": draw(st.sampled_from(["3.0.0", "3.0.3", "3.1.0"])),
        "info": {"title": "t", "version": "1"},
        "paths": draw(st.dictionaries(paths, st.dictionaries(methods, oas3_operation, min_size=1, max_size=3).map(
            lambda ops: {**ops, "parameters": []}), min_size=1, max_size=5)),
        "components": {
            "schemas": {name: draw(schemas) for name in SCHEMA_NAMES},
            "requestBodies": {"B": {"content": draw(content)}},
        },
    }
    if draw(st.booleans()):
        doc["servers"] = draw(servers)
    return doc


swagger_param = st.one_of(
    st.fixed_dictionaries({"name": names, "in": st.sampled_from(["query", "path", "header"]), "type": st.just("string")}),
    st.fixed_dictionaries({"name": names, "in": st.just("formData"), "type": st.sampled_from(["string", "file", "integer"])}),
    st.fixed_dictionaries({"name": names, "in": st.just("body"), "schema": schemas}),
)
swagger_operation = st.fixed_dictionaries(
    {"responses": st.dictionaries(response_codes, st.fixed_dictionaries({"description": st.just("r")}, optional={
        "schema": schemas}), max_size=3)},
    optional={
        "parameters": st.lists(swagger_param, max_size=4),
        "consumes": st.lists(media_types, max_size=2),
        "produces": st.lists(media_types, max_size=3),
    },
)


@st.composite
def swagger2_documents(draw) -> dict:
    doc = {
        "swagger": "2.0",
        "info": {"title": "t", "version": "1"},
        "paths": draw(st.dictionaries(paths, st.dictionaries(methods, swagger_operation, min_size=1, max_size=3),
                                      min_size=1, max_size=5)),
        "definitions": {name: draw(schemas) for name in SCHEMA_NAMES},
    }
    if draw(st.booleans()):
        doc["basePath"] = draw(st.sampled_from(["/", "/api", "/v2/", "", "/x y"]))
    if draw(st.booleans()):
        doc["produces"] = draw(st.lists(media_types, max_size=2))
    return doc


def check_conversion(doc: dict) -> None:
    conversion = convert_document(doc, 8020, "generated")
    for route in conversion.routes:
        if route.public_path is None:
            assert route.path_params, route.path
        else:
            assert is_valid_cord_path(route.public_path), route.public_path
        assert route.request_kind in REQUEST_KINDS
        if route.request_kind in ("none", "undeclared"):  # no declared body: by method
            assert (route.request_kind == "undeclared") == (route.method in BODY_METHODS), route
        # a raw body always has a concrete media type to send
        assert (route.request_kind == "raw") == bool(route.request_content_type), route
        assert route.request_content_type is None or "*" not in route.request_content_type
        assert route.response_kind in ("json", "binary", "text", "stream")
    for entry in conversion.skipped:
        assert entry["reason"]
    data = json.loads(json.dumps(Manifest(conversion.routes, conversion.skipped).to_json(), allow_nan=False))
    parse_manifest(data, "generated")


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(openapi3_documents())
def test_random_openapi3_documents_convert_to_valid_cord_paths(doc):
    check_conversion(doc)


@FAST
@given(swagger2_documents())
def test_random_swagger2_documents_convert_to_valid_cord_paths(doc):
    check_conversion(doc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(openapi3_documents())
def test_documents_read_back_the_same_as_json_and_yaml(doc):
    assert decode_document(json.dumps(doc), "x", "application/json") == doc
    assert decode_document(yaml.safe_dump(doc), "x", "application/yaml") == doc
