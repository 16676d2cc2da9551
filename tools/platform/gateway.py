"""A local stand-in for the Chutes API gateway's invocation path: the platform's contract in one module.

Callers reach a deployed chute only through the gateway (`https://<slug>.chutes.ai/<public path>`),
which picks a cord, encrypts the call, sends it to an instance (a node running `chutes run`) and
turns the instance's answer into the caller's. Each rule below cites the gateway's public source as
file:line at commit cd60d64 of chutesai/chutes-api (2026-03-23, the newest upstream code that is
public, read from its mirror tripathiarpan20/chutes-api): `api/invocation/router.py` (`_invoke`,
the invocation route), `api/chute/util.py` (`_invoke_one`, one call to one instance; `invoke`,
attempts and failures), `api/instance/util.py` (`get_target`, `disable_instance`), `api/main.py`.
Only that code speaks to chutes >= 0.5.5 nodes (upstream "Aegis. (#100)"): the older public main
(d390a53, 2025-10) sends pickled `args`/`kwargs`, which a 0.6.9 node mis-reads.

The wire: gzip of the orjson of `{"json": body, "params": query}`, encrypted and base64-encoded,
to an encrypted path (util.py:776-789); the node (chutes 0.6.9, chutes/entrypoint/run.py
`GraValMiddleware._dispatch`) decrypts, gunzips and parses it, and gzips its answers before
encrypting them. The crypto is the stand-in of tools/runtime/sdk/node.py (AES-256-GCM where the
platform uses ChaCha20-Poly1305 with the same nonce || ciphertext || tag layout).

Deliberate differences: no authentication, billing, quotas or trace chunks; one instance (so the
API's retry on "other instances" finds none, as it would for a chute with one instance); a pooled
aiohttp client where the API opens an httpx client per call. The disable and delete timings can be
scaled down (`--disable-seconds`). Calls and failures are counted (`GET /_gateway/stats`). What it
serves for the developer besides the cords (the chute's API document, its docs page, metrics) is
tools/platform/front_door.py.

  python -m tools.platform.gateway --chute-url http://127.0.0.1:8000 --cords deploy_example:chute --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tools.runtime.constants import API_PING_PATH, port_argument
from tools.runtime.errors import (
    InstanceFailure, InstanceOutcome, InstanceRateLimit, MinerBadRequest, WrapperError, run_cli,
)
from tools import deploy_module
from tools.platform.front_door import front_door
from tools.platform.metrics import GatewayMetrics
from tools.runtime.sdk.chute import cord_records, unwrap
from tools.runtime.sdk.node import GATEWAY_SOURCE_ADDRESS, PlatformKey

# util.py:794-811: `timeout = 1800` (for nodes >= 0.4.2), then `httpx.Timeout(connect=10.0,
# read=float(timeout), write=30.0, pool=10.0)`. httpx's `read` bounds each read, not the call: a
# call may last as long as the node keeps sending. aiohttp's `sock_read` is the same rule.
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 1800.0
# router.py:804-806: the methods the invocation route accepts.
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
# instance/util.py:577-578: the error when no instance is left to try.
NO_TARGETS = "No infrastructure available to serve request"
# util.py:1496: the detail of the "infra_overload" error (rate limited, at capacity, or disabled).
OVERLOAD = "Infrastructure is at maximum capacity, try again later"
# router.py:562-568: no instance at all (the only one was deleted).
NO_INSTANCES = "No instances available (yet) for chute_id={!r}"
# api/config/__init__.py:286 `consecutive_failure_limit` (env CONSECUTIVE_FAILURE_LIMIT, default 7);
# api/constants.py:102 INSTANCE_DISABLE_BASE_TIMEOUT, :105 MAX_INSTANCE_DISABLES, :112
# CASCADE_DETECTION_DELAY; instance/util.py:302 the disable count expires after an hour.
CONSECUTIVE_FAILURE_LIMIT, DISABLE_SECONDS, MAX_INSTANCE_DISABLES, CASCADE_SECONDS = 7, 90.0, 2, 45.0
DISABLE_COUNT_SECONDS = 3600.0
# api/main.py:274-281: `/ping` on any host is answered by the API itself (main.py:204-208, :226).
PING_PATH = API_PING_PATH
STATS_PATH = "/_gateway/stats"


def derive_upstream_status(error: object) -> int | None:
    """router.py:71-92 `_derive_upstream_status`: the caller's status for an error of `invoke`."""
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int):
            if 500 <= code < 600:
                return 503
            if 400 <= code < 500:
                return code
        return None
    if isinstance(error, str):
        if error in {"infra_overload", "no_targets"}:
            return 429
        if error == "bad_request":
            return 400
        if error.startswith("HTTP_5"):
            return 503
    return None


