"""Proxy cords: every route the SDK's JSON-only passthrough cannot carry.

The Chutes caller always sends JSON. A proxy cord turns that JSON into the request the service
expects (query string, multipart upload, form, JSON body), sends it through one pooled HTTP client per
chute, and answers with what the service answered: JSON as JSON, binary and text raw with their
content type and length, streams streamed (never buffered whole when the platform does not encrypt).

Request conventions (README, "Calling proxy cords"):
  - `_query`: an object sent as the query string, for any method. A key named like one of the route's
    query parameters is sent as a query parameter too; for routes without a body, every key is.
  - file fields: `<field>_base64` (base64 of the bytes) or `<field>` as a `data:` URL; optional
    `<field>_filename` and `<field>_content_type`. Other keys of a multipart/form route are form fields.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import mimetypes
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping
from urllib.parse import quote

import aiohttp
from loguru import logger
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tools.routes import BODY_METHODS, UNDECLARED, Route

if TYPE_CHECKING:
    from chutes.chute import Chute

DEFAULT_TIMEOUT = 600.0
SMALL_BODY = 1 << 20  # answers up to this size are read whole; larger ones are streamed
CHUNK = 1 << 16
MAX_PROXY_PATH = 2048
RETRY_AFTER_SECONDS = "5"
KEEPALIVE_SECONDS = 2.0
OFFLOAD_BYTES = 1 << 20  # callers' bodies above this are turned into the upstream request in a thread
# A raw request body (request kind "raw") in the caller's JSON; other keys become query parameters.
RAW_BASE64_KEY, RAW_TEXT_KEY, RAW_TYPE_KEY = "body_base64", "body", "content_type"
# Where a catch-all call carries the body, by the route's request kind (else "form").
CATCH_ALL_BODY_KEY = {"json": "json", "raw": "raw", UNDECLARED: "json"}
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                "proxy-authenticate", "proxy-authorization", "content-length", "content-encoding"}
_DATA_URL_RE = re.compile(r"^data:([^;,]*)(;[^,]*)?,(.*)$", re.S)
_MAGIC = (
    (b"RIFF", "audio/wav"), (b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
    (b"ID3", "audio/mpeg"), (b"OggS", "audio/ogg"), (b"fLaC", "audio/flac"), (b"%PDF", "application/pdf"),
)


_EXTENSIONS = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3",
               "audio/ogg": ".ogg", "audio/flac": ".flac", "image/png": ".png", "image/jpeg": ".jpg",
               "image/webp": ".webp", "application/octet-stream": ".bin"}


def extension_for(content_type: str | None) -> str:
    """A file extension for a content type ('' when unknown)."""
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(bare) or mimetypes.guess_extension(bare) or ""


class BadRequest(Exception):
    """The caller's JSON cannot be turned into the upstream request."""


@dataclass(frozen=True)
class RouteOptions:
    """A module's per-route override (CHUTE_ROUTE_OVERRIDES)."""

    mode: str = "auto"  # auto | passthrough | proxy
    timeout: float | None = None
    file_fields: Mapping[str, str | None] = field(default_factory=dict)  # field -> content type

    @classmethod
    def parse(cls, key: str, raw: Mapping[str, Any]) -> "RouteOptions":
        from tools.errors import ManifestError

        where = f"CHUTE_ROUTE_OVERRIDES[{key!r}]"
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{where}: expected an object")
        unknown = set(raw) - {"mode", "timeout", "file_fields"}
        if unknown:
            raise ManifestError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (mode, timeout, file_fields)")
        mode = raw.get("mode", "auto")
        if mode not in ("auto", "passthrough", "proxy"):
            raise ManifestError(f"{where}: key 'mode' must be auto, passthrough or proxy, got {mode!r}")
        timeout = raw.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ManifestError(f"{where}: key 'timeout' must be a positive number of seconds, got {timeout!r}")
        files = raw.get("file_fields") or {}
        if isinstance(files, (list, tuple)):
            files = {name: None for name in files}
        if not isinstance(files, Mapping) or not all(isinstance(k, str) for k in files):
            raise ManifestError(f"{where}: key 'file_fields' must be a list of names or {{name: content_type}}")
        return cls(mode=mode, timeout=float(timeout) if timeout else None, file_fields=dict(files))


