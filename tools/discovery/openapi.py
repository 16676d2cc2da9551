"""OpenAPI 3.0/3.1 and Swagger 2.0 documents -> route records for the manifest.

Pure logic, no network: decode a document (JSON or YAML), resolve its local `$ref`s without looping
on cycles, and turn every operation into a `Route` (request and response kinds, parameters, an example
JSON body) or a skip reason. What may become a cord is decided by `routes.decide_public_path` alone.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import unquote, urlparse

from tools.runtime.errors import SpecError
from tools.runtime.routes import BODY_METHODS, UNDECLARED, Route, decide_public_path

# Where services publish their document, most common first (each line: whose default it is). The
# first EAGER_PROBES are polled from the start; the rest only once the port answers HTTP at all, so a
# service that is still starting sees a few connection attempts per tick, not one per path.
PROBE_PATHS = (
    "/openapi.json",  # FastAPI, Starlette apps, vLLM, litellm, Gradio, flask-smorest, most LLM servers
    "/swagger.json",  # flask-restx/flask-restplus, drf-yasg, go-swagger, connexion 2
    "/apispec_1.json",  # flasgger's default
    "/spec.json",  # flasgger apps that name their spec (httpbin)
    "/v3/api-docs",  # springdoc-openapi (Spring Boot)
    "/v2/api-docs",  # springfox (Spring Boot)
    "/api-docs",  # swagger-jsdoc/express examples, restify, older Swagger UIs
    "/swagger/v1/swagger.json",  # ASP.NET Core (Swashbuckle)
    "/openapi.yaml",  # connexion 3, hand-written specs served as files
    "/api/openapi.json",  # FastAPI apps mounted under /api, Nest, Strapi
    "/v1/openapi.json",  # versioned APIs (FastAPI with a /v1 prefix)
    "/docs/openapi.json",  # FastAPI with docs under /docs
    "/docs.json",  # Laravel/l5-swagger-like and some Gradio builds
    "/api/swagger.json",  # Nest/Express apps under /api
    "/swagger.yaml",  # hand-written Swagger 2.0 served as a file
    "/api/schema/",  # drf-spectacular (Django REST framework)
)
EAGER_PROBES = 4

OPERATION_KEYS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl", "application/stream+json")
EXAMPLE_TEXT = "Hello from chutes-wrappers"
_TEXT_FIELD_NAMES = {"text", "prompt", "input", "message", "query", "content", "question", "sentence"}
_MAX_DEPTH = 8
# How many values of the example being built were made up by type ("string", 0, false), not taken
# from the spec's examples, defaults or enums: a service's 4xx to such a call says little about it
# (--smoke reports it as "not tried with real input").
_MADE_UP: contextvars.ContextVar[list[int]] = contextvars.ContextVar("made_up")


def _made_up() -> None:
    counter = _MADE_UP.get(None)
    if counter is not None:
        counter[0] += 1
_PARAM_RE = re.compile(r"\{([^{}/]*)\}")


@dataclass
class Conversion:
    """Routes and skipped operations of one document served on one port, and the defects that were
    worked around (one line each, for the user to read; never fatal)."""

    routes: list[Route] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    version: str = ""
    prefix: str = ""
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Decoding


def decode_document(body: bytes | str, source: str, content_type: str | None = None) -> dict | None:
    """The document in an HTTP body; None when the body is plainly not a spec (HTML, an error object).

    Raises SpecError when the body claims to be a spec but is broken: invalid JSON or YAML, an
    unsupported version, or no paths.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.lstrip("\ufeff")
    stripped = text.strip()
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if not stripped or stripped.startswith("<"):
        return None
    if "json" in ctype or stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise SpecError(f"{source}: invalid JSON: nested too deeply") from None
    else:
        data = _decode_yaml(stripped, source, claims_yaml="yaml" in ctype)
    if not isinstance(data, dict):
        return None
    if not any(key in data for key in ("openapi", "swagger", "paths")):
        return None
    check_document(data, source)
    return data


def _decode_yaml(text: str, source: str, claims_yaml: bool) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if not claims_yaml and not re.search(r"^\s*(openapi|swagger)\s*:", text, re.M):
            return None  # plain text, not a spec
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise SpecError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{source}: invalid YAML: nested too deeply") from None


