"""Hop 4 of a call: the caller's JSON becomes the request the service expects.

Every caller on Chutes sends JSON. Each request kind of the manifest (`routes.REQUEST_KINDS`) is one
object here that knows how its routes take what the caller sent: how the JSON is decoded into the
upstream request (`fill`), which keys a caller sends as `<name>_base64` (`caller_files`, shown in
curl lines), a complete example call (`example`, what `--smoke` sends), where a catch-all call
carries the body (`catch_all_key`), how to say what the route takes (`words`, in errors), and what a
caller sends as JSON Schema (`caller_schema`, the chute's API document: tools/platform/openapi_doc.py).

Conventions every kind shares (README, "Calling proxy cords"):
  - `_query`: an object sent as the query string, for any method. A key named like one of the route's
    query parameters is sent as a query parameter too; for routes without a body, every key is.
  - file fields: `<field>_base64` (base64 of the bytes) or `<field>` as a `data:` URL; optional
    `<field>_filename` and `<field>_content_type`. Other keys of a multipart/form route are form fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar
from urllib.parse import unquote_to_bytes

import aiohttp

from tools.runtime.errors import BadRequest
from tools.runtime.registration import Target
from tools.runtime.routes import (
    BODY_METHODS, RAW_BASE64_KEY, RAW_TEXT_KEY, RAW_TYPE_KEY, REQUEST_KINDS, UNDECLARED, Route, extension_for,
)

QUERY_KEY = "_query"  # the caller's query string, as an object, in any kind's JSON
OFFLOAD_BYTES = 1 << 20  # callers' bodies above this are decoded in a thread (base64 of megabytes takes a while)
_DATA_URL_RE = re.compile(r"^data:([^;,]*)(;[^,]*)?,(.*)$", re.S)
_MAGIC = (
    (b"RIFF", "audio/wav"), (b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
    (b"ID3", "audio/mpeg"), (b"OggS", "audio/ogg"), (b"fLaC", "audio/flac"), (b"%PDF", "application/pdf"),
)

# (field, route) -> (bytes, content type): a sample file for an example call (smoke's WAV or PNG)
SampleFile = Callable[[str, Route], "tuple[bytes, str]"]


@dataclass
class Outgoing:
    """The request one call sends to the service."""

    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json_body: Any = None
    has_json: bool = False
    data: Any = None
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Decoding what callers send


def header_value(name: str, value: Any) -> Any:
    """A caller's value that becomes part of an upstream header (a content type, a file name): CR, LF
    or NUL in it would split or end the header, so the caller gets a 400 naming the field."""
    if isinstance(value, str) and any(ch in value for ch in "\r\n\0"):
        raise BadRequest(f"{name}: must not contain CR, LF or NUL")
    return value


def sniff(data: bytes) -> str:
    """A content type from the first bytes (the common audio, image and document formats)."""
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


def decode_file(key: str, value: Any) -> tuple[bytes, str | None]:
    """A file a caller sent as base64 or as a data: URL: its bytes, and the URL's media type if any."""
    if not isinstance(value, str):
        raise BadRequest(f"{key}: expected a base64 string or a data: URL")
    match = _DATA_URL_RE.match(value)
    content_type = None
    if match:
        content_type = header_value(f"{key} (its data: URL's media type)", match.group(1)) or None
        value = match.group(3)
        if not (match.group(2) or "").endswith("base64"):
            return unquote_to_bytes(value), content_type
    try:
        return base64.b64decode(value, validate=True), content_type
    except (binascii.Error, ValueError):
        raise BadRequest(f"{key}: not valid base64") from None


def is_data_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("data:")


def param_values(key: str, value: Any) -> list[tuple[str, str]]:
    """One caller value as query parameters: lists repeat the key, objects go as JSON, null not at all."""
    if isinstance(value, (list, tuple)):
        return [pair for item in value for pair in param_values(key, item)]
    if isinstance(value, bool):
        return [(key, "true" if value else "false")]
    if value is None:
        return []
    if isinstance(value, dict):
        return [(key, json.dumps(value))]
    return [(key, str(value))]


