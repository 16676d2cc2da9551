"""Route records and the route manifest: parsing every manifest form, and the one filtering rule.

The filtering rule (`decide_public_path`) is shared by discovery and registration, and it judges cord
paths with the Chutes SDK's own regex, so a route it accepts can never raise `InvalidPath`.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tools.runtime.constants import MANIFEST_ENV, MANIFEST_JSON_ENV, PORT_MAX, PORT_MIN, SKIP_REGISTRATION_ENV, env_flag, is_port
from tools.runtime.errors import ManifestError
from tools.runtime.sdk.rules import is_valid_cord_path

# 3: request kind "undeclared" (before it, discovery wrote "none" for a POST whose spec declares no body)
MANIFEST_VERSION = 3
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
UNSERVED_METHODS = ("HEAD", "OPTIONS", "TRACE", "CONNECT")
BODY_METHODS = ("POST", "PUT", "PATCH")  # the methods whose caller body the platform reads
# The spec declares no request body: for POST/PUT/PATCH the caller's keys that are not declared query
# parameters go in a JSON body; for other methods it is "none" (every key to the query string).
UNDECLARED = "undeclared"
REQUEST_KINDS = ("json", "multipart", "form", "raw", "none", UNDECLARED, "gradio")  # gradio: tools/runtime/cords/gradio.py
RESPONSE_KINDS = ("json", "binary", "text", "stream")

# How callers' JSON carries what a route takes (README, "Calling proxy cords").
# A raw request body (request kind "raw") in the caller's JSON; other keys become query parameters.
RAW_BASE64_KEY, RAW_TEXT_KEY, RAW_TYPE_KEY = "body_base64", "body", "content_type"
# Where a catch-all call carries the body, by the route's request kind (else "form").
CATCH_ALL_BODY_KEY = {"json": "json", "raw": "raw", UNDECLARED: "json"}

_EXTENSIONS = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
               "audio/ogg": ".ogg", "audio/flac": ".flac", "image/png": ".png", "image/jpeg": ".jpg",
               "image/webp": ".webp", "application/octet-stream": ".bin"}


def extension_for(content_type: str | None) -> str:
    """A file extension for a content type ('' when unknown)."""
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(bare) or mimetypes.guess_extension(bare) or ""

# Words that name an action on the service itself rather than a request to it: calling such a route
# can stop the service, put it to sleep, drop its model or empty its cache (SGLang's GET /flush_cache,
# /start_profile and /release_memory_occupation, vLLM's POST /sleep, MLServer's and Triton's
# .../unload, kinto's POST /__flush__, which empties its whole database). `--smoke` calls those
# routes after all others, one at a time; discovery never asks one (a GET is "safe" only by
# convention, RFC 9110 §9.2.1).
SERVICE_ACTIONS = frozenset({
    "abort", "clear", "destroy", "disable", "drain", "evict", "exit", "flush", "kill", "offload", "pause",
    "purge", "quit", "release", "reload", "reset", "restart", "shutdown", "sleep", "start", "stop",
    "suspend", "terminate", "unload", "wipe",
})
# the first word of a segment: flush_cache, flushCache, FlushCache, FLUSH, kinto's __flush__
_FIRST_WORD_RE = re.compile(r"[^A-Za-z]*([A-Z]+(?![a-z])|[A-Za-z][a-z]*)")


def acts_on_service(path: str) -> bool:
    """Whether a literal segment of `path` begins with one of SERVICE_ACTIONS (`/flush_cache`,
    `/v2/repository/models/{name}/unload`, `/stop-profile`, `/flushCache`; not `/starter`, `/items/{id}`)."""
    for segment in path.split("/"):
        if segment.startswith("{"):  # a parameter, `{stop}`: no word of the route's
            continue
        first = _FIRST_WORD_RE.match(segment)
        if first and first.group(1).lower() in SERVICE_ACTIONS:
            return True
    return False


# First path segments that belong to a web UI or framework internals, never to the service's API.
INTERNAL_PREFIXES = (
    "/static", "/assets", "/svelte", "/login", "/logout", "/gradio_api", "/theme",
    "/docs", "/redoc",
)
_FILE_EXTENSION_RE = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_PATH_PARAM_RE = re.compile(r"\{([^}/]*)\}")
_INVALID_CHARS_RE = re.compile(r"[^a-z0-9_\-/]")


@dataclass(frozen=True)
class Route:
    """One upstream route of a wrapped service, and how it is exposed as a cord."""

    path: str
    method: str = "POST"
    port: int | None = None
    target_path: str | None = None
    stream: bool = False
    public_path: str | None = None
    function_name: str | None = None
    request_kind: str = "json"
    file_fields: tuple[str, ...] = ()
    request_content_type: str | None = None  # a raw body's media type (request kind "raw")
    response_kind: str = "json"
    content_type: str | None = None
    response_headers: tuple[str, ...] = ()  # headers its spec says the answer carries (none reach callers on Chutes)
    query_params: tuple[str, ...] = ()
    path_params: tuple[str, ...] = ()
    example: Any = None
    source: str = "manifest"
    gradio: Any = None  # tools.runtime.gradio_spec.GradioFunction, for request kind "gradio"
    # Where `example` comes from: "spec" (its examples, defaults, enums), "generated" (some values made
    # up by type: a 4xx to it is "not tried with real input"), "module" (CHUTE_ROUTE_OVERRIDES); None: unknown
    example_source: str | None = None
    # OpenAPI links of its answer: [{"to": "METHOD /path", "parameters": {name: "$response.body#/id"}}]
    links: tuple = ()

    @property
    def upstream_path(self) -> str:
        return self.target_path or self.path

    @property
    def key(self) -> tuple[str, str]:
        """Routes are the same route when path and method match (the README's merge rule)."""
        return (self.path, self.method)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "path": self.path,
            "method": self.method,
            "port": self.port,
            "target_path": self.upstream_path,
            "stream": self.stream,
            "request": {"kind": self.request_kind, "file_fields": list(self.file_fields)},
            "response": {"kind": self.response_kind, "content_type": self.content_type},
            "query_params": list(self.query_params),
            "path_params": list(self.path_params),
        }
        if self.request_content_type:
            out["request"]["content_type"] = self.request_content_type
        if self.response_headers:  # optional: manifests without it read as before
            out["response"]["headers"] = list(self.response_headers)
        if self.public_path:
            out["public_path"] = self.public_path
        if self.function_name:
            out["function_name"] = self.function_name
        if self.example is not None:
            out["example"] = self.example
            if self.example_source:
                out["example_source"] = self.example_source
        if self.gradio is not None:
            out["gradio"] = self.gradio.to_json()
        if self.links:
            out["links"] = [dict(link) for link in self.links]
        return out