def check_document(doc: Mapping, source: str) -> str:
    """'openapi 3.x' or 'swagger 2.0'; SpecError for other versions and documents without paths."""
    version = document_version(doc)
    if version is None:
        found = doc.get("openapi", doc.get("swagger"))
        raise SpecError(
            f"{source}: not an OpenAPI 3 or Swagger 2.0 document (version {found!r})",
            "discovery reads OpenAPI 3.0/3.1 and Swagger 2.0",
        )
    paths = doc.get("paths")
    if not isinstance(paths, Mapping) or not any(str(key).startswith("/") for key in paths):
        raise SpecError(
            f"{source}: the {version} document has no paths",
            "the service declares no routes; define them in CHUTE_STATIC_ROUTES",
        )
    return version


def document_version(doc: Mapping) -> str | None:
    openapi, swagger = doc.get("openapi"), doc.get("swagger")
    if isinstance(openapi, str) and openapi.startswith("3."):
        return f"openapi {openapi}"
    if swagger is not None and str(swagger) in ("2", "2.0"):
        return "swagger 2.0"
    return None


# --------------------------------------------------------------------------------------------------
# $ref resolution


class Resolver:
    """Follows local `$ref`s ('#/components/...'); refs to other files resolve to nothing."""

    def __init__(self, doc: Mapping):
        self.doc = doc
        self.missing: list[str] = []  # refs that point to nothing, in the order met


    def lookup(self, ref: str) -> Any:
        if ref == "#":
            return self.doc
        if not ref.startswith("#/"):
            return None  # another file, or a plain-name anchor: not followed
        node: Any = self.doc
        for raw in ref[2:].split("/"):
            key = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        return node

    def deref(self, node: Any, seen: frozenset = frozenset()) -> tuple[Any, frozenset]:
        """`node` with its $ref chain followed, and the refs followed so far (a cycle gives {})."""
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                return {}, seen
            seen = seen | {ref}
            target = self.lookup(ref)
            if target is None and ref not in self.missing:
                self.missing.append(ref)
            node = target if target is not None else {}
        return node, seen


# --------------------------------------------------------------------------------------------------
# Conversion


def convert_document(doc: Mapping, port: int | None, source: str) -> Conversion:
    """Every operation of `doc` as a Route for `port`, or a skipped entry with its reason."""
    version = check_document(doc, source)
    swagger = version.startswith("swagger")
    doc, aliases = normalize_types(doc)
    resolver = Resolver(doc)
    prefix = _swagger_prefix(doc) if swagger else _openapi_prefix(doc)
    out = Conversion(version=version, prefix=prefix)
    no_responses: list[str] = []
    operation_ids = _operation_ids(doc, resolver, prefix)
    for raw_path, item in doc["paths"].items():
        raw_path = str(raw_path)
        if not raw_path.startswith("/"):
            continue  # extensions (x-...) live beside the paths
        item, _ = resolver.deref(item)
        if not isinstance(item, Mapping):
            continue
        path = _join(prefix, raw_path)
        shared = item.get("parameters")
        for method, operation in _operations(item):
            operation, _ = resolver.deref(operation)
            if not isinstance(operation, Mapping):
                operation = {}
            if not isinstance(operation.get("responses"), Mapping):
                no_responses.append(f"{method} {path}")
            _convert_operation(out, resolver, doc, path, method, operation, shared, port, swagger)
            if out.routes and (out.routes[-1].path, out.routes[-1].method) == (path, method) and not swagger:
                links = _links(resolver, operation, operation_ids, prefix)
                if links:
                    out.routes[-1] = replace(out.routes[-1], links=links)
    out.warnings = _defect_warnings(aliases, no_responses, resolver.missing)
    return out


def _operation_ids(doc: Mapping, resolver: Resolver, prefix: str) -> dict[str, str]:
    """operationId -> "METHOD /path" of every operation (links name their target so)."""
    ids = {}
    for raw_path, item in doc["paths"].items():
        item, _ = resolver.deref(item)
        if not str(raw_path).startswith("/") or not isinstance(item, Mapping):
            continue
        for method, operation in _operations(item):
            operation, _ = resolver.deref(operation)
            if isinstance(operation, Mapping) and isinstance(operation.get("operationId"), str):
                ids[operation["operationId"]] = f"{method} {_join(prefix, str(raw_path))}"
    return ids