def invoke_error(error: str, detail: str | None = None) -> Response:
    """router.py:782-794 (and :630-649 before a stream's first chunk): an `invoke` error
    `{"error", "detail"}` as the caller's answer: the mapped status, else 500 with the error."""
    return JSONResponse({"detail": detail or error}, status_code=derive_upstream_status(error) or 500)


# --------------------------------------------------------------------------------------------------
# What the gateway knows about a chute: what `chutes deploy` sent to the API.


@dataclass
class ChuteRecord:
    """The API's row for the chute: its cords, concurrency and standard template, and an id (the API
    assigns one at deploy; here one derived from the name, so it stays the same between runs)."""

    cords: list[dict[str, Any]]
    concurrency: int = 1
    standard_template: str | None = None
    chute_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    chute: Any = field(default=None, repr=False, compare=False)  # when read from a module: its plan, for the front door

    @classmethod
    def of(cls, chute: Any) -> "ChuteRecord":
        chute = unwrap(chute)
        return cls(cord_records(chute), int(chute.concurrency or 1), getattr(chute, "standard_template", None),
                   str(uuid.uuid5(uuid.NAMESPACE_URL, f"chutes-wrappers:{chute.name}")), chute)


def _reasons(reasons: list[str]) -> str:
    """The failures' reasons, each once with its count, most frequent first (one log line)."""
    counts = collections.Counter(reason[:160] for reason in reasons)
    return "; ".join(f"{n}x {reason}" if n > 1 else reason for reason, n in counts.most_common())


