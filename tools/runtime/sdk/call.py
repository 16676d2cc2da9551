"""Both directions of a call at the SDK's edge: what a cord receives (`incoming`) and how its answer
goes back (`reply`), on a Chutes node (through the gateway) and in dev mode alike.

On a node the SDK's GraValMiddleware has decrypted the caller's JSON (`request.state.decrypted`) and
set `request.state._encrypt`; the gateway then reads the cord's answer in one of two wire forms
(chutes-api api/chute/util.py `_invoke_one`):

  - a stream call (a stream cord, or `stream` as the gateway reads it: `gateway_stream`): lines, each
    encrypted on its own, each decoded as UTF-8 by the gateway: text is cut only between whole
    characters, binary goes as base64, an empty answer as one empty line;
  - any other call: one JSON envelope, `{"json": enc}` for one JSON document the gateway re-serialises
    faithfully (`gateway_reads_json`), else `{"type": "Response", "status_code", "headers",
    "media_type", "body": enc}` (the body byte for byte, with its media type).

The node must take the same decision as the gateway: when the gateway reads lines and the node sends an
envelope (or the reverse), the call fails the instance, and any caller could do that on purpose.

An answer with status >= 400 goes back as plain HTTP: the gateway reads its status (400 and 429 reach
the caller; any other status fails the instance) and its text. In dev mode (no `_encrypt`), or for a
call from 127.0.0.1 that the middleware let through, the answer is plain HTTP as the service gave it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
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
    params: Any = {}
    if isinstance(payload, dict) and "json" in payload and "params" in payload:
        # The gateway wraps passthrough calls as {"json": body, "params": query}; the SDK's own
        # Cord._request_handler unwraps by the same test.
        params = payload.get("params") or {}
        payload = payload.get("json")
        if isinstance(params, dict):
            query += [(str(k), str(v)) for k, value in params.items() for v in (value if isinstance(value, list) else [value])]
    stream = cord_stream or gateway_stream(payload, params)
    return Call(payload=payload, query=query, encrypt=encrypt, stream=stream and encrypt is not None)


def gateway_stream(body: Any, params: Any) -> bool:
    """Whether the gateway reads this call's answer as lines, decided as it decides
    (chutes-api api/invocation/router.py:460 at cd60d64):
    `stream = request_body.get("stream", request_params.get("stream", False))`, then Python truthiness
    (`if stream or include_trace:`, :599). A `stream` key in the body wins whatever its value (null,
    false, 0, "", [] and {} are false; "false" and [0] are true); without one the query string's
    value decides, a string, so `?stream=false` and `?stream=0` are true and only `?stream=` is false.
    `params` is the query as the gateway passes it (`request.query_params._dict`, :459: the last
    value of a repeated key). A stream cord always streams (:468-469); the caller passes that in.

    What the node receives is the body after the gateway's orjson round trip: NaN and +-Infinity
    (which the gateway's stdlib `request.json()` accepts) arrive as null, so `"stream": NaN` is true
    to the gateway and false here. No node can tell that null from a caller's own null (README, "On
    Chutes"): such a call fails the instance on the platform whatever the chute does."""
    if not isinstance(body, dict):
        return False  # the gateway answers a body that is not an object itself (500); no cord sees it
    query = params if isinstance(params, dict) else {}
    return bool(body.get("stream", query.get("stream", False)))


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
        # As Starlette's JSONResponse; a lone surrogate (from a caller's key, say) is written as its
        # JSON escape, so the body is always UTF-8 (the gateway reads a 400's text, and must never fail to).
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
        return cls(status, "application/json", [("content-type", "application/json"), *(headers or [])], body)


async def reply(call: Call | None, answer: Answer) -> "Response":
    """`answer` as this call's wire form (the module docstring); never raises."""
    if answer.status >= 400 or call is None or call.encrypt is None:
        return _http(answer)
    if call.stream:
        chunks = answer.chunks if answer.chunks is not None else _one(answer.body or b"")
        # 200 whatever the service said: the gateway reads no status below 400 (util.py:840-878),
        # and a 204's lines would never be sent (a 204 has no body).
        return abortable_stream(_lines(chunks, answer.text, call.encrypt), status_code=200,
                                media_type="text/event-stream" if answer.sse else None)
    body = answer.body
    if body is None:
        try:
            body = b"".join([chunk async for chunk in answer.chunks])
        except UpstreamBroke as exc:
            return _http(Answer.json({"detail": str(exc)}, exc.status))
    return await off_loop(len(body), _envelope, call.encrypt, answer, body)


# On a node every answer is sealed by the SDK's `request.state._encrypt` (GraValMiddleware: gzip at level
# 9, the session's encryption, base64). gzip -9's cost depends on the data more than on its size: float
# JSON and quantized (bf16) audio cost it tens of ms per 100 KB, 200 ms per MB of float JSON (bench/seal).
# On the event loop that served a node's big answers one at a time (issue 20); from SEAL_IN_THREAD_BYTES
# on, sealing runs in a thread (zlib releases the GIL), so the loop keeps serving the chute's other calls
# and concurrent answers are sealed in parallel, and the envelope is rendered to bytes there (orjson),
# not by FastAPI's encoder on the loop.
SEAL_IN_THREAD_BYTES = 16 << 10


async def off_loop(size: int, func: Callable[..., Any], *args: Any) -> Any:
    """`func(*args)`, in a thread when `size` (the bytes it seals) reaches SEAL_IN_THREAD_BYTES."""
    if size < SEAL_IN_THREAD_BYTES:
        return func(*args)
    return await asyncio.to_thread(func, *args)


# JSON up to this size goes as {"json"} (the gateway re-serialises it and sends its length); larger JSON
# goes as a body, byte for byte with its media type: checking that the gateway would read it faithfully
# (~8 ms per MB) and the gateway's own re-parse and re-dump cost more than they give (bench/platform).
JSON_ENVELOPE_BYTES = 64 << 10


def _envelope(encrypt: Callable[[Any], str], answer: Answer, body: bytes) -> "Response":
    """A whole answer sealed for the gateway and rendered: {"json": enc} for one JSON document (up to
    JSON_ENVELOPE_BYTES) the gateway re-serialises unchanged (it parses it and answers it as JSON), else the Response envelope
    the SDK's own cords give on a node (the gateway answers the body with its media type)."""
    import orjson
    from starlette.responses import Response

    media_type = answer.media_type
    if (media_type or "").startswith("application/json") and len(body) <= JSON_ENVELOPE_BYTES and gateway_reads_json(body):
        envelope: dict[str, Any] = {"json": encrypt(body)}
    else:
        envelope = {"type": "Response", "status_code": answer.status, "headers": dict(answer.headers),
                    "media_type": media_type, "body": encrypt(body)}
    return Response(orjson.dumps(envelope), media_type="application/json")


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


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson reads as an integer (beyond: a float)
_ALL_DIGITS_ZERO, _NINETEEN_DIGITS = bytes.maketrans(b"123456789", b"0" * 9), b"0" * 19


def _int64(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError("integer beyond 64 bits")
    return value


def gateway_reads_json(raw: bytes) -> bool:
    """Whether the gateway re-serialises `raw` unchanged but for spacing, when it comes as a {"json"}
    envelope. The gateway parses it with orjson (chutes-api api/chute/util.py:15 `import orjson as
    json`, :1190 `json.loads(plaintext)`) and answers `json.dumps` of it (router.py:772): orjson
    refuses NaN, Infinity, lone surrogates and invalid UTF-8 (an instance failure), reads an integer
    beyond 64 bits as a float (a different number for the caller), and JSON lines are no document.
    Anything else goes as a body with its media type, byte for byte (always faithful).

    An integer beyond 64 bits has 19 digits or more: with no such digit run (found in ~1 ms per MB)
    the orjson parse decides (~7 ms per MB). With one, a small answer is parsed again to see whether it
    is such an integer; a large one simply goes as a body (a second parse costs ~40 ms per MB)."""  # noqa: E501
    import orjson  # a dependency of the SDK, as on the gateway

    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if _NINETEEN_DIGITS not in raw.translate(_ALL_DIGITS_ZERO):
        return True
    if len(raw) > JSON_ENVELOPE_BYTES:
        return False
    try:
        json.loads(raw, parse_int=_int64)
    except ValueError:
        return False
    return True


async def _lines(chunks: AsyncIterator[bytes], text: bool, encrypt: Callable[[Any], str]) -> AsyncIterator[bytes]:
    """Encrypted lines for the gateway, which decrypts each line and decodes it as UTF-8
    (chutes-api api/chute/util.py `_invoke_one`): text is cut only between whole characters; a binary
    answer goes as base64 text, cut at multiples of 3 bytes, so the caller can decode it whole."""
    pending, sent = b"", False
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
                sent = True
                yield (await off_loop(len(piece), encrypt, piece.decode("utf-8", "replace")) + "\n").encode()
        else:
            cut = len(pending) - len(pending) % 3
            piece, pending = pending[:cut], pending[cut:]
            if piece:
                sent = True
                yield (await off_loop(len(piece), encrypt, base64.b64encode(piece).decode()) + "\n").encode()
    if pending or not sent:
        # An empty answer (a 204, an empty body) still sends one line: the gateway answers a stream
        # without a first line 500 "Unhandled error generating response" (router.py:716-720), one
        # empty line as an empty 200.
        tail = pending.decode("utf-8", "replace") if text else base64.b64encode(pending).decode()
        yield (await off_loop(len(tail), encrypt, tail) + "\n").encode()


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