@dataclass(frozen=True)
class Target:
    """Where and how one proxy cord forwards."""

    route: Route
    port: int
    timeout: float = DEFAULT_TIMEOUT
    file_fields: Mapping[str, str | None] = field(default_factory=dict)
    upstream_error_status: int | None = 502

    @property
    def all_file_fields(self) -> set[str]:
        return set(self.route.file_fields) | set(self.file_fields)


# --------------------------------------------------------------------------------------------------
# One pooled client per chute and event loop


class UpstreamPool:
    """One aiohttp session per event loop, created on first use and closed on shutdown."""

    def __init__(self) -> None:
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # Idle connections are dropped before common servers drop them (uvicorn and Node: 5 s):
            # a POST on a connection the service has just closed fails, and is not retried.
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=CHUNK, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._sessions[loop] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def pool_for(chute: "Chute") -> UpstreamPool:
    pool = getattr(chute, "wrapper_pool", None)
    if pool is None:
        pool = UpstreamPool()
        chute.wrapper_pool = pool
        chute.router.on_shutdown.append(pool.close)
    return pool


# --------------------------------------------------------------------------------------------------
# Caller JSON -> upstream request


@dataclass
class Outgoing:
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json_body: Any = None
    has_json: bool = False
    data: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _param_values(key: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, (list, tuple)):
        return [pair for item in value for pair in _param_values(key, item)]
    if isinstance(value, bool):
        return [(key, "true" if value else "false")]
    if value is None:
        return []
    if isinstance(value, (dict,)):
        return [(key, json.dumps(value))]
    return [(key, str(value))]


def _sniff(data: bytes) -> str:
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


def _decode_file(key: str, value: Any) -> tuple[bytes, str | None]:
    if not isinstance(value, str):
        raise BadRequest(f"{key}: expected a base64 string or a data: URL")
    match = _DATA_URL_RE.match(value)
    content_type = None
    if match:
        content_type = match.group(1) or None
        value = match.group(3)
        if not (match.group(2) or "").endswith("base64"):
            from urllib.parse import unquote_to_bytes

            return unquote_to_bytes(value), content_type
    try:
        return base64.b64decode(value, validate=True), content_type
    except (binascii.Error, ValueError):
        raise BadRequest(f"{key}: not valid base64") from None


def request_kind(target: Target) -> str:
    """The kind this cord sends: the manifest's, except that override `file_fields` make a JSON,
    bodiless or undeclared route a multipart upload (the spec did not say it takes files)."""
    kind = target.route.request_kind
    if target.file_fields and kind in ("json", "none", UNDECLARED):
        return "multipart"
    return kind


def build_outgoing(target: Target, payload: Any, caller_query: list[tuple[str, str]], path: str | None = None) -> Outgoing:
    """The upstream request for one call, from the caller's JSON and the caller's own query string.

    `payload` is None when the caller sent no body at all, which is not the same as `{}`: an empty
    object is sent as `{}`, and a missing body on a route that takes one is a BadRequest (400).
    """
    route = target.route
    kind = request_kind(target)
    out = Outgoing(method=route.method, path=path or route.upstream_path, params=list(caller_query))
    takes_body = route.method in BODY_METHODS
    if payload is None:
        if takes_body and kind in ("json", "multipart", "form", "raw"):
            raise BadRequest(f"{route.method} {route.upstream_path} takes a {_kind_words(kind, route)}: "
                             "send it as the request's JSON body (the call had none)")
        payload = {}
        sent = False
    else:
        sent = True
    if not isinstance(payload, dict):
        if kind == "json":
            out.json_body, out.has_json = payload, True
            return out
        raise BadRequest("expected a JSON object")
    body = dict(payload)
    query = body.pop("_query", None)
    if query is not None:
        if not isinstance(query, dict):
            raise BadRequest("_query: expected an object")
        for key, value in query.items():
            out.params += _param_values(key, value)
    if kind == "raw":
        out.data, out.headers["Content-Type"] = _raw_body(route, body)
    declared = set(route.query_params)
    everything_to_query = kind in ("none", "raw") or (kind == UNDECLARED and not takes_body)
    for key in list(body):
        if everything_to_query or key in declared:
            out.params += _param_values(key, body.pop(key))
    if kind == "json" or (kind == UNDECLARED and takes_body):
        # On POST/PUT/PATCH `{}` is a body (a service reading JSON answers 415 to none at all); on
        # GET/DELETE a body is sent only when there is something in it.
        if (sent and takes_body) or body:
            out.json_body, out.has_json = body, True
    elif kind in ("multipart", "form"):
        out.data = _form_data(target, body, force_multipart=kind == "multipart")
    return out


