"""A local stand-in for the Chutes API gateway's invocation path: the platform's contract in one module.

Callers reach a deployed chute only through the gateway (`https://<slug>.chutes.ai/<public path>`),
which picks a cord, encrypts the call, sends it to an instance (a node running `chutes run`) and
turns the instance's answer into the caller's. Each rule below cites the public source of the
gateway, repository chutesai/chutes-api (main at d390a53): `api/invocation/router.py` (`_invoke`,
the invocation route) and `api/chute/util.py` (`_invoke_one`, one call to one instance; `invoke`,
retries), plus `api/instance/util.py` (`LeastConnManager.get_target(s)`).

Where that source and chutes 0.6.9 disagree, the SDK wins because it is the receiving end: the public
API wraps the body in pickled `args`/`kwargs` under AES-CBC (encryption v2), while the 0.6.9 node
(chutes/entrypoint/run.py `GraValMiddleware._dispatch`) expects base64 of the encrypted gzip of the
JSON and hands it to the cord as the argument (chutes/chute/cord.py `_request_handler`); its answers
are gzipped before encryption (`_encrypt`). The crypto itself is the stand-in of tools/runtime/sdk/node.py.

Deliberate differences: no authentication, billing, quotas or trace chunks; one instance (so the
API's retry on "other instances" finds none, as it would for a chute with one instance); a pooled
client where the API opens one session per call. Failures are counted (`GET /_gateway/stats`).
What it serves for the developer besides the cords (the chute's API document, its docs page, metrics)
is tools/platform/front_door.py.

  python -m tools.platform.gateway --chute-url http://127.0.0.1:8000 --cords deploy_example:chute --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tools.runtime.constants import port_argument
from tools.runtime.errors import InstanceFailure, InstanceRateLimit, MinerBadRequest, WrapperError, run_cli
from tools import deploy_module
from tools.platform.front_door import front_door
from tools.platform.metrics import GatewayMetrics
from tools.runtime.sdk.chute import cord_records, unwrap
from tools.runtime.sdk.node import GATEWAY_SOURCE_ADDRESS, PlatformKey

# api/chute/util.py get_miner_session: ClientTimeout(connect=5.0, total=600.0), read_bufsize=8 MiB
# (which also bounds one stream line: aiohttp refuses longer lines).
CONNECT_TIMEOUT, TOTAL_TIMEOUT, READ_BUFSIZE = 5.0, 600.0, 8 * 1024 * 1024
# api/invocation/router.py hostname_invocation: the methods the invocation route accepts.
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
# api/instance/util.py LeastConnManager.get_target: the error when no instance is left to try.
NO_TARGETS = "No infrastructure available to serve request"
# api/chute/util.py invoke: the detail of the "infra_overload" error (rate limited, or at capacity).
OVERLOAD = "Infrastructure is at maximum capacity, try again later"
STATS_PATH = "/_gateway/stats"


# --------------------------------------------------------------------------------------------------
# What the gateway knows about a chute: what `chutes deploy` sent to the API.


@dataclass
class ChuteRecord:
    """The API's row for the chute: its cords, concurrency and standard template."""

    cords: list[dict[str, Any]]
    concurrency: int = 1
    standard_template: str | None = None
    chute: Any = field(default=None, repr=False, compare=False)  # when read from a module: its plan, for the front door

    @classmethod
    def of(cls, chute: Any) -> "ChuteRecord":
        chute = unwrap(chute)
        return cls(cord_records(chute), int(chute.concurrency or 1), getattr(chute, "standard_template", None), chute)


def load_record(spec: str, directory: str | os.PathLike | None = None) -> ChuteRecord:
    """A JSON file (a cord list, or {"cords", "concurrency", "standard_template"}) or MODULE:CHUTE,
    the module in `directory` (default the current one) imported as every tool imports it."""
    path = Path(directory or ".") / spec
    if spec.endswith(".json") or path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            return ChuteRecord(data)
        return ChuteRecord(data["cords"], int(data.get("concurrency") or 1), data.get("standard_template"))
    module_name, _, attr = spec.partition(":")
    file = Path(directory or os.getcwd()) / f"{module_name}.py"
    if not file.is_file():
        raise WrapperError(f"--cords {spec}: neither a JSON file nor a module in {file.parent}", "give a cords .json or MODULE:CHUTE")
    module = deploy_module.load(file)
    return ChuteRecord.of(module.get(attr or "chute"))