def field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _with_sample_files(route: Route, example: dict, names: tuple[str, ...], sample: SampleFile,
                       typed: tuple[str, ...] = ()) -> dict:
    for name in dict.fromkeys(names):
        data, content_type = sample(name, route)
        example.setdefault(f"{name}_base64", base64.b64encode(data).decode())
        if name not in typed:  # an override's field has its content type in the module
            example.setdefault(f"{name}_content_type", content_type)
    return example


# --------------------------------------------------------------------------------------------------
# What callers send, as JSON Schema (2020-12, as OpenAPI 3.1 takes it)

QUERY_SCHEMA = {
    "type": "object", "additionalProperties": True,
    "description": "Sent as the query string, for any method (lists repeat the key, objects go as JSON).",
}


def file_properties(name: str, content_type: str | None = None) -> dict[str, dict]:
    """How a caller sends the file `name`: `<name>_base64`, with an optional file name and content type."""
    return {
        f"{name}_base64": {"type": "string", "contentEncoding": "base64",
                           "description": f"The file {name!r}: base64 of its bytes (or send {name!r} as a data: URL)."},
        f"{name}_filename": {"type": "string", "description": f"The file name sent for {name!r} (optional)."},
        f"{name}_content_type": {"type": "string", "description": f"The media type sent for {name!r} (optional; "
                                 + (f"default {content_type})." if content_type else "else sniffed from the bytes).")},
    }


def _object(properties: dict[str, dict], description: str, example: Any = None, extra: bool = True) -> dict:
    schema: dict[str, Any] = {"type": "object", "description": description, "properties": properties,
                              "additionalProperties": extra}
    if isinstance(example, dict):
        schema["examples"] = [{key: value for key, value in example.items() if key != "_path"}]
    return schema


# --------------------------------------------------------------------------------------------------
# The request kinds


class RequestKind:
    """How the routes of one request kind take a caller's JSON."""

    name: ClassVar[str] = ""
    needs_body: ClassVar[bool] = False  # a POST/PUT/PATCH call without any body is the caller's mistake
    catch_all_key: ClassVar[str] = "form"  # where a catch-all call carries this kind's body

    def words(self, route: Route) -> str:
        """What the route takes, for an error message."""
        return f"{self.name} body"

    def caller_files(self, route: Route, target: Target | None = None) -> tuple[str, ...]:
        """The fields a caller sends as `<name>_base64`."""
        return tuple(dict.fromkeys(route.file_fields + tuple(target.file_fields if target else ())))

    def to_query(self, takes_body: bool) -> bool:
        """Whether every key of the caller's JSON goes to the query string."""
        return False

    def fill(self, target: Target, body: dict, out: Outgoing, sent: bool) -> None:
        """Put what is left of the caller's JSON (after `_query` and query keys) into `out`."""

    def example(self, route: Route, sample: SampleFile, extra_files: tuple[str, ...] = ()) -> dict:
        """A complete call of `route`: its manifest example, with sample files where it takes files."""
        example = dict(route.example) if isinstance(route.example, dict) else {}
        example.pop("_path", None)
        return _with_sample_files(route, example, route.file_fields + tuple(extra_files), sample, extra_files)

    def caller_schema(self, route: Route, target: Target | None = None) -> dict:
        """The JSON object a caller sends for `route`, as JSON Schema."""
        return _object({QUERY_KEY: QUERY_SCHEMA}, "Every key is sent as a query parameter.", route.example)


class JsonKind(RequestKind):
    name = "json"
    needs_body = True
    catch_all_key = "json"

    def words(self, route: Route) -> str:
        return "JSON body"

    def caller_schema(self, route: Route, target: Target | None = None) -> dict:
        return _object({QUERY_KEY: QUERY_SCHEMA}, "The JSON body the service takes, as it takes it (keys named like "
                       f"a query parameter of the route, and `{QUERY_KEY}`, go to the query string).", route.example)

    def fill(self, target: Target, body: dict, out: Outgoing, sent: bool) -> None:
        # On POST/PUT/PATCH `{}` is a body (a service reading JSON answers 415 to none at all); on
        # GET/DELETE a body is sent only when there is something in it.
        if (sent and target.route.method in BODY_METHODS) or body:
            out.json_body, out.has_json = body, True