def _kind_words(kind: str, route: Route) -> str:
    if kind == "raw":
        return f"raw {route.request_content_type or 'binary'} body (\"{RAW_BASE64_KEY}\" or \"{RAW_TEXT_KEY}\")"
    if kind == "json":
        return "JSON body"
    return f"{kind} body (file fields as \"<field>_base64\")"


def _raw_body(route: Route, body: dict) -> tuple[bytes, str]:
    """A raw request body from `body_base64` (base64 or a data: URL) or `body` (a data: URL or text),
    with `content_type` or the data URL's or the manifest's type; removes those keys from `body`."""
    content_type = body.pop(RAW_TYPE_KEY, None)
    if content_type is not None and not isinstance(content_type, str):
        raise BadRequest(f"{RAW_TYPE_KEY}: expected a string like audio/wav")
    if RAW_BASE64_KEY in body:
        data, url_type = _decode_file(RAW_BASE64_KEY, body.pop(RAW_BASE64_KEY))
        body.pop(RAW_TEXT_KEY, None)
    elif RAW_TEXT_KEY in body:
        value = body.pop(RAW_TEXT_KEY)
        if not isinstance(value, str):
            raise BadRequest(f"{RAW_TEXT_KEY}: expected a string (text or a data: URL)")
        data, url_type = _decode_file(RAW_TEXT_KEY, value) if _is_data_url(value) else (value.encode(), None)
    else:
        raise BadRequest(
            f"this route takes a raw {route.request_content_type or 'binary'} body: send it as"
            f' "{RAW_BASE64_KEY}" (base64 or a data: URL) or "{RAW_TEXT_KEY}" (text)'
        )
    return data, content_type or url_type or route.request_content_type or _sniff(data)


def _is_data_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("data:")


def _form_data(target: Target, body: dict, force_multipart: bool) -> aiohttp.FormData | dict:
    """Form fields and file parts; file parts named by `<field>_base64`, a data: URL, or the manifest."""
    declared = target.all_file_fields
    stems = {key[: -len("_base64")] for key in body if key.endswith("_base64")}
    stems |= {key for key, value in body.items() if key in declared or (_is_data_url(value) and not declared)}
    meta = {f"{stem}_filename" for stem in stems} | {f"{stem}_content_type" for stem in stems}
    files: dict[str, tuple[bytes, str | None]] = {}
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key in meta:
            continue
        if key.endswith("_base64") and key[: -len("_base64")] in stems:
            files[key[: -len("_base64")]] = _decode_file(key, value)
        elif key in stems:
            files[key] = _decode_file(key, value)
        else:
            fields[key] = value
    if not files and not force_multipart:
        return {key: _field_text(value) for key, value in fields.items()}
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, _field_text(value))
    for name, (data, data_url_type) in files.items():
        content_type = body.get(f"{name}_content_type") or target.file_fields.get(name) or data_url_type or _sniff(data)
        filename = body.get(f"{name}_filename") or name + extension_for(str(content_type))
        form.add_field(name, data, filename=str(filename), content_type=str(content_type))
    return form


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