def load_record(spec: str, directory: str | os.PathLike | None = None) -> ChuteRecord:
    """A JSON file (a cord list, or {"cords", "concurrency", "standard_template"}) or MODULE:CHUTE,
    the module in `directory` (default the current one) imported as every tool imports it."""
    path = Path(directory or ".") / spec
    if spec.endswith(".json") or path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            return ChuteRecord(data)
        record = ChuteRecord(data["cords"], int(data.get("concurrency") or 1), data.get("standard_template"))
        record.chute_id = str(data.get("chute_id") or record.chute_id)
        return record
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
    """What the tests assert on: calls sent to the instance and how they ended, and the instance's
    state as `disable_instance` leaves it (api/instance/util.py:284-336)."""

    calls: int = 0
    instance_failures: int = 0
    consecutive_failures: int = 0  # util.py:1952-1954, reset on success (:1557-1560)
    rate_limited: int = 0  # 429s: the node's, and the gateway's own (capacity, a disabled instance)
    bad_requests: int = 0
    in_flight: int = 0
    last_failure: str | None = None
    failure_streak: list[str] = field(default_factory=list)  # the reasons of the consecutive failures (the last 7)
    disable_count: int = 0  # instance/util.py:301-302 (forgotten an hour after the last disable)
    disabled_until: float | None = None  # time.time() when the instance takes calls again
    deleting_at: float | None = None  # time.time() when the cascade check deletes it (:250, :326)
    deleted: bool = False  # callers get 503 NO_INSTANCES from then on


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
    event: str | None = None  # what this call did to the instance (disabled, deleted), as --run says it

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
    disable_seconds: float = DISABLE_SECONDS  # the platform's 90 s; the cascade check waits half as long
    extra_routes: list[Any] = field(default_factory=list)  # the front door's pages, before the invocation route
    node_wait: float = 0.0  # seconds to wait at startup for the node to answer, before taking any call
    _session: aiohttp.ClientSession | None = None
    _count_expires: float = 0.0  # when the disable count is forgotten (instance/util.py:302)

    # -- the miner session -------------------------------------------------------------------------

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, local_addr=(self.source_address, 0) if self.source_address else None
            )
            self._session = aiohttp.ClientSession(
                base_url=self.chute_url,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
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

    # -- one call: api/chute/util.py `_invoke_one` (util.py:745-1428) ------------------------------

    async def _post(self, path: str, payload: Any) -> aiohttp.ClientResponse:
        """Encrypted path and body, signed headers; raises InstanceRateLimit/MinerBadRequest/InstanceFailure."""
        try:
            # util.py:779 `gzip.compress(json.dumps(raw_payload))` with orjson (util.py:15): a body that
            # stdlib JSON accepts but orjson cannot write (an integer beyond 64 bits, a lone surrogate)
            # raises inside `invoke`'s `except Exception` (util.py:1837): an instance failure that no
            # chute can prevent. orjson writes NaN and Infinity as null.
            body = self.key.encrypt_body(payload)
        except (TypeError, ValueError) as exc:
            raise InstanceFailure(f"the gateway cannot encode the caller's body (orjson): {exc}") from None
        # util.py:787-789: `encrypt_instance_request(path.ljust(24, "?"), target, True)`, hex;
        # GraValMiddleware.dispatch decrypts `bytes.fromhex(path[1:])`.
        url = self.key.encrypt_path(path)
        # api/miner_client.py:37-68 sign_request: a str payload is sent as text/plain (:55) and signed by
        # hash. X-Chutes-Serialized goes only to nodes older than 0.5.5 (util.py:815-816).
        headers = self.key.sign(body)
        headers["Content-Type"] = "text/plain; charset=utf-8"
        self.stats.calls += 1
        try:
            response = await (await self.session()).post(url, data=body, headers=headers)
        except Exception as exc:  # noqa: BLE001 - util.py:1837: any exception of an attempt is a failure
            raise InstanceFailure(f"instance unreachable: {type(exc).__name__}: {exc}") from None
        # util.py:840-878: 426 -> KeyExchangeRequired (a 0.6.9 node never sends it), 429 ->
        # InstanceRateLimit, 400 -> BadRequest("Invalid request: " + response.text) (httpx decodes
        # with replacement: never a failure), then `response.raise_for_status()`: any other status
        # >= 400 raises, which `invoke` counts as a failure of the instance.
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
        """A non-stream answer as `_invoke_one` builds it (util.py:1168-1207): {"content_type", "json"}
        or {"content_type", "bytes"}."""
        response = await self._post(path, payload)
        try:
            raw = await response.read()
            # util.py:1173: the answer is always JSON, whatever the status code (< 400) says;
            # {"json": enc} is JSON (:1179-1190, parsed with orjson), else {"body": enc, "headers",
            # "media_type"} (:1195-1206).
            data = orjson.loads(raw)
            if "json" in data:
                return {"content_type": "application/json", "json": orjson.loads(self.key.decrypt_answer(data["json"]))}
            plaintext = self.key.decrypt_answer(data["body"])
            headers = data["headers"]
            # `.get("media_type", ...)`: a present media_type wins even when it is null.
            content_type = data.get("media_type", headers.get("Content-Type", "text/plain"))
            return {"content_type": content_type, "bytes": plaintext}
        except Exception as exc:  # noqa: BLE001 - util.py:1837
            raise InstanceFailure(f"unreadable answer: {type(exc).__name__}: {exc}") from None
        finally:
            response.release()

    async def call_stream(self, path: str, payload: Any) -> AsyncIterator[str]:
        """A stream answer as `_invoke_one` reads it (util.py:904-1076): `aiter_lines()`, empty lines
        skipped, each line decrypted, gunzipped and `.decode()`d (strict UTF-8). httpx's lines have
        no length limit (the older aiohttp gateway refused lines over 2 x read_bufsize, 16 MiB)."""
        response = await self._post(path, payload)
        try:
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    line, start = bytes(buffer[start:end]).rstrip(b"\r"), end + 1
                    if line:
                        yield self._line(line)
                del buffer[:start]
            if buffer.rstrip(b"\r"):
                yield self._line(bytes(buffer).rstrip(b"\r"))
        except InstanceOutcome:
            raise
        except Exception as exc:  # noqa: BLE001 - util.py:1837
            raise InstanceFailure(f"stream broken: {type(exc).__name__}: {exc}") from None
        finally:
            response.release()

    def _line(self, line: bytes) -> str:
        try:
            return self.key.decrypt_answer(line).decode()  # strict UTF-8, as `chunk.decode()` (util.py:1076)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InstanceFailure(f"stream line unreadable: {type(exc).__name__}: {exc}") from None

    # -- the instance's state: `invoke` and api/instance/util.py ----------------------------------

    def _failed(self, reason: str) -> None:
        """util.py:1937-1967: a failure that is not RATE_LIMIT or BAD_REQUEST increments the
        consecutive failures; at the limit `disable_instance` (instance/util.py:284-336) runs."""
        stats = self.stats
        stats.instance_failures += 1
        stats.consecutive_failures += 1
        stats.last_failure = reason
        stats.failure_streak = (stats.failure_streak + [reason])[-CONSECUTIVE_FAILURE_LIMIT:]
        call = _CALL.get()
        if call is not None:
            call.failure = reason
        if stats.consecutive_failures >= CONSECUTIVE_FAILURE_LIMIT:
            event = self._disable()
            if event and call is not None:
                call.event = event

    def _disable(self) -> str | None:
        """instance/util.py:284-336 `disable_instance`; what happened, for --run's log."""
        stats, now = self.stats, time.time()
        if stats.disabled_until is not None and now < stats.disabled_until:
            return None  # :295-300: `set(..., nx=True)` fails while it is disabled
        if stats.disable_count and now >= self._count_expires:
            stats.disable_count = 0  # :302 the count expires an hour after the last disable
        stats.disable_count += 1
        self._count_expires = now + DISABLE_COUNT_SECONDS
        streak = f"{stats.consecutive_failures} consecutive failures: {_reasons(stats.failure_streak)}"
        if stats.disable_count > MAX_INSTANCE_DISABLES:
            # :304-326: deleted after the cascade check (:244-281), disabled for the base timeout meanwhile
            stats.disabled_until = now + self.disable_seconds
            cascade = self.disable_seconds * CASCADE_SECONDS / DISABLE_SECONDS
            stats.deleting_at = now + cascade
            return (f"INSTANCE DISABLED, then DELETED in {cascade:g}s (disabled {stats.disable_count - 1} times "
                    f"before) after {streak} (callers get 429 meanwhile, then 503: no instance left)")
        seconds = self.disable_seconds * stats.disable_count  # :330-331
        stats.disabled_until = now + seconds
        return (f"INSTANCE DISABLED for {seconds:g}s after {streak} "
                f"(as Chutes does; callers get 429 \"{OVERLOAD}\" meanwhile)")

    def _succeeded(self) -> None:
        """util.py:1556-1560: a success clears the consecutive failures and the disable state
        (instance/util.py:339-341); a deletion already scheduled goes on."""
        stats = self.stats
        stats.consecutive_failures = 0
        stats.failure_streak = []
        stats.disabled_until = None
        stats.disable_count = 0

    def _target_error(self) -> Response | None:
        """Before a call reaches the instance: router.py:562-568 (no instance: 503), then
        instance/util.py `get_target`'s single-instance path (:574-592): disabled, or at
        `concurrency` calls -> "infra_overload" -> 429 (util.py:1489-1500)."""
        stats, now = self.stats, time.time()
        if stats.deleting_at is not None and now >= stats.deleting_at and not stats.deleted:
            stats.deleted = True
            call = _CALL.get()
            if call is not None:
                call.event = ("INSTANCE DELETED: the chute has no instance left (on Chutes a miner may start "
                              "a new one; here, restart)")
        if stats.deleted:
            return JSONResponse({"detail": NO_INSTANCES.format(self.record.chute_id)}, status_code=503)
        if (stats.disabled_until is not None and now < stats.disabled_until) or stats.in_flight >= self.record.concurrency:
            stats.rate_limited += 1
            return invoke_error("infra_overload", OVERLOAD)
        return None

    # -- the invocation route: api/invocation/router.py `_invoke` (router.py:409-801) --------------

    def select_cord(self, path: str, method: str, stream: Any) -> dict[str, Any] | None:
        """router.py:461-471: the first cord whose public_api_path is the URL path and public_api_method
        the method (for the vllm template, also `stream == cord["stream"]`)."""
        for cord in self.record.cords:
            public_path = cord.get("public_api_path", None)
            if public_path and public_path == path:
                if cord.get("public_api_method", "POST") == method:
                    if self.record.standard_template != "vllm" or stream == cord.get("stream"):
                        return cord
        return None

    async def invoke(self, request: Request) -> Response:
        if request.url.path == PING_PATH:
            # api/main.py:274-281: /ping goes to the API's own router before any host lookup; it has
            # only GET /ping -> {"message": "pong"} (main.py:204-208, :226). No cord ever sees it.
            if request.method != "GET":
                return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)
            return JSONResponse({"message": "pong"})
        # router.py:450-457: the caller's body is read as JSON only for POST/PUT/PATCH, else {}; a
        # body that is not JSON is a 400 (an empty POST body too).
        try:
            request_body = await request.json() if request.method in ("POST", "PUT", "PATCH") else {}
        except (TypeError, ValueError) as exc:
            return JSONResponse({"detail": f"invalid request JSON payload: {exc}"}, status_code=400)
        # router.py:459: `request.query_params._dict` (the last value of a repeated key).
        request_params = dict(request.query_params)
        # router.py:460: `request_body.get("stream", ...)`; a JSON body that is not an object fails
        # there with AttributeError, which reaches the caller as an unhandled 500.
        if not isinstance(request_body, dict):
            return PlainTextResponse("Internal Server Error", status_code=500)
        stream = request_body.get("stream", request_params.get("stream", False))
        cord = self.select_cord(request.url.path, request.method, stream)
        if cord is None:
            return JSONResponse({"detail": "No matching cord found!"}, status_code=404)
        if cord.get("stream"):
            stream = True  # router.py:467-469: a stream cord always streams
        call = _CALL.get()
        if call is not None:
            call.cord, call.stream = cord.get("path"), bool(stream)
        # router.py:546-552: passthrough-flagged cords (and the vllm/tei templates) get
        # {"json": body, "params": query}; other cords get the body alone.
        if self.record.standard_template in ("vllm", "tei") or cord.get("passthrough", False):
            payload: Any = {"json": request_body, "params": request_params}
        else:
            payload = request_body
        invocation_id = str(uuid.uuid4())
        # router.py:599: `if stream or include_trace:` (Python truthiness of the caller's value)
        if stream:
            return await self._stream_answer(cord["path"], payload, invocation_id)
        return await self._body_answer(cord["path"], payload, invocation_id)

    def _error_answer(self, exc: BaseException) -> Response:
        """`invoke` (util.py:1837-1999) then `_invoke`: what the caller gets once the only instance
        failed a call: every Exception of an attempt is caught, so none escapes as a bare 500."""
        if isinstance(exc, InstanceRateLimit):
            # util.py:1865-1867 `infra_overload = True`; the next attempt finds no target (:1489-1500)
            self.stats.rate_limited += 1
            return invoke_error("infra_overload", OVERLOAD)
        if isinstance(exc, MinerBadRequest):
            # util.py:1972-1975: sse({"error": "bad_request", "detail": f"Invalid request: {error_detail}"})
            # with error_detail = str(BadRequest("Invalid request: " + text)).
            self.stats.bad_requests += 1
            return invoke_error("bad_request", f"Invalid request: {exc}")
        reason = str(exc) if isinstance(exc, InstanceOutcome) else f"{type(exc).__name__}: {exc}"
        self._failed(reason)
        # util.py:1838 the next attempt avoids the failed instance; get_target finds none
        # (instance/util.py:577-578) and `invoke` yields it as the error (util.py:1505): 500.
        return invoke_error(NO_TARGETS)

    async def _body_answer(self, path: str, payload: Any, invocation_id: str) -> Response:
        if (refused := self._target_error()) is not None:
            return refused
        self.stats.in_flight += 1
        try:
            result = await self.call_once(path, payload)
        except Exception as exc:  # noqa: BLE001 - util.py:1837
            return self._error_answer(exc)
        finally:
            self.stats.in_flight -= 1
        self._succeeded()
        # router.py:722-780, non-streamed: "bytes" -> StreamingResponse(media_type=content_type) (so
        # no Content-Length: chunked); otherwise the JSON re-serialized (orjson) as application/json.
        # The status is always 200: the instance's status_code in the envelope is not used.
        if "bytes" in result:
            raw = result["bytes"]

            async def _streamfile() -> AsyncIterator[bytes]:
                yield raw

            headers = {"X-Chutes-InvocationID": invocation_id, "Cache-Control": "no-cache, no-transform",
                       "X-Accel-Buffering": "no"}
            return StreamingResponse(_streamfile(), media_type=result["content_type"], headers=headers)
        headers = {"Content-type": "application/json", "X-Chutes-InvocationID": invocation_id}
        return Response(orjson.dumps(result.get("json", result)), media_type="application/json", headers=headers)

    async def _stream_answer(self, path: str, payload: Any, invocation_id: str) -> Response:
        if (refused := self._target_error()) is not None:
            return refused
        self.stats.in_flight += 1
        lines = self.call_stream(path, payload)
        released = False

        async def release() -> None:
            nonlocal released
            if not released:  # once, whichever path gets here first
                released = True
                self.stats.in_flight -= 1
                await lines.aclose()

        # router.py:599-720 `_buffered_stream_response`: wait for the first chunk so that a failure
        # before it is an HTTP error; after it, an error is appended to the stream as JSON text.
        try:
            first = await lines.__anext__()
        except StopAsyncIteration:
            await release()
            self._succeeded()  # util.py:1556-1560: the attempt ended without an exception
            # router.py:716-720: generator.__anext__() raising -> 500 "Unhandled error generating response: {e}"
            return JSONResponse({"detail": "Unhandled error generating response: "}, status_code=500)
        except Exception as exc:  # noqa: BLE001 - util.py:1837
            await release()
            return self._error_answer(exc)
        except BaseException:  # the caller went away (CancelledError): not counted, but released
            await release()
            raise

        async def body() -> AsyncIterator[str | bytes]:
            try:
                yield first
                async for line in lines:
                    yield line
                self._succeeded()
            except Exception as exc:  # noqa: BLE001 - util.py:1837
                self._failed(str(exc) if isinstance(exc, InstanceOutcome) else f"stream broken: {type(exc).__name__}: {exc}")
                # router.py:650-657: after the first chunk the error is appended as JSON text
                yield orjson.dumps({"error": f"Unhandled exception during response stream: {NO_TARGETS}"})
            finally:
                await release()

        # router.py:701-712: StreamingResponse(media_type="text/event-stream", X-Chutes-InvocationID,
        # Cache-Control, X-Accel-Buffering). The background task releases the call if the caller
        # went away before the body was read.
        headers = {"X-Chutes-InvocationID": invocation_id, "Cache-Control": "no-cache, no-transform",
                   "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers,
                                 background=BackgroundTask(release))

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
    disable_seconds: float = DISABLE_SECONDS
    fd: int | None = None  # also serve on this inherited listening socket (callers' port held by --run --reload)
    wait_for_node: float = 0.0