class UndeclaredKind(JsonKind):
    """The spec declares no body: on POST/PUT/PATCH the caller's JSON is the body, else the query."""

    name = UNDECLARED
    needs_body = False

    def to_query(self, takes_body: bool) -> bool:
        return not takes_body

    def fill(self, target: Target, body: dict, out: Outgoing, sent: bool) -> None:
        if target.route.method in BODY_METHODS:
            super().fill(target, body, out, sent)


class NoBodyKind(RequestKind):
    name = "none"

    def to_query(self, takes_body: bool) -> bool:
        return True


class FormKind(RequestKind):
    name = "form"
    needs_body = True
    multipart: ClassVar[bool] = False

    def words(self, route: Route) -> str:
        return f"{self.name} body (file fields as \"<field>_base64\")"

    def caller_schema(self, route: Route, target: Target | None = None) -> dict:
        properties: dict[str, dict] = {QUERY_KEY: QUERY_SCHEMA}
        for name in self.caller_files(route, target):
            properties.update(file_properties(name, (target.file_fields.get(name) if target else None)))
        return _object(properties, f"Sent to the service as a {self.name} body: each file as `<field>_base64`, "
                       "every other key a form field.", route.example)

    def fill(self, target: Target, body: dict, out: Outgoing, sent: bool) -> None:
        out.data = self.form_data(target, body)

    def form_data(self, target: Target, body: dict) -> aiohttp.FormData | dict:
        """Form fields and file parts; file parts named by `<field>_base64`, a data: URL, or the manifest."""
        declared = target.all_file_fields
        stems = {key[: -len("_base64")] for key in body if key.endswith("_base64")}
        stems |= {key for key, value in body.items() if key in declared or (is_data_url(value) and not declared)}
        meta = {f"{stem}_filename" for stem in stems} | {f"{stem}_content_type" for stem in stems}
        files: dict[str, tuple[bytes, str | None]] = {}
        fields: dict[str, Any] = {}
        for key, value in body.items():
            if key in meta:
                continue
            if key.endswith("_base64") and key[: -len("_base64")] in stems:
                files[key[: -len("_base64")]] = decode_file(key, value)
            elif key in stems:
                files[key] = decode_file(key, value)
            else:
                fields[key] = value
        if not files and not self.multipart:
            return {key: field_text(value) for key, value in fields.items()}
        form = aiohttp.FormData()
        for key, value in fields.items():
            form.add_field(key, field_text(value))
        for name, (data, data_url_type) in files.items():
            content_type = (header_value(f"{name}_content_type", body.get(f"{name}_content_type"))
                            or target.file_fields.get(name) or data_url_type or sniff(data))
            filename = (header_value(f"{name}_filename", body.get(f"{name}_filename"))
                        or name + extension_for(str(content_type)))
            form.add_field(name, data, filename=str(filename), content_type=str(content_type))
        return form


class MultipartKind(FormKind):
    name = "multipart"
    multipart = True


