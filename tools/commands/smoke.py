"""`deploy.sh --smoke MODULE`: call every cord of a module once, through the real `chutes run --dev`.

Requests are built from the manifest: the route's example body, a small real WAV or PNG for file
fields, example query and path parameters. Calls run a few at a time, each within a time limit; an
answer that streams without end is read for a moment and reported as "streams". One table row per
call, a summary line with counts by outcome; exit 1 if any call failed or timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import struct
import sys
import threading
import time
import wave
import zlib
from urllib.parse import urlencode, urlsplit
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import aiohttp

from tools.runtime.errors import Interrupted, run_cli
from tools.discovery.openapi import STREAM_TYPES
from tools.runtime.cords.request import kind_of
from tools.cord_table import Cord, as_caller_sends
from tools.platform.stack import RunConfig, add_stack_arguments, check_chute_ports, stack_config, start_stack
from tools.processes import stop_on_signals
from tools.runtime.routes import BODY_METHODS, Route, acts_on_service

CALL_TIMEOUT = 20.0  # seconds for one call, answer included
STREAM_WINDOW = 3.0  # an answer that streams is read this long ...
STREAM_BYTES = 64 * 1024  # ... or this far, then reported as "streams"
CONCURRENCY = 4
PHASES = {"POST": 0, "PUT": 0, "GET": 1, "PATCH": 2, "DELETE": 3}
# Routes that act on the service itself (routes.acts_on_service: stop, unload, flush, sleep, ...) come
# after every other call, one at a time: before, they could fail the calls that follow them.
LAST_PHASE = max(PHASES.values()) + 1
ERROR_BODY_BYTES = 64 * 1024  # of an error answer, kept to see whose error it is
# Outcomes, in the order the summary lists them; only "failed" and "timeout" fail the smoke test.
# "untried": the service answered 4xx to a call whose values were made up (the manifest's example
# has values discovery built by type): the route was not tried with real input.
OUTCOMES = ("ok", "streams", "untried", "failed", "timeout")
UNTRIED_HINT = ("give those routes a real call in the module's CHUTE_ROUTE_OVERRIDES (README, \"Per-route overrides\"),"
                " e.g. {key!r}: {{\"example\": {{...}}}}")


@dataclass
class Limits:
    """How long and how many: one call's time limit, the look at a stream, calls at once."""

    call_timeout: float = CALL_TIMEOUT
    stream_window: float = STREAM_WINDOW
    stream_bytes: int = STREAM_BYTES
    concurrency: int = CONCURRENCY


@dataclass
class SmokeCall:
    label: str
    kind: str
    method: str
    url: str
    body: object = None
    stream: bool = False
    expect_type: str | None = None
    made_up: bool = False  # some value of the call was made up by discovery, not the spec's or the module's
    key: str = ""  # the route's "METHOD /path", as CHUTE_ROUTE_OVERRIDES keys it
    route: Route | None = None  # the route called (a catch-all call: its template)
    after: int | None = None  # a spec link: the index of the call whose answer gives values to this one
    link: Mapping[str, object] = field(default_factory=dict)  # parameter -> "$response.body#/..." or a value

    @property
    def phase(self) -> int:
        """When it runs: what creates (POST, PUT) before what reads (GET), updates (PATCH) and deletes,
        and what acts on the service itself after all of them."""
        if acts_on_service(self.route.path if self.route is not None else urlsplit(self.url).path):
            return LAST_PHASE
        return PHASES.get(self.route.method if self.route is not None else self.method, 1)


@dataclass
class Result:
    call: SmokeCall
    status: int | None
    seconds: float
    size: int
    problem: str = ""
    outcome: str = field(default="")
    body: bytes = b""  # kept for a call whose answer links to another (a JSON answer up to 64 KB)

    def __post_init__(self) -> None:
        if not self.outcome:
            self.outcome = "failed" if self.problem else "ok"

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "streams", "untried")


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
    if route.gradio is not None:  # the app says which component takes the file (Image, Audio, File...)
        hint = " ".join(str(p.component) for p in route.gradio.parameters if p.name == field).lower() or hint
    if any(word in hint for word in ("image", "img", "photo", "picture", "png", "jpg")):
        return sample_png(), "image/png"
    return sample_wav(), "audio/wav"


def fill_template(path: str, values: dict) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: str(values.get(m.group(1), 1)), path)


def body_for(route: Route, extra_files: tuple[str, ...] = ()) -> dict:
    """A complete call of `route` as its request kind takes it, sample files included."""
    return kind_of(route).example(route, sample_file, extra_files)


