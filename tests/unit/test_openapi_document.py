"""The chute's API document (tools/platform/openapi_doc.py): valid OpenAPI 3.1 by the real validator,
one operation per cord, and what callers on Chutes send and get, from the registration plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from chutes.chute import Chute
from pydantic import BaseModel

from tests.conftest import ROOT
from tests.support.openapi_check import check_document, resolve
from tools import chute_wrappers
from tools.cord_table import cords_of
from tools.platform.openapi_doc import build_document, document_paths
from tools.runtime.gradio_spec import GradioFunction, Parameter
from tools.discovery.gradio import routes_for


@pytest.fixture(scope="module")
def example():
    """deploy_example's chute, imported as every tool imports it."""
    from tools import deploy_module

    return deploy_module.load("deploy_example").chute


@pytest.fixture(scope="module")
def document(example):
    return build_document(example, local_url="http://127.0.0.1:8000")


def operation(document: dict, method: str, path: str) -> dict:
    return document["paths"][path][method.lower()]


def body_schema(document: dict, method: str, path: str) -> dict:
    return operation(document, method, path)["requestBody"]["content"]["application/json"]["schema"]


def test_the_example_chutes_document_is_valid_openapi_3_1(document):
    check_document(document)


def test_every_cord_is_one_operation_at_its_public_path_and_method(example, document):
    assert sorted(document_paths(document)) == sorted((cord.method, cord.public_path) for cord in cords_of(example))


def test_a_checker_that_passes_everything_would_fail_this_test(document):
    broken = json.loads(json.dumps(document))
    broken["paths"]["/v1/echo"]["post"]["requestBody"]["content"]["application/json"]["schema"] = {"$ref": "#/nowhere"}
    with pytest.raises(AssertionError, match="nowhere"):
        check_document(broken)
    broken = json.loads(json.dumps(document))
    broken["security"] = [{"apiKey": []}]
    with pytest.raises(AssertionError, match="security"):
        check_document(broken)


def test_files_are_sent_as_base64_keys_with_their_name_and_type(document):
    schema = body_schema(document, "POST", "/inference")
    properties = schema["properties"]
    assert properties["file_base64"]["contentEncoding"] == "base64"
    assert {"file_filename", "file_content_type", "_query", "stream"} <= set(properties)
    assert "audio/wav" in properties["file_content_type"]["description"]  # the module's override names the type
    raw = body_schema(document, "POST", "/v1/audio/raw")["properties"]
    assert {"body_base64", "body", "content_type"} <= set(raw)


def test_get_cords_take_typed_query_parameters_and_no_body(document):
    models = operation(document, "GET", "/v1/models")
    assert "requestBody" not in models
    assert {p["name"]: (p["in"], p["schema"]["type"]) for p in models["parameters"]} == {
        "limit": ("query", "integer"), "owned_by": ("query", "string")}
    raw = operation(document, "POST", "/v1/audio/raw")
    assert [p["name"] for p in raw["parameters"]] == ["language"]


def test_the_catch_all_takes_its_envelope_for_the_manifests_templates(document):
    schema = body_schema(document, "POST", "/proxy")
    assert schema["required"] == ["path"]
    assert {"method", "path", "query", "json", "form", "raw"} <= set(schema["properties"])
    assert "GET /v1/models/{model_id}" in schema["properties"]["path"]["description"]
    assert schema["examples"] == [{"method": "GET", "path": "/v1/models/MODEL_ID"}]
    assert schema["properties"]["method"]["enum"] == ["GET"]


def test_answers_carry_the_routes_media_types(document):
    def media(method, path):
        return operation(document, method, path)["responses"]["200"]["content"]

    assert media("POST", "/tts_to_audio") == {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}
    assert set(media("POST", "/v1/stream")) == {"text/event-stream"}
    assert set(media("GET", "/v1/text")) == {"text/plain"}
    assert set(media("GET", "/v1/blob")) == {"application/octet-stream"}
    assert set(media("POST", "/v1/echo")) == {"application/json"}