@dataclass(frozen=True)
class Decision:
    """What the filtering rule decided for one route: a public cord path, or a reason to skip."""

    public_path: str | None
    skip_reason: str | None = None


@dataclass
class Manifest:
    routes: list[Route] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    source: str | None = None
    # port -> the path that answers 2xx once the service is ready (found by discovery; the module's
    # SERVICE_READY_PATHS wins). An optional key: toolkits that predate it ignore it.
    ready_paths: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "routes": [route.to_json() for route in self.routes],
            "skipped": self.skipped,
        }
        if self.ready_paths:
            out["ready_paths"] = {str(port): path for port, path in sorted(self.ready_paths.items())}
        return out


def sanitize_path(path: str) -> str:
    """Turn an upstream path into a candidate cord path: lowercase, no trailing slash, `_` for the rest."""
    lowered = path.strip().lower().split("?", 1)[0]
    segments = [seg for seg in lowered.split("/") if seg]
    cleaned = []
    for seg in segments:
        seg = _INVALID_CHARS_RE.sub("_", seg)
        if seg.startswith("-"):
            seg = "_" + seg
        cleaned.append(seg)
    return "/" + "/".join(cleaned)


def decide_public_path(path: str, method: str, public_path: str | None = None) -> Decision:
    """The one filtering rule, used by discovery and registration alike.

    Skips what a cord cannot or should not serve (path parameters, static files, the root, web-UI
    internals, HEAD/OPTIONS); everything else gets a public path the SDK accepts, with the original
    path kept by the caller as the upstream target.
    """
    method = method.upper()
    if method in UNSERVED_METHODS:
        return Decision(None, f"{method} is answered by the HTTP server itself, not served as a cord")
    if method not in HTTP_METHODS:
        return Decision(None, f"unsupported HTTP method {method!r}")
    raw = (public_path or path or "").strip()
    bare = raw.split("?", 1)[0]
    if bare.rstrip("/") == "":
        return Decision(None, "root path '/' (usually a web UI, not an API route)")
    params = _PATH_PARAM_RE.findall(bare)
    if params:
        names = ", ".join("{" + name + "}" for name in params)
        return Decision(None, f"path parameter {names}: cord paths cannot hold parameters")
    if _FILE_EXTENSION_RE.search(bare.rstrip("/")):
        return Decision(None, "static file (path ends in a file extension)")
    first = "/" + bare.strip("/").split("/", 1)[0].lower()
    if first.startswith("/__"):
        return Decision(None, "framework-internal route (starts with /__)")
    if first in INTERNAL_PREFIXES:
        return Decision(None, f"web UI or framework route ({first})")
    candidate = sanitize_path(bare)
    if not is_valid_cord_path(candidate):
        return Decision(None, f"cannot be made a valid cord path (got {candidate!r})")
    return Decision(candidate)


