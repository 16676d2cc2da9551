"""The deploy-module helpers: manifest loading, cord registration on a real Chute, ports, identity."""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap

import pytest
from chutes.chute import Chute

from tools import chute_wrappers as cw
from tools.runtime.errors import ManifestError, ServiceError, WrapperError
from tools.runtime.routes import Route
from tools.runtime.sdk.chute import cord_views, startup_hooks
from tools.runtime.sdk.rules import imported_cord_path_re


def make_chute() -> Chute:
    return Chute(username="tester", name="unit", image="unused")


def cord_table(chute: Chute) -> list[tuple[str, str, str, int | None]]:
    return [(v.method, v.public_path, v.passthrough_path, v.passthrough_port) for v in cord_views(chute)]


# --- registration ---------------------------------------------------------------------------------

AWKWARD = [
    ("/health", "GET", 8020), ("/health", "POST", 8020),          # GET and POST on one path
    ("/health", "GET", 8080),                                       # one path on two ports
    ("/health", "GET", 8020),                                       # exact duplicate
    ("/Predict", "POST", 8020), ("/predict", "POST", 8020),        # case collision
    ("/tts_to_audio/", "POST", 8020), ("/tts_to_audio", "POST", 8020),  # trailing-slash collision
    ("/v1/models:predict", "POST", 8020), ("/v1/models/{id}", "GET", 8020),
    ("/v1/models/{id}/versions/{v}", "DELETE", 8020), ("/favicon.ico", "GET", 8020),
    ("/static/app.js", "GET", 8020), ("/", "GET", 8020), ("/gradio_api/queue/join", "POST", 7860),
    ("/__heartbeat", "GET", 8020), ("/docs", "GET", 8020), ("/health", "HEAD", 8020),
    ("/Upper/Case/Path/", "PUT", 8020), ("/dotted.path/run", "PATCH", 8020),
]


def fifty_routes() -> list[dict]:
    routes = [{"path": p, "method": m, "port": port, "target_path": p} for p, m, port in AWKWARD]
    for i in range(50 - len(routes)):
        routes.append({"path": f"/api/v{i % 3}/Item_{i}/", "method": ("GET", "POST")[i % 2], "port": 8020})
    assert len(routes) == 50
    return routes


def test_fifty_awkward_routes_register_without_sdk_exceptions():
    chute = make_chute()
    report = cw.register_passthrough_routes(chute, fifty_routes(), 8020)
    assert len(report.registered) + len(report.skipped) == 50
    # every cord the SDK holds is valid by the SDK's own rule, with unique internal paths and names
    views = cord_views(chute)
    paths = [v.internal_path for v in views]
    assert len(paths) == len(set(paths))
    path_re = imported_cord_path_re()  # the SDK's own rule
    assert all(path_re.match(v.internal_path) and path_re.match(v.public_path) for v in views)
    assert all(v.function_name.isidentifier() for v in views)
    public_keys = [(v.public_path, v.method) for v in views]
    assert len(public_keys) == len(set(public_keys))
    # every skip says why
    reasons = {(r.method, r.path): reason for r, reason in report.skipped}
    assert "{id}" in reasons[("GET", "/v1/models/{id}")]
    assert "file extension" in reasons[("GET", "/favicon.ico")]
    assert "root" in reasons[("GET", "/")]
    assert "HEAD" in reasons[("HEAD", "/health")]
    assert "duplicate" in reasons[("POST", "/predict")]
    assert "duplicate" in reasons[("POST", "/tts_to_audio")]
    assert all(reason for reason in reasons.values())


def test_get_and_post_on_one_path_and_two_ports_all_register():
    chute = make_chute()
    cw.register_passthrough_routes(
        chute,
        [{"path": "/health", "method": "GET", "port": 8020}, {"path": "/health", "method": "POST", "port": 8020},
         {"path": "/health", "method": "GET", "port": 8080}],
        8020,
    )
    assert cord_table(chute) == [
        ("GET", "/health", "/health", 8020),
        ("POST", "/health", "/health", 8020),
        ("GET", "/8080/health", "/health", 8080),
    ]


def test_upstream_target_is_kept_exactly_as_declared():
    chute = make_chute()
    cw.register_passthrough_routes(
        chute, [{"path": "/tts_to_audio/", "method": "POST"}, {"path": "/Predict", "method": "POST"}], 8020
    )
    assert cord_table(chute) == [
        ("POST", "/tts_to_audio", "/tts_to_audio/", 8020),
        ("POST", "/predict", "/Predict", 8020),
    ]


def test_module_cord_defined_first_wins_over_discovered_route():
    chute = make_chute()
    cw.add_health_cord(chute, [8020])
    report = cw.register_passthrough_routes(chute, [{"path": "/health", "method": "GET", "port": 8020}], 8020)
    assert report.registered == []
    assert "own cord" in report.skipped[0][1]
    assert [v.function_name for v in cord_views(chute)] == ["wrapper_health"]


