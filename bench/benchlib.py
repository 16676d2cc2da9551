"""Shared by bench/platform and bench/gpu: payloads, processes, load drivers, and signed calls
straight to a node.

Every import of the toolkit's internals that a bench needs is in `_tools()` below, so that moving a
module of tools/ means changing one place here. The benches otherwise drive the stack through its
command lines (`./deploy.sh --run`, `python -m ...`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# --------------------------------------------------------------------------------------------------
# The toolkit's internals a bench uses (one place: the lead may move these modules)


def _tools() -> dict[str, Any]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools.platform.gateway import load_record
    from tools.platform.stack import start_platform
    from tools.runtime.sdk.node import GATEWAY_SOURCE_ADDRESS

    return {"start_platform": start_platform, "load_record": load_record, "source": GATEWAY_SOURCE_ADDRESS}


def seal_on_the_loop() -> None:
    """In a node: seal answers on the event loop, as before issue 20 (a bench variant, for
    comparison); no-op where the toolkit has no such setting."""
    _tools()
    from tools.runtime.sdk import call

    call.SEAL_IN_THREAD_BYTES = 1 << 62


def start_platform(*args: Any, **kwargs: Any) -> Any:
    """tools' `start_platform`: the node (`chutes run` as on a GPU node) and the local gateway."""
    return _tools()["start_platform"](*args, **kwargs)


def internal_paths(module_ref: str, directory: Path) -> dict[str, str]:
    """Public path -> the cord's internal path (what the gateway encrypts into the URL)."""
    record = _tools()["load_record"](module_ref, directory)
    return {cord["public_api_path"]: cord["path"] for cord in record.cords if cord.get("public_api_path")}


# --------------------------------------------------------------------------------------------------
# Payloads: the same bytes for the service and for a cord that answers from memory

KINDS = ("json_compressible", "json_random", "bin_compressible", "bin_random")
_CACHE: dict[tuple[str, int], tuple[bytes, str]] = {}


def _bf16(value: float) -> float:
    """`value` rounded to bfloat16 (8 significant bits), as a model computing in bf16 emits it."""
    mantissa, exponent = math.frexp(value)
    return math.ldexp(round(mantissa * 256) / 256, exponent)


def _voiced(count: int, rng: random.Random) -> array:
    phase, out = 0.0, array("h")
    for i in range(count):
        pitch = 110 + 40 * math.sin(i / 9000)
        phase += 2 * math.pi * pitch / 22050
        voiced = 0.6 * math.tanh(2 * math.sin(phase)) * (0.5 + 0.5 * math.sin(i / 2500))
        out.append(int(32767 * _bf16(voiced + rng.gauss(0, 0.003))))
    return out


def wav_bytes(samples: array, rate: int = 22050) -> bytes:
    """A 16-bit mono PCM WAV file of `samples` (array('h'))."""
    import struct

    data = samples.tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", len(data)) + data)


def _compact(value: Any) -> bytes:
    """Compact JSON, as FastAPI and orjson write it: the floor cord's answer (orjson.dumps of the
    parsed value) is then these very bytes, so gzip gets the same input on both paths."""
    try:
        import orjson

        return orjson.dumps(value)
    except ImportError:
        return json.dumps(value, separators=(",", ":")).encode()