def test_errors_are_the_chutes_gateways_shapes(document):
    from tools.platform.gateway import NO_INSTANCES, NO_TARGETS, OVERLOAD

    for path, item in document["paths"].items():
        for op in item.values():
            for status in ("400", "429", "500", "503"):
                answer = resolve(document, op["responses"][status]["$ref"])
                schema = resolve(document, answer["content"]["application/json"]["schema"]["$ref"])
                assert schema["required"] == ["detail"], (path, status)
    # the gateway's own bodies fit the schema (the platform tests compare them with real answers)
    from openapi_schema_validator import OAS31Validator

    error = document["components"]["schemas"]["Error"]
    for body in ({"detail": OVERLOAD}, {"detail": NO_TARGETS}, {"detail": NO_INSTANCES.format("x")},
                 {"detail": "Invalid request: {\"detail\": \"x\"}"}):
        OAS31Validator(error).validate(body)


def test_servers_are_this_machine_then_the_deployed_chute_with_bearer_auth(example, document):
    assert [server["url"] for server in document["servers"]] == [
        "http://127.0.0.1:8000", "https://chutes-user-demo-service.chutes.ai"]
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "Your Chutes API key (cpk_...)."}
    alone = build_document(example)
    assert [server["url"] for server in alone["servers"]] == ["https://chutes-user-demo-service.chutes.ai"]


def test_the_document_names_no_secret(tmp_path):
    """An API key in the environment and an upstream header from a secret: neither is in the document."""
    module = tmp_path / "deploy_secretive.py"
    module.write_text((ROOT / "deploy_example.py").read_text().replace(
        "CHUTE_UPSTREAM_HEADERS = {}", 'CHUTE_UPSTREAM_HEADERS = {"X-Service-Key": "${SECRETIVE_KEY}"}'))
    (tmp_path / "deploy_secretive.routes.json").write_text((ROOT / "deploy_example.routes.json").read_text())
    env = dict(os.environ, CHUTES_API_KEY="cpk_topsecret_0123", SECRETIVE_KEY="svc_topsecret_4567",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "tools.commands.openapi", str(module), "--output", "-"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert json.loads(text)["info"]["title"] == "demo-service"
    for secret in ("topsecret", "SECRETIVE_KEY", "X-Service-Key"):
        assert secret not in text


class Greeting(BaseModel):
    name: str
    times: int = 1


def test_a_module_cord_with_a_pydantic_model_documents_its_fields():
    chute = Chute(username="tester", name="greeter", image="unused")

    @chute.cord(public_api_path="/greet", public_api_method="POST")
    async def greet(self, args: Greeting) -> dict:
        return {}

    chute_wrappers.add_health_cord(chute, [8080])
    document = build_document(chute)
    check_document(document)
    body = body_schema(document, "POST", "/greet")
    model = resolve(document, body["$ref"])
    assert model["required"] == ["name"] and set(model["properties"]) == {"name", "times"}
    assert "requestBody" not in operation(document, "GET", "/health")


def test_a_gradio_function_documents_its_named_arguments_and_file_arguments():
    function = GradioFunction("caption", (Parameter("image", "file"), Parameter("prompt", "string"),
                                          Parameter("beams", "integer", True, 3)), generator=True)
    chute = Chute(username="tester", name="gradio-app", image="unused")
    chute_wrappers.register_passthrough_routes(chute, routes_for([function], 7860), 7860)
    document = build_document(chute)
    check_document(document)
    schema = body_schema(document, "POST", "/caption")
    assert schema["additionalProperties"] is False and schema["required"] == ["prompt"]
    assert schema["properties"]["beams"] == {"type": "integer", "default": 3}
    assert {"image_base64", "image_filename", "image_content_type", "stream"} <= set(schema["properties"])


def test_operation_ids_are_unique_and_read_like_the_call(document):
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert "post_tts_to_audio" in ids and "get_v1_models" in ids and "post_proxy" in ids
    assert len(ids) == len(set(ids))