async def test_module_cord_defined_after_registration_is_left_to_the_module(monkeypatch):
    monkeypatch.setenv("CHUTES_EXECUTION_CONTEXT", "REMOTE")
    chute = make_chute()
    cw.register_passthrough_routes(
        chute, [{"path": "/health", "method": "GET", "port": 8020}, {"path": "/run", "method": "POST"}], 8020
    )

    @chute.cord(public_api_path="/health", public_api_method="GET", method="GET")
    async def health_check(self) -> dict:
        return {"ok": True}

    for hook in startup_hooks(chute):
        result = hook()
        if asyncio.iscoroutine(result):
            await result
    assert sorted(v.function_name for v in cord_views(chute)) == ["health_check", "wrap_post_run"]


def test_function_name_collisions_get_suffixes_and_given_names_are_used():
    chute = make_chute()
    report = cw.register_passthrough_routes(
        chute,
        [{"path": "/a-b", "method": "POST"}, {"path": "/a_b", "method": "POST"},
         {"path": "/speak", "method": "POST", "function_name": "tts"}],
        8020,
    )
    names = [item.function_name for item in report.registered]
    assert names == ["wrap_post_a_b", "wrap_post_a_b_2", "tts"]


def test_every_route_is_one_proxy_cord_flagged_passthrough_for_the_gateway():
    chute = make_chute()
    report = cw.register_passthrough_routes(
        chute,
        [
            Route("/inference", "POST", 8020, request_kind="multipart", file_fields=("file",)),
            Route("/tts_to_audio/", "POST", 8020, response_kind="binary", content_type="audio/wav"),
            Route("/v1/models", "GET", 8020, request_kind="none", query_params=("limit",)),
            Route("/v1/echo", "POST", 8020),
            Route("/v1/stream", "POST", 8020, stream=True, response_kind="stream"),
        ],
        8020,
    )
    assert {item.route.path: item.kind for item in report.registered} == dict.fromkeys(
        ["/inference", "/tts_to_audio/", "/v1/models", "/v1/echo", "/v1/stream"], "proxy")
    views = cord_views(chute)
    # the passthrough flag is what makes the gateway send the caller's query string ({"json", "params"})
    assert all(v.passthrough for v in views)
    # every handler is ours, not the SDK's bound method
    assert all(getattr(v.handler, "__self__", None) is None for v in views)
    assert [v.stream for v in views] == [False, False, False, False, True]


def test_overrides_set_timeouts_and_legacy_modes_only_warn(caplog_loguru):
    chute = make_chute()
    report = cw.register_passthrough_routes(
        chute,
        [Route("/v1/echo", "POST", 8020), Route("/v1/text", "GET", 8020, response_kind="text")],
        8020,
        overrides={"POST /v1/echo": {"mode": "proxy", "timeout": 5}, "GET /v1/text": {"mode": "passthrough"}},
    )
    assert {item.route.path: item.target.timeout for item in report.registered} == {"/v1/echo": 5, "/v1/text": 600}
    assert any("mode 'passthrough' has no effect" in m for m in caplog_loguru)
    cw.register_passthrough_routes(make_chute(), [Route("/a")], 8020, overrides={"POST /b": {"mode": "proxy"}})
    assert any("CHUTE_ROUTE_OVERRIDES['POST /b'] names no loaded route" in m for m in caplog_loguru)
    with pytest.raises(ManifestError, match="not a route key"):
        cw.register_passthrough_routes(make_chute(), [Route("/a")], 8020, overrides={"inference": {"mode": "proxy"}})
    with pytest.raises(ManifestError, match="key 'mode'"):
        cw.register_passthrough_routes(make_chute(), [Route("/a")], 8020, overrides={"POST /a": {"mode": "fast"}})
    with pytest.raises(ManifestError, match="key 'timeout'"):
        cw.register_passthrough_routes(make_chute(), [Route("/a")], 8020, overrides={"POST /a": {"timeout": -1}})


def test_catch_all_collects_path_parameter_templates():
    chute = make_chute()
    report = cw.register_passthrough_routes(
        chute,
        [Route("/v1/models/{model_id}", "GET", 8020, request_kind="none"), Route("/v1/echo", "POST", 8020)],
        8020,
        catch_all="/proxy",
    )
    assert report.catch_all == ("/proxy", ["GET /v1/models/{model_id}", "POST /v1/echo"])
    assert "reachable through /proxy" in report.skipped[0][1]
    assert ("POST", "/proxy") in [(v.method, v.public_path) for v in cord_views(chute)]
    with pytest.raises(WrapperError, match="catch-all path"):
        cw.register_passthrough_routes(make_chute(), [Route("/v1/echo")], 8020, catch_all="/Bad/{x}")


