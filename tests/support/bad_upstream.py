"""A small misbehaving HTTP service for the fault tests: raw asyncio TCP on 127.0.0.1, each path one
way of answering badly (broken lengths, cut streams, repeated and hop-by-hop headers, oversized
headers, a slow body, a process that dies mid-stream) and a few well-behaved answers for contrast.

Compressed answers (`/encoded/<coding>`, gzip, deflate, raw deflate, br, zstd, two codings, an unknown
one, a broken body; `?chunked=1` sends it chunked) and redirects (`/redirect?to=URL&status=302`, a loop)
test what the gateway cannot carry: Content-Encoding and Location.

Kept-alive connections it closes (`/hang-up`: every request to it is read and dropped unanswered;
`/arm-hang-up`: the next request that arrives on a kept-alive connection, whatever its path, is) test
that a request the service never took is sent again, and one it took is not; `/seen` lists every
request so far: method, path, whether it was the first on its connection, whether it was dropped.

Run it as a process, since one mode kills the whole process:
    python -m tests.support.bad_upstream [--port 0]
It prints `listening on PORT` once it accepts connections. `start()` does that and reads the port.
Well-formed answers keep the connection alive (HTTP/1.1); malformed and cut ones close it.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]

# What the well-behaved answers send, so tests can recognise them.
UPSTREAM_DATE = "Mon, 01 Jan 2001 00:00:00 GMT"
UPSTREAM_SERVER = "bad-upstream/1.0"
SSE_EVENTS = (b'data: {"index": 0}\n\n', b'data: {"index": 1}\n\n')
SLOW_BODY = b'{"late": true}'
BIG_HEADER_BYTES = 64 * 1024
MANY_HEADERS = 300
CUT_DECLARED = 4 * 1024 * 1024  # a length above the proxy's small-body limit, so it is streamed
CUT_SENT = 1024 * 1024


SEEN: list[dict] = []  # every request, in order of arrival (GET /seen)
ARMED = {"hang_up": False}  # GET /arm-hang-up: drop the next request on a kept-alive connection


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    request = Request(method, urlsplit(target).path, parse_qs(urlsplit(target).query), headers, b"")  # type: ignore[arg-type]
    if (request.header("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(data[:-2])
        request.body = b"".join(chunks)
    elif request.header("content-length"):
        request.body = await reader.readexactly(int(request.header("content-length")))
    return request


def head(status: str, headers: list[tuple[str, str]]) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


def json_answer(payload: dict, status: str = "200 OK", extra: list[tuple[str, str]] = ()) -> bytes:
    body = json.dumps(payload).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]
    return head(status, headers) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


ENCODED_JSON = {"ok": True, "encoded": "héllo " * 200}  # compressible, with a multi-byte character


def encoded(coding: str, data: bytes) -> tuple[str, bytes]:
    """(Content-Encoding value, body) for one mode of /encoded/<coding>."""
    if coding == "gzip":
        return "gzip", gzip.compress(data)
    if coding == "gzip-members":  # two gzip members one after the other (RFC 1952 allows it)
        half = len(data) // 2
        return "gzip", gzip.compress(data[:half]) + gzip.compress(data[half:])
    if coding == "deflate":  # the zlib format, as RFC 9110 says
        return "deflate", zlib.compress(data)
    if coding == "deflate-raw":  # what some servers send as deflate
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return "deflate", packer.compress(data) + packer.flush()
    if coding == "br":
        import brotli

        return "br", brotli.compress(data)
    if coding == "zstd":
        from backports import zstd

        return "zstd", zstd.compress(data)
    if coding == "gzip-br":  # gzip applied first, then br: undone in reverse
        import brotli

        return "gzip, br", brotli.compress(gzip.compress(data))
    if coding == "compress":  # a coding nobody decodes any more
        return "compress", data
    if coding == "gzip-broken":
        return "gzip", gzip.compress(data)[:-12] + b"not gzip at all"
    raise KeyError(coding)


async def answer(request: Request, writer: asyncio.StreamWriter) -> bool:
    """Answer one request by its path; False when the connection is to be closed."""
    path = request.path
    echo = {"ok": True, "method": request.method, "path": path, "bytes": len(request.body),
            "content_type": request.header("content-type"), "accept_encoding": request.header("accept-encoding")}
    if path == "/json":
        writer.write(json_answer(echo))
    elif path == "/seen":
        writer.write(json_answer({"seen": SEEN}))
    elif path == "/arm-hang-up":
        ARMED["hang_up"] = True
        writer.write(json_answer(echo))
    elif path == "/no-content":
        writer.write(head("204 No Content", []))
    elif path == "/date-server":
        writer.write(json_answer(echo, extra=[("Date", UPSTREAM_DATE), ("Server", UPSTREAM_SERVER)]))
    elif path == "/repeated":
        writer.write(json_answer(echo, extra=[
            ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
            ("X-Multi", "one"), ("X-Multi", "two"),
        ]))
    elif path == "/hop":
        # RFC 9110 §7.6.1: X-Hop is named in Connection, so it is for this hop only; Proxy-Connection
        # is a non-standard hop-by-hop header some clients send and no proxy should forward.
        writer.write(json_answer(echo, extra=[
            ("Connection", "X-Hop"), ("X-Hop", "must-not-pass"), ("Proxy-Connection", "keep-alive"),
            ("X-End-To-End", "passes"),
        ]))
    elif path == "/length-abc":
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "abc")]) + b"{}")
        return False
    elif path == "/length-negative":
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "-5")]) + b"{}")
        return False
    elif path == "/length-twice":
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2"),
                                     ("Content-Length", "3")]) + b"{}")
        return False
    elif path == "/not-http":
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\nthis is not an HTTP answer\r\n\r\n")
        return False
    elif path == "/huge-header":
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2"),
                                     ("X-Huge", "h" * BIG_HEADER_BYTES)]) + b"{}")
        return False
    elif path == "/many-headers":
        many = [(f"X-Header-{i}", str(i)) for i in range(MANY_HEADERS)]
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2"), *many]) + b"{}")
        return False
    elif path == "/short-body":
        # a small answer that ends before its length: read whole by the proxy, so a 502 is possible
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", "1000")]) + b'{"cut')
        return False
    elif path == "/long-cut":
        # a large answer that ends before its length: streamed, so only an abnormal end can tell
        writer.write(head("200 OK", [("Content-Type", "application/octet-stream"),
                                     ("Content-Length", str(CUT_DECLARED))]))
        writer.write(b"\0" * CUT_SENT)
        await writer.drain()
        return False
    elif path in ("/sse-cut", "/sse-kill", "/stream-cut"):
        content_type = "application/octet-stream" if path == "/stream-cut" else "text/event-stream"
        writer.write(head("200 OK", [("Content-Type", content_type), ("Cache-Control", "no-cache"),
                                     ("Transfer-Encoding", "chunked")]))
        for event in SSE_EVENTS:
            writer.write(chunk(event))
            await writer.drain()
            await asyncio.sleep(0.2)
        if path == "/sse-kill":
            os.kill(os.getpid(), signal.SIGKILL)  # the service dies: no final chunk, no goodbye
        return False  # closed without the final zero-length chunk
    elif path.startswith("/encoded/"):
        try:
            coding, body = encoded(path.removeprefix("/encoded/"), json.dumps(ENCODED_JSON).encode())
        except KeyError:
            writer.write(json_answer({"detail": f"no coding {path}"}, status="404 Not Found"))
        else:
            base = [("Content-Type", "application/json"), ("Content-Encoding", coding)]
            if request.query.get("chunked"):
                writer.write(head("200 OK", [*base, ("Transfer-Encoding", "chunked")]))
                for start in range(0, len(body), 100):
                    writer.write(chunk(body[start:start + 100]))
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head("200 OK", [*base, ("Content-Length", str(len(body)))]) + body)
    elif path in ("/redirect", "/redirect-loop"):
        to = "/redirect-loop" if path == "/redirect-loop" else (request.query.get("to") or ["/json"])[0]
        status = {"301": "301 Moved Permanently", "302": "302 Found", "303": "303 See Other",
                  "307": "307 Temporary Redirect", "308": "308 Permanent Redirect"}[(request.query.get("status") or ["302"])[0]]
        body = b"<a href>moved</a>"
        writer.write(head(status, [("Location", to), ("Content-Type", "text/html"), ("Content-Length", str(len(body)))]) + body)
    elif path == "/slow-body":
        seconds = float((request.query.get("seconds") or ["3"])[0])
        writer.write(head("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(SLOW_BODY)))]))
        await writer.drain()
        await asyncio.sleep(seconds)
        writer.write(SLOW_BODY)
    else:
        writer.write(json_answer({"detail": f"no mode {path}"}, status="404 Not Found"))
    await writer.drain()
    return (request.header("connection") or "").lower() != "close"


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    first = True
    try:
        while True:
            request = await read_request(reader)
            if request is None:
                break
            armed = ARMED["hang_up"] and not first
            drop = armed or request.path == "/hang-up"
            if request.path != "/seen":
                SEEN.append({"method": request.method, "path": request.path, "first_on_connection": first,
                             "dropped": drop})
            if drop:  # read, never answered: the connection just closes
                ARMED["hang_up"] = ARMED["hang_up"] and not armed
                break
            first = False
            if not await answer(request, writer):
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the proxy gave up on us (a timeout): nothing to answer to
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def start(port: int = 0) -> tuple[subprocess.Popen, int]:
    """The bad upstream as a process in its own session (stop it with tests.conftest.stop_process)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.bad_upstream", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"bad upstream did not start: {line!r}")
    return proc, int(line.split()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    try:
        asyncio.run(main(parser.parse_args().port))
    except KeyboardInterrupt:
        pass
