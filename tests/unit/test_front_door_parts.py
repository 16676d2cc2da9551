"""The front door's parts without processes: which node lines are the SDK's chatter, the metrics page,
what --reload watches and how it says what changed, and the gateway's pages beside a cord at /docs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from chutes.chute import Chute
from prometheus_client.parser import text_string_to_metric_families

from tools import chute_wrappers
from tools.platform.chatter import SdkChatter
from tools.platform.front_door import DOCS_PATHS, DOCUMENT_PATHS, assets_directory, describe_cords, front_door
from tools.platform.gateway import CallRecord
from tools.platform.metrics import GatewayMetrics
from tools.platform.reload import Watcher, diff_cords, one_line, watch_plan
from tools.runtime.errors import ServiceError

# Lines a node printed for `./deploy.sh --run deploy_example` (chutes 0.6.9), in order.
NODE_OUTPUT = """\
2026-12-04 15:46:06.362 | INFO     | chutes.entrypoint.run:_run_chute:1867 - [dev] aegis not available, skipping network unlock
2026-12-04 15:46:06.583 | INFO     | chutes.entrypoint.run:_run_chute:2140 - [aegis-debug] setting CHUTES_DEV_MODE=true
2026-12-04 15:46:06.584 | INFO     | chutes.entrypoint.run:_run_chute:2265 - [aegis-debug] loading chute ref=deploy_example:chute
INFO:     Started server process [8833]
INFO:     Uvicorn running on http://127.0.0.1:18401 (Press CTRL+C to quit)
2026-12-04 15:46:06.712 | INFO     | tools.chute_wrappers:register_routes:205 - registered 10 route(s): POST /tts_to_audio
2026-12-04 15:46:06.736 | INFO     | tools.runtime.launcher:wait_for_services:138 - services ready on port(s) 18420
2026-12-04 15:46:06.740 | INFO     | chutes.chute.base:initialize:213 - Added new API route: /wrapper_health calling wrapper_health via POST
2026-12-04 15:46:06.749 | INFO     | chutes.entrypoint.run:_run_chute:2305 - E2E path map: (/health, GET, stream=False) -> /wrapper_health
2026-12-04 15:46:06.767 | SUCCESS  | chutes.entrypoint.run:_run_chute:2502 - Added all chutes internal endpoints.
/work/main/.venv/lib/python3.11/site-packages/hypercorn/config.py:116: Warning: Please use verify_mode instead
  warnings.warn("Please use verify_mode instead", Warning)
[2026-12-04 15:46:06 +0000] [8833] [INFO] Running on http://127.0.0.1:59193 (CTRL + C to quit)
2026-12-04 15:46:23.054 | INFO     | chutes.entrypoint.run:dispatch:1445 - Decrypted request path: /wrap_post_v1_echo from input path: /40bc
2026-12-04 15:46:23.105 | INFO     | chutes.chute.cord:_remote_call:509 - Received invocation request [wrapper_health passthrough=False]
2026-12-04 15:46:23.114 | SUCCESS  | chutes.chute.cord:_remote_call:697 - Completed request [wrapper_health passthrough=False] in 0.006 seconds
2026-12-04 15:46:24.001 | WARNING  | chutes.chute.cord:_remote_call:700 - something the developer must see
2026-12-04 15:46:24.002 | ERROR    | chutes.entrypoint.run:_logged_run:2622 - Unexpected error executing _run_chute(): boom
Traceback (most recent call last):
  File "/work/wt/r21/tools/runtime/sdk/node.py", line 210, in load_chute
