"""deploy.sh's tools on a Gradio app: --smoke calls every function with examples from the app's
info (a real PNG for an image), --validate warns when a module wraps a Gradio app but exposes none
of its functions."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest
import requests

from tests.conftest import PYTHON, ROOT, free_port
from tools.discovery.openapi import convert_document
from tools.runtime.routes import Manifest, write_manifest

pytestmark = pytest.mark.integration

VALIDATE_MODULE = textwrap.dedent(
    """
    from chutes.chute import Chute
    from tools.chute_wrappers import load_route_manifest, register_passthrough_routes

    CHUTE_NAME = "gradio-app"
    CHUTE_TAG = "v1"
    CHUTE_BASE_IMAGE = "example/app:latest"
    SERVICE_PORTS = [7860]
    chute = Chute(username="test", name=CHUTE_NAME, image="unused")
    register_passthrough_routes(chute, load_route_manifest(), SERVICE_PORTS[0])
    """
)


def run_tool(module: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **(env or {})))


def test_smoke_calls_every_function_with_examples_from_the_info(gradio_module, gradio_app):
    done = run_tool("tools.commands.smoke", [str(gradio_module / "deploy_gradioapp.py"), "--no-service",
                                    "--port", str(free_port()), "--logging-port", str(free_port())],
                    {"CHUTE_PORTS": str(gradio_app.port)})
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("POST ")}
    assert sorted(rows) == sorted(["/greet", "/repeat", "/stats", "/invert", "/count", "/file_info", "/make_file",
                                   "/fail", "/crash", "/caption", "/remember", "/chat"]), done.stdout + done.stderr
    # every function answers its example, the image ones a real PNG; /fail and /crash fail, as in the app
    assert "10 passed, 2 failed" in done.stdout and done.returncode == 1
    # smoke calls as on Chutes (node + gateway): an app failure is the gateway's 500 (an instance failure)
    assert "HTTP 400" in rows["/fail"] and "HTTP 500" in rows["/crash"]
    assert all(" 200 " in row for path, row in rows.items() if path not in ("/fail", "/crash"))


def test_validate_warns_when_a_gradio_app_exposes_no_function(gradio_app, tmp_path):
    """The manifest the old discovery wrote for a Gradio app (its OpenAPI document: UI routes only)."""
    doc = requests.get(f"{gradio_app.url}/openapi.json", timeout=10).json()
    conversion = convert_document(doc, 7860, "openapi.json")
    write_manifest(Manifest(conversion.routes, conversion.skipped), tmp_path / "deploy_uionly.routes.json")
    (tmp_path / "deploy_uionly.py").write_text(VALIDATE_MODULE)
    done = run_tool("tools.commands.validate", [str(tmp_path / "deploy_uionly.py")], {"PYTHONPATH": str(ROOT)})
    assert "warning:" in done.stdout and "Gradio app" in done.stdout, done.stdout + done.stderr
    assert "--discover deploy_uionly" in done.stdout


def test_validate_is_quiet_for_a_module_exposing_the_functions(gradio_module, tmp_path):
    (tmp_path / "deploy_fns.py").write_text(VALIDATE_MODULE)
    (tmp_path / "deploy_fns.routes.json").write_text((gradio_module / "deploy_gradioapp.routes.json").read_text())
    done = run_tool("tools.commands.validate", [str(tmp_path / "deploy_fns.py")], {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning:" not in done.stdout and "POST   /invert" in done.stdout
