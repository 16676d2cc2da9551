"""MLServer (Seldon, PyPI): a V2-inference model server whose port opens seconds before its model is
loaded, answering 400 ("not ready yet") until then, never 5xx. Started with a model that takes 20 s to
load, discovered while it loads, wrapped as README says, and the chute started at once: it must take
no call before the model is ready, on both paths. Then smoke-tested and compared call by call."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port
from tests.realservices.conftest import HERE, ChuteRunner, Service, assert_same_answer, discover, write_module
from tools import deploy_module
from tools.commands.smoke import Limits, calls_for, run_calls, summary_line, table
from tools.cord_table import cords_of
from tools.runtime.routes import read_manifest_file

pytestmark = pytest.mark.realservices

LOAD_SECONDS = 20  # the model loads this long after the port opens
MODEL = {"model_name": "slow"}
INFER = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
                    {"name": "t", "shape": [2], "datatype": "BYTES", "data": ["ab", "cd"]}]}
VERSION = {**MODEL, "model_version": "v1"}
# The module's real calls for the routes of its model (README, "Per-route overrides"): the spec cannot
# name the model. Without them smoke fills in a made-up name, which MLServer refuses with 404 ("not
# tried with real input") on most routes but answers with a 500 on its stream routes (its own bug:
# on Chutes a caller's wrong model name there fails the instance). The repository's load and unload
# keep the made-up name: unloading the real model would stop the chute's other calls.
OVERRIDES = {
    **{f"GET /v2/models/{{model_name}}{tail}": {"example": {"_path": MODEL}} for tail in ("", "/ready", "/docs")},
    **{f"GET /v2/models/{{model_name}}/versions/{{model_version}}{tail}": {"example": {"_path": VERSION}}
       for tail in ("", "/ready", "/docs")},
    **{f"POST /v2/models/{{model_name}}/{step}": {"example": {"_path": MODEL, **INFER}}
       for step in ("infer", "infer_stream", "generate", "generate_stream")},
    **{f"POST /v2/models/{{model_name}}/versions/{{model_version}}/{step}": {"example": {"_path": VERSION, **INFER}}
       for step in ("infer", "infer_stream", "generate", "generate_stream")},
}


class ReadyWatch(threading.Thread):
    """When the service's own readiness path first answers 2xx, seen from outside."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.ready_at, self.stop = url, None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.ready_at is None:
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    self.ready_at = time.monotonic()
            except requests.RequestException:
                pass
            time.sleep(0.1)


@dataclass
class Wrapped:
    service: Service
    module: Path
    runner: ChuteRunner
    discovery: str
    port_open_at: float
    callable_at: float
    ready_at: float
    first: requests.Response


@pytest.fixture(scope="module")
def wrapped(models_python, start_service, tmp_path_factory, chute_runner) -> Wrapped:
    work = tmp_path_factory.mktemp("mlserver")
    for name in ("slow_model.py", "model-settings.json"):
        shutil.copy(HERE / "mlserver" / name, work / name)
    port = free_port()
    (work / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0, "load_models_at_startup": True}))
    watch = ReadyWatch(f"http://127.0.0.1:{port}/v2/health/ready")
    watch.start()
    service = start_service("mlserver", [str(models_python.parent / "mlserver"), "start", "."], cwd=work,
                            ready_path=None, env={"SLOW_LOAD_SECONDS": str(LOAD_SECONDS)}, port=port, timeout=120)
    port_open_at = time.monotonic()
    directory = tmp_path_factory.mktemp("mlserver-module")
    proc = discover(service, directory / "deploy_mlserver.routes.json")  # while the model loads
    assert proc.returncode == 0, proc.stderr
    module = write_module(directory, "mlserver", port, overrides=OVERRIDES)
    runner = chute_runner(module)  # started at once: its startup waits for the model
    callable_at = time.monotonic()
    first = runner.templated("POST", "/v2/models/slow/infer", INFER)
    watch.join(LOAD_SECONDS * 3)
    assert watch.ready_at is not None, service.log.read_text()[-3000:]
    return Wrapped(service, module, runner, proc.stderr, port_open_at, callable_at, watch.ready_at, first)


def outputs(response: requests.Response) -> list:
    return response.json()["outputs"]


