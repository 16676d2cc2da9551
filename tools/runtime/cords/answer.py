"""Hops 5 and 6 of a call: send the request to the service, and turn its answer into the caller's.

`send` never raises: whatever the service does, the caller gets an answer (`sdk.Answer`), and the SDK
adapter (`sdk.reply`) puts it on the wire. What a caller may receive, wherever the chute runs
(README, "The platform's contract"):

- a 2xx answer with the service's content type, body and headers (less hop-by-hop ones);
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
from typing import Any, AsyncIterator

import aiohttp
from loguru import logger

from tools.runtime.cords.pool import UpstreamPool
from tools.runtime.cords.request import Outgoing
from tools.runtime.errors import UpstreamBroke
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


async def chunks_of(upstream: aiohttp.ClientResponse, sse: bool, too_slow: str) -> AsyncIterator[bytes]:
    """The service's body as it comes; a break-off ends the caller's answer abnormally (after a final
    `event: error` on SSE answers), so a cut stream never looks complete."""
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        timed_out = isinstance(exc, asyncio.TimeoutError)
        reason = too_slow if timed_out else "the service broke off its answer"
        logger.warning(f"{reason}: {type(exc).__name__}")
        if sse:
            yield SSE_ERROR_EVENT.format(json.dumps({"detail": reason})).encode()
        raise UpstreamBroke(reason, 504 if timed_out else 502) from None
    finally:
        upstream.release()


async def send(pool: UpstreamPool, target: Target, outgoing: Outgoing, call: Call) -> Answer:
    """Send one request upstream and shape the service's answer for the caller; never raises."""
    route = target.route
    url = f"http://127.0.0.1:{target.port}{outgoing.path}"
    kwargs: dict[str, Any] = {"params": outgoing.params or None, "allow_redirects": False}
    if outgoing.has_json:
        kwargs["json"] = outgoing.json_body
    elif outgoing.data is not None:
        kwargs["data"] = outgoing.data
    if outgoing.headers:  # the module's CHUTE_UPSTREAM_HEADERS (the session's) win over a default of ours
        fixed = {name.lower() for name in pool.headers}
        kwargs["headers"] = {k: v for k, v in outgoing.headers.items() if not (k == "Accept" and "accept" in fixed)}
    kwargs["timeout"] = aiohttp.ClientTimeout(total=target.timeout, connect=CONNECT_TIMEOUT)
    where = f"{route.method} {outgoing.path}"
    too_slow = f"the service did not answer {where} within {target.timeout:g}s"
    try:
        upstream = await pool.session().request(outgoing.method, url, **kwargs)
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

    status = upstream.status
    if status >= 400:
        return await service_error(upstream, target, outgoing.path)
    content_type = upstream.headers.get("Content-Type", "")
    sse = content_type.startswith("text/event-stream")
    answer = Answer(status, content_type or None, service_headers(upstream),
                    text=is_text(content_type) or not content_type, sse=sse)
    chunked = upstream.content_length is None and status not in (204, 304) and outgoing.method != "HEAD"
    streams = route.stream or sse or chunked or (upstream.content_length or 0) > SMALL_BODY
    if not call.stream and (call.whole or not streams):
        # Whole: the gateway decodes one envelope; a chunked answer on a non-stream call is read whole.
        try:
            answer.body = await upstream.read()
        except asyncio.TimeoutError:
            return error(504, too_slow)
        except aiohttp.ClientError as exc:
            logger.warning(f"{where}: {type(exc).__name__}: {exc}")
            return error(502, f"the service broke off its answer to {where}")
        finally:
            upstream.release()
        return answer
    answer.chunks = chunks_of(upstream, sse, too_slow)
    if upstream.content_length is not None and not (route.stream or sse):
        answer.length = upstream.content_length
    return answer
