"""The chute's public API as an OpenAPI 3.1 document: every cord as a caller on Chutes calls it.

Built from the registration plan the cords come from (`plans_of`, through the views deploy.sh prints:
`cord_views`), never from a second description: each cord's public path and method, what a caller
sends (each request kind's `caller_schema`, tools/runtime/cords/request.py, plus the gateway's own
conventions: `stream`, query strings), the answer's media type, and the errors as the Chutes gateway
answers them (tools/platform/gateway.py; README, "On Chutes"). The local gateway serves it at
/openapi.json (tools/platform/front_door.py); `deploy.sh --openapi` writes it (tools/commands/openapi.py).

The document names no secret: callers authenticate with their own API key (bearer), and the module's
upstream headers are not part of the plan's views.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from tools.cord_table import catch_all_example, chutes_url
from tools.runtime.cords.request import QUERY_SCHEMA, kind_of
from tools.runtime.registration import CordPlan, unique_name
from tools.runtime.routes import BODY_METHODS, Route
from tools.runtime.sdk.chute import CordView, cord_views, owner, unwrap

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"
STREAM_KEY = "stream"  # the gateway reads it from the body: the answer comes as server-sent lines
ERROR_RESPONSES = {
    "400": ("BadRequest", "The call cannot be served as sent: the caller's mistake (a bad body, an unknown "
            "catch-all path), or the service answered 4xx. `detail` is \"Invalid request: \" followed by the "
            "chute's JSON error as text (with `upstream_status` and `upstream_body` when the service answered)."),
    "429": ("RateLimited", "Every instance is busy (the chute's concurrency), the service answered 429, or "
            "the instance is disabled for a while after failing calls in a row: try again later."),
    "500": ("InstanceFailure", "The chute failed the call (its service was down, too slow, answered 5xx or "
            "broke its answer); the gateway retried it on other instances and found none that served it."),
    "503": ("NoInstances", "No instance of the chute is running (yet), or the last one was deleted after "
            "failing again and again."),
}
CALLING = """Every call is JSON, sent to `https://<username>-<chute>.chutes.ai/<path>` with your Chutes API key as a
bearer token. Conventions of this toolkit and of the Chutes gateway:

- Files are sent inside the JSON: `<field>_base64` (base64 of the bytes) or `<field>` as a `data:` URL,
  with optional `<field>_filename` and `<field>_content_type`.
- GET and DELETE take their parameters from the query string (the gateway reads no body for them);
  any method can also send `"_query": {...}` in its body.
- `"stream": true` in a body makes the gateway send the answer as server-sent lines (`text/event-stream`).
- Answers that do not stream come back whole with status 200: JSON as JSON, anything else with the
  service's media type. Errors: 400 (`detail` holds the chute's error as text), 429 (busy), 500 (the
  instance failed; retried elsewhere first), 503 (no instance).
- Routes with path parameters are reached through the catch-all cord, if the chute has one:
  `{"method", "path", "query", "json" | "form" | "raw"}`.