# --------------------------------------------------------------------------------------------------
# Parsing: every manifest form, with errors that name the file, the route's index and the key.


def _where(source: str, index: int | None, key: str | None = None) -> str:
    parts = [source]
    if index is not None:
        parts.append(f"route {index}")
    if key:
        parts.append(f"key {key!r}")
    return ": ".join(parts)


def _port(value: Any, source: str, index: int, key: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ManifestError(f"{_where(source, index, key)}: expected a port number, got {value!r}")
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ManifestError(
            f"{_where(source, index, key)}: expected a port number {PORT_MIN}-{PORT_MAX}, got {value!r}"
        ) from None
    if not is_port(port) or (isinstance(value, float) and value != port):
        raise ManifestError(f"{_where(source, index, key)}: port {value!r} is outside {PORT_MIN}-{PORT_MAX}")
    return port


def _str(value: Any, source: str, index: int, key: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ManifestError(f"{_where(source, index, key)}: missing (every route needs a path)")
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{_where(source, index, key)}: expected a string, got {type(value).__name__}")
    return value


def _names(value: Any, source: str, index: int, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{_where(source, index, key)}: expected a list, got {type(value).__name__}")
    names = []
    for item in value:
        if isinstance(item, dict):  # discovery may record {"name": ..., "required": ...}
            item = item.get("name")
        if not isinstance(item, str) or not item:
            raise ManifestError(f"{_where(source, index, key)}: entries must be names, got {item!r}")
        names.append(item)
    return tuple(names)


def parse_route(entry: Any, source: str, index: int, origin: str = "manifest", version: int = MANIFEST_VERSION) -> Route:
    """One route from any manifest form (seed keys, later keys, nested `cord`, v2/v3 kinds).

    `version` is the manifest's: before 3, discovery wrote "none" for a POST/PUT/PATCH whose spec
    declares no body, which is read as "undeclared" (what that discovery meant)."""
    if not isinstance(entry, Mapping):
        raise ManifestError(f"{_where(source, index)}: expected an object, got {type(entry).__name__}")
    cord = entry.get("cord") or {}
    if not isinstance(cord, Mapping):
        raise ManifestError(f"{_where(source, index, 'cord')}: expected an object")

    def pick(*keys: str) -> tuple[str, Any]:
        for key in keys:
            if key in entry and entry[key] is not None:
                return key, entry[key]
            if key in cord and cord[key] is not None:
                return f"cord.{key}", cord[key]
        return keys[0], None

    key, raw_path = pick("path", "public_api_path")
    path = _str(raw_path, source, index, key, required=True)
    if not path.startswith("/"):
        raise ManifestError(f"{_where(source, index, key)}: must start with '/', got {path!r}")
    key, raw_method = pick("method", "public_api_method")
    method = _str(raw_method, source, index, key) or "POST"
    if method.upper() not in HTTP_METHODS + UNSERVED_METHODS:
        raise ManifestError(f"{_where(source, index, key)}: unknown HTTP method {method!r}")
    key, raw_port = pick("port", "passthrough_port")
    port = _port(raw_port, source, index, key)
    key, raw_target = pick("target_path", "passthrough_path")
    target = _str(raw_target, source, index, key)
    if target is not None and not target.startswith("/"):
        raise ManifestError(f"{_where(source, index, key)}: must start with '/', got {target!r}")
    # `public_api_path` is the path itself in forms without `path`, and an explicit override otherwise.
    has_path = entry.get("path") is not None or cord.get("path") is not None
    key, raw_public = pick("public_path", "public_api_path") if has_path else pick("public_path")
    public = _str(raw_public, source, index, key)
    key, raw_stream = pick("stream")
    if raw_stream is not None and not isinstance(raw_stream, bool):
        raise ManifestError(f"{_where(source, index, key)}: expected true or false, got {raw_stream!r}")
    key, raw_fn = pick("function_name")
    function_name = _str(raw_fn, source, index, key)
    if function_name is not None and not function_name.isidentifier():
        raise ManifestError(f"{_where(source, index, key)}: {function_name!r} is not a valid Python name")

    request = entry.get("request") or {}
    response = entry.get("response") or {}
    if not isinstance(request, Mapping):
        raise ManifestError(f"{_where(source, index, 'request')}: expected an object")
    if not isinstance(response, Mapping):
        raise ManifestError(f"{_where(source, index, 'response')}: expected an object")
    request_kind = request.get("kind", "json")
    if request_kind not in REQUEST_KINDS:
        raise ManifestError(
            f"{_where(source, index, 'request.kind')}: {request_kind!r} is not one of {', '.join(REQUEST_KINDS)}"
        )
    if request_kind == "none" and version < 3 and method.upper() in BODY_METHODS:
        request_kind = UNDECLARED
    response_kind = response.get("kind", "stream" if raw_stream else "json")
    if response_kind not in RESPONSE_KINDS:
        raise ManifestError(
            f"{_where(source, index, 'response.kind')}: {response_kind!r} is not one of {', '.join(RESPONSE_KINDS)}"
        )
    content_type = response.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise ManifestError(f"{_where(source, index, 'response.content_type')}: expected a string")
    request_content_type = request.get("content_type")
    if request_content_type is not None and not isinstance(request_content_type, str):
        raise ManifestError(f"{_where(source, index, 'request.content_type')}: expected a string")
    gradio = None
    if request_kind == "gradio":
        from tools.runtime.gradio_spec import GradioFunction

        try:
            gradio = GradioFunction.from_json(entry.get("gradio"), "gradio")
        except ValueError as exc:
            raise ManifestError(f"{_where(source, index)}: {exc}") from None
    return Route(
        path=path,
        method=method.upper(),
        port=port,
        target_path=target,
        stream=bool(raw_stream) or response_kind == "stream",
        public_path=public,
        function_name=function_name,
        request_kind=request_kind,
        file_fields=_names(request.get("file_fields"), source, index, "request.file_fields"),
        request_content_type=request_content_type,
        response_kind=response_kind,
        content_type=content_type,
        response_headers=_names(response.get("headers"), source, index, "response.headers"),
        query_params=_names(entry.get("query_params"), source, index, "query_params"),
        path_params=_names(entry.get("path_params"), source, index, "path_params"),
        example=entry.get("example"),
        source=origin,
        gradio=gradio,
        example_source=_example_source(entry, source, index),
        links=_links(entry.get("links"), source, index),
    )


def _links(value: Any, source: str, index: int) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
            isinstance(link, Mapping) and isinstance(link.get("to"), str) and " /" in link["to"]
            and isinstance(link.get("parameters"), Mapping) for link in value):
        raise ManifestError(f"{_where(source, index, 'links')}: expected a list of "
                            "{\"to\": \"METHOD /path\", \"parameters\": {...}}")
    return tuple({"to": link["to"], "parameters": dict(link["parameters"])} for link in value)


EXAMPLE_SOURCES = ("spec", "generated", "module")


def _example_source(entry: Mapping, source: str, index: int) -> str | None:
    value = entry.get("example_source")
    if value is not None and value not in EXAMPLE_SOURCES:
        raise ManifestError(f"{_where(source, index, 'example_source')}: {value!r} is not one of {', '.join(EXAMPLE_SOURCES)}")
    return value


def parse_manifest(data: Any, source: str, origin: str = "manifest") -> Manifest:
    """A manifest from decoded JSON: a bare list, or an object with `routes` (any version)."""
    skipped: list[dict] = []
    ready: dict[int, str | None] = {}
    version = 1
    if isinstance(data, list):
        entries = data
    elif isinstance(data, Mapping):
        if "routes" not in data:
            raise ManifestError(f"{source}: no 'routes' key (expected a list of routes or {{\"routes\": [...]}})")
        entries = data["routes"]
        version = data.get("version", 1)
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise ManifestError(
                f"{source}: manifest version {version!r} is newer than this toolkit reads ({MANIFEST_VERSION}); update chutes-wrappers"
            )
        if not isinstance(entries, list):
            raise ManifestError(f"{source}: 'routes' must be a list, got {type(entries).__name__}")
        skipped = list(data.get("skipped") or [])
        ready = parse_ready_paths(data.get("ready_paths"), f"{source}: key 'ready_paths'")
    else:
        raise ManifestError(f"{source}: expected a list of routes or an object with 'routes', got {type(data).__name__}")
    routes = [parse_route(entry, source, index, origin, version) for index, entry in enumerate(entries)]
    return Manifest(routes=routes, skipped=skipped, source=source,
                    ready_paths={port: path for port, path in ready.items() if path})


def parse_ready_paths(value: Any, where: str = "SERVICE_READY_PATHS") -> dict[int, str | None]:
    """{port: "/path"} (ports as numbers or digit strings; None: the port alone tells readiness)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: expected {{port: '/path'}}, e.g. {{8080: '/health'}}")
    out: dict[int, str | None] = {}
    for key, path in value.items():
        port = int(key) if isinstance(key, str) and key.isdigit() else key
        if not is_port(port):
            raise ManifestError(f"{where}: {key!r} is not a port number {PORT_MIN}-{PORT_MAX}")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")
                                 or any(ch in path for ch in " \r\n\t\0#")):
            raise ManifestError(f"{where}[{key!r}]: expected a path starting with '/' (or None), got {path!r}")
        out[port] = path
    return out


def read_manifest_file(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: route manifest not found") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read route manifest ({exc.strerror})") from None
    return parse_manifest(decode_json(text, str(path)), str(path))


def decode_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def merge_routes(primary: Iterable[Route], extra: Iterable[Route]) -> tuple[list[Route], list[Route]]:
    """Primary routes, then each extra route that is new; returns (merged, duplicates).

    A route duplicates another with the same path and method on the same port; a route with no
    port (the module's default) duplicates one on any port. The same path on two ports is two routes.
    """
    merged = list(primary)
    ports: dict[tuple[str, str], set[int | None]] = {}
    for route in merged:
        ports.setdefault(route.key, set()).add(route.port)
    duplicates = []
    for route in extra:
        taken = ports.setdefault(route.key, set())
        if taken and (route.port is None or None in taken or route.port in taken):
            duplicates.append(route)
            continue
        taken.add(route.port)
        merged.append(route)
    return merged, duplicates


def coerce_routes(routes: Iterable[Route | Mapping], source: str = "routes") -> list[Route]:
    """Accept Route records or plain dicts (static routes written in a module)."""
    out = []
    for index, route in enumerate(routes):
        out.append(route if isinstance(route, Route) else parse_route(route, source, index, "static"))
    return out


@dataclass(frozen=True)
class ManifestChoice:
    """Which manifest a module reads: the first of CHUTES_ROUTE_MANIFEST_JSON (inline),
    CHUTES_ROUTE_MANIFEST (a file), an explicit path, `<module>.routes.json` beside the module."""

    kind: str  # "inline" | "file" | "none"
    path: Path | None = None
    inline: str | None = None
    reason: str = ""  # for "none": "skipped" (CHUTES_SKIP_ROUTE_REGISTRATION) or "absent"; else the source

    def describe(self) -> str:
        if self.kind == "inline":
            return f"{MANIFEST_JSON_ENV} (inline)"
        if self.kind == "file":
            return f"{self.path}" + (f" ({self.reason})" if self.reason else "")
        if self.reason == "skipped":
            return f"none ({SKIP_REGISTRATION_ENV} is set)"
        return f"none ({self.path.name if self.path else 'no module file'} not found: static routes only)"

    def read(self) -> "Manifest | None":
        if self.kind == "inline":
            return parse_manifest(decode_json(self.inline or "", MANIFEST_JSON_ENV), MANIFEST_JSON_ENV)
        if self.kind == "file":
            return read_manifest_file(self.path)
        return None


def manifest_path(module_file: str | Path) -> Path:
    """`<module>.routes.json` beside the module: where discovery writes and the module reads."""
    module_file = Path(module_file)
    return module_file.with_name(f"{module_file.stem}.routes.json")


def choose_manifest(module_file: str | Path | None, explicit: str | Path | None = None) -> ManifestChoice:
    """The one precedence rule for the manifest a module reads (load_route_manifest, --validate)."""
    if env_flag(SKIP_REGISTRATION_ENV):
        return ManifestChoice("none", reason="skipped")
    inline = os.environ.get(MANIFEST_JSON_ENV, "").strip()
    if inline:
        return ManifestChoice("inline", inline=inline)
    env_path = os.environ.get(MANIFEST_ENV, "").strip()
    if env_path:
        return ManifestChoice("file", Path(env_path), reason=MANIFEST_ENV)
    if explicit:
        return ManifestChoice("file", Path(explicit))
    if module_file is None:
        return ManifestChoice("none", reason="absent")
    candidate = manifest_path(module_file)
    if candidate.exists():
        return ManifestChoice("file", candidate)
    return ManifestChoice("none", candidate, reason="absent")


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write atomically: a reader sees the old manifest or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except BaseException:  # a full disk or an interrupt must not leave the half-written temp file
        tmp.unlink(missing_ok=True)
        raise