class RawKind(RequestKind):
    """The body is the bytes themselves (audio/wav, image/png, application/octet-stream, text)."""

    name = "raw"
    needs_body = True
    catch_all_key = "raw"

    def words(self, route: Route) -> str:
        return f"raw {route.request_content_type or 'binary'} body (\"{RAW_BASE64_KEY}\" or \"{RAW_TEXT_KEY}\")"

    def caller_files(self, route: Route, target: Target | None = None) -> tuple[str, ...]:
        return (RAW_BASE64_KEY.removesuffix("_base64"),)

    def caller_schema(self, route: Route, target: Target | None = None) -> dict:
        declared = route.request_content_type or "binary"
        properties = {
            RAW_BASE64_KEY: {"type": "string", "contentEncoding": "base64",
                             "description": f"The request body ({declared}): base64 of its bytes, or a data: URL."},
            RAW_TEXT_KEY: {"type": "string", "description": "The request body as text (instead of "
                           f"`{RAW_BASE64_KEY}`), or a data: URL."},
            RAW_TYPE_KEY: {"type": "string", "description": "Its media type (optional; default "
                           + (route.request_content_type or "the data URL's, else sniffed") + ")."},
            QUERY_KEY: QUERY_SCHEMA,
        }
        return _object(properties, f"The service takes a raw {declared} body: send it as `{RAW_BASE64_KEY}` or "
                       f"`{RAW_TEXT_KEY}`; every other key is a query parameter.", route.example)

    def to_query(self, takes_body: bool) -> bool:
        return True  # after the raw body's own keys are taken (`take_body`)

    def take_body(self, route: Route, body: dict) -> tuple[bytes, str]:
        """The raw body from `body_base64` (base64 or a data: URL) or `body` (a data: URL or text),
        with `content_type` or the data URL's or the manifest's type; removes those keys."""
        content_type = header_value(RAW_TYPE_KEY, body.pop(RAW_TYPE_KEY, None))
        if content_type is not None and not isinstance(content_type, str):
            raise BadRequest(f"{RAW_TYPE_KEY}: expected a string like audio/wav")
        if RAW_BASE64_KEY in body:
            data, url_type = decode_file(RAW_BASE64_KEY, body.pop(RAW_BASE64_KEY))
            body.pop(RAW_TEXT_KEY, None)
        elif RAW_TEXT_KEY in body:
            value = body.pop(RAW_TEXT_KEY)
            if not isinstance(value, str):
                raise BadRequest(f"{RAW_TEXT_KEY}: expected a string (text or a data: URL)")
            data, url_type = decode_file(RAW_TEXT_KEY, value) if is_data_url(value) else (value.encode(), None)
        else:
            raise BadRequest(
                f"this route takes a raw {route.request_content_type or 'binary'} body: send it as"
                f' "{RAW_BASE64_KEY}" (base64 or a data: URL) or "{RAW_TEXT_KEY}" (text)'
            )
        return data, content_type or url_type or route.request_content_type or sniff(data)

    def example(self, route: Route, sample: SampleFile, extra_files: tuple[str, ...] = ()) -> dict:
        example = super().example(route, sample, extra_files)
        if {RAW_BASE64_KEY, RAW_TEXT_KEY} & set(example):
            return example
        declared = route.request_content_type or ""
        if declared.startswith("text/"):
            example[RAW_TEXT_KEY] = "Hello from chutes-wrappers"
        else:
            data, sampled = sample(declared, route)
            example[RAW_BASE64_KEY] = base64.b64encode(data).decode()
            declared = declared if declared and "*" not in declared else sampled
        example.setdefault(RAW_TYPE_KEY, declared)
        return example


# A Gradio parameter's type (tools/runtime/gradio_spec.py) as JSON Schema.
GRADIO_TYPES = {"string": {"type": "string"}, "integer": {"type": "integer"}, "number": {"type": "number"},
                "boolean": {"type": "boolean"}, "array": {"type": "array"}, "object": {"type": "object"}}


