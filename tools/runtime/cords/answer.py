"""Hops 5 and 6 of a call: send the request to the service, and turn its answer into the caller's.

`send` never raises: whatever the service does, the caller gets an answer (`sdk.Answer`), and the SDK
adapter (`sdk.reply`) puts it on the wire. What a caller may receive, wherever the chute runs
(README, "The platform's contract"):

- a 2xx answer with the service's content type, body and headers (less hop-by-hop ones), its content
  codings undone (the gateway carries no `Content-Encoding`: a gzip body would reach callers unreadable);
- a redirect to the service itself followed (RFC 9110 method rules, at most MAX_REDIRECTS); any other
  redirect a 400 naming its `Location` (a caller can choose such a route; it must not fail an instance);
- the service's 4xx as 400 (429 stays 429): the Chutes gateway passes a miner's 400 and 429 to the
  caller and counts every other status >= 400 as an instance failure (chutes-api api/chute/util.py
  `_invoke_one`), and a caller's mistake must never fail an instance;
- the service's 5xx as `upstream_error_status` (502; None keeps the service's status);
- 503 (service not answering), 504 (no answer in time), 502 (broke off, malformed answer).

Error bodies are JSON: the service's own JSON object (an OpenAI client still finds its "error"), plus
"detail" (the service's own, else ours), "upstream_status" and "upstream_body" (its text).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any, AsyncIterator, Callable
from urllib.parse import urljoin, urlsplit

import aiohttp
from loguru import logger

from tools.runtime.cords.pool import UpstreamPool
from tools.runtime.cords.request import Outgoing
from tools.runtime.errors import UndecodableBody, UpstreamBroke
from tools.runtime.registration import Target
from tools.runtime.sdk.call import Answer, Call

SMALL_BODY = 1 << 20  # answers up to this size are read whole; larger ones are streamed
RETRY_AFTER_SECONDS = "5"
CONNECT_TIMEOUT = 5.0
ERROR_BODY_LIMIT = 1 << 16
SSE_ERROR_EVENT = "event: error\ndata: {}\n\n"  # the last event of an SSE answer the service broke off
# Not forwarded: hop-by-hop headers (RFC 9110 §7.6.1), what the chute's server sets itself (one
# `date` and one `server`, the chute's: hypercorn adds both), and the length (set again when known).
DROP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                          "proxy-authenticate", "proxy-authorization", "proxy-connection", "content-length",
                          "date", "server"})
_TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/jsonl", "application/xml",
               "application/javascript", "application/stream+json", "application/problem+json")


# RFC 9110 §15.4: the redirects a client may follow; 303 turns into a GET, and so does a POST's 301/302
# (what every user agent does, §15.4.2-15.4.3); 307 and 308 keep the method and the body.
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Answer:
    """Our own error answer: {"detail": ..., **extra}; a 503 says when to retry."""
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)
    return Answer.json({"detail": detail, **extra}, status, list(headers.items()))


def is_text(content_type: str) -> bool:
    bare = content_type.split(";", 1)[0].strip().lower()
    return bare.startswith(_TEXT_TYPES) or bare.endswith("+json") or bare.endswith("+xml")


def service_headers(upstream: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """The service's headers for the caller, repeated ones kept repeated (two Set-Cookie stay two)."""
    named = {
        token.strip().lower()
        for value in upstream.headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    return [(name.lower(), value) for name, value in upstream.headers.items()
            if name.lower() not in DROP_HEADERS and name.lower() not in named]


async def service_error(upstream: aiohttp.ClientResponse, target: Target, path: str) -> Answer:
    """The service answered >= 400: a status the gateway never counts against the instance for a
    caller's mistake, the service's JSON kept."""
    status = upstream.status
    try:
        raw = await upstream.content.read(ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raw = b""
    finally:
        upstream.release()
    codings = content_codings(upstream)
    if codings:  # best effort: the text of an error is worth having, the start of it too
        try:
            raw = Decoding(codings).decompress(raw)
        except (LookupError, UndecodableBody):
            pass
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
    retry = [("Retry-After", upstream.headers["Retry-After"])] if "Retry-After" in upstream.headers else None
    return Answer.json(content, answer, retry)


# --------------------------------------------------------------------------------------------------
# Content codings (RFC 9110 §8.4): the gateway keeps only an answer's media type, so a compressed
# body is decoded here. The pool asks for `identity` (tools/runtime/cords/pool.py); this is for
# services that compress anyway. gzip and deflate need only zlib; br and zstd a module for them in the
# chute's Python (brotli or brotlicffi; compression.zstd, backports.zstd or zstandard), else a 400.


class _Zlib:
    def __init__(self, gzip: bool):
        self.gzip, self.obj = gzip, None

    def _new(self, first: bytes) -> Any:
        if self.gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is the zlib format (RFC 9110 §8.4.1.2); some servers send raw deflate data
        wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self.obj is None:
            self.obj = self._new(data)
        out = self.obj.decompress(data)
        while self.gzip and self.obj.eof and self.obj.unused_data:  # gzip members one after another
            rest = self.obj.unused_data
            self.obj = self._new(rest)
            out += self.obj.decompress(rest)
        return out

    def flush(self) -> bytes:
        if self.obj is None:
            return b""
        out = self.obj.flush()
        if not self.obj.eof:
            raise UndecodableBody("the body ends before its compressed data does")
        return out


class _Brotli:
    def __init__(self, module: Any):
        self.obj = module.Decompressor()
        self.step = getattr(self.obj, "process", None) or self.obj.decompress  # brotli | brotlicffi

    def decompress(self, data: bytes) -> bytes:
        return self.step(data) if data else b""

    def flush(self) -> bytes:
        if not self.obj.is_finished():
            raise UndecodableBody("the body ends before its compressed data does")
        return b""


class _Zstd:
    def __init__(self, module: Any):
        self.module, self.obj = module, module.ZstdDecompressor()
        if not hasattr(self.obj, "decompress"):  # zstandard: a decompressor makes stream objects
            self.obj = self.obj.decompressobj()

    def decompress(self, data: bytes) -> bytes:
        out = self.obj.decompress(data) if data else b""
        while getattr(self.obj, "eof", False) and getattr(self.obj, "unused_data", b""):  # frames one after another
            rest = self.obj.unused_data
            self.obj = self.module.ZstdDecompressor()
            out += self.obj.decompress(rest)
        return out

    def flush(self) -> bytes:
        if hasattr(self.obj, "eof") and not self.obj.eof and hasattr(self.obj, "needs_input"):
            raise UndecodableBody("the body ends before its compressed data does")
        return b""


def _brotli_module() -> Any:
    try:
        import brotli

        return brotli
    except ImportError:
        try:
            import brotlicffi

            return brotlicffi
        except ImportError:
            return None


def _zstd_module() -> Any:
    try:
        from compression import zstd  # Python 3.14

        return zstd
    except ImportError:
        try:
            from backports import zstd

            return zstd
        except ImportError:
            try:
                import zstandard

                return zstandard
            except ImportError:
                return None


def _decoder(coding: str) -> "Callable[[], Any] | str":
    """A factory of the decoder of one content coding, or why there is none."""
    if coding in ("gzip", "x-gzip"):
        return lambda: _Zlib(gzip=True)
    if coding == "deflate":
        return lambda: _Zlib(gzip=False)
    if coding == "br":
        module = _brotli_module()
        return (lambda: _Brotli(module)) if module else "no brotli module (brotli or brotlicffi) in the chute's Python"
    if coding == "zstd":
        module = _zstd_module()
        return (lambda: _Zstd(module)) if module else "no zstd module (backports.zstd or zstandard) in the chute's Python"
    return "an unknown content coding"


def content_codings(upstream: aiohttp.ClientResponse) -> list[str]:
    """The codings applied to the body, in the order they were applied (identity left out)."""
    codings = [coding.strip().lower() for value in upstream.headers.getall("Content-Encoding", [])
               for coding in value.split(",") if coding.strip()]
    return [coding for coding in codings if coding != "identity"]


class Decoding:
    """A body's content codings undone, the last applied first; raises UndecodableBody on bad data and
    LookupError (saying why) for a coding it cannot undo."""

    def __init__(self, codings: list[str]):
        self.codings = codings
        self.steps = []
        for coding in reversed(codings):
            factory = _decoder(coding)
            if isinstance(factory, str):
                raise LookupError(f"{coding}: {factory}")
            self.steps.append(factory())

    def decompress(self, data: bytes) -> bytes:
        try:
            for step in self.steps:
                data = step.decompress(data)
        except UndecodableBody:
            raise
        except Exception as exc:  # noqa: BLE001 - zlib.error, brotli.error, ZstdError...
            raise UndecodableBody(str(exc) or type(exc).__name__) from None
        return data

    def flush(self) -> bytes:
        carry = b""
        try:
            for step in self.steps:
                carry = step.decompress(carry) + step.flush()
        except UndecodableBody:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UndecodableBody(str(exc) or type(exc).__name__) from None
        return carry

    def whole(self, data: bytes) -> bytes:
        return self.decompress(data) + self.flush()


async def chunks_of(upstream: aiohttp.ClientResponse, sse: bool, too_slow: str,
                    decoding: Decoding | None = None) -> AsyncIterator[bytes]:
    """The service's body as it comes (decoded); a break-off ends the caller's answer abnormally (after
    a final `event: error` on SSE answers), so a cut stream never looks complete."""
    try:
        async for chunk in upstream.content.iter_any():
            if decoding is not None:
                chunk = decoding.decompress(chunk)
            if chunk:
                yield chunk
        if decoding is not None and (tail := decoding.flush()):
            yield tail
    except (aiohttp.ClientError, asyncio.TimeoutError, UndecodableBody) as exc:
        timed_out = isinstance(exc, asyncio.TimeoutError)
        if isinstance(exc, UndecodableBody):
            reason = f"the service sent a {'+'.join(decoding.codings) if decoding else ''} body that does not decode"
        else:
            reason = too_slow if timed_out else "the service broke off its answer"
        logger.warning(f"{reason}: {type(exc).__name__}")
        if sse:
            yield SSE_ERROR_EVENT.format(json.dumps({"detail": reason})).encode()
        raise UpstreamBroke(reason, 504 if timed_out else 502) from None
    finally:
        upstream.release()


def same_service(url: str, port: int) -> bool:
    """Whether `url` (absolute, resolved against the request's) is the service itself: http on
    loopback at the route's port. Anything else is another server the chute must not call."""
    parts = urlsplit(url)
    try:
        to_port = parts.port or (80 if parts.scheme == "http" else None)
    except ValueError:
        return False
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost") and to_port == port


async def send(pool: UpstreamPool, target: Target, outgoing: Outgoing, call: Call) -> Answer:
    """Send one request upstream and shape the service's answer for the caller; never raises."""
    route = target.route
    url = f"http://127.0.0.1:{target.port}{outgoing.path}"
    method, params = outgoing.method, outgoing.params or None
    body: dict[str, Any] = {}
    if outgoing.has_json:
        body["json"] = outgoing.json_body
    elif outgoing.data is not None:
        body["data"] = outgoing.data
    # the module's CHUTE_UPSTREAM_HEADERS (the session's) win over an Accept default of ours (request.py)
    fixed = {name.lower() for name in pool.headers}
    headers = {k: v for k, v in outgoing.headers.items() if not (k == "Accept" and "accept" in fixed)}
    where = f"{route.method} {outgoing.path}"
    too_slow = f"the service did not answer {where} within {target.timeout:g}s"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + target.timeout  # redirects included
    for hop in range(MAX_REDIRECTS + 1):
        timeout = aiohttp.ClientTimeout(total=max(deadline - loop.time(), 0.001), connect=CONNECT_TIMEOUT)
        try:
            upstream = await pool.session().request(method, url, params=params, headers=headers or None,
                                                    allow_redirects=False, timeout=timeout, **body)
        except asyncio.TimeoutError:
            return error(504, too_slow)
        except aiohttp.ClientConnectorError as exc:
            logger.warning(f"{where} on port {target.port}: {type(exc).__name__}: {exc}")
            return error(503, f"the service on port {target.port} is not answering (still starting, or stopped)")
        except aiohttp.ClientResponseError as exc:
            logger.warning(f"{where} on port {target.port}: malformed answer: {exc.message}")
            return error(502, f"the service sent a malformed answer to {where}: {exc.message}")
        except (aiohttp.ClientError, OSError) as exc:
            logger.warning(f"{where} on port {target.port}: {type(exc).__name__}: {exc}")
            return error(502, f"the service closed the connection while answering {where}")
        location = upstream.headers.get("Location")
        if upstream.status not in REDIRECT_STATUSES or not location:
            break
        status = upstream.status
        upstream.release()
        follow = urljoin(url, location)
        if not same_service(follow, target.port):
            return error(400, f"the service redirected {where} to {location}, which is not this service: only "
                              "redirects to the service itself are followed", location=location, upstream_status=status)
        if hop == MAX_REDIRECTS:
            return error(400, f"the service redirected {where} more than {MAX_REDIRECTS} times (last to {location})",
                         location=location, upstream_status=status)
        url, params = follow, None  # the new URL carries its own query
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method, body = "GET", {}
            headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}

    status = upstream.status
    if status >= 400:
        return await service_error(upstream, target, outgoing.path)
    content_type = upstream.headers.get("Content-Type", "")
    sse = content_type.startswith("text/event-stream")
    has_body = status not in (204, 304) and method != "HEAD"
    codings = content_codings(upstream) if has_body else []
    decoding = None
    if codings:
        try:
            decoding = Decoding(codings)
        except LookupError as exc:
            upstream.release()
            return error(400, f"the service answered {where} with Content-Encoding {', '.join(codings)}, which "
                              f"this chute cannot decode ({exc})", upstream_status=status)
    answer_headers = service_headers(upstream)
    if decoding is not None:  # the caller gets the decoded content
        answer_headers = [(name, value) for name, value in answer_headers if name != "content-encoding"]
    answer = Answer(status, content_type or None, answer_headers, text=is_text(content_type) or not content_type, sse=sse)
    chunked = upstream.content_length is None and has_body
    streams = route.stream or sse or chunked or (upstream.content_length or 0) > SMALL_BODY
    if not call.stream and (call.whole or not streams):
        # Whole: the gateway decodes one envelope; a chunked answer on a non-stream call is read whole.
        try:
            raw = await upstream.read()
            answer.body = decoding.whole(raw) if decoding is not None else raw
        except asyncio.TimeoutError:
            return error(504, too_slow)
        except aiohttp.ClientError as exc:
            logger.warning(f"{where}: {type(exc).__name__}: {exc}")
            return error(502, f"the service broke off its answer to {where}")
        except UndecodableBody as exc:
            logger.warning(f"{where}: {'+'.join(codings)} body does not decode: {exc}")
            return error(502, f"the service sent a {'+'.join(codings)} body that does not decode to {where}: {exc}")
        finally:
            upstream.release()
        return answer
    answer.chunks = chunks_of(upstream, sse, too_slow, decoding)
    if upstream.content_length is not None and decoding is None and not (route.stream or sse):
        answer.length = upstream.content_length
    return answer