NameError: name 'undefined_name' is not defined
"""


def test_the_sdks_chatter_is_hidden_and_everything_else_is_shown():
    show = SdkChatter()
    shown = [line for line in NODE_OUTPUT.splitlines() if show(line)]
    assert shown == [
        "2026-12-04 15:46:06.712 | INFO     | tools.chute_wrappers:register_routes:205 - registered 10 route(s): POST /tts_to_audio",
        "2026-12-04 15:46:06.736 | INFO     | tools.runtime.launcher:wait_for_services:138 - services ready on port(s) 18420",
        "2026-12-04 15:46:24.001 | WARNING  | chutes.chute.cord:_remote_call:700 - something the developer must see",
        "2026-12-04 15:46:24.002 | ERROR    | chutes.entrypoint.run:_logged_run:2622 - Unexpected error executing _run_chute(): boom",
        "Traceback (most recent call last):",
        '  File "/work/wt/r21/tools/runtime/sdk/node.py", line 210, in load_chute',
        "NameError: name 'undefined_name' is not defined",
    ]


def call(path: str, status: int = 200, cord: str | None = "/wrap", ms: float = 12.0, failure: str | None = None,
         method: str = "POST") -> CallRecord:
    return CallRecord(time.time(), method, path, cord=cord, status=status, bytes=10, ms=ms, failure=failure)


def test_metrics_count_calls_failures_and_latency_per_cord():
    metrics = GatewayMetrics([("POST", "/v1/echo"), ("GET", "/v1/models")], in_flight=lambda: 2)
    metrics.observe(call("/v1/echo", ms=3))
    metrics.observe(call("/v1/echo", status=500, ms=700, failure="instance answered 502"))
    metrics.observe(call("/nowhere/at/all", status=404, cord=None))
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}

    def sample(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    echo = {"cord": "/v1/echo", "method": "POST"}
    assert sample("chutes_gateway_calls_total", **echo, status="200") == 1
    assert sample("chutes_gateway_calls_total", **echo, status="500") == 1
    assert sample("chutes_gateway_instance_failures_total", **echo) == 1
    assert sample("chutes_gateway_instance_failures_total", cord="/v1/models", method="GET") == 0
    assert sample("chutes_gateway_call_duration_seconds_bucket", **echo, le="0.005") == 1
    assert sample("chutes_gateway_call_duration_seconds_bucket", **echo, le="1.0") == 2
    assert sample("chutes_gateway_call_duration_seconds_count", **echo) == 2
    assert sample("chutes_gateway_calls_total", cord="(none)", method="POST", status="404") == 1
    assert sample("chutes_gateway_in_flight") == 2
    assert not any("nowhere" in name + str(labels) for name, labels in samples)
    open_metrics, kind = metrics.render("application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text") and open_metrics.rstrip().endswith(b"# EOF")


def test_diff_names_cords_added_removed_and_what_changed():
    old = {"POST /a": {"cord": "proxy", "forwards to": "POST :8020/a", "timeout": 600.0},
           "GET /b": {"cord": "proxy", "forwards to": "GET :8020/b"}}
    new = {"POST /a": {"cord": "proxy", "forwards to": "POST :8020/a", "timeout": 300.0},
           "POST /c": {"cord": "proxy", "forwards to": "POST :8020/c/"}}
    assert diff_cords(old, new) == ["+ POST /c -> POST :8020/c/", "- GET /b", "~ POST /a: timeout 600.0 -> 300.0"]
    assert diff_cords(new, new) == []


def test_the_plans_description_covers_every_kind_of_cord():
    from tools import deploy_module

    described = describe_cords(deploy_module.load("deploy_example").chute)
    assert described["POST /inference"]["file fields"] == ["file"]
    assert described["POST /inference"]["timeout"] == 300.0  # the module's override
    assert described["POST /proxy"]["routes"] == ["GET /v1/models/{model_id}", "GET /v1/status/{code}"]
    assert described["GET /health"]["cord"] == "the module's own"


def test_a_childs_failure_is_told_in_its_own_one_line_error():
    exc = ServiceError("gateway exited with status 1; last output:\n[x] noise\n"
                       "gateway: error: cannot import deploy_x.py: NameError: name 'y' is not defined")
    assert one_line(exc) == "cannot import deploy_x.py: NameError: name 'y' is not defined"
    assert one_line(ServiceError("the node did not answer within 5s")) == "the node did not answer within 5s"


def test_reload_watches_folders_not_recursively_and_only_what_counts(tmp_path):
    (tmp_path / "tools" / "runtime" / "__pycache__").mkdir(parents=True)
    (tmp_path / "tools" / ".hidden").mkdir()
    module = tmp_path / "mods" / "deploy_x.py"
    module.parent.mkdir()
    plan = watch_plan(module, tmp_path / "deploy_x.routes.json", tmp_path / "tools")
    assert set(plan.folders) == {str(tmp_path / "mods"), str(tmp_path), str(tmp_path / "tools"),
                                 str(tmp_path / "tools" / "runtime")}
    assert plan.wants(str(module)) and plan.wants(str(tmp_path / "deploy_x.routes.json"))
    assert plan.wants(str(tmp_path / "tools" / "runtime" / "new.py"))
    assert not plan.wants(str(tmp_path / "tools" / "runtime" / "notes.txt"))
    assert not plan.wants(str(tmp_path / "mods" / "deploy_y.py"))
    assert not plan.wants(str(tmp_path / "deploy_x.py.swp"))


@pytest.mark.parametrize("save", ["in place", "atomic rename"])
def test_the_watcher_sees_a_save_once_and_after_an_atomic_rename_too(tmp_path, save):
    tools = tmp_path / "tools" / "sub"
    tools.mkdir(parents=True)
    module = tmp_path / "deploy_x.py"
    module.write_text("A = 1\n")
    watcher = Watcher(watch_plan(module, None, tmp_path / "tools")).start()
    try:
        time.sleep(0.5)  # watchfiles sets its watches when it first waits
        for round_ in range(2):  # a watch on the file itself would go deaf after the first rename
            if save == "in place":
                module.write_text(f"A = {round_}\n")
            else:
                (tmp_path / ".deploy_x.tmp").write_text(f"A = {round_}\n")
                os.replace(tmp_path / ".deploy_x.tmp", module)
            assert watcher.changed.wait(10), f"no change seen in round {round_}"
            assert watcher.take() == {str(module)}
        (tools / "helper.py").write_text("B = 2\n")
        (tmp_path / "notes.txt").write_text("not watched\n")
        assert watcher.changed.wait(10)
        assert watcher.take() == {str(tools / "helper.py")}
    finally:
        watcher.stop()


def test_a_cord_at_docs_keeps_its_path_and_the_page_moves_to_the_gateways_own():
    chute = Chute(username="tester", name="docs", image="unused")

    @chute.cord(public_api_path="/docs", public_api_method="GET", method="GET")
    async def docs(self) -> dict:
        return {}

    chute_wrappers.add_health_cord(chute, [8080])
    routes, warnings = front_door(chute, GatewayMetrics())
    paths = [getattr(route, "path", None) for route in routes]
    assert DOCS_PATHS[0] not in paths and DOCS_PATHS[1] in paths and set(DOCUMENT_PATHS) <= set(paths)
    assert warnings == ["GET /docs is a cord of this chute: it is served as on Chutes; the docs page is at /_gateway/docs"]


def test_swagger_ui_comes_from_an_installed_package():
    folder = assets_directory()
    assert folder is not None, "pip install fastapi-offline (requirements.txt)"
    assert {"swagger-ui-bundle.js", "swagger-ui.css"} <= {p.name for p in Path(folder).iterdir()}