# --------------------------------------------------------------------------------------------------
# Outcomes of one call to the instance (api/chute/util.py `_invoke_one` and `invoke`)


@dataclass
class Stats:
    """What the tests assert on: calls sent to the instance and how they ended."""

    calls: int = 0
    instance_failures: int = 0
    consecutive_failures: int = 0  # api/chute/util.py invoke: reset on success, instances deleted at a limit
    rate_limited: int = 0
    bad_requests: int = 0
    in_flight: int = 0
    last_failure: str | None = None


@dataclass
class CallRecord:
    """One caller's call as the local gateway saw it: what `--run` logs a line of (`line`), and what
    observers of the gateway (tests, metrics) receive when the answer has been sent."""

    started: float
    method: str
    path: str
    cord: str | None = None  # the cord's internal path
    stream: bool = False  # the gateway's stream decision (read the answer as lines)
    status: int = 0  # what the caller got
    failure: str | None = None  # why the instance failed the call, if it did
    bytes: int = 0  # of the answer the caller got
    ms: float = 0.0

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.started))
        text = (f"{stamp} {self.method} {self.path} -> {self.cord or '-'} {'stream' if self.stream else 'whole'} "
                f"{self.status} {self.bytes}B {self.ms:.1f}ms")
        return text + (f" INSTANCE FAILURE: {self.failure}" if self.failure else "")


_CALL: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("gateway_call", default=None)


