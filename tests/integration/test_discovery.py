"""Discovery against real services on loopback: the demo service (also slow to serve its spec, on two
ports, without a spec), static spec files served by a real HTTP server, and every user error."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, ROOT, free_port, wait_for_port

pytestmark = pytest.mark.integration

EXPECTED = json.loads((ROOT / "deploy_example.routes.json").read_text())


def run_discovery(*args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "tools.discover_routes", "--plain", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0] == proc.stderr.splitlines()[-1]
    assert errors[0].startswith("discover_routes: error: ")
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in proc.stderr


def assert_kinds_match_hand_written(manifest: dict, port: int | None = None) -> None:
    found = {(r["method"], r["path"]): r for r in manifest["routes"]}
    for entry in EXPECTED["routes"]:
        route = found[(entry["method"], entry["path"])]
        for key in ("request", "response", "stream", "query_params", "path_params"):
            assert route[key] == entry[key], (entry["path"], key)
        if port is not None:
            assert route["port"] == port
    skipped = {(s["method"], s["path"]) for s in manifest["skipped"]}
    assert {(s["method"], s["path"]) for s in EXPECTED["skipped"]} <= skipped


def start_demo(processes, *flags: str) -> int:
    port = free_port()
    processes(
        [PYTHON, str(ROOT / "tools" / "demo_service.py"), "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", *flags],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return port


def serve_files(processes, directory: Path) -> int:
    """A real HTTP server for fixed documents (python -m http.server)."""
    port = free_port()
    proc = processes(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return port


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".json")))


# --------------------------------------------------------------------------------------------------
# The demo service


def test_demo_service_routes_have_the_kinds_of_the_hand_written_manifest(demo_service, tmp_path):
    out = tmp_path / "demo.routes.json"
    proc = run_discovery("--base-url", demo_service, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(out.read_text())
    assert manifest["version"] == 3
    assert_kinds_match_hand_written(manifest, int(demo_service.rsplit(":", 1)[1]))
    tts = next(r for r in manifest["routes"] if r["path"] == "/tts_to_audio/")
    assert tts["public_path"] == "/tts_to_audio" and tts["target_path"] == "/tts_to_audio/"
    assert tts["example"] == {"text": "Hello from chutes-wrappers", "language": "en"}
    assert "wrote" in proc.stderr.splitlines()[-1]


def test_spec_that_appears_only_after_a_delay_is_waited_for(processes, tmp_path):
    port = start_demo(processes, "--spec-delay", "2")
    out = tmp_path / "slow.routes.json"
    proc = run_discovery("--base-url", f"http://127.0.0.1:{port}", "--startup-delay", "30", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "spec not ready (HTTP 503)" in proc.stderr
    assert_kinds_match_hand_written(json.loads(out.read_text()), port)


def test_port_without_spec_is_reported_while_the_other_port_is_discovered(processes, tmp_path):
    with_spec = start_demo(processes)
    without = start_demo(processes, "--no-spec")
    out = tmp_path / "two.routes.json"
    proc = run_discovery("--base-url", "http://127.0.0.1", "--port", str(with_spec), "--port", str(without),
                         "--startup-delay", "30", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(out.read_text())
    assert {r["port"] for r in manifest["routes"]} == {with_spec}
    assert f"port {without}: answers HTTP but serves no OpenAPI document" in proc.stderr
    assert "CHUTE_STATIC_ROUTES" in proc.stderr


def test_two_ports_with_specs_are_discovered_together(processes, tmp_path):
    first, second = start_demo(processes), start_demo(processes, "--spec-delay", "1")
    out = tmp_path / "both.routes.json"
    proc = run_discovery("--base-url", "http://127.0.0.1", "--port", str(first), "--port", str(second),
                         "--startup-delay", "30", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    routes = json.loads(out.read_text())["routes"]
    assert {r["port"] for r in routes} == {first, second}
    assert len(routes) == 2 * len(EXPECTED["routes"])


def test_service_without_spec_is_an_error_and_writes_nothing(processes, tmp_path):
    port = start_demo(processes, "--no-spec")
    proc = run_discovery("--base-url", f"http://127.0.0.1:{port}", "--startup-delay", "30",
                         "-o", str(tmp_path / "none.routes.json"))
    assert_one_line_error(proc, "no OpenAPI spec on any port")
    assert leftovers(tmp_path) == []


def test_unreachable_url_is_a_one_line_error(tmp_path):
    proc = run_discovery("--base-url", f"http://127.0.0.1:{free_port()}", "--startup-delay", "0.5",
                         "-o", str(tmp_path / "x.json"))
    assert_one_line_error(proc, "nothing answered at http://127.0.0.1")
    assert "connection refused" in proc.stderr.splitlines()[-1]
    assert leftovers(tmp_path) == []


def test_unknown_host_fails_at_once():
    proc = run_discovery("--base-url", "http://no-such-host.invalid:8020", "-o", "-")
    assert_one_line_error(proc, "cannot resolve 'no-such-host.invalid'")


# --------------------------------------------------------------------------------------------------
# Documents served as files by a real HTTP server


SWAGGER = {
    "swagger": "2.0", "info": {"title": "s", "version": "1"}, "basePath": "/api",
    "paths": {
        "/synthesize": {"post": {"parameters": [{"in": "body", "name": "b", "schema": {"type": "object"}}],
                                 "produces": ["audio/mpeg"], "responses": {"200": {"description": "mp3", "schema": {"type": "file"}}}}},
        "/transcribe": {"post": {"consumes": ["multipart/form-data"],
                                 "parameters": [{"in": "formData", "name": "audio", "type": "file"}],
                                 "responses": {"200": {"description": "ok"}}}},
    },
}


def test_swagger_2_document_is_discovered(processes, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "swagger.json").write_text(json.dumps(SWAGGER))
    port = serve_files(processes, site)
    proc = run_discovery("--base-url", f"http://127.0.0.1:{port}", "-o", "-")
    assert proc.returncode == 0, proc.stderr
    routes = {r["path"]: r for r in json.loads(proc.stdout)["routes"]}
    assert routes["/api/synthesize"]["response"] == {"kind": "binary", "content_type": "audio/mpeg"}
    assert routes["/api/transcribe"]["request"] == {"kind": "multipart", "file_fields": ["audio"]}


def test_yaml_document_at_an_extra_probe_path_is_discovered(processes, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    doc = {"openapi": "3.1.0", "info": {"title": "y", "version": "1"},
           "paths": {"/v1/chat": {"post": {"responses": {"200": {"description": "s", "content": {"text/event-stream": {}}}}}}}}
    (site / "openapi.yaml").write_text(yaml.safe_dump(doc))
    port = serve_files(processes, site)
    proc = run_discovery("--base-url", f"http://127.0.0.1:{port}", "--probe-path", "/openapi.yaml", "-o", "-")
    assert proc.returncode == 0, proc.stderr
    (route,) = json.loads(proc.stdout)["routes"]
    assert (route["path"], route["stream"], route["response"]["kind"]) == ("/v1/chat", True, "stream")


@pytest.mark.parametrize(
    "name, body, fragment",
    [
        ("openapi.json", '{"openapi": "3.0.0", "paths": {"/a": ', "invalid JSON at line 1"),
        ("openapi.json", '{"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": {}}', "has no paths"),
        ("openapi.json", '{"openapi": "3.0.0", "info": {"title": "t", "version": "1"}}', "has no paths"),
        ("openapi.yaml", "openapi: 3.0.0\npaths: {/a: [unclosed\n", "invalid YAML"),
    ],
)
def test_broken_documents_are_one_line_errors(processes, tmp_path, name, body, fragment):
    site = tmp_path / "site"
    site.mkdir()
    (site / name).write_text(body)
    port = serve_files(processes, site)
    out = tmp_path / "x.routes.json"
    proc = run_discovery("--base-url", f"http://127.0.0.1:{port}", "--probe-path", "/openapi.yaml", "-o", str(out))
    assert_one_line_error(proc, fragment)
    assert f"http://127.0.0.1:{port}/{name}" in proc.stderr.splitlines()[-1]
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# With a deploy module


def test_module_static_routes_are_merged_and_the_manifest_lands_beside_the_module(demo_service, tmp_path):
    port = int(demo_service.rsplit(":", 1)[1])
    module = tmp_path / "deploy_local.py"
    module.write_text(textwrap.dedent(f"""
        CHUTE_NAME = "local"
        CHUTE_BASE_IMAGE = "unused:1"
        SERVICE_PORTS = [{port}]
        CHUTE_STATIC_ROUTES = [
            {{"path": "/v1/echo", "method": "POST"}},
            {{"path": "/load", "method": "GET", "target_path": "/load"}},
        ]
    """))
    proc = run_discovery("--chute-file", str(module), "--base-url", "http://127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "deploy_local.routes.json").read_text())
    paths = [(r["method"], r["path"]) for r in manifest["routes"]]
    assert paths.count(("POST", "/v1/echo")) == 1
    assert ("GET", "/load") in paths
    assert "1 static route(s) merged" in proc.stderr


def test_deploy_example_is_discovered_although_its_overrides_name_undiscovered_routes(demo_service, tmp_path):
    out = tmp_path / "example.routes.json"
    proc = run_discovery("deploy_example", "--base-url", demo_service, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert_kinds_match_hand_written(json.loads(out.read_text()))


def test_readme_script_form_prints_the_manifest_to_stdout(demo_service):
    port = demo_service.rsplit(":", 1)[1]
    proc = subprocess.run(
        [PYTHON, "tools/discover_routes.py", "--base-url", demo_service, "--port", port],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == 3


def test_missing_output_directory_fails_before_probing(demo_service, tmp_path):
    proc = run_discovery("--base-url", demo_service, "-o", str(tmp_path / "nope" / "x.json"))
    assert_one_line_error(proc, "does not exist")
    assert "probing" not in proc.stderr


def test_module_without_image_or_ports_is_a_one_line_error(tmp_path):
    module = tmp_path / "deploy_bare.py"
    module.write_text("CHUTE_NAME = 'bare'\nSERVICE_PORTS = [8020]\n")
    assert_one_line_error(run_discovery("--chute-file", str(module)), "has no CHUTE_BASE_IMAGE")
    module.write_text("CHUTE_NAME = 'bare'\nCHUTE_BASE_IMAGE = 'x:1'\n")
    assert_one_line_error(run_discovery("--chute-file", str(module)), "has no SERVICE_PORTS")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_a_wait_leaves_no_manifest(processes, tmp_path, signum, code):
    port = start_demo(processes, "--spec-delay", "60")
    wait_for_port(port)
    out = tmp_path / "x.routes.json"
    proc = processes(
        [PYTHON, "-m", "tools.discover_routes", "--plain", "--base-url", f"http://127.0.0.1:{port}", "-o", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = ""
    deadline = time.monotonic() + 30
    while "spec not ready" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
    proc.send_signal(signum)
    assert proc.wait(30) == code
    assert "interrupted" in proc.stderr.read()
    assert leftovers(tmp_path) == []
