"""The one adapter to the chutes SDK's internals (chutes 0.6.9).

Everything that touches the SDK's private attributes or runtime wiring is here (and in `tools.sdk.node`,
which runs a chute as `chutes run` does on a GPU node): adding our cords with our own request handler,
reading a call as the SDK's middleware hands it over, the ASGI shutdown hook, the image's directive
list, and what deploy.sh shows about a chute's cords. When the SDK changes, this package changes.

Nothing here imports `chutes` at module import (it costs ~0.7 s): the CLIs import this for free.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from loguru import logger

from tools.errors import BadRequest
from tools.registration import CordPlan, Plan
from tools.routes import BODY_METHODS  # the methods whose body the gateway and the SDK read

if TYPE_CHECKING:
    from chutes.chute import Chute
    from chutes.image import Image
    from starlette.requests import Request



# --------------------------------------------------------------------------------------------------
# What we keep per chute (instead of attributes bolted onto the SDK's object)


@dataclass
class ChuteState:
    plans: list[Plan] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)


_STATE: "weakref.WeakKeyDictionary[Any, ChuteState]" = weakref.WeakKeyDictionary()


def state_of(chute: "Chute") -> ChuteState:
    state = _STATE.get(chute)
    if state is None:
        state = _STATE[chute] = ChuteState()
    return state


def plans_of(chute: "Chute") -> list[Plan]:
    """The registration plans applied to this chute, in order."""
    state = _STATE.get(chute)
    return list(state.plans) if state else []


def on_shutdown(chute: "Chute", hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` when the chute's server stops.

    chutes 0.6.9 never runs `Chute.on_shutdown` hooks; the ASGI router's shutdown event does run.
    """
    chute.router.on_shutdown.append(hook)


def resource(chute: "Chute", name: str, factory: Callable[[], Any], close: str = "close") -> Any:
    """One `factory()` per chute (the proxy cords' connection pool), its `close` coroutine run when
    the chute stops."""
    state = state_of(chute)
    if name not in state.resources:
        state.resources[name] = item = factory()
        on_shutdown(chute, getattr(item, close))
    return state.resources[name]


def owner(chute: "Chute") -> str | None:
    """The chute's username (the SDK keeps it private)."""
    return getattr(chute, "_username", None)


# --------------------------------------------------------------------------------------------------
# Cords


def public_method(cord: Any) -> str:
    return (cord._public_api_method or "POST").upper()


def function_name(cord: Any) -> str | None:
    func = getattr(cord, "_func", None)
    return func.__name__ if func is not None else None


def module_cords(chute: "Chute") -> set[tuple[str, str]]:
    """(public path, method) of every cord already on the chute."""
    return {(cord.public_api_path, public_method(cord)) for cord in chute.cords if cord.public_api_path}


def used_names(chute: "Chute") -> set[str]:
    """Function names and internal paths taken on the chute (a new cord must differ in both)."""
    names = {function_name(cord) for cord in chute.cords} - {None}
    return names | {cord.path.lstrip("/") for cord in chute.cords if cord.path}


def _stub(name: str):
    async def stub(self, *args: Any, **kwargs: Any) -> None:
        """Never runs: the cord's request handler is replaced by ours."""

    stub.__name__ = stub.__qualname__ = name
    return stub


def apply_plan(chute: "Chute", plan: Plan, handler_for: Callable[[CordPlan], Any]) -> None:
    """Add the plan's cords to `chute`, each served by `handler_for(cord_plan)`.

    Every cord is flagged passthrough: that is what makes the gateway send the caller's query string
    (`{"json": body, "params": query}`, chutes-api api/invocation/router.py); the SDK's own passthrough
    code never runs, because `Chute.initialize()` mounts `cord._request_handler`, which is ours.
    """
    for item in plan.cords:
        cord = chute.cord(
            path=item.internal_path,
            public_api_path=item.public_path,
            public_api_method=item.method,
            method=item.method,
            passthrough=True,
            passthrough_port=item.port,
            stream=item.stream,
            output_content_type=item.content_type,
        )
        if item.route is not None:
            # The SDK's passthrough_path setter rejects what PATH_RE rejects and strips trailing
            # slashes; keep the upstream target exactly as the service declares it (informational).
            cord._passthrough_path = item.route.upstream_path
        cord(_stub(item.function_name))
        cord._request_handler = handler_for(item)
    state_of(chute).plans.append(plan)
    if plan.cords:
        _prune_shadowed_on_startup(chute, {item.function_name for item in plan.cords})
    _dev_middleware_answers_bad_bodies()