@dataclass
class Gateway:
    """The invocation route for one chute with one instance at `chute_url`."""

    record: ChuteRecord
    chute_url: str
    key: PlatformKey
    source_address: str | None = GATEWAY_SOURCE_ADDRESS
    stats: Stats = field(default_factory=Stats)
    observers: list[Callable[[CallRecord], None]] = field(default_factory=list)
    extra_routes: list[Any] = field(default_factory=list)  # the front door's pages, before the invocation route
    node_wait: float = 0.0  # seconds to wait at startup for the node to answer, before taking any call
    _session: aiohttp.ClientSession | None = None

    # -- the miner session -------------------------------------------------------------------------

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, local_addr=(self.source_address, 0) if self.source_address else None
            )
            self._session = aiohttp.ClientSession(
                base_url=self.chute_url,
                connector=connector,
                timeout=aiohttp.ClientTimeout(connect=CONNECT_TIMEOUT, total=TOTAL_TIMEOUT),
                read_bufsize=READ_BUFSIZE,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def wait_for_node(self, timeout: float) -> None:
        """Until the node answers anything over HTTP (its startup hooks are done), or WrapperError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with (await self.session()).get("/", timeout=aiohttp.ClientTimeout(total=1)):
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise WrapperError(f"the node at {self.chute_url} did not answer within {timeout:g}s") from None
                await asyncio.sleep(0.05)

    def _failed(self, reason: str) -> None:
        self.stats.instance_failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_failure = reason
        call = _CALL.get()
        if call is not None:
            call.failure = reason

    # -- one call: api/chute/util.py `_invoke_one` -------------------------------------------------

    async def _post(self, path: str, payload: Any) -> aiohttp.ClientResponse:
        """Encrypted path and body, signed headers; raises InstanceRateLimit/MinerBadRequest/InstanceFailure."""
        # `_invoke_one`: `aes_encrypt(path.ljust(24, "?"), key, hex_encode=True)` when the instance
        # uses encrypted paths; GraValMiddleware.dispatch decrypts `bytes.fromhex(path[1:])`.
        url = self.key.encrypt_path(path)
        body = self.key.encrypt_body(payload)
        # api/miner_client.py sign_request: a str payload is sent as text/plain and signed by hash;
        # `_invoke_one` adds X-Chutes-Serialized with encryption v2.
        headers = self.key.sign(body)
        headers["Content-Type"] = "text/plain; charset=utf-8"
        headers["X-Chutes-Serialized"] = "true"
        self.stats.calls += 1
        try:
            response = await (await self.session()).post(url, data=body, headers=headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise InstanceFailure(f"instance unreachable: {type(exc).__name__}: {exc}") from None
        # `_invoke_one`: 429 -> InstanceRateLimit, 400 -> BadRequest("Invalid request: " + text),
        # then `response.raise_for_status()`: any other status >= 400 is an exception, which
        # `invoke` counts as a failure of the instance.
        if response.status == 429:
            response.release()
            raise InstanceRateLimit("instance answered 429")
        if response.status == 400:
            text = await response.text(errors="replace")
            raise MinerBadRequest("Invalid request: " + text)
        if response.status >= 400:
            text = (await response.read())[:300].decode("utf-8", "replace")
            raise InstanceFailure(f"instance answered {response.status}: {text}")
        return response

    async def call_once(self, path: str, payload: Any) -> dict[str, Any]:
        """A non-stream answer as `_invoke_one` builds it: {"content_type", "json"} or {"content_type", "bytes"}."""
        response = await self._post(path, payload)
        try:
            raw = await response.read()
            # `_invoke_one` (encryption v2): the answer is always JSON, whatever the status code
            # (< 400) says; {"json": enc} is JSON, else {"body": enc, "headers", "media_type"}.
            data = orjson.loads(raw)
            if "json" in data:
                return {"content_type": "application/json", "json": orjson.loads(self.key.decrypt_answer(data["json"]))}
            plaintext = self.key.decrypt_answer(data["body"])
            headers = data["headers"]
            # `.get("media_type", ...)`: a present media_type wins even when it is null.
            content_type = data.get("media_type", headers.get("Content-Type", "text/plain"))
            return {"content_type": content_type, "bytes": plaintext}
        except (ValueError, KeyError, TypeError, AttributeError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise InstanceFailure(f"unreadable answer: {type(exc).__name__}: {exc}") from None
        finally:
            response.release()

    async def call_stream(self, path: str, payload: Any) -> AsyncIterator[str]:
        """A stream answer as `_invoke_one` reads it: line by line, each decrypted and `.decode()`d."""
        response = await self._post(path, payload)
        try:
            async for line in response.content:
                try:
                    yield self.key.decrypt_answer(line).decode()  # strict UTF-8, as `chunk.decode()`
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InstanceFailure(f"stream line unreadable: {type(exc).__name__}: {exc}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise InstanceFailure(f"stream broken: {type(exc).__name__}: {exc}") from None
        finally:
            response.release()

    # -- the invocation route: api/invocation/router.py `_invoke` ---------------------------------

    def select_cord(self, path: str, method: str, stream: Any) -> dict[str, Any] | None:
        """`_invoke`: the first cord whose public_api_path is the URL path and public_api_method the
        method (for the vllm template, also `stream == cord["stream"]`)."""
        for cord in self.record.cords:
            public_path = cord.get("public_api_path", None)
            if public_path and public_path == path:
                if cord.get("public_api_method", "POST") == method:
                    if self.record.standard_template != "vllm" or stream == cord.get("stream"):
                        return cord
        return None

    async def invoke(self, request: Request) -> Response:
        # `_invoke`: the caller's body is read as JSON only for POST/PUT/PATCH, else {}; a body
        # that is not JSON is a 400 (an empty POST body too).
        try:
            request_body = await request.json() if request.method in ("POST", "PUT", "PATCH") else {}
        except (TypeError, ValueError) as exc:
            return JSONResponse({"detail": f"invalid request JSON payload: {exc}"}, status_code=400)
        # `_invoke`: `request.query_params._dict` (the last value of a repeated key).
        request_params = dict(request.query_params)
        # `_invoke`: `request_body.get("stream", ...)`; a JSON body that is not an object fails
        # there with AttributeError, which reaches the caller as an unhandled 500.
        if not isinstance(request_body, dict):
            return PlainTextResponse("Internal Server Error", status_code=500)
        stream = request_body.get("stream", request_params.get("stream", False))
        cord = self.select_cord(request.url.path, request.method, stream)
        if cord is None:
            return JSONResponse({"detail": "No matching cord found!"}, status_code=404)
        if cord.get("stream"):
            stream = True  # `_invoke`: a stream cord always streams
        call = _CALL.get()
        if call is not None:
            call.cord, call.stream = cord.get("path"), bool(stream)
        # `_invoke`: passthrough-flagged cords (and the vllm/tei templates) get
        # {"json": body, "params": query}; other cords get the body alone.
        if self.record.standard_template in ("vllm", "tei") or cord.get("passthrough", False):
            payload: Any = {"json": request_body, "params": request_params}
        else:
            payload = request_body
        invocation_id = str(uuid.uuid4())
        if stream:
            return await self._stream_answer(cord["path"], payload, invocation_id)
        return await self._body_answer(cord["path"], payload, invocation_id)

    def _capacity_error(self) -> Response | None:
        """api/instance/util.py get_targets: every instance at `concurrency` calls -> InfraOverload,
        which `_invoke` answers 429 (error "infra_overload")."""
        if self.stats.in_flight >= self.record.concurrency:
            self.stats.rate_limited += 1
            return JSONResponse({"detail": OVERLOAD}, status_code=429)
        return None

    def _error_answer(self, exc: Exception) -> Response:
        """`invoke` then `_invoke`: what the caller gets once the call failed (one instance, so the
        retry finds no other target)."""
        if isinstance(exc, InstanceRateLimit):
            self.stats.rate_limited += 1
            return JSONResponse({"detail": OVERLOAD}, status_code=429)
        if isinstance(exc, MinerBadRequest):
            # `invoke`: sse({"error": "bad_request", "detail": f"Invalid request: {error_detail}"})
            # with error_detail = str(BadRequest("Invalid request: " + text)); `_invoke`: 400.
            self.stats.bad_requests += 1
            return JSONResponse({"detail": f"Invalid request: {exc}"}, status_code=400)
        self._failed(str(exc))
        # `invoke`: the next attempt avoids the failed instance; get_target finds none and yields
        # NO_TARGETS, which `_invoke` answers 500 with it as the detail.
        return JSONResponse({"detail": NO_TARGETS}, status_code=500)

    async def _body_answer(self, path: str, payload: Any, invocation_id: str) -> Response:
        if (busy := self._capacity_error()) is not None:
            return busy
        self.stats.in_flight += 1
        try:
            result = await self.call_once(path, payload)
        except (InstanceRateLimit, MinerBadRequest, InstanceFailure) as exc:
            return self._error_answer(exc)
        finally:
            self.stats.in_flight -= 1
        self.stats.consecutive_failures = 0
        headers = {"X-Chutes-InvocationID": invocation_id}
        # `_invoke`, non-streamed: "bytes" -> StreamingResponse(media_type=content_type) (so no
        # Content-Length: chunked); otherwise the JSON re-serialized (orjson) as application/json.
        # The status is always 200: the instance's status_code in the envelope is not used.
        if "bytes" in result:
            raw = result["bytes"]

            async def _streamfile() -> AsyncIterator[bytes]:
                yield raw

            return StreamingResponse(_streamfile(), media_type=result["content_type"], headers=headers)
        headers["Content-type"] = "application/json"
        return Response(orjson.dumps(result.get("json", result)), media_type="application/json", headers=headers)

    async def _stream_answer(self, path: str, payload: Any, invocation_id: str) -> Response:
        if (busy := self._capacity_error()) is not None:
            return busy
        self.stats.in_flight += 1
        lines = self.call_stream(path, payload)
        # `_invoke` `_buffered_stream_response`: wait for the first chunk so that a failure before
        # it is an HTTP error; after it, an error is appended to the stream as JSON text.
        try:
            first = await lines.__anext__()
        except StopAsyncIteration:
            self.stats.in_flight -= 1
            self.stats.consecutive_failures = 0
            # `_invoke`: generator.__anext__() raising -> 500 "Unhandled error generating response: {e}"
            return JSONResponse({"detail": "Unhandled error generating response: "}, status_code=500)
        except (InstanceRateLimit, MinerBadRequest, InstanceFailure) as exc:
            self.stats.in_flight -= 1
            return self._error_answer(exc)

        async def body() -> AsyncIterator[str | bytes]:
            try:
                yield first
                async for line in lines:
                    yield line
                self.stats.consecutive_failures = 0
            except InstanceFailure as exc:
                self._failed(str(exc))
                yield orjson.dumps({"error": f"Unhandled exception during response stream: {NO_TARGETS}"})
            finally:
                self.stats.in_flight -= 1
                await lines.aclose()

        # `_invoke`: StreamingResponse(media_type="text/event-stream", X-Chutes-InvocationID).
        return StreamingResponse(body(), media_type="text/event-stream", headers={"X-Chutes-InvocationID": invocation_id})

    # -- the ASGI app ------------------------------------------------------------------------------

    async def observed(self, request: Request) -> Response:
        """`invoke`, with the call recorded and handed to every observer once its answer is sent."""
        call = CallRecord(time.time(), request.method, request.url.path)
        token = _CALL.set(call)
        clock = time.perf_counter()
        try:
            response = await self.invoke(request)
        finally:
            _CALL.reset(token)
        call.status = response.status_code

        def done() -> None:
            call.ms = (time.perf_counter() - clock) * 1000
            for observer in self.observers:
                observer(call)

        if not isinstance(response, StreamingResponse):
            call.bytes = len(response.body)
            done()
            return response
        inner = response.body_iterator

        async def counted() -> AsyncIterator[Any]:
            token = _CALL.set(call)  # failures found while streaming are this call's
            try:
                async for chunk in inner:
                    call.bytes += len(chunk if isinstance(chunk, bytes) else chunk.encode())
                    yield chunk
            finally:
                try:
                    _CALL.reset(token)
                except ValueError:  # closed from another context (the server dropped the answer)
                    pass
                done()

        response.body_iterator = counted()
        return response

    def app(self) -> Starlette:
        async def stats(_: Request) -> Response:
            return JSONResponse(asdict(self.stats))

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            if self.node_wait:
                await self.wait_for_node(self.node_wait)  # no call is taken before the node can serve it
            yield
            await self.close()

        return Starlette(
            routes=[
                Route(STATS_PATH, stats, methods=["GET"]),
                *self.extra_routes,
                Route("/{path:path}", self.observed, methods=METHODS),
            ],
            lifespan=lifespan,
        )


@dataclass(frozen=True)
class GatewayConfig:
    chute_url: str
    cords: str
    host: str = "127.0.0.1"
    port: int = 8080
    source_address: str | None = GATEWAY_SOURCE_ADDRESS
    fd: int | None = None  # also serve on this inherited listening socket (callers' port held by --run --reload)
    wait_for_node: float = 0.0


def serve(config: GatewayConfig, key: PlatformKey) -> None:
    """Serve the gateway until SIGINT/SIGTERM (uvicorn's own handling)."""
    import uvicorn

    if config.source_address == "127.0.0.1":
        raise WrapperError("--source-address 127.0.0.1 would bypass the node's GraValMiddleware", "use 127.0.0.2")
    record = load_record(config.cords)
    gateway = Gateway(record, config.chute_url.rstrip("/"), key, config.source_address, node_wait=config.wait_for_node)
    gateway.observers.append(lambda call: print(call.line(), flush=True))  # one line per call in --run's log
    metrics = GatewayMetrics([(cord.get("public_api_method") or "POST", cord["public_api_path"])
                              for cord in record.cords if cord.get("public_api_path")],
                             in_flight=lambda: gateway.stats.in_flight)
    gateway.observers.append(metrics.observe)
    routes, warnings = front_door(record.chute, metrics, reserved=(STATS_PATH,))
    gateway.extra_routes += routes
    for warning in warnings:
        print(f"warning: {warning}", flush=True)
    try:
        sockets = [socket.create_server((config.host, config.port))]
    except OSError as exc:
        raise WrapperError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    if config.fd is not None:
        sockets.append(socket.socket(fileno=config.fd))
    uvicorn.Server(uvicorn.Config(gateway.app(), log_level="warning", lifespan="on")).run(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.platform.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--chute-url", required=True, help="the node, e.g. http://127.0.0.1:8000")
    parser.add_argument("--cords", required=True, help="cords JSON file, or MODULE:CHUTE in the current directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_argument, default=8080)
    parser.add_argument("--source-address", default=GATEWAY_SOURCE_ADDRESS,
                        help="local address to call the node from (never 127.0.0.1; '' for any)")
    parser.add_argument("--fd", type=int, default=None,
                        help="also take calls on this inherited listening socket (the callers' port of --run --reload)")
    parser.add_argument("--wait-for-node", type=float, default=0.0,
                        help="seconds to wait for the node to answer before taking calls (default 0: do not wait)")
    args = parser.parse_args(argv)
    config = GatewayConfig(args.chute_url, args.cords, args.host, args.port, args.source_address or None,
                           args.fd, args.wait_for_node)
    run_cli(lambda: serve(config, PlatformKey.from_env()), prog="gateway")


if __name__ == "__main__":
    main()