def _links(resolver: Resolver, operation: Mapping, operation_ids: Mapping[str, str], prefix: str) -> tuple[dict, ...]:
    """OpenAPI 3 links of the operation's success answer: which operation takes a value of it, and
    how: ({"to": "METHOD /path", "parameters": {name: "$response.body#/pointer" or a constant}}, ...).
    --smoke calls the target after this operation, with those values (an id it created, say)."""
    response, _ = _success_response(resolver, operation)
    links = response.get("links") if isinstance(response, Mapping) else None
    out = []
    for link in (links or {}).values() if isinstance(links, Mapping) else ():
        link, _ = resolver.deref(link)
        if not isinstance(link, Mapping) or not isinstance(link.get("parameters"), Mapping):
            continue
        target = operation_ids.get(link.get("operationId")) if link.get("operationId") else None
        ref = link.get("operationRef")
        if target is None and isinstance(ref, str) and ref.startswith("#/paths/"):
            raw_path, _, method = ref[len("#/paths/"):].rpartition("/")
            path = unquote(raw_path).replace("~1", "/").replace("~0", "~")
            if method.lower() in OPERATION_KEYS and path.startswith("/"):
                target = f"{method.upper()} {_join(prefix, path)}"
        if target:
            params = {str(name): _jsonable(value) for name, value in link["parameters"].items()}
            out.append({"to": target, "parameters": params})
    return tuple(out)


# Type names that are not JSON Schema's but that real specs use (hand-written Swagger 2.0 above all):
# read as the type they plainly mean, so a parameter of `type: int` gets 0, not a string.
TYPE_ALIASES = {
    "int": "integer", "int32": "integer", "int64": "integer", "long": "integer", "short": "integer",
    "uint": "integer", "bigint": "integer", "float": "number", "double": "number", "decimal": "number",
    "num": "number", "str": "string", "text": "string", "bool": "boolean", "dict": "object", "map": "object",
    "list": "array", "date": "string", "datetime": "string", "date-time": "string",
}
_VALUE_KEYS = ("example", "examples", "default", "enum", "const", "x-example")
_SCHEMA_TYPES = ("integer", "number", "string", "boolean", "object", "array", "null", "file")


