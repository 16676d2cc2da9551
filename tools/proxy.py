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
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
from loguru import logger
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tools import sdk
from tools.errors import BadRequest, UpstreamBroke
from tools.registration import Target
from tools.routes import (  # noqa: F401  (extension_for and the raw keys are proxy's conventions too)
    BODY_METHODS, CATCH_ALL_BODY_KEY, RAW_BASE64_KEY, RAW_TEXT_KEY, RAW_TYPE_KEY, UNDECLARED, Route, extension_for,
)

SMALL_BODY = 1 << 20  # answers up to this size are read whole; larger ones are streamed
CHUNK = 1 << 16
MAX_PROXY_PATH = 2048
RETRY_AFTER_SECONDS = "5"
KEEPALIVE_SECONDS = 2.0
OFFLOAD_BYTES = 1 << 20  # callers' bodies above this are turned into the upstream request in a thread
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                "proxy-authenticate", "proxy-authorization", "content-length", "content-encoding"}
_DATA_URL_RE = re.compile(r"^data:([^;,]*)(;[^,]*)?,(.*)$", re.S)
_MAGIC = (
    (b"RIFF", "audio/wav"), (b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
    (b"ID3", "audio/mpeg"), (b"OggS", "audio/ogg"), (b"fLaC", "audio/flac"), (b"%PDF", "application/pdf"),
)


# --------------------------------------------------------------------------------------------------
# One pooled client per chute and event loop


class UpstreamPool:
    """One aiohttp session per event loop, created on first use and closed on shutdown."""

    def __init__(self) -> None:
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        # CHUTE_UPSTREAM_HEADERS, resolved from the chute's environment when it starts (never logged)
        self.headers: dict[str, str] = {}

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # Idle connections are dropped before common servers drop them (uvicorn and Node: 5 s):
            # a POST on a connection the service has just closed fails, and is not retried.
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=CHUNK, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None), headers=self.headers or None,
            )
            self._sessions[loop] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


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


def header_value(field: str, value: Any) -> Any:
    """A caller's value that becomes part of an upstream header (a content type, a file name): CR, LF
    or NUL in it would split or end the header, so the caller gets a 400 naming the field."""
    if isinstance(value, str) and any(ch in value for ch in "\r\n\0"):
        raise BadRequest(f"{field}: must not contain CR, LF or NUL")
    return value


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
        content_type = header_value(f"{key} (its data: URL's media type)", match.group(1)) or None
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
    content_type = header_value(RAW_TYPE_KEY, body.pop(RAW_TYPE_KEY, None))
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
        content_type = (header_value(f"{name}_content_type", body.get(f"{name}_content_type"))
                        or target.file_fields.get(name) or data_url_type or _sniff(data))
        filename = header_value(f"{name}_filename", body.get(f"{name}_filename")) or name + extension_for(str(content_type))
        form.add_field(name, data, filename=str(filename), content_type=str(content_type))
    return form


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


# --------------------------------------------------------------------------------------------------
# Upstream answer -> caller
#
# What a caller may receive, wherever the chute runs (README, "The platform's contract"):
# - a 2xx answer with the service's content type, body and headers (less hop-by-hop ones);
# - the service's 4xx as 400 (429 stays 429): the Chutes gateway passes a miner's 400 and 429 to the
#   caller and counts every other status >= 400 as an instance failure (chutes-api api/chute/util.py
#   `_invoke_one`), and a caller's mistake must never fail an instance;
# - the service's 5xx as `upstream_error_status` (502; None keeps the service's status);
# - 503 (service not answering), 504 (no answer in time), 502 (broke off, malformed answer).
# Error bodies are JSON: the service's own JSON object (an OpenAI client still finds its "error"),
# plus "detail" (the service's own, else ours), "upstream_status" and "upstream_body" (its text).

ERROR_BODY_LIMIT = 1 << 16
SSE_ERROR_EVENT = "event: error\ndata: {}\n\n"  # the last event of an SSE answer the service broke off
# Not forwarded: hop-by-hop headers (RFC 9110 §7.6.1), what the chute's server sets itself (one
# `date` and one `server`, the chute's: hypercorn adds both), and what aiohttp already undid.
_DROP_HEADERS = _HOP_HEADERS | {"proxy-connection", "date", "server"}
_TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/jsonl", "application/xml",
               "application/javascript", "application/stream+json", "application/problem+json")


def _error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers or None)


def _is_text(content_type: str) -> bool:
    bare = content_type.split(";", 1)[0].strip().lower()
    return bare.startswith(_TEXT_TYPES) or bare.endswith("+json") or bare.endswith("+xml")


def _answer_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The service's headers for the caller, repeated ones kept repeated (two Set-Cookie stay two)."""
    named = {
        token.strip().lower()
        for value in upstream.headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in upstream.headers.items()
        if name.lower() not in _DROP_HEADERS and name.lower() not in named
    ] + ([(b"content-encoding", upstream.headers["Content-Encoding"].encode("latin-1"))]
         if upstream.headers.get("Content-Encoding") else [])


