"""Both directions of a call at the SDK's edge: what a cord receives (`incoming`) and how its answer
goes back (`reply`), on a Chutes node (through the gateway) and in dev mode alike.

On a node the SDK's GraValMiddleware has decrypted the caller's JSON (`request.state.decrypted`) and
set `request.state._encrypt`; the gateway then reads the cord's answer in one of two wire forms
(chutes-api api/chute/util.py `_invoke_one`):

  - a stream call (`"stream"` in the body, or a stream cord): lines, each encrypted on its own, each
    decoded as UTF-8 by the gateway: text is cut only between whole characters, binary goes as base64;
  - any other call: one JSON envelope, `{"json": enc}` for one JSON document (the gateway parses it
    and re-serialises it), else `{"type": "Response", "status_code", "headers", "media_type", "body": enc}`.

An answer with status >= 400 goes back as plain HTTP: the gateway reads its status (400 and 429 reach
the caller; any other status fails the instance) and its text. In dev mode (no `_encrypt`), or for a
call from 127.0.0.1 that the middleware let through, the answer is plain HTTP as the service gave it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from tools.runtime.errors import BadRequest, UpstreamBroke
from tools.runtime.routes import BODY_METHODS  # the methods whose body the gateway and the SDK read

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response


# --------------------------------------------------------------------------------------------------
# The way in


@dataclass
class Call:
    """One caller's call: the JSON body, the query string, and how the answer must travel back.

    `payload` is None when the caller sent no body at all (not the same as `{}`). On a node `stream`
    says the gateway reads the answer as lines and `whole` that it reads one envelope; in dev mode
    both are False and the answer is plain HTTP.
    """

    payload: Any
    query: list[tuple[str, str]]
    encrypt: Callable[[Any], str] | None = None
    stream: bool = False

    @property
    def whole(self) -> bool:
        return self.encrypt is not None and not self.stream


async def incoming(request: "Request", cord_stream: bool = False) -> Call:
    """The caller's JSON body and query, on a node (wrapped by the gateway) and in dev mode alike."""
    state = request.state
    encrypt = getattr(state, "_encrypt", None)
    query = list(request.query_params.multi_items())
    if request.method in BODY_METHODS and hasattr(state, "decrypted"):
        # DevMiddleware (dev mode) or GraValMiddleware (node) decoded the body already.
        payload = state.decrypted
    else:
        # GET/DELETE in dev mode, or a call from 127.0.0.1 that GraValMiddleware let through as is.
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise BadRequest("the request body is not JSON") from None
    if isinstance(payload, dict) and "json" in payload and "params" in payload:
        # The gateway wraps passthrough calls as {"json": body, "params": query}; the SDK's own
        # Cord._request_handler unwraps by the same test.
        params = payload.get("params") or {}
        payload = payload.get("json")
        if isinstance(params, dict):
            query += [(str(k), str(v)) for k, value in params.items() for v in (value if isinstance(value, list) else [value])]
    stream = cord_stream or (isinstance(payload, dict) and bool(payload.get("stream")))
    return Call(payload=payload, query=query, encrypt=encrypt, stream=stream and encrypt is not None)


# --------------------------------------------------------------------------------------------------
# The way back


@dataclass
class Answer:
    """A cord's answer before it meets the wire: a whole `body`, or `chunks` as they come (an
    iterator that raises UpstreamBroke when the service breaks off), with the service's status,
    media type and headers (str pairs; repeated names stay repeated)."""

    status: int = 200
    media_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    length: int | None = None  # of `chunks`, when the service announced it (and the answer is no stream)
    text: bool = True  # cut stream lines between characters (else send base64)
    sse: bool = False  # server-sent events: a cut stream ends with an `event: error` (the cord adds it)

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> "Answer":
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()  # as Starlette's JSONResponse
        return cls(status, "application/json", [("content-type", "application/json"), *(headers or [])], body)


async def reply(call: Call | None, answer: Answer) -> "Response | dict":
    """`answer` as this call's wire form (the module docstring); never raises."""
    if answer.status >= 400 or call is None or call.encrypt is None:
        return _http(answer)
    if call.stream:
        chunks = answer.chunks if answer.chunks is not None else _one(answer.body or b"")
        return abortable_stream(_lines(chunks, answer.text, call.encrypt), status_code=answer.status,
                                media_type="text/event-stream" if answer.sse else None)
    body = answer.body
    if body is None:
        try:
            body = b"".join([chunk async for chunk in answer.chunks])
        except UpstreamBroke as exc:
            return _http(Answer.json({"detail": str(exc)}, exc.status))
    media_type = answer.media_type
    if (media_type or "").startswith("application/json") and _one_json_document(body):
        return {"json": call.encrypt(body)}  # the gateway parses it and answers it as JSON
    return {"type": "Response", "status_code": answer.status, "headers": dict(answer.headers),
            "media_type": media_type, "body": call.encrypt(body)}


def _http(answer: Answer) -> "Response":
    from starlette.responses import Response

    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    if answer.media_type and not any(name == b"content-type" for name, _ in headers):
        headers.append((b"content-type", answer.media_type.encode("latin-1")))
    if answer.body is not None:
        response = Response(answer.body, status_code=answer.status)
    else:
        response = abortable_stream(answer.chunks, status_code=answer.status)
        if answer.length is not None:
            response.raw_headers.append((b"content-length", str(answer.length).encode()))
    taken = {name for name, _ in response.raw_headers}
    response.raw_headers.extend((name, value) for name, value in headers if name not in taken)
    return response


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _one_json_document(raw: bytes) -> bool:
    """The gateway re-parses a {"json"} envelope: JSON lines or a broken body must go as a body."""
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


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


# --------------------------------------------------------------------------------------------------
# Answers that can end abnormally


class _Abort:
    """Not bytes: the server cannot write it, fails the response and closes the connection."""


def abortable_stream(chunks: Any, **kwargs: Any) -> Any:
    """A StreamingResponse that ends abnormally (the connection closed, no final chunk) when
    `chunks` raises UpstreamBroke, so a caller can tell a cut answer from a complete one.

    Raising alone does not do it here: the SDK's middlewares (DevMiddleware, GraValMiddleware) are
    Starlette `BaseHTTPMiddleware`s, which end the outer answer cleanly when the inner app's body
    raises (starlette/middleware/base.py) and report the error only afterwards. A body message that
    is not bytes goes through them to the server (hypercorn), which then drops the connection.
    """
    from starlette.responses import StreamingResponse

    class Abortable(StreamingResponse):
        async def stream_response(self, send: Any) -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            try:
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamBroke:
                await send({"type": "http.response.body", "body": _Abort(), "more_body": True})
                raise
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return Abortable(chunks, **kwargs)