def normalize_types(doc: Mapping) -> tuple[Mapping, dict[str, list[str]]]:
    """A copy of `doc` with `type` aliases (`int`, `Integer`, `float`, ...) spelled as JSON Schema
    types, and where each alias was met (JSON-pointer-like locations); `doc` itself when none was."""
    found: dict[str, list[str]] = {}

    def canonical(value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        lowered = value.strip().lower()
        if lowered in _SCHEMA_TYPES:
            return lowered if lowered != value else None
        return TYPE_ALIASES.get(lowered)

    def walk(node: Any, where: str, depth: int) -> Any:
        if depth > 64:
            return node
        if isinstance(node, Mapping):
            out = {}
            for key, value in node.items():
                if key == "type" and canonical(value) is not None:
                    found.setdefault(str(value), []).append(where or "/")
                    out[key] = canonical(value)
                elif key == "type" and isinstance(value, list):
                    out[key] = [canonical(item) or item for item in value]
                    for item in value:
                        if canonical(item) is not None:
                            found.setdefault(str(item), []).append(where or "/")
                elif key in _VALUE_KEYS:
                    out[key] = value  # data, not schema: an example may well hold {"type": "int"}
                else:
                    pointer = str(key).replace("~", "~0").replace("/", "~1")
                    out[key] = walk(value, f"{where}/{pointer}", depth + 1)
            return out
        if isinstance(node, list):
            return [walk(item, f"{where}/{index}", depth + 1) for index, item in enumerate(node)]
        return node

    normalized = walk(doc, "", 0)
    return (normalized, found) if found else (doc, found)


def _defect_warnings(aliases: Mapping[str, list[str]], no_responses: list[str], missing: list[str]) -> list[str]:
    """One line per kind of defect, with a count and the first place it was met."""
    out = []
    for alias, places in aliases.items():
        more = f" and {len(places) - 1} more place(s)" if len(places) > 1 else ""
        out.append(f"type {alias!r} is not a JSON Schema type (at {places[0]}{more}); read as "
                   f"{TYPE_ALIASES.get(alias.strip().lower(), alias.strip().lower())!r}")
    if no_responses:
        more = f" and {len(no_responses) - 1} more" if len(no_responses) > 1 else ""
        out.append(f"{no_responses[0]}{more} declare no responses; their answers are taken as JSON")
    for ref in missing[:5]:
        out.append(f"$ref {ref!r} points to nothing in the document; read as an empty schema")
    if len(missing) > 5:
        out.append(f"... and {len(missing) - 5} more $ref(s) to nowhere")
    return out


def _operations(item: Mapping) -> Iterator[tuple[str, Any]]:
    for key, operation in item.items():
        if isinstance(key, str) and key.lower() in OPERATION_KEYS:
            yield key.upper(), operation


def _convert_operation(
    out: Conversion,
    resolver: Resolver,
    doc: Mapping,
    path: str,
    method: str,
    operation: Mapping,
    shared: Any,
    port: int | None,
    swagger: bool,
) -> None:
    template_params = [name for name in _PARAM_RE.findall(path)]
    # Judge a templated path by its shape: '/static/{file}' is still a static route.
    judged = _PARAM_RE.sub("p", path) if template_params else path
    decision = decide_public_path(judged, method)
    if decision.skip_reason:
        out.skipped.append({"path": path, "method": method, "port": port, "reason": decision.skip_reason})
        return
    params = _parameters(resolver, shared, operation.get("parameters"))
    counter = [0]
    token = _MADE_UP.set(counter)
    try:
        route = _convert_shapes(out, resolver, doc, path, method, operation, params, template_params, decision, port,
                                swagger)
    finally:
        _MADE_UP.reset(token)
    if route is not None:
        if route.example is not None:
            route = replace(route, example_source="generated" if counter[0] else "spec")
        out.routes.append(route)


def _convert_shapes(out: Conversion, resolver: Resolver, doc: Mapping, path: str, method: str, operation: Mapping,
                    params: list[dict], template_params: list[str], decision: Any, port: int | None,
                    swagger: bool) -> Route | None:
    if swagger:
        request = _swagger_request(resolver, doc, operation, params)
        response_kind, content_type = _swagger_response(resolver, doc, operation)
    else:
        request = _openapi_request(resolver, operation)
        response_kind, content_type = _openapi_response(resolver, operation)
    if request.skip_reason:
        out.skipped.append({"path": path, "method": method, "port": port, "reason": request.skip_reason})
        return None
    if request.kind == "none" and method in BODY_METHODS:
        # Hand-written and generated specs often leave a POST's body out: the caller's keys that are
        # not query parameters go in a JSON body (routes.UNDECLARED), not in the query string.
        request.kind = UNDECLARED
    path_params = _unique([p["name"] for p in params if p.get("in") == "path"] + template_params)
    example = _with_parameter_examples(resolver, request, params, path_params)
    return (
        Route(
            path=path,
            method=method,
            port=port,
            target_path=path,
            stream=response_kind == "stream",
            public_path=None if template_params else decision.public_path,
            request_kind=request.kind,
            file_fields=tuple(request.file_fields),
            request_content_type=request.content_type,
            response_kind=response_kind,
            content_type=content_type,
            response_headers=tuple(declared_response_headers(resolver, operation)),
            query_params=tuple(_unique(p["name"] for p in params if p.get("in") == "query")),
            path_params=tuple(path_params),
            example=example,
            source="openapi",
        )
    )


def _with_parameter_examples(resolver: Resolver, request: "RequestShape", params: list[dict], path_params: list[str]) -> Any:
    """The request's example plus the parameters a call needs: every path parameter (under `_path`)
    and the required or exemplified query parameters (top level for bodiless routes, else `_query`)."""
    example = request.example
    by_name = {p["name"]: p for p in params if p.get("in") == "path"}
    path_values = _parameter_examples(resolver, [by_name.get(name, {"name": name}) for name in path_params], every=True)
    query = [p for p in params if p.get("in") == "query"]
    query_values = _parameter_examples(resolver, query)
    if not path_values and not query_values:
        return example
    if example is not None and not isinstance(example, dict):
        return example  # a non-object body has no room for parameters
    out = dict(example or {})
    if query_values:
        if request.kind in ("none", UNDECLARED):
            for key, value in query_values.items():
                out.setdefault(key, value)
        else:
            out.setdefault("_query", query_values)
    if path_values:
        out["_path"] = path_values
    return _jsonable(out)


def _parameter_examples(resolver: Resolver, params: list[dict], every: bool = False) -> dict:
    """name -> example for the required parameters, those with an example or default, or `every` one."""
    values: dict = {}
    for param in params:
        name = param.get("name")
        if not isinstance(name, str) or not name:
            continue
        schema = param.get("schema") if isinstance(param.get("schema"), Mapping) else param  # Swagger 2: inline
        declared = "example" in param or bool(param.get("examples")) or (isinstance(schema, Mapping) and any(
            key in schema for key in ("example", "default", "enum", "const")))
        if not (every or param.get("required") is True or declared):
            continue
        listed = param.get("examples")  # OpenAPI 3: a map of Example objects (old FastAPI: a list)
        if isinstance(listed, Mapping) and listed:
            first, _ = resolver.deref(next(iter(listed.values())))
            listed = [first.get("value")] if isinstance(first, Mapping) and "value" in first else None
        if "example" in param:
            value = param["example"]
        elif isinstance(listed, list) and listed:
            value = listed[0]
        else:
            value = example_of(resolver, schema, name)
            if every and value == 0 and not isinstance(value, bool) and isinstance(schema, Mapping) \
                    and _number(schema.get("minimum")) is None:
                value = 1  # a path segment counts or names something: /bytes/0 or /items/0 is seldom valid
        if value is None and every:  # a path parameter of unknown type still needs a segment
            value = _untyped_segment(name)
            _made_up()
        values[name] = value
    return {key: value for key, value in values.items() if value is not None}


def _untyped_segment(name: str) -> str | int:
    """A value for a path parameter with no usable type: a number for id-like names, else a word."""
    lowered = name.lower()
    if lowered in ("id", "n", "num", "number", "count", "index", "page", "size", "code", "codes") or \
            lowered.endswith(("_id", "id", "_n", "count", "num")):
        return 1
    return "example"


def _form_example(resolver: Resolver, media: Mapping, file_fields: list[str]) -> Any:
    """The form's non-file fields with example values (required ones and those with an example)."""
    if "example" in media and isinstance(media["example"], Mapping):
        value = {k: v for k, v in media["example"].items() if k not in file_fields}
    else:
        built = example_of(resolver, media.get("schema"), top=True)
        value = {k: v for k, v in built.items() if k not in file_fields} if isinstance(built, Mapping) else {}
    return _jsonable(value) or None


def _unique(names) -> list[str]:
    return list(dict.fromkeys(name for name in names if isinstance(name, str) and name))


def _parameters(resolver: Resolver, shared: Any, own: Any) -> list[dict]:
    """Path-level then operation-level parameters; the operation's win by (name, in)."""
    merged: dict[tuple[str, str], dict] = {}
    for group in (shared, own):
        if not isinstance(group, list):
            continue
        for raw in group:
            param, _ = resolver.deref(raw)
            if isinstance(param, Mapping) and isinstance(param.get("name"), str) and isinstance(param.get("in"), str):
                merged[(param["name"], param["in"])] = dict(param)
    return list(merged.values())


# --------------------------------------------------------------------------------------------------
# Prefixes


def _join(prefix: str, path: str) -> str:
    return prefix + path if prefix else path


def _clean_prefix(path: str) -> str:
    segments = [seg for seg in path.split("/") if seg and seg != "."]
    return "/" + "/".join(segments) if segments else ""


def _openapi_prefix(doc: Mapping) -> str:
    servers = doc.get("servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], Mapping):
        return ""
    server = servers[0]
    url = server.get("url")
    if not isinstance(url, str):
        return ""
    variables = server.get("variables") if isinstance(server.get("variables"), Mapping) else {}

    def substitute(match: re.Match) -> str:
        var = variables.get(match.group(1))
        default = var.get("default") if isinstance(var, Mapping) else None
        return str(default) if default is not None else ""

    url = _PARAM_RE.sub(substitute, url)
    try:
        parsed = urlparse(url)
    except ValueError:
        return ""
    return _clean_prefix(parsed.path if (parsed.scheme or parsed.netloc) else url.split("?", 1)[0])


def _swagger_prefix(doc: Mapping) -> str:
    base = doc.get("basePath")
    return _clean_prefix(base) if isinstance(base, str) else ""


# --------------------------------------------------------------------------------------------------
# Request bodies


@dataclass
class RequestShape:
    kind: str = "none"
    file_fields: list[str] = field(default_factory=list)
    example: Any = None
    content_type: str | None = None  # a raw body's media type
    skip_reason: str | None = None


def media_type(raw: Any) -> str:
    return str(raw).split(";", 1)[0].strip().lower()


def is_json_type(ctype: str) -> bool:
    return ctype in ("application/json", "*/*", "application/*") or ctype.endswith("+json") or ctype == "text/json"


def _openapi_request(resolver: Resolver, operation: Mapping) -> RequestShape:
    body, _ = resolver.deref(operation.get("requestBody"))
    content = body.get("content") if isinstance(body, Mapping) else None
    if not isinstance(content, Mapping) or not content:
        return RequestShape()
    types = {media_type(key): value if isinstance(value, Mapping) else {} for key, value in content.items()}
    forms = []
    for ctype, kind in (("multipart/form-data", "multipart"), ("application/x-www-form-urlencoded", "form")):
        candidates = [t for t in types if t == ctype or (kind == "multipart" and t.startswith("multipart/"))]
        if candidates:
            media = types[candidates[0]]
            fields = file_fields(resolver, media.get("schema"))
            if kind == "multipart":  # Django REST framework's spectacular declares an upload as a URL
                fields += _upload_named_uris(resolver, media.get("schema"))
            encoding = media.get("encoding")
            if isinstance(encoding, Mapping):  # a part with its own content type is a file part
                for name, enc in encoding.items():
                    ctype_of_part = enc.get("contentType") if isinstance(enc, Mapping) else None
                    if isinstance(ctype_of_part, str) and not is_json_type(media_type(ctype_of_part)) \
                            and not media_type(ctype_of_part).startswith("text/plain"):
                        fields.append(str(name))
            fields = _unique(fields)
            forms.append(RequestShape(kind, file_fields=fields, example=_form_example(resolver, media, fields)))
    json_types = [t for t in types if is_json_type(t)]
    json_type = next((t for t in json_types if not t.startswith("*")), json_types[0] if json_types else None)
    # JSON wins, unless a form the route also takes carries files: JSON cannot carry those.
    with_files = next((form for form in forms if form.kind == "multipart" and form.file_fields), None)
    if json_type and with_files is None:
        media = types[json_type]
        return RequestShape("json", example=_media_example(resolver, media))
    if with_files is not None:
        return with_files
    if forms:
        return forms[0]
    # Anything else is a raw body (audio, image, octet-stream, text): sent upstream as bytes.
    return RequestShape("raw", content_type=_raw_type(types))


_UPLOAD_WORDS = ("file", "upload", "image", "audio", "video", "photo", "picture", "document", "attachment", "avatar")


def _upload_named_uris(resolver: Resolver, schema: Any) -> list[str]:
    """Properties of a multipart schema that are URL strings named like uploads (`file`, `image`...):
    drf-spectacular declares a FileField so unless COMPONENT_SPLIT_REQUEST is set."""
    schema, seen = resolver.deref(schema)
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    out = []
    for name, prop in (props or {}).items() if isinstance(props, Mapping) else ():
        prop, _ = resolver.deref(prop, seen)
        if isinstance(prop, Mapping) and "string" in _types(prop) and prop.get("format") in ("uri", "url") \
                and any(word in str(name).lower() for word in _UPLOAD_WORDS):
            out.append(str(name))
    return out


def _swagger_request(resolver: Resolver, doc: Mapping, operation: Mapping, params: list[dict]) -> RequestShape:
    body = next((p for p in params if p.get("in") == "body"), None)
    consumes = _list_of_types(operation.get("consumes", doc.get("consumes")))
    if body is not None:
        raw_types = [t for t in consumes if not is_json_type(t) and t not in _FORM_TYPES]
        if raw_types and not any(is_json_type(t) for t in consumes):
            return RequestShape("raw", content_type=_raw_type(raw_types))
        return RequestShape("json", example=_jsonable(example_of(resolver, body.get("schema"), top=True)))
    form = [p for p in params if p.get("in") == "formData"]
    if not form:
        return RequestShape()
    files = [p["name"] for p in form if p.get("type") == "file"]
    multipart = any(t.startswith("multipart/") for t in consumes)
    urlencoded = "application/x-www-form-urlencoded" in consumes
    example = _jsonable(_parameter_examples(resolver, [p for p in form if p["name"] not in files])) or None
    if multipart and (files or not urlencoded):
        return RequestShape("multipart", file_fields=_unique(files), example=example)
    if urlencoded or not files:  # urlencoded may still declare files
        return RequestShape("form", file_fields=_unique(files), example=example)
    return RequestShape("multipart", file_fields=_unique(files), example=example)


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _raw_type(types: Iterable[str]) -> str:
    """The raw body's media type to send: the first concrete one declared, else octet-stream."""
    concrete = [t for t in types if t and "*" not in t]
    return concrete[0] if concrete else "application/octet-stream"


def _list_of_types(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    return [media_type(item) for item in value] if isinstance(value, list) else []


def file_fields(resolver: Resolver, schema: Any, seen: frozenset = frozenset(), depth: int = 0) -> list[str]:
    """Names of the properties of a form schema that carry files (binary strings, arrays of them)."""
    schema, seen = resolver.deref(schema, seen)
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return []
    fields: list[str] = []
    for key in ("allOf", "anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for branch in branches:
                fields += file_fields(resolver, branch, seen, depth + 1)
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for name, prop in props.items():
            if _is_file(resolver, prop, seen, depth + 1):
                fields.append(str(name))
    return _unique(fields)


def _is_file(resolver: Resolver, schema: Any, seen: frozenset, depth: int) -> bool:
    schema, seen = resolver.deref(schema, seen)
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return False
    types = _types(schema)
    if "file" in types:
        return True
    if "string" in types and (
        schema.get("format") == "binary" or "contentMediaType" in schema or "contentEncoding" in schema
    ):
        return True
    if "array" in types and _is_file(resolver, schema.get("items"), seen, depth + 1):
        return True
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and any(_is_file(resolver, b, seen, depth + 1) for b in branches):
            return True
    return False


def _types(schema: Mapping) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [str(item) for item in kind]
    return []


# --------------------------------------------------------------------------------------------------
# Responses


def _success_response(resolver: Resolver, operation: Mapping) -> tuple[Any, str | None]:
    responses = operation.get("responses")
    if not isinstance(responses, Mapping):
        return None, None
    codes = {str(code).upper(): value for code, value in responses.items()}
    ordered = sorted(code for code in codes if len(code) == 3 and code.startswith("2") and code.isdigit())
    for code in ordered + ["2XX", "DEFAULT"]:
        if code in codes:
            response, _ = resolver.deref(codes[code])
            return response, code
    return None, None


# Headers a spec may declare that say nothing a caller loses on Chutes: the media type survives, the
# framing is the gateway's own, a content coding is decoded and a redirect followed by the cord.
_UNLOST_HEADERS = {"content-type", "content-length", "transfer-encoding", "content-encoding", "connection",
                   "date", "server", "location"}


def declared_response_headers(resolver: Resolver, operation: Mapping) -> list[str]:
    """The header names the spec declares on the operation's 2xx and 3xx answers (OpenAPI 3 and
    Swagger 2 both keep them in `responses.<code>.headers`), less those in _UNLOST_HEADERS."""
    responses = operation.get("responses")
    if not isinstance(responses, Mapping):
        return []
    names: list[str] = []
    for code, raw in responses.items():
        code = str(code).upper()
        if not (len(code) == 3 and code[0] in "23" and (code[1:].isdigit() or code[1:] == "XX")):
            continue
        response, _ = resolver.deref(raw)
        headers = response.get("headers") if isinstance(response, Mapping) else None
        if isinstance(headers, Mapping):
            names += [name for name in headers if isinstance(name, str) and name.lower() not in _UNLOST_HEADERS]
    return _unique(names)


def classify_media(ctype: str) -> str:
    """'stream', 'json', 'text' or 'binary' for one response media type."""
    if ctype in STREAM_TYPES:
        return "stream"
    if is_json_type(ctype):
        return "json"
    if ctype.startswith("text/"):
        return "text"
    return "binary"


_RESPONSE_PRIORITY = ("stream", "binary", "json", "text")


def _openapi_response(resolver: Resolver, operation: Mapping) -> tuple[str, str | None]:
    response, code = _success_response(resolver, operation)
    content = response.get("content") if isinstance(response, Mapping) else None
    if not isinstance(content, Mapping) or not content:
        return "json", None
    types = [media_type(key) for key in content]
    # A framework's default JSON beside a declared audio/image/stream type is the generic fallback
    # (FastAPI's `responses=`): the specific type is what the route really sends.
    best = min(types, key=lambda t: _RESPONSE_PRIORITY.index(classify_media(t)))
    kind = classify_media(best)
    if kind == "json":
        return "json", "application/json" if best in ("*/*", "application/*") else best
    return kind, best


def _swagger_response(resolver: Resolver, doc: Mapping, operation: Mapping) -> tuple[str, str | None]:
    response, code = _success_response(resolver, operation)
    produces = _list_of_types(operation.get("produces", doc.get("produces"))) or ["application/json"]
    schema, _ = resolver.deref(response.get("schema")) if isinstance(response, Mapping) else (None, frozenset())
    by_kind: dict[str, str] = {}
    for ctype in produces:
        by_kind.setdefault(classify_media(ctype), ctype)
    if isinstance(schema, Mapping) and ("file" in _types(schema) or schema.get("format") == "binary"):
        return "binary", by_kind.get("binary", "application/octet-stream")
    for kind in ("stream", "json", "text", "binary"):
        if kind in by_kind:
            ctype = by_kind[kind]
            return kind, "application/json" if kind == "json" and ctype.startswith("*") else ctype
    return "json", None


# --------------------------------------------------------------------------------------------------
# Example request bodies


def _media_example(resolver: Resolver, media: Mapping) -> Any:
    if "example" in media:
        return _jsonable(media["example"])
    examples = media.get("examples")
    if isinstance(examples, Mapping):
        for entry in examples.values():
            entry, _ = resolver.deref(entry)
            if isinstance(entry, Mapping) and "value" in entry:
                return _jsonable(entry["value"])
    return _jsonable(example_of(resolver, media.get("schema"), top=True))


def example_of(
    resolver: Resolver,
    schema: Any,
    name: str | None = None,
    seen: frozenset = frozenset(),
    depth: int = 0,
    top: bool = False,
) -> Any:
    """A plausible value for `schema`: its example, default, enum or const, else one built by type."""
    fallback = {} if top else None
    schema, seen = resolver.deref(schema, seen)
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return fallback
    for key in ("example", "default", "const"):
        if schema.get(key) is not None:
            return schema[key]
    for key in ("examples", "enum"):
        values = schema.get(key)
        if isinstance(values, list) and values:
            return values[0]
    if isinstance(schema.get("allOf"), list):
        parts = [example_of(resolver, branch, name, seen, depth + 1) for branch in schema["allOf"]]
        objects = [part for part in parts if isinstance(part, dict)]
        if objects or isinstance(schema.get("properties"), Mapping):
            merged: dict = {}
            for part in objects:
                merged.update(part)
            merged.update(_object_example(resolver, schema, seen, depth))
            return merged
        return next((part for part in parts if part is not None), fallback)
    for key in ("oneOf", "anyOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for branch in branches:
                resolved, _ = resolver.deref(branch, seen)
                if isinstance(resolved, Mapping) and _types(resolved) == ["null"]:
                    continue
                value = example_of(resolver, branch, name, seen, depth + 1, top)
                if value is not None:
                    return value
            return fallback
    types = [t for t in _types(schema) if t != "null"]
    kind = types[0] if types else ("object" if "properties" in schema else None)
    value = _example_by_type(resolver, schema, kind, name, seen, depth)
    return fallback if value is None else value


def _example_by_type(resolver: Resolver, schema: Mapping, kind: str | None, name, seen, depth) -> Any:
    if kind in ("integer", "number", "boolean") or (kind == "string" and schema.get("format") not in ("binary", "byte")):
        _made_up()  # (a file's bytes are never made up: --smoke sends a real sample file)
    if kind == "object":
        return _object_example(resolver, schema, seen, depth)
    if kind == "array":
        item = example_of(resolver, schema.get("items"), name, seen, depth + 1)
        count = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 1
        return [item] * max(0, min(count, 3)) if item is not None else []
    if kind == "string":
        return _string_example(schema, name)
    if kind in ("integer", "number"):
        return _number_example(schema, kind)
    if kind == "boolean":
        return False
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _number_example(schema: Mapping, kind: str) -> int | float:
    """The minimum (exclusive minimums stepped over), else 0, kept under the maximum."""
    value = _number(schema.get("minimum"))
    exclusive = schema.get("exclusiveMinimum")
    if exclusive is True and value is not None:  # OpenAPI 3.0: a flag beside `minimum`
        value += 1
    elif _number(exclusive) is not None:  # OpenAPI 3.1: the bound itself
        value = max(value if value is not None else exclusive + 1, exclusive + 1)
    if value is None:
        value = 0
    maximum = _number(schema.get("maximum"))
    if maximum is not None and value > maximum:
        value = maximum
    if kind == "integer":
        return int(math.ceil(value)) if abs(value) < 1e18 else 0
    return float(value)


def _object_example(resolver: Resolver, schema: Mapping, seen: frozenset, depth: int) -> dict:
    props = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    out: dict = {}
    for prop_name, prop in props.items():
        prop_name = str(prop_name)
        resolved, _ = resolver.deref(prop, seen)
        declared = isinstance(resolved, Mapping) and any(
            resolved.get(key) is not None for key in ("example", "default", "const")
        )
        if prop_name in required or declared:
            value = example_of(resolver, prop, prop_name, seen, depth + 1)
            if value is not None or prop_name in required:
                out[prop_name] = value
    free_form = not props and not any(key in schema for key in ("allOf", "anyOf", "oneOf", "properties"))
    if free_form and schema.get("additionalProperties", True) is not False and set(_types(schema)) <= {"object"}:
        # A free-form object: `{}` would do, but SDK passthrough cords send no body for `{}`.
        out["key"] = "value"
        _made_up()
    return out


def _string_example(schema: Mapping, name: str | None) -> str:
    formats = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com",
        "url": "https://example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "binary": "",
        "byte": "",
    }
    value = formats.get(str(schema.get("format")))
    if value is None:
        value = EXAMPLE_TEXT if (name or "").lower() in _TEXT_FIELD_NAMES else "string"
    min_len = schema.get("minLength")
    if isinstance(min_len, int) and not isinstance(min_len, bool) and len(value) < min_len:
        value = value + "x" * min(min_len - len(value), 64)
    max_len = schema.get("maxLength")
    if isinstance(max_len, int) and not isinstance(max_len, bool) and max_len >= 0 and len(value) > max_len:
        value = value[:max_len]
    return value


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: YAML dates become ISO strings, NaN/inf become null, keys become strings."""
    if depth > 32:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, depth + 1) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
