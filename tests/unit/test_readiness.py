"""Ready means ready: a port that accepts connections is live, and ready only once its readiness path
answers 2xx (SERVICE_READY_PATHS, else the manifest's `ready_paths` that discovery wrote). A real HTTP
server on loopback plays a service that opens its port before it can answer."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.conftest import free_port  # a port nothing listens on
from tools import chute_wrappers as cw
from tools.runtime.errors import ManifestError, ServiceError, WrapperError
from tools.runtime.launcher import resolve_ready_paths
from tools.runtime.routes import Manifest, Route, parse_manifest, write_manifest
from tools.runtime.sdk.chute import startup_hooks

LIMIT_S = 60  # only a hang reaches it


class LoadingService:
    """Opens its port at once; GET /ready answers 503 until `ready` is set, then 200."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.asked = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.asked += 1
        if self.ready.is_set():
            return web.json_response({"ready": True})
        return web.Response(status=503, text="model still loading")

    async def __aenter__(self) -> "LoadingService":
        app = web.Application()
        app.router.add_get("/ready", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


async def test_an_open_port_is_not_ready_until_its_path_answers_2xx():
    async with LoadingService() as service:
        waiter = asyncio.create_task(cw.wait_for_services([service.port], timeout=LIMIT_S, interval=0.02,
                                                          ready_paths={service.port: "/ready"}))
        while service.asked < 3:  # the port is open, the path answers 503: still waiting
            assert not waiter.done()
            await asyncio.sleep(0.02)
        service.ready.set()
        await asyncio.wait_for(waiter, LIMIT_S)


async def test_never_ready_is_an_error_with_the_last_answer():
    async with LoadingService() as service:
        dead = free_port()
        with pytest.raises(ServiceError) as info:
            await cw.wait_for_services([service.port, dead], timeout=0.5, interval=0.05,
                                       ready_paths={service.port: "/ready"})
    message = str(info.value)
    assert f"port(s) {dead} not accepting connections" in message
    assert f"port {service.port} accepts connections but is not ready" in message
    assert "GET /ready" in message and "503 'model still loading'" in message


async def test_without_a_path_an_open_port_is_ready():
    async with LoadingService() as service:
        await asyncio.wait_for(cw.wait_for_services([service.port], timeout=LIMIT_S), LIMIT_S)
        assert service.asked == 0
        errors = await cw.probe_services([service.port], ready_paths={service.port: "/ready"})
        assert errors == [f"port {service.port}: GET /ready answered 503 'model still loading'"]


async def test_health_reports_liveness_and_readiness_apart():
    """What the /health cord answers (tests/platform and tests/integration call the cord itself)."""
    async with LoadingService() as service:
        dead = free_port()
        paths = {service.port: "/ready"}
        report = await cw.health_report([service.port, dead], paths)
        assert report["status"] == "unhealthy" and report["live"] is False and report["ready"] is False
        assert report["ports"][str(service.port)] == "ok" and str(dead) in report["ports"][str(dead)]
        assert "503" in report["readiness"][str(service.port)]
        service.ready.set()
        report = await cw.health_report([service.port, dead], paths)
        assert report["readiness"][str(service.port)] == "ok" and report["live"] is False
        report = await cw.health_report([service.port], paths)
    assert report == {"status": "healthy", "live": True, "ready": True, "ports": {str(service.port): "ok"},
                      "readiness": {str(service.port): "ok"}}


def test_the_modules_paths_win_and_the_manifest_fills_in(tmp_path):
    module = tmp_path / "deploy_x.py"
    module.write_text("")
    write_manifest(Manifest([Route("/a")], ready_paths={8080: "/v2/health/ready", 9000: "/health"}),
                   tmp_path / "deploy_x.routes.json")
    assert resolve_ready_paths([8080, 9000], None, module) == {8080: "/v2/health/ready", 9000: "/health"}
    assert resolve_ready_paths([8080, 9000], {8080: "/ready", 9000: None}, module) == {8080: "/ready"}
    assert resolve_ready_paths([8080], {"8080": "/ready"}, None) == {8080: "/ready"}
    with pytest.raises(WrapperError, match="names port.s. 7000, not in SERVICE_PORTS"):
        resolve_ready_paths([8080], {7000: "/ready"}, module)
    with pytest.raises(ManifestError, match="SERVICE_READY_PATHS\\[8080\\]: expected a path"):
        resolve_ready_paths([8080], {8080: "health"}, module)


def test_manifest_ready_paths_round_trip_and_bad_values_name_the_key():
    manifest = Manifest([Route("/a")], ready_paths={8080: "/health"})
    data = json.loads(json.dumps(manifest.to_json()))
    assert data["ready_paths"] == {"8080": "/health"}
    assert parse_manifest(data, "m.json").ready_paths == {8080: "/health"}
    assert "ready_paths" not in Manifest([Route("/a")]).to_json()
    with pytest.raises(ManifestError, match="m.json: key 'ready_paths': 'http' is not a port"):
        parse_manifest({"routes": [], "ready_paths": {"http": "/health"}}, "m.json")


async def test_attach_service_waits_for_the_path_discovery_wrote_beside_the_module(tmp_path, monkeypatch):
    """The module names no SERVICE_READY_PATHS: the chute's startup waits for the manifest's path."""
    import importlib

    async with LoadingService() as service:
        write_manifest(Manifest([], ready_paths={service.port: "/ready"}), tmp_path / "deploy_ready.routes.json")
        (tmp_path / "deploy_ready.py").write_text(
            "from chutes.chute import Chute\n"
            "from tools.chute_wrappers import attach_service\n"
            "chute = Chute(username='t', name='ready', image='unused')\n"
            f"attach_service(chute, None, [{service.port}], timeout=0.5)\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        module = importlib.import_module("deploy_ready")
        (hook,) = startup_hooks(module.chute)
        with pytest.raises(ServiceError, match="not ready after 0.5s .ready when GET /ready answers 2xx; its last "
                                               "answer: answered 503 'model still loading'"):
            await hook()
        service.ready.set()
        await asyncio.wait_for(hook(), LIMIT_S)


def test_locally_the_service_listens_on_loopback_and_bad_ready_paths_are_module_problems(tmp_path):
    """--run passes CHUTE_ENV to HOST_COMMAND with bind-everything addresses as 127.0.0.1 (README's Gradio
    advice would otherwise open the service on every interface), and refuses a HOST_COMMAND that binds
    0.0.0.0; a SERVICE_READY_PATHS naming no service port is a problem --validate lists."""
    from tools import deploy_module

    (tmp_path / "deploy_local.py").write_text(
        "CHUTE_NAME = 'local'\nCHUTE_TAG = 'v1'\nCHUTE_BASE_IMAGE = 'x:y'\nSERVICE_PORTS = [7860]\n"
        "SERVICE_READY_PATHS = {7861: '/config'}\n"
        "CHUTE_ENV = {'GRADIO_SERVER_NAME': '0.0.0.0', 'BIND': '[::]:7860', 'MODEL': 'm', 'NET': '10.0.0.0'}\n"
        "HOST_COMMAND = ['python', 'app.py', '--host=0.0.0.0']\n")
    module = deploy_module.load(tmp_path / "deploy_local.py", settings_only=True)
    env, notes = module.local_env()
    assert env == {"GRADIO_SERVER_NAME": "127.0.0.1", "BIND": "127.0.0.1:7860", "MODEL": "m", "NET": "10.0.0.0"}
    assert len(notes) == 2 and "GRADIO_SERVER_NAME=0.0.0.0 is GRADIO_SERVER_NAME=127.0.0.1" in notes[0]
    with pytest.raises(WrapperError, match=r"HOST_COMMAND listens on every interface \(--host=0.0.0.0\)"):
        module.check_host_command()
    assert any("SERVICE_READY_PATHS names port(s) 7861, not in SERVICE_PORTS" in p for p in module.problems())
