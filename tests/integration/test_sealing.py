"""Large answers on a node are sealed (the SDK's gzip -9 + encryption + base64) off the event loop.

A real upstream on loopback, a real proxy cord (`send`, then `reply`), and an `encrypt` that stands in for the
SDK's encryption on a node while recording the thread it ran in (and, for the loop check,
blocking as gzip -9 does on bad data). Issue 20: sealing on the loop made a node serve big answers
one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import pytest
from aiohttp import web

from tools.runtime.cords.answer import send
from tools.runtime.cords.pool import UpstreamPool
from tools.runtime.cords.request import build_outgoing
from tools.runtime.registration import Target
from tools.runtime.routes import Route
from tools.runtime.sdk.call import SEAL_IN_THREAD_BYTES, Answer, Call, _envelope, _lines, reply

BIG = {"data": [{"index": i, "embedding": [0.123456789] * 64} for i in range(64)]}  # ~50 KB of JSON


class Recorder:
    """encrypt(): base64 of the plaintext, noting which thread sealed it (and blocking `block` s)."""

    def __init__(self, block: float = 0.0):
        self.block, self.threads = block, []

    def __call__(self, data) -> str:
        self.threads.append(threading.get_ident())
        if self.block:
            time.sleep(self.block)  # holds its thread, as zlib does (it releases the GIL)
        return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


@pytest.fixture
async def upstream():
    async def big(_: web.Request) -> web.Response:
        return web.json_response(BIG)

    async def small(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def wav(_: web.Request) -> web.Response:
        return web.Response(body=b"RIFF" + bytes(40_000), content_type="audio/wav")

    app = web.Application()
    app.add_routes([web.post("/big", big), web.post("/small", small), web.post("/wav", wav)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield port
    await runner.cleanup()


async def call(port: int, path: str, encrypt) -> dict:
    pool = UpstreamPool()
    try:
        target = Target(Route(path), port)
        call = Call({}, [], encrypt=encrypt)
        answer = await reply(call, await send(pool, target, build_outgoing(target, {}, []), call))
        assert answer.status_code == 200 and answer.media_type == "application/json"
        return json.loads(answer.body)  # the envelope, as the gateway reads it
    finally:
        await pool.close()


async def test_a_large_json_answer_is_sealed_in_a_thread_and_arrives_whole(upstream):
    encrypt = Recorder()
    envelope = await call(upstream, "/big", encrypt)
    assert json.loads(base64.b64decode(envelope["json"])) == BIG
    assert encrypt.threads and threading.get_ident() not in encrypt.threads


async def test_a_small_answer_is_sealed_on_the_loop(upstream):
    encrypt = Recorder()
    envelope = await call(upstream, "/small", encrypt)
    assert json.loads(base64.b64decode(envelope["json"])) == {"ok": True}
    assert encrypt.threads == [threading.get_ident()]  # a thread hop would cost more than it saves


async def test_a_large_binary_answer_is_a_body_envelope_sealed_in_a_thread(upstream):
    encrypt = Recorder()
    envelope = await call(upstream, "/wav", encrypt)
    assert envelope["media_type"] == "audio/wav" and envelope["status_code"] == 200
    assert base64.b64decode(envelope["body"]) == b"RIFF" + bytes(40_000)
    assert threading.get_ident() not in encrypt.threads


async def test_the_event_loop_keeps_serving_while_large_answers_are_sealed(upstream):
    """Four answers whose sealing blocks 0.3 s each: the loop never stalls, and they seal in parallel."""
    lags: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started - 0.01)

    stop = asyncio.Event()
    ticking = asyncio.create_task(ticker(stop))
    started = time.perf_counter()
    await asyncio.gather(*(call(upstream, "/big", Recorder(block=0.3)) for _ in range(4)))
    elapsed = time.perf_counter() - started
    stop.set()
    await ticking
    assert max(lags) < 0.2  # on the loop, each answer would stall it 0.3 s
    assert elapsed < 4 * 0.3  # one after another would take 1.2 s at least


async def test_large_stream_lines_are_sealed_in_a_thread():
    async def chunks():
        yield b"x" * (SEAL_IN_THREAD_BYTES + 10)
        yield b"y" * 10

    encrypt = Recorder()
    lines = [line async for line in _lines(chunks(), True, encrypt)]
    assert "".join(base64.b64decode(line[:-1]).decode() for line in lines) == "x" * (SEAL_IN_THREAD_BYTES + 10) + "y" * 10
    assert encrypt.threads[0] != threading.get_ident() and encrypt.threads[-1] == threading.get_ident()


async def test_json_the_gateway_cannot_parse_goes_as_a_body_with_its_media_type():
    """NaN is JSON to Python's json, not to orjson, which both gateways parse {"json"} envelopes with."""
    raw = b'{"score": NaN}'
    envelope = json.loads(_envelope(Recorder(), Answer(200, "application/json"), raw).body)
    assert "json" not in envelope and envelope["media_type"] == "application/json"
    assert base64.b64decode(envelope["body"]) == raw
