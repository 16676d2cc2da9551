"""`deploy.sh --smoke MODULE`: call every cord of a module once, through the real `chutes run --dev`.

Requests are built from the manifest: the route's example body, a small real WAV or PNG for file
fields, example query and path parameters. One table row per call; exit 1 if any call fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import struct
import sys
import threading
import time
import wave
import zlib
from dataclasses import dataclass

import requests

from tools.errors import run_cli
from tools.proxy import CATCH_ALL_BODY_KEY, RAW_BASE64_KEY, RAW_TEXT_KEY, RAW_TYPE_KEY
from tools.routes import Route
from tools.cord_table import Cord
from tools.processes import stop_on_signals
from tools.run_dev import RunConfig, add_stack_arguments, check_chute_ports, dev_stack, stack_config


@dataclass
class Call:
    label: str
    kind: str
    method: str
    url: str
    body: object = None
    stream: bool = False
    expect_type: str | None = None


@dataclass
class Result:
    call: Call
    status: int | None
    seconds: float
    size: int
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def sample_wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x10" * int(rate * seconds))
    return buffer.getvalue()


def sample_png() -> bytes:
    """A valid 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def sample_file(field: str, route: Route) -> tuple[bytes, str]:
    hint = f"{field} {route.path}".lower()
    if any(word in hint for word in ("image", "img", "photo", "picture", "png", "jpg")):
        return sample_png(), "image/png"
    return sample_wav(), "audio/wav"


def fill_template(path: str, values: dict) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: str(values.get(m.group(1), "example")), path)


def body_for(route: Route) -> dict:
    example = dict(route.example) if isinstance(route.example, dict) else {}
    example.pop("_path", None)
    for field in route.file_fields:
        data, content_type = sample_file(field, route)
        example.setdefault(f"{field}_base64", base64.b64encode(data).decode())
        example.setdefault(f"{field}_content_type", content_type)
    if route.request_kind == "raw" and not {RAW_BASE64_KEY, RAW_TEXT_KEY} & set(example):
        declared = route.request_content_type or ""
        if declared.startswith("text/"):
            example[RAW_TEXT_KEY] = "Hello from chutes-wrappers"
        else:
            data, sampled = sample_file(declared, route)
            example[RAW_BASE64_KEY] = base64.b64encode(data).decode()
            declared = declared if declared and "*" not in declared else sampled
        example.setdefault(RAW_TYPE_KEY, declared)
    return example


def kind_of(cord: Cord) -> str:
    route = cord.route
    if route is None:
        return cord.mode
    answer = "stream" if route.stream else (route.content_type or route.response_kind)
    return f"{cord.mode} {route.request_kind}->{answer}"


def plan(base_url: str, cords: list[Cord]) -> list[Call]:
    calls = []
    for cord in cords:
        url = base_url + cord.public_path
        route = cord.route
        if cord.mode == "catch-all":
            for template in cord.templates:
                example = template.example if isinstance(template.example, dict) else {}
                path = fill_template(template.upstream_path, example.get("_path") or {})
                inner = body_for(template)
                payload = {"method": template.method, "path": path}
                if inner:
                    payload[CATCH_ALL_BODY_KEY.get(template.request_kind, "form")] = inner
                calls.append(Call(f"{template.method} {template.upstream_path}", "catch-all", "POST", url, payload))
            continue
        body = body_for(route) if route else None
        expect = route.content_type if route and route.response_kind == "binary" else None
        if cord.method in ("POST", "PUT", "PATCH"):
            body = body if body is not None else {}
        calls.append(Call(cord.public_path, kind_of(cord), cord.method, url, body or None, cord.stream, expect))
    return calls


def execute(session: requests.Session, call: Call, timeout: float) -> Result:
    started = time.perf_counter()
    size, status = 0, None
    try:
        data = json.dumps(call.body) if call.body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with session.request(call.method, call.url, data=data, headers=headers, stream=True, timeout=timeout) as answer:
            status = answer.status_code
            for chunk in answer.iter_content(1 << 16):
                size += len(chunk)
            content_type = answer.headers.get("Content-Type", "")
    except requests.RequestException as exc:
        return Result(call, status, time.perf_counter() - started, size, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - started
    if status >= 400:
        return Result(call, status, seconds, size, f"HTTP {status}")
    if call.expect_type and not content_type.startswith(call.expect_type):
        return Result(call, status, seconds, size, f"expected {call.expect_type}, got {content_type or 'none'}")
    return Result(call, status, seconds, size)


def table(results: list[Result]) -> str:
    rows = [("METHOD", "CORD", "KIND", "STATUS", "LATENCY", "BYTES", "")]
    for r in results:
        rows.append((r.call.method, r.call.label, r.call.kind, str(r.status or "-"), f"{r.seconds * 1000:.0f} ms",
                     str(r.size), r.problem))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:6])) + ("  " + row[6] if row[6] else "")
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def smoke(config: RunConfig, stop: threading.Event, call_timeout: float) -> int:
    with dev_stack(config, stop) as stack:
        calls = plan(stack.base_url, stack.cords)
        results = []
        with requests.Session() as session:
            for call in calls:
                if stack.stop.is_set():
                    raise KeyboardInterrupt
                stack.check()
                results.append(execute(session, call, call_timeout))
    print(table(results))
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --smoke", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--call-timeout", type=float, default=120, help="seconds per call (default 120)")
    parser.add_argument("--verbose", action="store_true", help="show the service's and the chute's logs")
    args = parser.parse_args(argv)
    check_chute_ports(parser, args.port, args.logging_port)
    config = stack_config(args, quiet=not args.verbose)

    def go() -> int:
        with stop_on_signals() as stop:
            return smoke(config, stop, args.call_timeout)

    run_cli(go, debug=config.debug, prog="deploy.sh --smoke")


if __name__ == "__main__":
    main(sys.argv[1:])
