"""One cord's whole turn for a call: `sdk.incoming` -> `request.build_outgoing` -> `answer.send` ->
`sdk.reply`. `handler_for` gives each planned cord its ASGI handler (it replaces the SDK's)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from starlette.requests import Request  # FastAPI hands the request to a handler by this annotation

from tools.runtime.cords.answer import error, send
from tools.runtime.cords.catch_all import PATH_SAFE, Template, route_call
from tools.runtime.cords.pool import UpstreamPool
from tools.runtime.cords.request import OFFLOAD_BYTES, Outgoing, build_outgoing
from tools.runtime.errors import BadRequest
from tools.runtime.registration import CordPlan, Target
from tools.runtime.sdk.call import Answer, Call, incoming, reply

async def prepare(target: Target, call: Call, request: Any, path: str | None = None, payload: Any = None) -> Outgoing:
    payload = call.payload if payload is None else payload
    if int(request.headers.get("content-length") or 0) > OFFLOAD_BYTES:
        # decoding megabytes of base64 would hold up every other call of the chute meanwhile
        return await asyncio.to_thread(build_outgoing, target, payload, call.query, path)
    return build_outgoing(target, payload, call.query, path)


def proxy_handler(pool: UpstreamPool, target: Target, stream: bool = False):
    """The handler of one route's cord."""

    async def handle(request: Request):
        call = None
        try:
            call = await incoming(request, cord_stream=stream)
            outgoing = await prepare(target, call, request)
        except BadRequest as exc:
            return await reply(call, error(400, str(exc)))
        return await reply(call, await send(pool, target, outgoing, call))

    return handle


def catch_all_handler(pool: UpstreamPool, targets: list[Target]):
    """The handler of the catch-all cord: {"method", "path", "query", "json" | "form" | "raw"}."""
    templates = [Template.of(target) for target in targets]

    async def handle(request: Request):
        call = None
        try:
            call = await incoming(request)
            routed = route_call(templates, call.payload)
            if routed.template is None:
                # the caller's mistake: 400, never a status the gateway counts against the instance
                return await reply(call, error(400, f"{routed.method} {routed.path} matches no route of this chute",
                                               allowed=routed.allowed))
            call.query = []
            target = routed.template.target
            outgoing = await prepare(target, call, request, quote(routed.path, safe=PATH_SAFE), routed.inner)
        except BadRequest as exc:
            return await reply(call, error(400, str(exc)))
        return await reply(call, await send(pool, target, outgoing, call))

    return handle


def json_handler(produce: Callable[[], Awaitable[Any]]):
    """The handler of a cord that answers JSON computed in the chute (the health cord): read and
    answered on the wire as every cord of ours, so its answer takes the form the gateway expects."""

    async def handle(request: Request):
        call = None
        try:
            call = await incoming(request)
        except BadRequest as exc:
            return await reply(call, error(400, str(exc)))
        return await reply(call, Answer.json(await produce()))

    return handle


def handler_for(pool: UpstreamPool, item: CordPlan):
    """The handler of a planned cord: the catch-all, a Gradio function, or a route's proxy cord."""
    if item.kind == "catch-all":
        return catch_all_handler(pool, list(item.templates))
    if item.route.gradio is not None:  # a Gradio function: its cord runs Gradio's two-step call
        from tools.runtime.cords.gradio import gradio_handler

        return gradio_handler(pool, item.target.port, item.route.gradio, item.target.timeout)
    return proxy_handler(pool, item.target, stream=item.stream)
