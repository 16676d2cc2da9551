"""Hop 5 of a call: the connection to the service, one pooled HTTP client per chute and event loop."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import Any

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from loguru import logger

CHUNK = 1 << 16  # how much of an answer is read at a time
# Idle connections are dropped before common servers drop them (uvicorn and Node: 5 s), so that a
# request seldom meets a connection the service is closing (resend_on_stale covers the rest).
KEEPALIVE_SECONDS = 2.0
# How often a request is sent again after its kept-alive connection was found closed (resend_on_stale).
STALE_RESENDS = 2
# aiohttp resends these itself, once, whatever the connection (aiohttp/client.py IDEMPOTENT_METHODS).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Whether the request under way went on a connection that carried one before (set by _Connector,
# read by resend_on_stale; each request runs in its caller's task, so a context variable is one request's).
_reused: contextvars.ContextVar[bool] = contextvars.ContextVar("reused", default=False)


class _Connector(aiohttp.TCPConnector):
    """A connector that tells whether the connection it hands out has carried a request before
    (aiohttp's trace signal for it costs ~60 us a request in tracing; this a set lookup)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._used: weakref.WeakSet = weakref.WeakSet()

    async def connect(self, req: ClientRequest, traces: list, timeout: aiohttp.ClientTimeout):
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        _reused.set(protocol in self._used)
        self._used.add(protocol)
        return connection


def _stale(exc: BaseException) -> bool:
    """A connection that ended before the answer: closed, reset, or the body could not be written
    (aiohttp's "Can not write request body" carries no errno)."""
    return isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) \
        and not isinstance(exc, aiohttp.ClientConnectorError)


async def resend_on_stale(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    """Send a POST or PATCH again when the kept-alive connection it went on turns out closed.

    A server may close a kept-alive connection whenever it likes (RFC 9112 §9.3), and a request can
    be on its way when it does: uvicorn does so after an app raised (Starlette's 500, then close, with
    no `Connection: close` said), so the next call on that connection met a closed socket, and each
    such call was a 502 and an instance failure on Chutes, caused by another call's error. aiohttp
    resends idempotent methods once itself; this resends the others, as browsers do (a reused
    connection that closes before any answer byte: the server has not taken the request), at most
    STALE_RESENDS times and never after a fresh connection failed (that one the service did see)."""
    if request.method not in IDEMPOTENT:
        for _ in range(STALE_RESENDS):
            token = _reused.set(False)
            try:
                return await handler(request)
            except aiohttp.ClientError as exc:
                if not (_reused.get() and _stale(exc)):
                    raise
                logger.debug(f"{request.method} {request.url.path}: its kept-alive connection was closed "
                             f"({type(exc).__name__}); sending it again")
            finally:
                _reused.reset(token)
    return await handler(request)


class UpstreamPool:
    """One aiohttp session per event loop, created on first use and closed when the chute stops."""

    def __init__(self) -> None:
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        # CHUTE_UPSTREAM_HEADERS, resolved from the chute's environment when it starts (never logged)
        self.headers: dict[str, str] = {}

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = _Connector(limit=256, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=CHUNK, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None), headers=self.request_headers(),
                middlewares=(resend_on_stale,),
            )
            self._sessions[loop] = session
        return session

    def request_headers(self) -> dict[str, str]:
        """Every request's headers: the module's, and `Accept-Encoding: identity` unless the module sets
        one (aiohttp would offer gzip, deflate, br and zstd). The gateway carries no Content-Encoding, so
        a compressed answer must be decoded in the chute (answer.py), which costs CPU for no gain on
        loopback: asking for none spares it with every service that honours the header."""
        headers = dict(self.headers)
        if not any(name.lower() == "accept-encoding" for name in headers):
            headers["Accept-Encoding"] = "identity"
        return headers

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