def _prune_shadowed_on_startup(chute: "Chute", ours: set[str]) -> None:
    """Drop our cord where the module defined its own cord for the same route after registering ours."""

    @chute.on_startup(priority=0)
    def prune_shadowed_routes(self) -> None:
        theirs = {(cord.public_api_path, public_method(cord)) for cord in self.cords if function_name(cord) not in ours}
        for cord in [c for c in self.cords if function_name(c) in ours and (c.public_api_path, public_method(c)) in theirs]:
            self.cords.remove(cord)
            logger.info(f"{public_method(cord)} {cord.public_api_path}: the module's own cord serves it")


def cord_records(chute: "Chute") -> list[dict[str, Any]]:
    """The cord list `chutes deploy` sends to the API (chutes/entrypoint/deploy.py, "cords")."""
    return [
        {
            "method": cord._method,
            "path": cord.path,
            "public_api_path": cord.public_api_path,
            "public_api_method": cord._public_api_method,
            "stream": cord._stream,
            "function": cord._func.__name__,
            "input_schema": cord.input_schema,
            "output_schema": cord.output_schema,
            "output_content_type": cord.output_content_type,
            "minimal_input_schema": cord.minimal_input_schema,
            "passthrough": cord._passthrough,
        }
        for cord in chute._cords
    ]


def _dev_middleware_answers_bad_bodies() -> None:
    """In `chutes run --dev`, `DevMiddleware.dispatch` calls `request.json()` on every POST/PUT/PATCH
    before any cord runs: an empty or non-JSON body is a bare 500 there. Inside that process (the SDK's
    run module is loaded), it is replaced by the same dispatch that answers such a body as the
    gateway does (400, or no body at all for an empty one), so --dev tells the caller the same."""
    import sys

    run = sys.modules.get("chutes.entrypoint.run")
    middleware = getattr(run, "DevMiddleware", None)
    if not isinstance(middleware, type) or getattr(middleware.dispatch, "wrapped_by_chutes_wrappers", False):
        return  # not in dev mode (tools.sdk.node puts the real GraValMiddleware there), or done already

    async def dispatch(self: Any, request: "Request", call_next: Any) -> Any:
        args = None
        if request.method in BODY_METHODS:
            raw = await request.body()
            if raw.strip():
                try:
                    args = json.loads(raw)
                except ValueError as exc:
                    from starlette.responses import JSONResponse

                    return JSONResponse({"detail": f"invalid request JSON payload: {exc}"}, status_code=400)
        request.state.serialized = False
        request.state.decrypted = args
        return await call_next(request)

    dispatch.wrapped_by_chutes_wrappers = True  # type: ignore[attr-defined]
    middleware.dispatch = dispatch


@dataclass(frozen=True)
class CordView:
    """A cord as deploy.sh shows it: public method and path, and our plan for it (None: module code)."""

    method: str
    public_path: str
    stream: bool
    function_name: str | None
    plan: CordPlan | None = None


def cord_views(chute: "Chute") -> list[CordView]:
    ours = {item.function_name: item for plan in plans_of(chute) for item in plan.cords}
    return [
        CordView(
            method=public_method(cord),
            public_path=cord.public_api_path or cord.path,
            stream=bool(cord._stream),
            function_name=function_name(cord),
            plan=ours.get(function_name(cord)),
        )
        for cord in chute.cords
    ]