def test_discovery_finds_the_readiness_path_while_the_model_loads(wrapped):
    manifest = read_manifest_file(wrapped.module.with_name("deploy_mlserver.routes.json"))
    assert manifest.ready_paths == {wrapped.service.port: "/v2/health/ready"}
    assert f"port {wrapped.service.port}: ready when GET /v2/health/ready answers 2xx" in wrapped.discovery
    assert wrapped.ready_at - wrapped.port_open_at >= LOAD_SECONDS - 5  # the port opened long before


def test_the_chute_takes_no_call_before_the_model_is_ready(wrapped):
    """Called early, MLServer answers 400 "Model slow is not ready yet" (through the gateway: a 400 the
    caller gets as its own fault). The chute listens only once the model is ready: the first call,
    made the moment the chute answers, is the model's answer."""
    assert wrapped.callable_at >= wrapped.ready_at - 0.5, (wrapped.callable_at, wrapped.ready_at)
    assert wrapped.first.status_code == 200, wrapped.first.text[:500]
    assert [o["data"] for o in outputs(wrapped.first)] == [[6.0], ["AB", "CD"]]
    health = wrapped.runner.cord("GET", "/health").json()
    assert health["status"] == "healthy" and health["ready"] and health["live"]
    assert health["readiness"] == {str(wrapped.service.port): "ok"}


def test_smoke_reports_no_failure_and_what_it_could_not_try(wrapped):
    loaded = deploy_module.load(wrapped.module, keep=False)
    calls = calls_for(wrapped.runner.base_url, cords_of(loaded.chute), loaded.get("CHUTE_ROUTE_OVERRIDES"))
    results = asyncio.run(run_calls(calls, Limits(call_timeout=20)))
    print(table(results))
    print(summary_line(results))
    assert [r.call.key for r in results if r.outcome in ("failed", "timeout")] == [], summary_line(results)
    by_key = {r.call.key: r for r in results}
    for key in OVERRIDES:
        assert by_key[key].outcome == "ok", (key, by_key[key].status, by_key[key].problem)
    assert by_key["GET /v2/health/ready"].outcome == "ok"
    untried = [r for r in results if r.outcome == "untried"]
    assert untried and all(r.call.made_up for r in untried)  # a model named "string": MLServer's 404


def without_id(body: dict) -> dict:
    return {key: value for key, value in body.items() if key != "id"}


def test_inference_and_metadata_answer_as_directly(wrapped):
    service, runner = wrapped.service, wrapped.runner
    direct = service.call("POST", "/v2/models/slow/infer", INFER)
    through = runner.templated("POST", "/v2/models/slow/infer", INFER)
    assert_same_answer(direct, through, without_id)
    for path in ("/v2/models/slow", "/v2/models/slow/versions/v1"):
        assert_same_answer(service.call("GET", path), runner.templated("GET", path))
    assert_same_answer(service.call("GET", "/v2"), runner.cord("GET", "/v2"))


@pytest.mark.parametrize("path,body", [
    ("/v2/models/nope/infer", INFER),                                            # 404: no such model
    ("/v2/models/slow/infer", {"inputs": [{"name": "refuse", "shape": [1], "datatype": "FP32", "data": [1]}]}),
    ("/v2/models/slow/infer", {"no": "inputs"}),                                 # 422: FastAPI's validation
])
def test_the_servers_refusals_are_passed_on_by_the_platforms_contract(wrapped, path, body):
    direct = wrapped.service.call("POST", path, body)
    through = wrapped.runner.templated("POST", path, body)
    assert direct.status_code in (400, 404, 422)
    assert_same_answer(direct, through)


def test_a_model_that_breaks_is_the_service_failing(wrapped):
    """A bug in the model: MLServer's 500 with a traceback (its text differs from call to call)."""
    body = {"inputs": [{"name": "raise", "shape": [1], "datatype": "FP32", "data": [1]}]}
    direct = wrapped.service.call("POST", "/v2/models/slow/infer", body)
    through = wrapped.runner.templated("POST", "/v2/models/slow/infer", body)
    assert direct.status_code == 500 and "ValueError: kaboom" in direct.text
    if wrapped.runner.name == "gateway":  # an instance failure: the gateway answers its own 500
        assert through.status_code == 500
    else:
        assert through.status_code == 502 and through.json()["upstream_status"] == 500
        assert "ValueError: kaboom" in through.json()["upstream_body"]
