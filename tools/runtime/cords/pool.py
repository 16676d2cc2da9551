"""Hop 5 of a call: the connection to the service, one pooled HTTP client per chute and event loop."""

from __future__ import annotations

import asyncio

import aiohttp

CHUNK = 1 << 16  # how much of an answer is read at a time
# Idle connections are dropped before common servers drop them (uvicorn and Node: 5 s): a POST on a
# connection the service has just closed fails, and is not retried.
KEEPALIVE_SECONDS = 2.0


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
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=CHUNK, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None), headers=self.request_headers(),
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