# --------------------------------------------------------------------------------------------------
# A call, as the SDK's middleware hands it to a cord


@dataclass
class Call:
    """One caller's call: the JSON body, the query string, and how the answer must be shaped.

    `payload` is None when the caller sent no body at all (not the same as `{}`).
    `encrypt` is set on a node (GraValMiddleware): the answer goes back through the gateway, which
    decodes `{"json": enc}` / `{"body": enc, ...}` envelopes or, for `stream`, encrypted lines.
    """

    payload: Any
    query: list[tuple[str, str]]
    encrypt: Callable[[Any], str] | None = None
    stream: bool = False


async def incoming(request: "Request", cord_stream: bool = False) -> Call:
    """The caller's JSON body and query, on a node (wrapped by the gateway) and in dev mode alike."""
    state = request.state
    encrypt = getattr(state, "_encrypt", None)
    query = list(request.query_params.multi_items())
    if request.method in BODY_METHODS and hasattr(state, "decrypted"):
        # DevMiddleware (dev mode) or GraValMiddleware (node) decoded the body already.
        payload = state.decrypted
    else:
        # GET/DELETE in dev mode, or a call from 127.0.0.1 that GraValMiddleware let through as is.
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise BadRequest("the request body is not JSON") from None
    if isinstance(payload, dict) and "json" in payload and "params" in payload:
        # The gateway wraps passthrough calls as {"json": body, "params": query}; the SDK's own
        # Cord._request_handler unwraps by the same test.
        params = payload.get("params") or {}
        payload = payload.get("json")
        if isinstance(params, dict):
            query += [(str(k), str(v)) for k, value in params.items() for v in (value if isinstance(value, list) else [value])]
    stream = cord_stream or (isinstance(payload, dict) and bool(payload.get("stream")))
    return Call(payload=payload, query=query, encrypt=encrypt, stream=stream and encrypt is not None)


# --------------------------------------------------------------------------------------------------
# Answers that can end abnormally


class _Abort:
    """Not bytes: the server cannot write it, fails the response and closes the connection."""


def abortable_stream(chunks: Any, **kwargs: Any) -> Any:
    """A StreamingResponse that ends abnormally (the connection closed, no final chunk) when
    `chunks` raises UpstreamBroke, so a caller can tell a cut answer from a complete one.

    Raising alone does not do it here: the SDK's middlewares (DevMiddleware, GraValMiddleware) are
    Starlette `BaseHTTPMiddleware`s, which end the outer answer cleanly when the inner app's body
    raises (starlette/middleware/base.py) and report the error only afterwards. A body message that
    is not bytes goes through them to the server (hypercorn), which then drops the connection.
    """
    from starlette.responses import StreamingResponse

    from tools.errors import UpstreamBroke

    class Abortable(StreamingResponse):
        async def stream_response(self, send: Any) -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            try:
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamBroke:
                await send({"type": "http.response.body", "body": _Abort(), "more_body": True})
                raise
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return Abortable(chunks, **kwargs)


# --------------------------------------------------------------------------------------------------
# Images


def append_env_directive(image: "Image", args: str) -> None:
    """An ENV line added to the SDK's Dockerfile (Image has no public API for a raw ENV)."""
    from chutes.image.directive import BaseDirective, DirectiveType

    image._directives.append(BaseDirective(DirectiveType.ENV, args))


def append_add_directive(image: "Image", sources: list[str], dest: str, chown: str | None = None) -> None:
    """One ADD of several files. `Image.add` takes one glob per instruction and fails when it matches
    nothing; this lists the files and uploads those present (`chutes build` sends each directive's
    `_build_context`), so importing a module where they are absent (inside the image) never fails."""
    import os

    from chutes.image.directive import BaseDirective, DirectiveType

    words = [*([f"--chown={chown}"] if chown else []), *sources, dest]
    directive = BaseDirective(DirectiveType.ADD, " ".join(words))
    directive._build_context = [source for source in sources if os.path.isfile(source)]
    image._directives.append(directive)
