"""How the local gateway reads an instance's answer, against a stand-in instance that writes the
node's wire form directly (lines the real node never writes: longer than any of its chunks)."""

from __future__ import annotations

import base64
import gzip
import os

import pytest
from aiohttp import web

from tools.platform.gateway import ChuteRecord, Gateway
from tools.runtime.sdk.node import PlatformKey

pytestmark = pytest.mark.integration


def node_line(key: PlatformKey, text: str) -> bytes:
    """One stream line as the node writes it (the SDK encrypts each: gzip, encrypt, base64)."""
    return base64.b64encode(key.encrypt(gzip.compress(text.encode()))) + b"\n"


async def serve_lines(lines: list[bytes]) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_a_stream_line_longer_than_16_mib_is_read_whole_and_empty_lines_are_skipped():
    """The newest gateway reads lines with httpx's `aiter_lines()` (chutes-api util.py:904-906): no
    length limit, empty lines skipped. The older aiohttp reader refused lines over 16 MiB with an
    exception the local gateway did not catch (its call slot then leaked)."""
    key = PlatformKey.generate()
    big = base64.b64encode(os.urandom(13 << 20)).decode()  # gzip cannot shrink it much
    lines = [node_line(key, "first"), b"\n", node_line(key, big), node_line(key, "")]
    assert len(lines[2]) > 16 << 20
    runner, url = await serve_lines(lines)
    gateway = Gateway(ChuteRecord([]), url, key, source_address=None)
    try:
        got = [line async for line in gateway.call_stream("/cord", {"json": {}, "params": {}})]
    finally:
        await gateway.close()
        await runner.cleanup()
    assert got[0] == "first" and got[1] == big and got[2] == "" and len(got) == 3