class GradioKind(RequestKind):
    """A Gradio function: named arguments, files as `<name>_base64`; its cord runs Gradio's own
    two-step call (tools.runtime.cords.gradio), so nothing is filled here."""

    name = "gradio"

    def words(self, route: Route) -> str:
        return "JSON object of named arguments"

    def caller_schema(self, route: Route, target: Target | None = None) -> dict:
        function = route.gradio
        properties: dict[str, dict] = {}
        required = []
        for param in (function.parameters if function is not None else ()):
            if param.is_file:
                props = file_properties(param.name)
                if param.type == "files":
                    props[f"{param.name}_base64"] = {"type": "array", "items": props[f"{param.name}_base64"]}
                properties.update(props)
                continue
            schema = dict(GRADIO_TYPES.get(param.type, {}))
            if param.label:
                schema["title"] = param.label
            if param.has_default:
                schema["default"] = param.default
            else:
                required.append(param.name)
            properties[param.name] = schema
        if function is not None and function.generator:
            properties["stream"] = {"type": "boolean", "description": "true: the items the function yields, "
                                    "as server-sent events; else its final value."}
        # an example only when the app gave one for every argument without a default (and no file is required)
        example = {p.name: p.example for p in (function.parameters if function else ()) if p.example is not None
                   and not p.is_file}
        complete = all(p.name in example for p in (function.parameters if function else ()) if not p.has_default)
        schema = _object(properties, "The function's named arguments (omitted ones take the app's defaults; "
                         "files as `<name>_base64`).", example if complete else None, extra=False)
        if required:
            schema["required"] = required
        return schema

    def fill(self, target: Target, body: dict, out: Outgoing, sent: bool) -> None:
        raise BadRequest("a Gradio function is called by its own cord")


KINDS: dict[str, RequestKind] = {kind.name: kind for kind in (
    JsonKind(), UndeclaredKind(), NoBodyKind(), FormKind(), MultipartKind(), RawKind(), GradioKind(),
)}
assert set(KINDS) == set(REQUEST_KINDS), "every request kind of the manifest has its object here"


def kind_of(route: Route, target: Target | None = None) -> RequestKind:
    """The kind a cord sends: the manifest's, except that override `file_fields` make a JSON,
    bodiless or undeclared route a multipart upload (the spec did not say it takes files)."""
    name = route.request_kind
    if target is not None and target.file_fields and name in ("json", "none", UNDECLARED):
        name = "multipart"
    return KINDS[name]


def build_outgoing(target: Target, payload: Any, caller_query: list[tuple[str, str]], path: str | None = None) -> Outgoing:
    """The upstream request for one call, from the caller's JSON and the caller's own query string.

    `payload` is None when the caller sent no body at all, which is not the same as `{}`: an empty
    object is sent as `{}`, and a missing body on a route that takes one is a BadRequest (400).
    """
    route = target.route
    kind = kind_of(route, target)
    out = Outgoing(method=route.method, path=path or route.upstream_path, params=list(caller_query))
    takes_body = route.method in BODY_METHODS
    sent = payload is not None
    if not sent:
        if takes_body and kind.needs_body:
            raise BadRequest(f"{route.method} {route.upstream_path} takes a {kind.words(route)}: "
                             "send it as the request's JSON body (the call had none)")
        payload = {}
    if not isinstance(payload, dict):
        if isinstance(kind, JsonKind) and kind.needs_body:
            out.json_body, out.has_json = payload, True
            return out
        raise BadRequest("expected a JSON object")
    body = dict(payload)
    query = body.pop(QUERY_KEY, None)
    if query is not None:
        if not isinstance(query, dict):
            raise BadRequest(f"{QUERY_KEY}: expected an object")
        for key, value in query.items():
            out.params += param_values(key, value)
    if isinstance(kind, RawKind):
        out.data, out.headers["Content-Type"] = kind.take_body(route, body)
    declared = set(route.query_params)
    everything = kind.to_query(takes_body)
    for key in list(body):
        if everything or key in declared:
            out.params += param_values(key, body.pop(key))
    kind.fill(target, body, out, sent)
    accept = declared_accept(route)
    if accept:
        out.headers["Accept"] = accept
    return out


def declared_accept(route: Route) -> str | None:
    """The Accept header a binary or text route's calls send: its declared media type first. Callers
    on Chutes cannot send headers, and some services answer 406 to `*/*` (httpbin's /image picks the
    format by Accept). A module's own Accept (CHUTE_UPSTREAM_HEADERS) wins."""
    ctype = (route.content_type or "").strip()
    if route.response_kind not in ("binary", "text") or not ctype or "*" in ctype or "," in ctype:
        return None
    return f"{ctype}, */*;q=0.8"
