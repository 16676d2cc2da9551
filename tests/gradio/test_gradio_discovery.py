"""Discovery of a real Gradio app: one route of kind "gradio" per named function, with its
parameters (names, defaults, types, files) and outputs."""

from __future__ import annotations

import json

import pytest

from tools.discover_routes import Config, Display, discover
from tools.runtime.routes import parse_manifest, read_manifest_file

pytestmark = pytest.mark.integration

FUNCTIONS = ["greet", "repeat", "stats", "invert", "count", "file_info", "make_file", "fail", "crash", "caption",
             "remember", "chat"]


@pytest.fixture(scope="module")
def manifest(gradio_module):
    return read_manifest_file(gradio_module / "deploy_gradioapp.routes.json")


def by_path(manifest):
    return {route.path: route for route in manifest.routes}


def test_one_route_per_function_instead_of_the_ui_routes(manifest, gradio_app):
    assert [route.path for route in manifest.routes] == [f"/{name}" for name in FUNCTIONS]
    assert all(route.request_kind == "gradio" and route.method == "POST" for route in manifest.routes)
    assert all(route.port == gradio_app.port for route in manifest.routes)
    assert all(route.upstream_path == f"/gradio_api/call/{route.gradio.api_name}" for route in manifest.routes)
    # the UI's own routes (/config, /monitoring, /gradio_api/...) are not in it, skipped or not
    assert not any(entry.get("path", "").startswith(("/config", "/gradio_api", "/monitoring")) for entry in manifest.skipped)


def test_parameters_carry_names_defaults_and_types(manifest):
    repeat = by_path(manifest)["/repeat"].gradio
    text, times = repeat.parameters
    assert (text.name, text.type, text.has_default) == ("text", "string", False)
    assert (times.name, times.type, times.has_default, times.default) == ("times", "integer", True, 2)
    assert [o.type for o in repeat.outputs] == ["string"]
    assert repeat.version.startswith(("5.", "6.")) and repeat.api_prefix == "/gradio_api"


def test_files_generators_and_outputs_are_recognised(manifest):
    routes = by_path(manifest)
    invert = routes["/invert"]
    assert invert.file_fields == ("image",) and invert.gradio.parameters[0].type == "file"
    assert invert.gradio.single_file_output and invert.response_kind == "binary"
    assert routes["/file_info"].file_fields == ("path",)
    assert routes["/make_file"].gradio.single_file_output
    assert [o.type for o in routes["/caption"].gradio.outputs] == ["string", "file"]
    assert routes["/caption"].response_kind == "json"
    assert routes["/count"].gradio.generator and not routes["/greet"].gradio.generator
    assert routes["/stats"].gradio.outputs[0].component == "Json"


def test_state_inputs_and_outputs_are_recorded_and_a_chat_interface_takes_history(manifest):
    """gr.State is left out of the API info but not of the call: the manifest says where it goes."""
    routes = by_path(manifest)
    remember = routes["/remember"].gradio
    assert [p.name for p in remember.parameters] == ["text"]
    assert remember.hidden_inputs == (1,) and remember.hidden_outputs == (1,)
    chat = routes["/chat"].gradio
    assert [p.name for p in chat.parameters] == ["message"] and chat.hidden_inputs == (1,)
    assert chat.chat is not None and chat.chat.setter and chat.chat.parts  # 6.x: a setter, content as parts
    assert routes["/greet"].gradio.chat is None and not routes["/greet"].gradio.hidden_inputs


def test_manifest_round_trips(gradio_module, manifest):
    raw = json.loads((gradio_module / "deploy_gradioapp.routes.json").read_text())
    again = parse_manifest(json.loads(json.dumps(manifest.to_json())), "again")
    assert again.to_json() == raw
    assert [r.gradio for r in again.routes] == [r.gradio for r in manifest.routes]


def test_pointed_at_gradios_own_openapi_document(gradio_app, tmp_path):
    """Probing only /gradio_api/openapi.json (whose paths are all UI internals) still gives the functions."""
    config = Config(base_url=gradio_app.url, probe_paths=("/gradio_api/openapi.json",), output=str(tmp_path / "m.json"),
                    live=False)
    result = discover(config, Display(live=False, stream=open("/dev/null", "w")))
    assert [route.path for route in result.manifest.routes] == [f"/{name}" for name in FUNCTIONS]
    assert result.outcomes[gradio_app.port].kind == "gradio"
