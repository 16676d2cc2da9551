"""Our cords on the SDK's `Chute`: adding them with our own request handler, what we keep per chute,
the shutdown hook, and what deploy.sh and the local gateway read about a chute's cords (chutes 0.6.9).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from loguru import logger

from tools.runtime.registration import CordPlan, Plan
from tools.runtime.routes import BODY_METHODS  # the methods whose body the gateway and the SDK read

if TYPE_CHECKING:
    from chutes.chute import Chute
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


def is_chute(value: Any) -> bool:
    """A `Chute`, or the ChutePack some modules' `chute` is (importing chutes.chute costs ~0.7 s)."""
    from chutes.chute import Chute, ChutePack

    return isinstance(value, (Chute, ChutePack))


def unwrap(chute: Any) -> "Chute":
    """The `Chute` of a module's `chute`, which may be a ChutePack (`.chute`), as `chutes run` takes it."""
    return getattr(chute, "chute", chute)


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


def add_cord(chute: "Chute", *, path: str, public_path: str, method: str, function_name: str,
             handler: Any, content_type: str = "application/json") -> Any:
    """One cord of ours outside a plan (the health cord), served by `handler` and flagged passthrough
    like the plan's: the gateway then sends the caller's query, and `incoming` sees the `stream` the
    gateway decided on. The SDK's own handler answers every call to a non-stream cord with one
    envelope, which fails the instance when a caller's `?stream=1` makes the gateway read lines."""
    cord = chute.cord(path=path, public_api_path=public_path, public_api_method=method, method=method,
                      passthrough=True, output_content_type=content_type)
    cord(_stub(function_name))
    cord._request_handler = handler
    return cord


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
        return  # not in dev mode (tools.runtime.sdk.node puts the real GraValMiddleware there), or done already

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
    """A cord as deploy.sh, the tests and the local gateway see it: public method and path, how the
    SDK holds it, and our plan for it (None: the module's own code)."""

    method: str
    public_path: str
    stream: bool
    function_name: str | None
    plan: CordPlan | None = None
    internal_path: str = ""
    passthrough: bool = False
    passthrough_path: str | None = None
    passthrough_port: int | None = None
    handler: Any = None  # what serves a call (ours for our cords, the SDK's own method otherwise)
    input_schema: Any = None  # the SDK's JSON Schema of a module cord's arguments (from its signature)
    output_content_type: str | None = None


def cord_views(chute: "Chute") -> list[CordView]:
    ours = {item.function_name: item for plan in plans_of(chute) for item in plan.cords}
    return [
        CordView(
            method=public_method(cord),
            public_path=cord.public_api_path or cord.path,
            stream=bool(cord._stream),
            function_name=function_name(cord),
            plan=ours.get(function_name(cord)),
            internal_path=cord.path,
            passthrough=bool(cord._passthrough),
            passthrough_path=cord.passthrough_path,
            passthrough_port=cord._passthrough_port,
            handler=cord._request_handler,
            input_schema=cord.input_schema,
            output_content_type=cord.output_content_type,
        )
        for cord in chute.cords
    ]


def startup_hooks(chute: "Chute") -> list[Callable[..., Any]]:
    """The chute's startup hooks in the order `Chute.initialize` runs them."""
    return [hook for _, hook in sorted(chute._startup_hooks, key=lambda item: item[0])]