def log_call(call: CallRecord) -> None:
    """--run's log: one line per call, and one more when the call disabled or deleted the instance."""
    print(call.line(), flush=True)
    if call.event:
        print(call.event, flush=True)


def serve(config: GatewayConfig, key: PlatformKey) -> None:
    """Serve the gateway until SIGINT/SIGTERM (uvicorn's own handling)."""
    import uvicorn

    if config.source_address == "127.0.0.1":
        raise WrapperError("--source-address 127.0.0.1 would bypass the node's GraValMiddleware", "use 127.0.0.2")
    record = load_record(config.cords)
    gateway = Gateway(record, config.chute_url.rstrip("/"), key, config.source_address,
                      disable_seconds=config.disable_seconds, node_wait=config.wait_for_node)
    gateway.observers.append(log_call)  # one line per call in --run's log
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


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.platform.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--chute-url", required=True, help="the node, e.g. http://127.0.0.1:8000")
    parser.add_argument("--cords", required=True, help="cords JSON file, or MODULE:CHUTE in the current directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_argument, default=8080)
    parser.add_argument("--source-address", default=GATEWAY_SOURCE_ADDRESS,
                        help="local address to call the node from (never 127.0.0.1; '' for any)")
    parser.add_argument("--disable-seconds", type=_seconds, default=DISABLE_SECONDS,
                        help=f"how long {CONSECUTIVE_FAILURE_LIMIT} consecutive failures disable the instance "
                             f"(default {DISABLE_SECONDS:g}, as Chutes; the delete's cascade check waits half as long)")
    parser.add_argument("--fd", type=int, default=None,
                        help="also take calls on this inherited listening socket (the callers' port of --run --reload)")
    parser.add_argument("--wait-for-node", type=float, default=0.0,
                        help="seconds to wait for the node to answer before taking calls (default 0: do not wait)")
    args = parser.parse_args(argv)
    config = GatewayConfig(args.chute_url, args.cords, args.host, args.port, args.source_address or None,
                           args.disable_seconds, args.fd, args.wait_for_node)
    run_cli(lambda: serve(config, PlatformKey.from_env()), prog="gateway")


if __name__ == "__main__":
    main()
