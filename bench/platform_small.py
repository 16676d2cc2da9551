"""bench/platform's small calls (as before the size sweep): the service direct vs `chutes run --dev` vs the local platform.

Starts the demo service, the real `chutes run --dev` of a bench module, and the same module on the
local platform (tools/sdk/node.py behind tools/gateway.py: GraValMiddleware, gzip, the crypto
stand-in, signatures, the gateway's envelope decoding). Drives a JSON call through an SDK
passthrough cord and through a proxy cord, and a ~64 KB WAV answer through a proxy cord, at
concurrency 1 and 32. `run()` returns the figures; bench/platform prints them with its sweep.
Bounded: a fixed number of requests per case, in BENCH_ROUNDS (default 2) interleaved rounds; each
figure is the median over the rounds.

  (a) direct    the demo service itself
  (b) dev       `chutes run --dev`: cords at their public paths, DevMiddleware
  (c) platform  gateway -> node: what a caller of the deployed chute goes through
"""

from __future__ import annotations

import asyncio
import json
import os
import platform as host
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import start_platform  # noqa: E402

PYTHON = sys.executable
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "2")))
COUNTS = {("json", 1): 150, ("json", 32): 480, ("binary", 1): 50, ("binary", 32): 160}
TTS_BODY = {"text": "x" * 40, "language": "en"}  # 40 chars: a 2 s, ~64 KB WAV
JSON_BODY = {"text": "hello", "n": 1}

MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import register_passthrough_routes

    PORT = int(os.environ["BENCH_SERVICE_PORT"])
    chute = Chute(username="bench", name="platformbench", image="unused", concurrency=64)
    register_passthrough_routes(chute, [
        {"path": "/echo_proxy", "method": "POST", "target_path": "/v1/echo"},
        {"path": "/tts", "method": "POST", "target_path": "/tts_to_audio/",
         "response": {"kind": "binary", "content_type": "audio/wav"}},
    ], PORT)

    # The SDK's own passthrough cord, for comparison (ours replaced it for every route).
    @chute.cord(path="/sdk_echo", public_api_path="/echo_passthrough", public_api_method="POST",
                passthrough=True, passthrough_path="/v1/echo", passthrough_port=PORT)
    async def sdk_echo(self, *args, **kwargs):
        pass
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise SystemExit(f"bench/platform: a process exited early ({proc.args[:3]})")
        time.sleep(0.05)
    raise SystemExit(f"bench/platform: port {port} did not open")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def drive(url: str, body: dict, count: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    sizes: set[int] = set()
    queue = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                started = time.perf_counter()
                async with session.post(url, json=body) as answer:
                    sizes.add(len(await answer.read()))
                    if answer.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": count,
        "errors": errors,
        "answer_bytes": sorted(sizes),
        "rps": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    }


def median_of(samples: list[dict]) -> dict:
    rps = [sample["rps"] for sample in samples]
    return {
        "requests": sum(sample["requests"] for sample in samples),
        "errors": sum(sample["errors"] for sample in samples),
        "answer_bytes": sorted({size for sample in samples for size in sample["answer_bytes"]}),
        "rps": round(statistics.median(rps), 1),
        "rps_range": [min(rps), max(rps)],
        "p50_ms": round(statistics.median(sample["p50_ms"] for sample in samples), 2),
        "p99_ms": round(statistics.median(sample["p99_ms"] for sample in samples), 2),
    }


def run() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    procs: list[subprocess.Popen] = []
    log = open(tmp / "platform.log", "wb")
    try:
        (tmp / "deploy_platformbench.py").write_text(MODULE)
        service_port, dev_port = free_port(), free_port()
        service = subprocess.Popen(
            [PYTHON, str(ROOT / "tools" / "demo_service.py"), "--port", str(service_port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        procs.append(service)
        env = dict(os.environ, BENCH_SERVICE_PORT=str(service_port), CHUTES_EXECUTION_CONTEXT="REMOTE",
                   PYTHONPATH=str(ROOT))
        chutes = Path(PYTHON).with_name("chutes")
        dev = subprocess.Popen(
            [str(chutes) if chutes.exists() else shutil.which("chutes"), "run", "deploy_platformbench:chute", "--dev",
             "--host", "127.0.0.1", "--port", str(dev_port), "--logging-port", str(free_port())],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        procs.append(dev)
        wait_port(service_port, service)
        wait_port(dev_port, dev)
        with start_platform("deploy_platformbench:chute", tmp, env=env, log=log) as plat:
            svc, dvc, gw = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{dev_port}", plat.url
            cases = {
                "json_passthrough": ("json", JSON_BODY, {"a_direct": f"{svc}/v1/echo", "b_dev": f"{dvc}/echo_passthrough",
                                                         "c_platform": f"{gw}/echo_passthrough"}),
                "json_proxy": ("json", JSON_BODY, {"a_direct": f"{svc}/v1/echo", "b_dev": f"{dvc}/echo_proxy",
                                                   "c_platform": f"{gw}/echo_proxy"}),
                "binary_proxy": ("binary", TTS_BODY, {"a_direct": f"{svc}/tts_to_audio/", "b_dev": f"{dvc}/tts",
                                                      "c_platform": f"{gw}/tts"}),
            }
            runs: dict = {}
            for round_index in range(ROUNDS):
                for case, (kind, body, targets) in cases.items():
                    for concurrency in (1, 32):
                        key = f"{case}_c{concurrency}"
                        for name, url in targets.items():
                            if round_index == 0:
                                asyncio.run(drive(url, body, 20, min(concurrency, 4)))  # warm
                            runs.setdefault(key, {}).setdefault(name, []).append(
                                asyncio.run(drive(url, body, COUNTS[(kind, concurrency)], concurrency)))
            gateway_stats = plat.stats()
        results = {key: {name: median_of(samples) for name, samples in by_name.items()} for key, by_name in runs.items()}

        def over(key: str, name: str, base: str) -> float:
            return round(results[key][name]["p50_ms"] - results[key][base]["p50_ms"], 2)

        targets = {}
        for case in cases:
            c1, c32 = f"{case}_c1", f"{case}_c32"
            targets[f"{case}_platform_p50_over_direct_ms_c1"] = over(c1, "c_platform", "a_direct")
            targets[f"{case}_dev_p50_over_direct_ms_c1"] = over(c1, "b_dev", "a_direct")
            targets[f"{case}_platform_p50_over_dev_ms_c1"] = over(c1, "c_platform", "b_dev")
            targets[f"{case}_rps_c32"] = {name: results[c32][name]["rps"] for name in ("a_direct", "b_dev", "c_platform")}
        summary = {
            "machine": f"{host.machine()} {os.cpu_count()} cores, Python {host.python_version()}",
            "rounds": ROUNDS,
            "results": results,
            "targets": targets,
            "gateway": {k: gateway_stats[k] for k in ("calls", "instance_failures", "rate_limited", "bad_requests")},
            "meets_target": {
                # issue 11 Deliver 6: the platform path adds at most 3 ms p50 over the dev-mode proxy
                "proxy_platform_p50_at_most_3ms_over_dev": targets["json_proxy_platform_p50_over_dev_ms_c1"] <= 3.0,
                "no_errors": all(v["errors"] == 0 for r in results.values() for v in r.values()),
            },
        }
        return summary
    finally:
        for proc in reversed(procs):
            stop(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