# --------------------------------------------------------------------------------------------------
# Upstream answer -> caller


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
    if upstream.headers.get("Content-Encoding"):
        headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
    return headers


async def _iterate(upstream: aiohttp.ClientResponse, encrypt=None) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield (encrypt(chunk) + "\n").encode() if encrypt else chunk
    finally:
        upstream.release()


async def forward(pool: UpstreamPool, target: Target, outgoing: Outgoing, encrypt=None) -> Response | dict:
    """Send one request upstream and shape the answer; never raises to the caller."""
    route = target.route
    url = f"http://127.0.0.1:{target.port}{outgoing.path}"
    kwargs: dict[str, Any] = {"params": outgoing.params or None, "allow_redirects": False}
    if outgoing.has_json:
        kwargs["json"] = outgoing.json_body
    elif outgoing.data is not None:
        kwargs["data"] = outgoing.data
    if outgoing.headers:
        kwargs["headers"] = outgoing.headers
    kwargs["timeout"] = aiohttp.ClientTimeout(total=target.timeout, connect=5.0)
    try:
        upstream = await pool.session().request(outgoing.method, url, **kwargs)
    except asyncio.TimeoutError:
        return _error(504, f"the service did not answer {route.method} {outgoing.path} within {target.timeout:g}s")
    except (aiohttp.ClientConnectionError, OSError) as exc:
        logger.warning(f"{route.method} {outgoing.path} on port {target.port}: {type(exc).__name__}: {exc}")
        return _error(503, f"the service on port {target.port} is not answering (still starting, or stopped)")

    status = upstream.status
    content_type = upstream.headers.get("Content-Type", "")
    if status >= 500 and target.upstream_error_status is not None:
        body = await _read_limited(upstream, 4096)
        return _error(
            target.upstream_error_status,
            f"the service failed: {route.method} {outgoing.path} answered {status}",
            upstream_status=status,
            upstream_body=body.decode("utf-8", "replace"),
        )
    streaming = route.stream or content_type.startswith("text/event-stream") or (
        upstream.content_length is None and upstream.headers.get("Transfer-Encoding", "").lower() == "chunked"
    )
    headers = _response_headers(upstream)
    if encrypt is not None:  # the platform encrypts answers: whole bodies, or one line per chunk
        if streaming:
            return StreamingResponse(_iterate(upstream, encrypt), status_code=status)
        try:
            raw = await upstream.read()
        finally:
            upstream.release()
        if content_type.startswith("application/json") and status < 400:
            return {"json": encrypt(raw)}
        return {"type": "Response", "status_code": status, "headers": headers,
                "media_type": content_type or None, "body": encrypt(raw)}
    if streaming or (upstream.content_length or 0) > SMALL_BODY:
        if upstream.content_length is not None and not streaming:
            headers["Content-Length"] = str(upstream.content_length)
        return StreamingResponse(_iterate(upstream), status_code=status, headers=headers)
    try:
        raw = await upstream.read()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        upstream.release()
        return _error(502, f"the service broke off its answer to {route.method} {outgoing.path}")
    finally:
        upstream.release()
    return Response(raw, status_code=status, headers=headers)