def payload(kind: str, size: int) -> tuple[bytes, str]:
    """About `size` bytes of one kind, always the same for the same (kind, size):

    json_compressible  records with repeated keys and text (gzip shrinks them ~10x, quickly)
    json_random        embeddings: float32 values at full precision (what an embedding server returns)
    bin_compressible   a WAV of a voiced signal rounded to bf16 (what a bf16 vocoder emits)
    bin_random         random bytes (an already compressed file: gzip finds nothing)
    """
    key = (kind, size)
    if key in _CACHE:
        return _CACHE[key]
    rng = random.Random(f"{kind}:{size}")
    if kind == "json_compressible":
        rows, used = [], 12
        while used < size:
            row = {"id": len(rows), "label": rng.choice(["positive", "negative", "neutral"]), "score": 0.5,
                   "text": "the quick brown fox jumps over the lazy dog"}
            rows.append(row)
            used += len(json.dumps(row, separators=(",", ":"))) + 1
        data, content_type = _compact({"data": rows}), "application/json"
    elif kind == "json_random":
        count = max(1, size // 21)
        values = [float(array("f", [rng.gauss(0, 0.05)])[0]) for _ in range(count)]
        rows = [{"object": "embedding", "index": i, "embedding": values[i * 768:(i + 1) * 768]}
                for i in range((count + 767) // 768)]
        data, content_type = _compact({"object": "list", "data": rows}), "application/json"
    elif kind == "bin_compressible":
        count = max(1, (size - 44) // 2)
        # 6 s of signal, repeated: gzip's window is 32 KB, so a repeat 6 s later costs it the same as new audio
        base = _voiced(min(count, 1 << 17), rng)
        out = (base * (count // len(base) + 1))[:count]
        data, content_type = wav_bytes(out), "audio/wav"
    elif kind == "bin_random":
        data, content_type = rng.randbytes(size), "application/octet-stream"
    else:
        raise ValueError(f"unknown payload kind {kind!r}")
    _CACHE[key] = (data, content_type)
    return data, content_type


# --------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 120, what: str = "a process") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited early (status {proc.returncode})")
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not open port {port} within {timeout:g}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process started with start_new_session=True, and its whole group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------------
# Load


@dataclass
class Sample:
    """One case's calls: latencies (s), time to first byte (s), answer sizes, failures."""

    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    sizes: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        out: dict[str, Any] = {"requests": len(lat) + len(self.errors), "errors": len(self.errors)}
        if self.errors:
            out["first_error"] = self.errors[0][:300]
        if lat:
            out["p50_ms"] = round(statistics.median(lat) * 1000, 2)
            out["p90_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.9))] * 1000, 2)
            out["rps"] = round(len(lat) / self.elapsed, 2) if self.elapsed else None
            out["answer_bytes"] = sorted(self.sizes)[:3]
        if self.first_bytes:
            out["ttfb_p50_ms"] = round(statistics.median(self.first_bytes) * 1000, 2)
        return out


Call = Callable[[Any], Awaitable[tuple[int, int, float | None]]]  # session -> (status, bytes, ttfb or None)


async def drive(call: Call, count: int, concurrency: int, session: Any, warm: int = 0) -> Sample:
    """`count` calls, `concurrency` at a time, after `warm` unmeasured ones."""
    for _ in range(warm):
        await call(session)
    sample = Sample()
    todo = iter(range(count))

    async def worker() -> None:
        for _ in todo:
            started = time.perf_counter()
            try:
                status, size, ttfb = await call(session)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                sample.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if status != 200:
                sample.errors.append(f"status {status}")
                continue
            sample.latencies.append(time.perf_counter() - started)
            sample.sizes.add(size)
            if ttfb is not None:
                sample.first_bytes.append(ttfb - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.elapsed = time.perf_counter() - started
    return sample


def post_json(url: str, body: Any, first_byte: bool = False) -> Call:
    """A caller's JSON POST; the whole answer is read (and its first byte timed, if asked)."""
    import aiohttp

    async def call(session: aiohttp.ClientSession) -> tuple[int, int, float | None]:
        async with session.post(url, json=body) as answer:
            if not first_byte:
                return answer.status, len(await answer.read()), None
            size, ttfb = 0, None
            async for chunk in answer.content.iter_any():
                if ttfb is None and chunk.strip():
                    ttfb = time.perf_counter()
                size += len(chunk)
            return answer.status, size, ttfb

    return call


def client_session(concurrency: int, local_addr: str | None = None) -> Any:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(concurrency, 1), local_addr=(local_addr, 0) if local_addr else None)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600),
                                 read_bufsize=1 << 20)


@dataclass
class NodeTarget:
    """Signed calls straight to the node, as the gateway makes them (encrypted path and body, the
    validator's signature, from 127.0.0.2), minus the gateway's own work: the answer is read whole
    but not decoded. The time is the node's (and the loopback's)."""

    node_url: str
    key: Any  # PlatformKey
    internal_path: str
    passthrough: bool

    @staticmethod
    def source_address() -> str:
        return _tools()["source"]

    def call(self, body: Any) -> Call:
        payload = {"json": body, "params": {}} if self.passthrough else body
        url = self.node_url + self.key.encrypt_path(self.internal_path)
        data = self.key.encrypt_body(payload)
        headers = self.key.sign(data)  # valid for 540 s: prepared once per case
        headers.update({"Content-Type": "text/plain; charset=utf-8", "X-Chutes-Serialized": "true"})

        async def call(session: Any) -> tuple[int, int, float | None]:
            async with session.post(url, data=data, headers=headers) as answer:
                return answer.status, len(await answer.read()), None

        return call

    async def answer(self, session: Any, body: Any) -> bytes:
        """One call's answer, decoded as the gateway decodes it (for checks, not timed)."""
        payload = {"json": body, "params": {}} if self.passthrough else body
        data = self.key.encrypt_body(payload)
        headers = {**self.key.sign(data), "Content-Type": "text/plain; charset=utf-8", "X-Chutes-Serialized": "true"}
        async with session.post(self.node_url + self.key.encrypt_path(self.internal_path), data=data,
                                 headers=headers) as answer:
            raw = await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"node answered {answer.status}: {raw[:200]!r}")
        envelope = json.loads(raw)
        return self.key.decrypt_answer(envelope["json"] if "json" in envelope else envelope["body"])


def machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "kernel": platform.release()}
    try:
        import uvloop  # noqa: F401

        info["uvloop"] = True
    except ImportError:
        info["uvloop"] = False
    return info


def write_result(name: str, summary: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return out