def _with_headers(response: Response, headers: list[tuple[bytes, bytes]]) -> Response:
    taken = {name for name, _ in response.raw_headers if name in (b"content-length", b"content-type")}
    response.raw_headers.extend((name, value) for name, value in headers if name not in taken)
    return response


async def _upstream_error(upstream: aiohttp.ClientResponse, target: Target, path: str) -> JSONResponse:
    status = upstream.status
    try:
        raw = await upstream.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raw = b""
    finally:
        upstream.release()
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
    if status == 429:
        answer = 429
    elif status < 500:
        answer = 400
    else:
        answer = target.upstream_error_status or status
    content = dict(parsed) if isinstance(parsed, dict) else {}
    content.setdefault("detail", f"the service answered {status} to {target.route.method} {path}")
    content["upstream_status"] = status
    content["upstream_body"] = text
    headers = {"Retry-After": upstream.headers["Retry-After"]} if "Retry-After" in upstream.headers else None
    return JSONResponse(content, status_code=answer, headers=headers)


async def _chunks(upstream: aiohttp.ClientResponse, sse: bool, timeout_note: str) -> AsyncIterator[bytes]:
    """The service's body as it comes; a break-off ends the caller's answer abnormally (after a final
    `event: error` on SSE answers), so a cut stream never looks complete."""
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        reason = timeout_note if isinstance(exc, asyncio.TimeoutError) else "the service broke off its answer"
        logger.warning(f"{reason}: {type(exc).__name__}")
        if sse:
            yield SSE_ERROR_EVENT.format(json.dumps({"detail": reason})).encode()
        raise UpstreamBroke(reason) from None
    finally:
        upstream.release()