def describe(cord: Cord) -> str:
    route = cord.route
    if route is None:
        return cord.mode
    answer = "stream" if route.stream else (route.content_type or route.response_kind)
    return f"{cord.mode} {route.request_kind}->{answer}"


def override_files(overrides: Mapping | None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(path, METHOD) -> the file fields the module's CHUTE_ROUTE_OVERRIDES name for that route."""
    out = {}
    for key, value in (overrides or {}).items():
        method, _, path = str(key).partition(" ")
        files = value.get("file_fields") if isinstance(value, Mapping) else None
        if files:
            out[(path.strip(), method.upper())] = tuple(files)
    return out


def made_up(route: Route | None) -> bool:
    """Whether a call of `route` carries values discovery made up (a path parameter with no example
    at all counts too: it is filled with 1)."""
    if route is None:
        return False
    example = route.example if isinstance(route.example, dict) else {}
    unfilled = set(route.path_params) - set((example.get("_path") or {}) if isinstance(example.get("_path"), dict) else {})
    return route.example_source == "generated" or (bool(unfilled) and route.example_source != "module")


def calls_for(base_url: str, cords: list[Cord], overrides: Mapping | None = None) -> list[SmokeCall]:
    files = override_files(overrides)
    calls = []
    for cord in cords:
        url = base_url + cord.public_path
        route = cord.route
        if cord.mode == "catch-all":
            for template in cord.templates:
                example = template.example if isinstance(template.example, dict) else {}
                path = fill_template(template.upstream_path, example.get("_path") or {})
                inner = body_for(template, files.get(template.key, ()))
                payload = {"method": template.method, "path": path}
                if inner:
                    payload[kind_of(template).catch_all_key] = inner
                calls.append(SmokeCall(f"{template.method} {template.upstream_path}", "catch-all", "POST", url, payload,
                                       made_up=made_up(template), key=f"{template.method} {template.path}",
                                       route=template))
            continue
        body = body_for(route, files.get(route.key, ())) if route else None
        expect = route.content_type if route and route.response_kind == "binary" else None
        if cord.method in BODY_METHODS:
            body = body if body is not None else {}  # `{}` is a body: a POST needs one
        url, body = as_caller_sends(url, cord.method, body)
        calls.append(SmokeCall(cord.public_path, describe(cord), cord.method, url, body, cord.stream, expect,
                               made_up=made_up(route), key=f"{route.method} {route.path}" if route else "",
                               route=route))
    return with_links(calls)


def with_links(calls: list[SmokeCall]) -> list[SmokeCall]:
    """Each call a spec link points at waits for the call the link comes from (the first one)."""
    by_key = {}
    for index, call in enumerate(calls):
        by_key.setdefault(call.key, index)
    for index, call in enumerate(calls):
        for link in (call.route.links if call.route is not None else ()):
            target = by_key.get(str(link.get("to")))
            if target is not None and target != index and calls[target].after is None:
                calls[target].after = index
                calls[target].link = dict(link.get("parameters") or {})
    return calls


def linked(call: SmokeCall, source: Result) -> SmokeCall:
    """`call` with the values its link takes from the source call's JSON answer (an id it created):
    path parameters into a catch-all call's path, others into the query string."""
    try:
        answer = json.loads(source.body) if source.body else None
    except ValueError:
        answer = None
    values = {}
    for name, expression in call.link.items():
        if isinstance(expression, str) and expression.startswith("$response.body"):
            found, value = _pointer(answer, expression.removeprefix("$response.body").removeprefix("#"))
            if found:
                values[name] = value
        elif not (isinstance(expression, str) and expression.startswith("$")):
            values[name] = expression  # a constant
    if not values or call.route is None:
        return call
    route = call.route
    path_values = {k: v for k, v in values.items() if k in route.path_params}
    query_values = {k: v for k, v in values.items() if k not in route.path_params}
    body, url = call.body, call.url
    if call.kind == "catch-all" and isinstance(body, dict):
        example = route.example if isinstance(route.example, dict) else {}
        body = dict(body, path=fill_template(route.upstream_path, {**(example.get("_path") or {}), **path_values}))
        if query_values:
            body["query"] = {**(body.get("query") or {}), **query_values}
    elif query_values:
        url += ("&" if "?" in url else "?") + urlencode(query_values)
    unfilled = set(route.path_params) - set(path_values) - set(
        ((route.example or {}).get("_path") or {}) if isinstance(route.example, dict) else {})
    return replace(call, url=url, body=body, made_up=route.example_source == "generated" or bool(unfilled))


def _pointer(document: object, pointer: str) -> tuple[bool, object]:
    """(found, value) of a JSON pointer ("/data/id") in a decoded JSON document."""
    if pointer in ("", "/"):
        return document is not None, document
    value = document
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _streams(response: aiohttp.ClientResponse) -> bool:
    """An answer that may never end: a stream type, or chunks with no length announced."""
    ctype = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return ctype in STREAM_TYPES or response.content_length is None


async def execute(session: aiohttp.ClientSession, call: SmokeCall, limits: Limits) -> Result:
    """One call within `limits.call_timeout`; a streaming answer is read for a moment only."""
    started = time.monotonic()
    deadline = started + limits.call_timeout
    data = json.dumps(call.body) if call.body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    size = 0
    try:
        response = await asyncio.wait_for(
            session.request(call.method, call.url, data=data, headers=headers, allow_redirects=False),
            limits.call_timeout,
        )
    except asyncio.TimeoutError:
        return Result(call, None, time.monotonic() - started, 0, f"no answer within {limits.call_timeout:g}s", "timeout")
    except (aiohttp.ClientError, OSError) as exc:
        return Result(call, None, time.monotonic() - started, 0, f"{type(exc).__name__}: {exc}")
    status, content_type = response.status, response.headers.get("Content-Type", "")
    streaming = _streams(response)
    until = min(deadline, time.monotonic() + limits.stream_window) if streaming else deadline
    finished = False
    kept = b""
    try:
        while True:
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(response.content.readany(), left)
            except asyncio.TimeoutError:
                break
            if not chunk:
                finished = True
                break
            size += len(chunk)
            if (status >= 400 or call.route is not None and call.route.links) and len(kept) < ERROR_BODY_BYTES:
                kept += chunk[:ERROR_BODY_BYTES - len(kept)]
            if streaming and size >= limits.stream_bytes:
                break
    except (aiohttp.ClientError, OSError) as exc:
        return Result(call, status, time.monotonic() - started, size, f"answer broken off: {type(exc).__name__}")
    finally:
        response.close()  # an unfinished answer must not go back to the pool
    seconds = time.monotonic() - started
    if status >= 400:
        upstream = service_status(kept)
        if call.made_up and upstream is not None and 400 <= upstream < 500 and upstream != 429 and status in (400, 404):
            return Result(call, status, seconds, size,
                          f"not tried with real input (the service's {upstream} to made-up values)", "untried")
        return Result(call, status, seconds, size, f"HTTP {status}" + (f" (the service's {upstream})" if upstream else ""))
    if not finished:
        if streaming:
            return Result(call, status, seconds, size, outcome="streams")
        return Result(call, status, seconds, size, f"answer not complete within {limits.call_timeout:g}s", "timeout")
    generic = call.expect_type == "application/octet-stream"  # "some file": any type will do
    if call.expect_type and not generic and not content_type.startswith(call.expect_type):
        return Result(call, status, seconds, size, f"expected {call.expect_type}, got {content_type or 'none'}")
    return Result(call, status, seconds, size, body=kept)


def service_status(body: bytes) -> int | None:
    """The service's own status in a cord's error answer (`upstream_status`, README's error table),
    also inside the gateway's `detail` ("Invalid request: ..." + the chute's JSON); else None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    for _ in range(3):
        if not isinstance(data, dict):
            return None
        status = data.get("upstream_status")
        if isinstance(status, int) and not isinstance(status, bool):
            return status
        detail = data.get("detail")
        if not isinstance(detail, str) or not detail.startswith("Invalid request: "):
            return None
        text = detail
        while text.startswith("Invalid request: "):
            text = text.removeprefix("Invalid request: ")
        try:
            data = json.loads(text)
        except ValueError:
            return None
    return None


async def run_calls(calls: list[SmokeCall], limits: Limits, check: Callable[[], None] = lambda: None) -> list[Result]:
    """Every call, `limits.concurrency` at a time, results in the calls' order. `check` runs every
    0.2 s and may raise (the chute died, Ctrl-C): the calls under way are then cancelled."""
    gate = asyncio.Semaphore(max(1, limits.concurrency))
    connector = aiohttp.TCPConnector(limit=max(1, limits.concurrency))
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        async def one(call: SmokeCall) -> Result:
            async with gate:
                return await execute(session, call, limits)

        async def watch() -> None:
            while True:
                check()
                await asyncio.sleep(0.2)

        async def in_order() -> list[Result]:
            """Phase by phase (PHASES), then each linked call once the call it waits for is done."""
            results: list[Result | None] = [None] * len(calls)

            async def run(indexes: list[int], prepare=lambda i: calls[i]) -> None:
                done = await asyncio.gather(*(one(prepare(i)) for i in indexes))
                for index, result in zip(indexes, done):
                    results[index] = result

            waiting = [i for i, call in enumerate(calls) if call.after is not None]
            for phase in sorted({call.phase for call in calls}):
                now = [i for i, call in enumerate(calls) if call.after is None and call.phase == phase]
                for batch in ([[i] for i in now] if phase == LAST_PHASE else [now]):
                    await run(batch)
                while True:
                    ready = [i for i in waiting if results[calls[i].after] is not None and calls[i].phase <= phase]
                    if not ready:
                        break
                    waiting = [i for i in waiting if i not in ready]
                    await run(ready, lambda i: linked(calls[i], results[calls[i].after]))
            await run(waiting)  # waiting on a call that waits in turn: as they are
            return [result for result in results if result is not None]

        check()
        everything = asyncio.ensure_future(in_order())
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait([everything, watcher], return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                watcher.result()  # raises what check() raised
            return list(everything.result())
        finally:
            for task in (everything, watcher):
                task.cancel()
            await asyncio.gather(everything, watcher, return_exceptions=True)


def summary_line(results: list[Result]) -> str:
    """'summary: 9 ok, 1 streams, 2 failed, 1 timeout' (every outcome, zeros included)."""
    counts = Counter(result.outcome for result in results)
    return "summary: " + ", ".join(f"{counts.get(outcome, 0)} {outcome}" for outcome in OUTCOMES)


def table(results: list[Result]) -> str:
    rows = [("METHOD", "CORD", "KIND", "STATUS", "LATENCY", "BYTES", "")]
    for r in results:
        note = r.problem or ("streams (read for a moment)" if r.outcome == "streams" else "")
        rows.append((r.call.method, r.call.label, r.call.kind, str(r.status or "-"), f"{r.seconds * 1000:.0f} ms",
                     str(r.size), note))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:6])) + ("  " + row[6] if row[6] else "")
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def limits_for(limits: Limits, chute: object) -> Limits:
    """`limits` with no more calls at once than the chute takes: the gateway refuses the others
    (429, "at maximum capacity"), which would read as failures of the routes."""
    concurrency = getattr(chute, "concurrency", None)
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency > 0:
        return replace(limits, concurrency=min(limits.concurrency, concurrency))
    return limits


def smoke(config: RunConfig, stop: threading.Event, limits: Limits) -> int:
    with start_stack(config, stop) as stack:
        calls = calls_for(stack.base_url, stack.cords, stack.module.get("CHUTE_ROUTE_OVERRIDES"))
        limits = limits_for(limits, stack.module.chute)

        def check() -> None:
            if stack.stop.is_set():
                raise Interrupted(signal.SIGINT)  # Ctrl-C or SIGTERM: the calls under way are cancelled
            stack.check()

        results = asyncio.run(run_calls(calls, limits, check))
    print(table(results))
    failed = [r for r in results if not r.ok]
    untried = [r for r in results if r.outcome == "untried"]
    print(f"\n{summary_line(results)}")
    print(f"{len(results) - len(failed) - len(untried)} passed, {len(failed)} failed"
          + (f", {len(untried)} not tried with real input" if untried else ""))
    if untried:
        print(UNTRIED_HINT.format(key=untried[0].call.key))
    return 1 if failed else 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --smoke", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--call-timeout", type=_positive, default=CALL_TIMEOUT,
                        help=f"seconds for one call, answer included (default {CALL_TIMEOUT:g})")
    parser.add_argument("--stream-window", type=_positive, default=STREAM_WINDOW,
                        help=f"seconds to read an answer that streams before calling it 'streams' (default {STREAM_WINDOW:g})")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, choices=range(1, 65), metavar="N",
                        help=f"calls at once, at most the chute's concurrency (default {CONCURRENCY})")
    parser.add_argument("--verbose", action="store_true", help="show the service's and the chute's logs")
    args = parser.parse_args(argv)
    check_chute_ports(parser, args.port, args.logging_port)
    config = stack_config(args, quiet=not args.verbose)
    limits = Limits(call_timeout=args.call_timeout, stream_window=min(args.stream_window, args.call_timeout),
                    concurrency=args.concurrency)

    def go() -> int:
        with stop_on_signals() as stop:
            return smoke(config, stop, limits)

    run_cli(go, debug=config.debug, prog="deploy.sh --smoke")


if __name__ == "__main__":
    main(sys.argv[1:])