def test_skip_registration_env_registers_nothing_and_checks_no_overrides(monkeypatch):
    monkeypatch.setenv("CHUTES_SKIP_ROUTE_REGISTRATION", "1")
    chute = make_chute()
    report = cw.register_passthrough_routes(chute, [], 8020, overrides={"bogus": {"mode": "fast"}}, catch_all="/proxy")
    assert report.registered == [] and chute.cords == []


def test_example_module_imports_during_discovery(monkeypatch):
    import importlib
    import sys

    monkeypatch.setenv("CHUTES_SKIP_ROUTE_REGISTRATION", "1")
    monkeypatch.delenv("CHUTE_PORTS", raising=False)
    sys.modules.pop("deploy_example", None)
    module = importlib.import_module("deploy_example")
    assert module.SERVICE_PORTS == [8020] and module.CHUTE_BASE_IMAGE
    sys.modules.pop("deploy_example", None)


def test_sdk_path_rule_is_read_without_importing_the_sdk_and_equals_it():
    from tools.runtime.sdk.rules import cord_path_re, imported_cord_path_re

    assert cord_path_re().pattern == imported_cord_path_re().pattern


def test_summary_lists_registered_and_skipped_with_reasons():
    chute = make_chute()
    report = cw.register_passthrough_routes(
        chute, [{"path": "/ok", "method": "POST"}, {"path": "/x/{y}", "method": "GET"}], 8020
    )
    summary = report.summary()
    assert "registered 1 route(s): POST /ok" in summary
    assert "skipped 1: GET /x/{y} (path parameter {y}" in summary


# --- manifest loading -----------------------------------------------------------------------------


def write_module(tmp_path, name="deploy_thing", body=""):
    module = tmp_path / f"{name}.py"
    module.write_text(
        textwrap.dedent(
            """
            from tools.chute_wrappers import load_route_manifest
            STATIC = [{"path": "/static_one", "method": "POST", "port": 9000}, {"path": "/a", "method": "POST"}]
            ROUTES = load_route_manifest(static_routes=STATIC)
            """
        )
        + body
    )
    return module


def import_file(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("CHUTES_ROUTE_MANIFEST", "CHUTES_ROUTE_MANIFEST_JSON", "CHUTES_SKIP_ROUTE_REGISTRATION"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_manifest_beside_the_caller_is_found_and_static_routes_merged(tmp_path, clean_env):
    module = write_module(tmp_path)
    (tmp_path / "deploy_thing.routes.json").write_text(
        json.dumps({"routes": [{"path": "/a", "method": "POST", "port": 8020}]})
    )
    routes = import_file(module).ROUTES
    assert [(r.path, r.port, r.source) for r in routes] == [("/a", 8020, "manifest"), ("/static_one", 9000, "static")]


def test_no_manifest_means_static_routes_only(tmp_path, clean_env):
    routes = import_file(write_module(tmp_path)).ROUTES
    assert [r.path for r in routes] == ["/static_one", "/a"]


def test_path_env_beats_caller_manifest_and_inline_env_beats_both(tmp_path, clean_env):
    module = write_module(tmp_path)
    (tmp_path / "deploy_thing.routes.json").write_text(json.dumps([{"path": "/beside"}]))
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"path": "/from_env_path"}]))
    clean_env.setenv("CHUTES_ROUTE_MANIFEST", str(other))
    assert import_file(module).ROUTES[0].path == "/from_env_path"
    clean_env.setenv("CHUTES_ROUTE_MANIFEST_JSON", json.dumps({"routes": [{"path": "/inline"}]}))
    assert import_file(module).ROUTES[0].path == "/inline"


def test_skip_registration_env_loads_nothing_even_from_a_broken_manifest(tmp_path, clean_env):
    module = write_module(tmp_path)
    (tmp_path / "deploy_thing.routes.json").write_text("{broken")
    clean_env.setenv("CHUTES_SKIP_ROUTE_REGISTRATION", "1")
    assert import_file(module).ROUTES == []


def test_broken_manifest_beside_module_is_an_error_naming_it(tmp_path, clean_env):
    module = write_module(tmp_path)
    (tmp_path / "deploy_thing.routes.json").write_text(json.dumps({"routes": [{"path": "/a", "port": "x"}]}))
    with pytest.raises(ManifestError) as info:
        import_file(module)
    assert "deploy_thing.routes.json: route 0: key 'port'" in str(info.value)


def test_bad_static_route_names_its_index(tmp_path, clean_env):
    with pytest.raises(ManifestError, match="CHUTE_STATIC_ROUTES: route 1: key 'path'"):
        cw.load_route_manifest(static_routes=[{"path": "/ok"}, {"method": "GET"}])