async def _lines(chunks: AsyncIterator[bytes], text: bool, encrypt: Callable[[Any], str]) -> AsyncIterator[bytes]:
    """Encrypted lines for the gateway, which decrypts each line and decodes it as UTF-8
    (chutes-api api/chute/util.py `_invoke_one`): text is cut only between whole characters; a binary
    answer goes as base64 text, cut at multiples of 3 bytes, so the caller can decode it whole."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if text:
            cut = len(pending)
            # back up over an incomplete UTF-8 sequence at the end (at most 3 bytes)
            for back in range(1, min(4, len(pending)) + 1):
                byte = pending[-back]
                if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
                    need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
                    cut = len(pending) - back if need > back else len(pending)
                    break
            piece, pending = pending[:cut], pending[cut:]
            if piece:
                yield (encrypt(piece.decode("utf-8", "replace")) + "\n").encode()
        else:
            cut = len(pending) - len(pending) % 3
            piece, pending = pending[:cut], pending[cut:]
            if piece:
                yield (encrypt(base64.b64encode(piece).decode()) + "\n").encode()
    if pending:
        tail = pending.decode("utf-8", "replace") if text else base64.b64encode(pending).decode()
        yield (encrypt(tail) + "\n").encode()


def _one_json_document(raw: bytes) -> bool:
    """The gateway re-parses a {"json"} envelope: JSON lines or a broken body must go as a body."""
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


async def _read_whole(upstream: aiohttp.ClientResponse) -> bytes:
    try:
        return await upstream.read()
    finally:
        upstream.release()


async def forward(pool: UpstreamPool, target: Target, outgoing: Outgoing, call: "sdk.Call | None" = None) -> Response | dict:
    """Send one request upstream and shape the answer for the caller; never raises to the caller."""
    route = target.route
    encrypt = call.encrypt if call else None
    url = f"http://127.0.0.1:{target.port}{outgoing.path}"
    kwargs: dict[str, Any] = {"params": outgoing.params or None, "allow_redirects": False}
    if outgoing.has_json:
        kwargs["json"] = outgoing.json_body
    elif outgoing.data is not None:
        kwargs["data"] = outgoing.data
    if outgoing.headers:
        kwargs["headers"] = outgoing.headers
    kwargs["timeout"] = aiohttp.ClientTimeout(total=target.timeout, connect=5.0)
    where = f"{route.method} {outgoing.path}"
    too_slow = f"the service did not answer {where} within {target.timeout:g}s"
    try:
        upstream = await pool.session().request(outgoing.method, url, **kwargs)
    except asyncio.TimeoutError:
        return _error(504, too_slow)
    except aiohttp.ClientConnectorError as exc:
        logger.warning(f"{where} on port {target.port}: {type(exc).__name__}: {exc}")
        return _error(503, f"the service on port {target.port} is not answering (still starting, or stopped)")
    except aiohttp.ClientResponseError as exc:
        logger.warning(f"{where} on port {target.port}: malformed answer: {exc.message}")
        return _error(502, f"the service sent a malformed answer to {where}: {exc.message}")
    except (aiohttp.ClientError, OSError) as exc:
        logger.warning(f"{where} on port {target.port}: {type(exc).__name__}: {exc}")
        return _error(502, f"the service closed the connection while answering {where}")

    status = upstream.status
    if status >= 400:
        return await _upstream_error(upstream, target, outgoing.path)
    content_type = upstream.headers.get("Content-Type", "")
    sse = content_type.startswith("text/event-stream")
    headers = _answer_headers(upstream)
    chunked = upstream.content_length is None and status not in (204, 304) and outgoing.method != "HEAD"

    if encrypt is not None and call is not None and call.stream:
        # The gateway reads this call's answer as lines, whatever the service sent.
        lines = _lines(_chunks(upstream, sse, too_slow), _is_text(content_type) or not content_type, encrypt)
        return sdk.abortable_stream(lines, status_code=status, media_type="text/event-stream" if sse else None)
    if encrypt is not None or not (route.stream or sse or chunked or (upstream.content_length or 0) > SMALL_BODY):
        # Whole: the gateway decodes one envelope; a chunked answer on a non-stream call is read whole.
        try:
            raw = await _read_whole(upstream)
        except asyncio.TimeoutError:
            return _error(504, too_slow)
        except aiohttp.ClientError as exc:
            logger.warning(f"{where}: {type(exc).__name__}: {exc}")
            return _error(502, f"the service broke off its answer to {where}")
        if encrypt is None:
            return _with_headers(Response(raw, status_code=status), headers)
        if content_type.startswith("application/json") and _one_json_document(raw):
            return {"json": encrypt(raw)}  # the gateway parses it and answers it as JSON
        return {"type": "Response", "status_code": status,
                "headers": {name.decode(): value.decode("latin-1") for name, value in headers},
                "media_type": content_type or None, "body": encrypt(raw)}
    response = sdk.abortable_stream(_chunks(upstream, sse, too_slow), status_code=status)
    if upstream.content_length is not None and not (route.stream or sse):
        response.raw_headers.append((b"content-length", str(upstream.content_length).encode()))
    return _with_headers(response, headers)


async def _prepare(target: Target, call: "sdk.Call", request: Request, path: str | None = None, payload: Any = None) -> Outgoing:
    payload = call.payload if payload is None else payload
    if int(request.headers.get("content-length") or 0) > OFFLOAD_BYTES:
        # decoding megabytes of base64 would hold up every other call of the chute meanwhile
        return await asyncio.to_thread(build_outgoing, target, payload, call.query, path)
    return build_outgoing(target, payload, call.query, path)


def make_handler(pool: UpstreamPool, target: Target, stream: bool = False):
    """The ASGI handler of one proxy cord (it replaces the SDK's)."""

    async def handle(request: Request):
        try:
            call = await sdk.incoming(request, cord_stream=stream)
            outgoing = await _prepare(target, call, request)
        except BadRequest as exc:
            return _error(400, str(exc))
        return await forward(pool, target, outgoing, call)

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
        """Each `{name}` matches within one path segment, also beside literal text in it
        (`/v1beta/models/{model}:generateContent`)."""
        parts = []
        for segment in target.route.upstream_path.strip("/").split("/"):
            pattern, last = "", 0
            for match in re.finditer(r"\{[^{}/]+\}", segment):
                pattern += re.escape(segment[last:match.start()]) + r"([^/]+?)"
                last = match.end()
            parts.append(pattern + re.escape(segment[last:]))
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


def make_catch_all_handler(pool: UpstreamPool, targets: list[Target]):
    """The handler of the catch-all cord: {"method", "path", "query", "json" | "form" | "raw"}."""
    templates = [Template.of(target) for target in targets]

    async def handle(request: Request):
        try:
            call = await sdk.incoming(request)
            payload = call.payload
            if not isinstance(payload, dict):
                raise BadRequest('expected {"method": "GET", "path": "/...", "query": {...}, "json" | "form" | "raw": {...}}')
            method = str(payload.get("method", "GET")).upper()
            path = check_proxy_path(payload.get("path"))
            template, allowed = match_template(templates, method, path)
            if template is None:
                # the caller's mistake: 400, never a status the gateway counts against the instance
                return _error(400, f"{method} {path} matches no route of this chute", allowed=allowed)
            inner = payload.get(CATCH_ALL_BODY_KEY.get(template.route.request_kind, "form"))
            if inner is None:
                inner = {}
            if isinstance(inner, dict):
                inner = dict(inner)
                if payload.get("query") is not None:
                    inner["_query"] = payload["query"]
            elif payload.get("query") is not None:
                raise BadRequest("query: only with an object body")
            call.query = []
            outgoing = await _prepare(template.target, call, request, quote(path, safe="/~.-_+=,:"), inner)
        except BadRequest as exc:
            return _error(400, str(exc))
        return await forward(pool, template.target, outgoing, call)

    return handle