async def _read_limited(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    try:
        return await upstream.content.read(limit)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return b""
    finally:
        upstream.release()


async def caller_payload(request: Request) -> Any:
    """The caller's JSON: decoded by the platform's middleware for POST/PUT/PATCH, else read here."""
    if request.method in ("POST", "PUT", "PATCH"):
        return getattr(request.state, "decrypted", None)
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not JSON") from None


def make_handler(chute: "Chute", target: Target):
    """The ASGI handler that replaces the SDK's for one proxy cord."""
    pool = pool_for(chute)

    async def handle(request: Request):
        try:
            payload = await caller_payload(request)
            query = list(request.query_params.multi_items())
            if int(request.headers.get("content-length") or 0) > OFFLOAD_BYTES:
                # decoding megabytes of base64 would hold up every other call of the chute meanwhile
                outgoing = await asyncio.to_thread(build_outgoing, target, payload, query)
            else:
                outgoing = build_outgoing(target, payload, query)
        except BadRequest as exc:
            return _error(400, str(exc))
        return await forward(pool, target, outgoing, getattr(request.state, "_encrypt", None))

    return handle


# --------------------------------------------------------------------------------------------------
# The catch-all cord: routes with path parameters, strictly by the manifest's templates

_SEGMENT_VALUE_RE = re.compile(r"^[A-Za-z0-9_~.\-+=,:]{1,200}$")


@dataclass(frozen=True)
class Template:
    route: Route
    target: Target
    pattern: re.Pattern

    @classmethod
    def of(cls, target: Target) -> "Template":
        parts = []
        for segment in target.route.upstream_path.strip("/").split("/"):
            if re.fullmatch(r"\{[^{}/]+\}", segment):
                parts.append(r"([^/]+)")
            else:
                parts.append(re.escape(segment))
        trailing = "/?" if not target.route.upstream_path.endswith("/") else "/"
        return cls(target.route, target, re.compile("^/" + "/".join(parts) + trailing + "$"))

    @property
    def label(self) -> str:
        return f"{self.route.method} {self.route.upstream_path}"


def check_proxy_path(path: Any) -> str:
    """A concrete path that may only name a route of this service, never another host, port or file."""
    if not isinstance(path, str) or not path:
        raise BadRequest("path: expected a string like /v1/models/some-id")
    if len(path) > MAX_PROXY_PATH:
        raise BadRequest(f"path: longer than {MAX_PROXY_PATH} characters")
    if not path.startswith("/") or path.startswith("//") or "://" in path:
        raise BadRequest("path: must be an absolute path on the service, like /v1/models/x")
    if any(ch in path for ch in "\r\n\t\\@?#%") or any(ord(ch) <= 0x20 or ord(ch) > 0x7e for ch in path):
        raise BadRequest("path: contains a character that is not allowed (control, space, \\, @, ?, #, %)")
    segments = path.strip("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments[:-1]) or segments[-1] in (".", ".."):
        raise BadRequest("path: empty, '.' or '..' segments are not allowed")
    return path


def match_template(templates: list[Template], method: str, path: str) -> tuple[Template | None, list[str]]:
    allowed = list(dict.fromkeys(t.label for t in templates))
    for template in templates:
        if template.route.method != method:
            continue
        match = template.pattern.match(path)
        if match and all(_SEGMENT_VALUE_RE.match(value) for value in match.groups()):
            return template, allowed
    return None, allowed


def make_catch_all_handler(chute: "Chute", templates: list[Template]):
    pool = pool_for(chute)

    async def handle(request: Request):
        try:
            payload = await caller_payload(request)
            if not isinstance(payload, dict):
                raise BadRequest('expected {"method": "GET", "path": "/...", "query": {...}, "json" | "form" | "raw": {...}}')
            method = str(payload.get("method", "GET")).upper()
            path = check_proxy_path(payload.get("path"))
            template, allowed = match_template(templates, method, path)
            if template is None:
                return _error(404, f"{method} {path} matches no route of this chute", allowed=allowed)
            inner = payload.get(CATCH_ALL_BODY_KEY.get(template.route.request_kind, "form"))
            if inner is None:
                inner = {}
            if isinstance(inner, dict):
                inner = dict(inner)
                if payload.get("query") is not None:
                    inner["_query"] = payload["query"]
            elif payload.get("query") is not None:
                raise BadRequest("query: only with an object body")
            outgoing = build_outgoing(template.target, inner, [], path=quote(path, safe="/~.-_+=,:"))
        except BadRequest as exc:
            return _error(400, str(exc))
        return await forward(pool, template.target, outgoing, getattr(request.state, "_encrypt", None))

    return handle