"""


def build_document(chute: Any, *, public_url: str | None = None, local_url: str | None = None) -> dict:
    """The OpenAPI 3.1 document of `chute`'s public API. `public_url` defaults to the deployed chute's
    URL; `local_url` (the local gateway) is listed first when given, so "Try it out" calls this machine."""
    chute = unwrap(chute)
    public_url = public_url or chutes_url(owner(chute) or "you", chute.name)
    servers = [{"url": public_url, "description": "the deployed chute on Chutes"}]
    if local_url:
        servers.insert(0, {"url": local_url.rstrip("/"), "description": "this machine: the local gateway of ./deploy.sh --run"})
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": chute.name, "version": _version(chute),
                 "description": ((getattr(chute, "tagline", None) or "").strip() + "\n\n" + CALLING).lstrip()},
        "servers": servers,
        "security": [{SECURITY_SCHEME: []}],
        "paths": {},
        "components": {
            "securitySchemes": {SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                                                  "description": "Your Chutes API key (cpk_...)."}},
            "schemas": {"Error": {"type": "object", "properties": {"detail": {"type": "string"}},
                                  "required": ["detail"]}},
            "responses": {name: {"description": text, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}} for name, text in ERROR_RESPONSES.values()},
        },
    }
    used: set[str] = set()
    for view in cord_views(chute):
        operation = _operation(view, document["components"]["schemas"])
        operation["operationId"] = unique_name(f"{view.method.lower()}_{_slug(view.public_path)}", used)
        operation["responses"].update({status: {"$ref": f"#/components/responses/{name}"}
                                       for status, (name, _) in ERROR_RESPONSES.items()})
        document["paths"].setdefault(view.public_path, {})[view.method.lower()] = operation
    return document


def _version(chute: Any) -> str:
    image = getattr(chute, "image", None)
    return str(getattr(image, "tag", None) or "unversioned")


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"


# --------------------------------------------------------------------------------------------------
# One cord


def _operation(view: CordView, schemas: dict[str, Any]) -> dict:
    plan = view.plan
    if plan is None:
        return _module_operation(view, schemas)
    if plan.kind == "catch-all":
        return _catch_all_operation(view, plan)
    return _proxy_operation(view, plan)


def _proxy_operation(view: CordView, plan: CordPlan) -> dict:
    route = plan.route
    kind = kind_of(route, plan.target)
    operation: dict[str, Any] = {
        "summary": f"The service's {route.method} {route.upstream_path}",
        "description": f"Forwarded to the service as a {kind.words(route)}.",
        "responses": {"200": _answer(route, view.stream)},
    }
    parameters = [_query_parameter(name, route) for name in route.query_params]
    if parameters:
        operation["parameters"] = parameters
    if view.method in BODY_METHODS:
        schema = kind.caller_schema(route, plan.target)
        _add_stream_key(schema, view.stream)
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    elif route.example and isinstance(route.example, dict):
        operation["description"] += " Parameters go in the query string (the gateway reads no body for " \
                                    f"{view.method})."
    return operation


def _catch_all_operation(view: CordView, plan: CordPlan) -> dict:
    templates = [target for target in plan.templates if "{" in target.route.path]
    labels = list(dict.fromkeys(target.label for target in templates))
    methods = sorted({target.route.method for target in templates})
    schema: dict[str, Any] = {
        "type": "object",
        "description": "A route with path parameters: its method, a concrete path, and the body as the route's "
                       "own cord would take it.",
        "properties": {
            "method": {"type": "string", "enum": methods, "default": "GET"},
            "path": {"type": "string", "maxLength": 2048,
                     "description": "A concrete path matching one of: " + ", ".join(labels)},
            "query": QUERY_SCHEMA,
            "json": {"description": "The body of a JSON route."},
            "form": {"type": "object", "additionalProperties": True,
                     "description": "The body of a form or upload route (files as `<field>_base64`)."},
            "raw": {"type": "object", "additionalProperties": True,
                    "description": "The body of a raw-body route (`body_base64` or `body`, `content_type`)."},
        },
        "required": ["path"],
        "additionalProperties": True,
        "examples": [catch_all_example(labels or [t.label for t in plan.templates])],
    }
    _add_stream_key(schema, view.stream)
    answers: dict[str, Any] = {}
    for target in templates:
        answers.update(_answer(target.route, target.route.stream)["content"])
    return {
        "summary": "Routes with path parameters: " + ", ".join(labels),
        "description": "Forwarded only when `method` and `path` match one of the routes above; anything else "
                       "is a 400 listing them (`allowed`).",
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {"200": {"description": "The route's answer.",
                              "content": answers or {"application/json": {"schema": {}}}}},
    }


def _module_operation(view: CordView, schemas: dict[str, Any]) -> dict:
    operation: dict[str, Any] = {
        "summary": f"The module's own cord ({view.function_name})",
        "responses": {"200": {"description": "The cord's answer.",
                              "content": {view.output_content_type or "application/json": {"schema": _any_of(view.output_content_type)}}}},
    }
    if view.stream:
        operation["responses"]["200"] = _stream_answer()
    if view.method in BODY_METHODS:
        # no "stream" key: the SDK answers a module's own cord in one piece, and a caller's "stream"
        # then fails the instance (README, "On Chutes")
        schema = _sdk_schema(view.input_schema, view.function_name or "cord", schemas)
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return operation


# --------------------------------------------------------------------------------------------------
# Pieces


def _add_stream_key(schema: dict, streams: bool) -> None:
    if "$ref" in schema or schema.get("additionalProperties") is False or STREAM_KEY in schema.get("properties", {}):
        return  # a model of the module's own, or a closed set of arguments: their own business
    properties = schema.setdefault("properties", {})
    properties[STREAM_KEY] = {
        "type": "boolean",
        "description": "This route always streams." if streams else
        "true: the gateway sends the answer as server-sent lines (text/event-stream) instead of whole. "
        "In a JSON body the service sees the key too.",
    }


def _stream_answer() -> dict:
    return {"description": "Server-sent lines, as the service sends them (a binary answer as base64 text). If the "
                           "chute fails midway the gateway appends a line {\"error\": ...}.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}}}


def _answer(route: Route, streams: bool) -> dict:
    """The 200 answer of a route as the gateway gives it (README, "On Chutes": whole, with the media type)."""
    if streams or route.response_kind == "stream":
        return _stream_answer()
    if route.response_kind == "binary":
        media = route.content_type or "application/octet-stream"
        return {"description": f"The service's {media} answer.",
                "content": {media: {"schema": {"type": "string", "format": "binary"}}}}
    if route.response_kind == "text":
        return {"description": "The service's text answer.",
                "content": {route.content_type or "text/plain": {"schema": {"type": "string"}}}}
    return {"description": "The service's JSON answer (re-serialised compactly by the gateway).",
            "content": {"application/json": {"schema": {}}}}


def _any_of(media: str | None) -> dict:
    if media and not media.startswith("application/json"):
        return {"type": "string"} if media.startswith("text/") else {"type": "string", "format": "binary"}
    return {}


def _query_parameter(name: str, route: Route) -> dict:
    example = route.example.get(name) if isinstance(route.example, dict) else None
    parameter = {"name": name, "in": "query", "required": False, "schema": _value_schema(example)}
    if example is not None and not isinstance(example, (dict, list)):
        parameter["example"] = example
    return parameter


def _value_schema(value: Any) -> dict:
    """A query parameter's type, from the manifest's example (discovery built it from the service's spec)."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    return {"type": "string"}


def _sdk_schema(raw: Any, name: str, schemas: dict[str, Any]) -> dict:
    """A module cord's body as the SDK takes it: the SDK hands the caller's JSON to the cord function as
    its one argument (chutes/chute/cord.py `_request_handler`: `args = [decrypted]`), so the body is the
    schema of that argument (pydantic's, its definitions moved into the document's components); any
    JSON object when the SDK knows nothing of it (no argument, or its generic {args, kwargs})."""
    properties = raw.get("properties") if isinstance(raw, dict) else None
    if not properties or len(properties) != 1 or set(properties) <= {"args", "kwargs"} and not any(
            isinstance(value, dict) and value for value in properties.values()):
        return {"type": "object", "additionalProperties": True}
    prefix = re.sub(r"[^A-Za-z0-9]", "_", name) + "_"

    def moved(node: Any) -> Any:
        text = re.sub(r'"#/(?:definitions|\$defs)/([^"]+)"',
                      lambda m: json.dumps(f"#/components/schemas/{prefix}{m.group(1)}"), json.dumps(node))
        return json.loads(text)

    for key in ("definitions", "$defs"):
        for def_name, definition in (raw.get(key) or {}).items():
            schemas[prefix + def_name] = moved(definition)
    (argument,) = properties.values()
    return moved(argument) or {"type": "object", "additionalProperties": True}


def document_paths(document: dict) -> Iterable[tuple[str, str]]:
    """(METHOD, path) of every operation of a document."""
    for path, item in document.get("paths", {}).items():
        for method in item:
            yield method.upper(), path