def test_inline_json_env_that_is_not_json_is_a_clear_error(clean_env):
    clean_env.setenv("CHUTES_ROUTE_MANIFEST_JSON", "[{")
    with pytest.raises(ManifestError, match="CHUTES_ROUTE_MANIFEST_JSON: invalid JSON"):
        cw.load_route_manifest()


def test_missing_env_manifest_path_is_an_error(clean_env, tmp_path):
    clean_env.setenv("CHUTES_ROUTE_MANIFEST", str(tmp_path / "gone.json"))
    with pytest.raises(ManifestError, match="not found"):
        cw.load_route_manifest()


# --- ports and services ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [("8020,8080", [8020, 8080]), (" 8020 , 8080 ", [8020, 8080]), ("7860", [7860]), ("1,1,2", [1, 2])],
)
def test_parse_service_ports(value, expected):
    assert cw.parse_service_ports(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "8020,x", "0", "70000", "-1", "80.5"])
def test_parse_service_ports_rejects_bad_values(value):
    with pytest.raises(WrapperError, match="port|empty"):
        cw.parse_service_ports(value)


def test_parse_service_ports_defaults_and_env(monkeypatch):
    monkeypatch.delenv("CHUTE_PORTS", raising=False)
    assert cw.parse_service_ports() == [8020, 8080]
    monkeypatch.setenv("CHUTE_PORTS", "9000,9001")
    assert cw.parse_service_ports() == [9000, 9001]
    monkeypatch.setenv("CHUTE_PORTS", "nine")
    with pytest.raises(WrapperError, match="CHUTE_PORTS: 'nine'"):
        cw.parse_service_ports()


@pytest.fixture
def listening_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


async def test_probe_services_reports_only_closed_ports(listening_port):
    dead = closed_port()
    errors = await cw.probe_services([listening_port, dead], timeout=1)
    assert len(errors) == 1 and str(dead) in errors[0]


async def test_wait_for_services_returns_when_all_ports_open(listening_port):
    await asyncio.wait_for(cw.wait_for_services([listening_port], timeout=5), 5)


# Only a hang reaches it: each wait below ends on an event long before.
EVENT_LIMIT_S = 60


class RoundCounter:
    """Stands in for the launcher: wait_for_services calls check_alive once per round that found a
    port still closed, which lets the test see each such round happen."""

    def __init__(self) -> None:
        self.rounds = 0
        self.event = asyncio.Event()

    def check_alive(self) -> None:
        self.rounds += 1
        self.event.set()


async def test_wait_for_services_waits_for_a_late_port():
    port = closed_port()
    counter = RoundCounter()
    waiter = asyncio.create_task(
        cw.wait_for_services([port], timeout=EVENT_LIMIT_S, interval=0.01, launcher=counter)
    )
    for _ in range(3):  # rounds that found the port closed, and the wait still going on after each
        counter.event.clear()
        round_seen = asyncio.create_task(counter.event.wait())
        done, _ = await asyncio.wait({waiter, round_seen}, timeout=EVENT_LIMIT_S, return_when=asyncio.FIRST_COMPLETED)
        round_seen.cancel()
        assert waiter not in done, "wait_for_services returned while the port was still closed"
        assert round_seen in done
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        rounds_before_open = counter.rounds
        await asyncio.wait_for(waiter, EVENT_LIMIT_S)  # the port opened: it returns (no timeout error)
    finally:
        sock.close()
    assert rounds_before_open >= 3
    assert counter.rounds <= rounds_before_open + 1  # at most the round already under way when it opened


async def test_wait_for_services_timeout_names_the_closed_port(listening_port):
    dead = closed_port()
    with pytest.raises(ServiceError) as info:
        await cw.wait_for_services([listening_port, dead], timeout=0.5, interval=0.1)
    assert str(dead) in str(info.value) and str(listening_port) not in str(info.value).split("after")[0]


# --- identity ---------------------------------------------------------------------------------------


def test_username_from_env_then_config_then_placeholder(monkeypatch, tmp_path):
    config = tmp_path / "config.ini"
    config.write_text("[auth]\nusername = alice\nhotkey_seed = 00ff\n")
    monkeypatch.setenv("CHUTES_CONFIG_PATH", str(config))
    monkeypatch.setenv("CHUTES_USERNAME", "bob")
    assert cw.resolve_username() == "bob"
    monkeypatch.delenv("CHUTES_USERNAME")
    assert cw.resolve_username() == "alice"
    monkeypatch.setenv("CHUTES_CONFIG_PATH", str(tmp_path / "none.ini"))
    assert cw.resolve_username() == cw.PLACEHOLDER_USERNAME
    config.write_text("not an ini file [[[")
    monkeypatch.setenv("CHUTES_CONFIG_PATH", str(config))
    assert cw.resolve_username() == cw.PLACEHOLDER_USERNAME
