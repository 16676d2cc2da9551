"""`--smoke` on services as they come: a time limit per call, endless streams read for a moment,
a few calls at a time, and a summary by outcome (against a real aiohttp server on loopback)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tools.runtime.routes import Route
from tools.cord_table import Cord
from tools.runtime.errors import Interrupted
from tools.commands.smoke import Limits, Result, SmokeCall, calls_for, limits_for, run_calls, summary_line, table

LIMITS = Limits(call_timeout=1.0, stream_window=0.3, stream_bytes=4096, concurrency=4)


def service() -> tuple[web.Application, dict]:
    state = {"now": 0, "most": 0, "bodies": []}
    release = asyncio.Event()

    async def counted(handler):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            return await handler()
        finally:
            state["now"] -= 1

    async def ok(request):
        state["bodies"].append(await request.read())
        return await counted(lambda: _later(web.json_response({"ok": True}), 0.05))

    async def endless_sse(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:  # an event stream without an end
            await response.write(b"data: tick\n\n")
            await asyncio.sleep(0.02)

    async def endless_bytes(request):
        response = web.StreamResponse()  # chunked, no type that says "stream"
        await response.prepare(request)
        while True:
            await response.write(b"x" * 1024)
            await asyncio.sleep(0.001)

    async def long_poll(request):
        await release.wait()  # never answers within the limit
        return web.json_response({})

    async def slow_body(request):
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x")
        await release.wait()
        return response

    async def boom(request):
        return web.json_response({"error": {"message": "nope"}}, status=500)

    async def short_stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    async def refused(request):  # the chute passing on the service's 404 (README's error table)
        return web.json_response({"error": "Model string not found", "upstream_status": 404,
                                  "upstream_body": '{"error": "Model string not found"}', "detail": "..."}, status=400)

    async def refused_via_gateway(request):  # the same, as the local gateway answers it
        inner = json.dumps({"detail": "bad task", "upstream_status": 422, "upstream_body": "{}"})
        return web.json_response({"detail": f"Invalid request: Invalid request: {inner}"}, status=400)

    async def chutes_own_400(request):  # the cord refusing the call itself: never the service's
        return web.json_response({"detail": "file_base64: not valid base64"}, status=400)

    app = web.Application()
    app.add_routes([web.get("/refused", refused), web.get("/refused-gw", refused_via_gateway),
                    web.get("/own400", chutes_own_400),web.post("/ok", ok), web.get("/ok", ok), web.get("/sse", endless_sse), web.get("/bytes", endless_bytes),
                    web.get("/poll", long_poll), web.get("/slow", slow_body), web.get("/boom", boom),
                    web.get("/short", short_stream)])
    return app, state


async def _later(value, seconds):
    await asyncio.sleep(seconds)
    return value


async def against_service(calls_for, limits=LIMITS, check=lambda: None):
    app, state = service()
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await run_calls(calls_for(f"http://127.0.0.1:{port}"), limits, check), state
    finally:
        await runner.cleanup()


def call(base: str, path: str, method: str = "GET", body=None) -> SmokeCall:
    return SmokeCall(path, "proxy", method, base + path, body)


def test_each_outcome_and_the_summary_line():
    paths = ["/ok", "/sse", "/bytes", "/poll", "/slow", "/boom", "/short"]
    results, _ = asyncio.run(against_service(lambda base: [call(base, p) for p in paths]))
    outcome = {r.call.label: r.outcome for r in results}
    assert outcome == {"/ok": "ok", "/sse": "streams", "/bytes": "streams", "/poll": "timeout", "/slow": "timeout",
                       "/boom": "failed", "/short": "ok"}
    by_label = {r.call.label: r for r in results}
    assert by_label["/sse"].size > 0 and by_label["/bytes"].size >= LIMITS.stream_bytes
    assert "HTTP 500" in by_label["/boom"].problem
    assert "no answer within 1s" in by_label["/poll"].problem
    assert summary_line(results) == "summary: 2 ok, 2 streams, 0 untried, 1 failed, 2 timeout"
    assert [r.call.label for r in results] == paths  # in the order planned, whatever order they ended in
    assert "streams (read for a moment)" in table(results)


def test_a_services_4xx_to_made_up_values_is_untried_and_to_real_input_a_failure():
    def calls(base):
        made_up = [SmokeCall(p, "proxy", "GET", base + p, made_up=True, key=f"GET {p}")
                   for p in ("/refused", "/refused-gw", "/own400")]
        return made_up + [call(base, "/refused")]
    results, _ = asyncio.run(against_service(calls))
    assert [r.outcome for r in results] == ["untried", "untried", "failed", "failed"]
    assert results[0].problem == "not tried with real input (the service's 404 to made-up values)"
    assert "the service's 422" in results[1].problem
    assert results[3].problem == "HTTP 400 (the service's 404)"
    assert all(r.ok for r in results[:2]) and summary_line(results).endswith("2 untried, 2 failed, 0 timeout")


def test_calls_run_a_few_at_a_time_never_more():
    results, state = asyncio.run(against_service(lambda base: [call(base, "/ok") for _ in range(12)]))
    assert all(r.outcome == "ok" for r in results)
    assert 1 < state["most"] <= LIMITS.concurrency


def test_a_stop_cancels_the_calls_under_way():
    stop = {"now": False}

    def check():
        if stop["now"]:
            raise Interrupted(2)

    async def go():
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, lambda: stop.update(now=True))
        return await against_service(lambda base: [call(base, "/poll")] * 3, Limits(call_timeout=30), check)

    with pytest.raises(Interrupted):
        asyncio.run(go())


def test_a_post_without_example_sends_an_empty_object_and_overrides_add_file_fields():
    upload = Route("/inference", "POST", request_kind="json")
    plain = Route("/v1/chat/completions", "POST", request_kind="undeclared")
    get = Route("/v1/models", "GET", request_kind="none")
    cords = [Cord("POST", "/inference", ":1/inference", False, route=upload, mode="proxy"),
             Cord("POST", "/v1/chat/completions", ":1", False, route=plain, mode="proxy"),
             Cord("GET", "/v1/models", ":1", False, route=get, mode="passthrough")]
    calls = calls_for("http://x", cords, {"POST /inference": {"file_fields": {"file": "audio/wav"}}})
    assert calls[0].body["file_base64"].startswith("UklG")  # a WAV; its type is the override's (audio/wav)
    assert "file_content_type" not in calls[0].body
    assert calls[1].body == {}
    assert calls[2].body is None
    results, state = asyncio.run(against_service(lambda base: [call(base, "/ok", "POST", {})]))
    assert results[0].outcome == "ok" and json.loads(state["bodies"][0]) == {}


def test_results_pass_for_ok_and_streams_only():
    c = SmokeCall("/x", "k", "GET", "http://x")
    assert Result(c, 200, 0.1, 1).ok and Result(c, 200, 0.1, 1, outcome="streams").ok
    assert not Result(c, 500, 0.1, 1, "HTTP 500").ok and not Result(c, None, 1, 0, "slow", "timeout").ok


def test_no_more_calls_at_once_than_the_chute_takes():
    from chutes.chute import Chute

    assert limits_for(Limits(concurrency=4), Chute(username="t", name="c", image="i")).concurrency == 1
    assert limits_for(Limits(concurrency=4), Chute(username="t", name="c", image="i", concurrency=8)).concurrency == 4
    assert limits_for(Limits(concurrency=4), object()).concurrency == 4


def test_get_examples_go_in_the_query_string_as_callers_on_chutes_send_them():
    """The gateway reads no body for GET or DELETE: smoke must call as a caller on Chutes does."""
    get = Cord("GET", "/v1/blob", ":8020/v1/blob", False, route=Route(
        "/v1/blob", "GET", request_kind="none", query_params=("size",), example={"size": 65536}), mode="proxy")
    post = Cord("POST", "/v1/echo", ":8020/v1/echo", False, route=Route("/v1/echo", "POST"), mode="proxy")
    blob, echo = calls_for("http://chute", [get, post])
    assert (blob.url, blob.body) == ("http://chute/v1/blob?size=65536", None)
    assert (echo.url, echo.body) == ("http://chute/v1/echo", {})  # `{}` is a body


def test_creating_calls_run_first_and_a_linked_call_gets_the_id_the_spec_links():
    """A spec links POST /items's answer `id` to GET /items/{item_id}: smoke creates first, then reads
    what it created; deletes come last. The test server plays the chute (a proxy cord and /proxy)."""
    from tools.discovery.openapi import convert_document

    item = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {
        "/items": {"post": {"operationId": "createItem", "responses": {"201": {
            "description": "made", "links": {"read": {"operationId": "getItem",
                                                      "parameters": {"item_id": "$response.body#/data/id"}}}}}}},
        "/items/{item_id}": {"parameters": [item],
                             "get": {"operationId": "getItem", "responses": {"200": {"description": "it"}}},
                             "delete": {"operationId": "dropItem", "responses": {"200": {"description": "gone"}}}},
    }}
    routes = {r.key: r for r in convert_document(doc, 9, "t").routes}
    assert routes[("/items", "POST")].links == ({"to": "GET /items/{item_id}",
                                                 "parameters": {"item_id": "$response.body#/data/id"}},)
    items, log = {}, []

    async def create(request):
        log.append("create")
        items["it-7"] = True
        return web.json_response({"data": {"id": "it-7"}}, status=201)

    async def proxy(request):
        payload = await request.json()
        log.append(f"{payload['method']} {payload['path']}")
        key = payload["path"].rsplit("/", 1)[-1]
        if key not in items:
            return web.json_response({"detail": "x", "upstream_status": 404, "upstream_body": "{}"}, status=400)
        if payload["method"] == "DELETE":
            del items[key]
        return web.json_response({"id": key})

    async def go():
        app = web.Application()
        app.add_routes([web.post("/items", create), web.post("/proxy", proxy)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        templates = (routes[("/items/{item_id}", "DELETE")], routes[("/items/{item_id}", "GET")])
        cords = [Cord("POST", "/proxy", "", False, mode="catch-all", templates=templates),
                 Cord("POST", "/items", "", False, route=routes[("/items", "POST")], mode="proxy")]
        try:
            return await run_calls(calls_for(base, cords), LIMITS)
        finally:
            await runner.cleanup()

    results = asyncio.run(go())
    assert log == ["create", "GET /items/it-7", "DELETE /items/string"]  # the delete: no link, a made-up id
    assert [(r.call.label, r.outcome) for r in results] == [
        ("DELETE /items/{item_id}", "untried"), ("GET /items/{item_id}", "ok"), ("/items", "ok")]


def test_routes_that_act_on_the_service_run_last_one_at_a_time():
    """An unload, a flush or a sleep before the other calls would fail them (routes.acts_on_service)."""
    events: list[tuple[str, str]] = []
    now = {"in": 0, "most_with_action": 0}

    async def any_call(request):
        path = request.path
        events.append(("start", path))
        now["in"] += 1
        if path != "/ok":
            now["most_with_action"] = max(now["most_with_action"], now["in"])
        await asyncio.sleep(0.05)
        now["in"] -= 1
        events.append(("end", path))
        return web.json_response({"ok": True})

    async def go():
        app = web.Application()
        app.add_routes([web.route("*", "/{tail:.*}", any_call)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        calls = [call(base, "/flush_cache"), call(base, "/ok", "POST", {}),
                 call(base, "/v2/repository/models/m/unload", "POST", {}), call(base, "/ok"),
                 call(base, "/ok", "DELETE"), call(base, "/sleep", "POST", {}), call(base, "/ok")]
        try:
            return await run_calls(calls, LIMITS)
        finally:
            await runner.cleanup()

    results = asyncio.run(go())
    assert [r.outcome for r in results] == ["ok"] * 7  # results still in the calls' order
    assert [r.call.label for r in results][:3] == ["/flush_cache", "/ok", "/v2/repository/models/m/unload"]
    started = [path for event, path in events if event == "start"]
    assert started[-3:] == ["/flush_cache", "/v2/repository/models/m/unload", "/sleep"]  # last, in their order
    assert set(started[:-3]) == {"/ok"} and len(started) == 7
    assert now["most_with_action"] == 1  # each alone: nothing else under way meanwhile
