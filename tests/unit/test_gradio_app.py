"""Gradio discovery and calls without a Gradio app: documents of Gradio 4.x and 5+, the caller's arguments."""

from __future__ import annotations

import base64

import pytest

from tools.discovery.gradio import cord_path, gradio_hint, parse_app, routes_for
from tools.runtime.cords.gradio import prepare
from tools.runtime.gradio_spec import GradioFunction, Parameter
from tools.runtime.errors import BadRequest
from tools.runtime.routes import Route, parse_manifest

FILE_SCHEMA = {"properties": {"path": {"type": "string"}, "url": {}, "meta": {}}, "title": "FileData", "type": "object"}


def info(*params, returns=({"type": {"type": "string"}},)):
    return {"named_endpoints": {"/predict": {"parameters": list(params), "returns": list(returns)}},
            "unnamed_endpoints": {}}


def test_gradio_4_has_no_api_prefix_and_5_plus_has_gradio_api():
    config4 = {"version": "4.44.1", "components": [], "dependencies": [{"api_name": "predict",
                                                                       "types": {"continuous": False, "generator": True}}]}
    (fn,) = parse_app(config4, info({"label": "Input Text", "type": {"type": "string"}}))
    assert fn.api_prefix == "" and fn.generator
    assert fn.parameters[0].name == "input_text"  # no parameter_name in old info: from the label
    config6 = {"version": "6.0.0", "api_prefix": "/gradio_api", "components": [], "dependencies": []}
    (fn,) = parse_app(config6, info())
    assert fn.api_prefix == "/gradio_api" and not fn.generator
    config5 = {"version": "5.9.1", "components": [], "dependencies": []}
    assert parse_app(config5, info())[0].api_prefix == "/gradio_api"
    (route,) = routes_for(parse_app(config4, info()), 7860)
    assert route.upstream_path == "/call/predict"


def test_file_types_and_lists_of_files():
    fn = parse_app({"version": "6.1.0", "components": [], "dependencies": []}, info(
        {"parameter_name": "image", "type": FILE_SCHEMA},
        {"parameter_name": "files", "type": {"type": "array", "items": FILE_SCHEMA}},
        returns=({"type": FILE_SCHEMA},),
    ))[0]
    assert [p.type for p in fn.parameters] == ["file", "files"] and fn.single_file_output
    assert fn.file_parameters == ("image", "files")


def test_cord_paths_are_valid_and_distinct():
    assert cord_path("Predict-Image v2") == "/predict_image_v2"
    assert cord_path("/lambda") == "/lambda"
    routes = routes_for([GradioFunction("Predict"), GradioFunction("predict")], None)
    assert [r.path for r in routes] == ["/predict", "/predict_2"]


def test_manifest_entry_round_trips_and_bad_entries_name_the_route():
    fn = GradioFunction("repeat", (Parameter("text", "string"), Parameter("times", "integer", True, 2)), version="6.0.0")
    (route,) = routes_for([fn], 7860)
    again = parse_manifest({"version": 2, "routes": [route.to_json()]}, "m.json").routes[0]
    assert again.gradio == fn and again.request_kind == "gradio"
    entry = route.to_json()
    entry["gradio"] = {"parameters": []}
    from tools.runtime.errors import ManifestError

    with pytest.raises(ManifestError, match=r"m.json: route 0: gradio.api_name"):
        parse_manifest({"version": 2, "routes": [entry]}, "m.json")


def test_arguments_defaults_unknown_names_and_files():
    fn = GradioFunction("f", (Parameter("text", "string"), Parameter("times", "integer", True, 2),
                              Parameter("image", "file", True, None)))
    got = prepare(fn, {"text": "a"})
    assert got.values == {"text": "a", "times": 2, "image": None} and not got.files and not got.stream
    got = prepare(fn, {"text": "a", "image_base64": base64.b64encode(b"\x89PNG....").decode(), "stream": True})
    (upload,) = got.files["image"]
    assert (upload.content_type, upload.filename, got.stream) == ("image/png", "image.png", True)
    with pytest.raises(BadRequest, match=r"unknown argument\(s\) 'x': /f takes text, times, image"):
        prepare(fn, {"text": "a", "x": 1})
    with pytest.raises(BadRequest, match="missing argument 'text'"):
        prepare(fn, {})
    with pytest.raises(BadRequest, match="data: URL"):
        prepare(fn, {"text": "a", "image": "/etc/passwd"})
    with pytest.raises(BadRequest, match="stream: expected true or false"):
        prepare(fn, {"text": "a", "stream": "yes"})


def test_a_parameter_named_stream_is_an_argument():
    fn = GradioFunction("f", (Parameter("stream", "boolean"),))
    got = prepare(fn, {"stream": True})
    assert got.values == {"stream": True} and not got.stream
    assert prepare(fn, {"stream": False, "_stream": True}).stream


def test_hint_for_modules_wrapping_a_gradio_app_without_its_functions():
    ui = [Route("/config", "GET"), Route("/monitoring", "GET")]
    assert "web-UI routes" in gradio_hint(ui, [{"path": "/gradio_api/upload"}])
    assert gradio_hint([Route("/predict")], [], "me/gradio-demo:1") is not None
    assert gradio_hint([Route("/predict")], [], "me/api:1") is None
    (fn_route,) = routes_for([GradioFunction("predict")], None)
    assert gradio_hint(ui + [fn_route], [{"path": "/gradio_api/upload"}]) is None
