"""The local gateway's front door on deploy_example: the API document it serves (valid, the one
`deploy.sh --openapi` writes, with this machine first), a client generated from it by a real generator
calling every kind of cord through the gateway, the docs page's files from the installed package, and
the metrics page counting the calls."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import wave

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.support.client_generator import generate_client
from tests.support.openapi_check import check_document

pytestmark = pytest.mark.integration


def wav_bytes() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    return out.getvalue()


@pytest.fixture(scope="module")
def document(example) -> dict:
    platform, _ = example
    answer = requests.get(platform.url + "/openapi.json", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    return answer.json()


def test_the_served_document_is_valid_and_names_this_gateway_first(example, document):
    platform, _ = example
    check_document(document)
    assert document["servers"][0]["url"] == platform.url
    assert document["servers"][1]["url"] == "https://chutes-user-demo-service.chutes.ai"
    assert requests.get(platform.url + "/_gateway/openapi.json", timeout=30).json() == document


def test_the_served_document_is_the_one_deploy_sh_openapi_writes(document):
    written = subprocess.run([str(ROOT / "deploy.sh"), "--openapi", "deploy_example", "--output", "-"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout) == dict(document, servers=document["servers"][1:])


def test_errors_the_gateway_answers_fit_the_documented_shape(example, document):
    from openapi_schema_validator import OAS31Validator

    platform, _ = example
    error = OAS31Validator(document["components"]["schemas"]["Error"])
    bad = requests.post(platform.url + "/inference", json={"file_base64": "%%%"}, timeout=30)
    outside = requests.post(platform.url + "/proxy", json={"method": "GET", "path": "/etc/passwd"}, timeout=30)
    for answer in (bad, outside):
        assert answer.status_code == 400
        error.validate(answer.json())
        assert answer.json()["detail"].startswith("Invalid request: ")


def test_the_docs_page_loads_only_files_this_gateway_serves(example):
    platform, _ = example
    page = requests.get(platform.url + "/docs", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert requests.get(platform.url + "/_gateway/docs", timeout=30).text == page.text
    links = re.findall(r'(?:src|href|url:)\s*=?\s*"([^"]+)"', page.text)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links), links
    assert "http://" not in page.text and "https://" not in page.text
    for link in links:
        answer = requests.get(platform.url + link, timeout=30)
        assert answer.status_code == 200 and answer.content, link
    assert "SwaggerUIBundle" in requests.get(platform.url + "/_gateway/assets/swagger-ui-bundle.js", timeout=30).text


def metric(platform, name: str, **labels: str) -> float:
    page = requests.get(platform.url + "/_gateway/metrics", timeout=30)
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    for family in text_string_to_metric_families(page.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_the_metrics_page_counts_the_calls_made_through_the_gateway(example):
    platform, _ = example
    echo = {"method": "POST", "cord": "/v1/echo"}
    before = (metric(platform, "chutes_gateway_calls_total", **echo, status="200"),
              metric(platform, "chutes_gateway_call_duration_seconds_count", **echo),
              metric(platform, "chutes_gateway_calls_total", method="GET", cord="(none)", status="404"))
    for _ in range(3):
        assert requests.post(platform.url + "/v1/echo", json={"n": 1}, timeout=30).status_code == 200
    assert requests.get(platform.url + "/no/such/cord", timeout=30).status_code == 404
    after = (metric(platform, "chutes_gateway_calls_total", **echo, status="200"),
             metric(platform, "chutes_gateway_call_duration_seconds_count", **echo),
             metric(platform, "chutes_gateway_calls_total", method="GET", cord="(none)", status="404"))
    assert [b - a for a, b in zip(before, after)] == [3, 3, 1]
    assert metric(platform, "chutes_gateway_instance_failures_total", method="POST", cord="/tts_to_audio") == 0


def test_a_generated_client_calls_every_kind_of_cord_through_the_gateway(example, document, tmp_path_factory):
    platform, service = example
    client_package, _ = generate_client(document, tmp_path_factory.mktemp("client"), "demo_chute_client")
    from demo_chute_client import AuthenticatedClient
    from demo_chute_client.api.default import (
        get_health, get_v1_models, get_v1_text, post_inference, post_proxy, post_tts_to_audio, post_v1_echo,
    )
    from demo_chute_client.models import (
        PostInferenceBody, PostProxyBody, PostProxyBodyMethod, PostTtsToAudioBody, PostV1EchoBody,
    )
    from demo_chute_client.types import File

    # As a caller of the deployed chute would: the document's server, a bearer key (the local gateway
    # takes any), the generated models and functions.
    with AuthenticatedClient(base_url=document["servers"][0]["url"], token="cpk_local_test", timeout=60,
                             raise_on_unexpected_status=True) as client:
        echoed = post_v1_echo.sync(client=client, body=PostV1EchoBody.from_dict({"message": "hi", "n": [1, 2]}))
        assert echoed == requests.post(service + "/v1/echo", json={"message": "hi", "n": [1, 2]}, timeout=30).json()

        audio = post_tts_to_audio.sync(client=client, body=PostTtsToAudioBody.from_dict({"text": "hello"}))
        assert isinstance(audio, File)
        direct = requests.post(service + "/tts_to_audio/", json={"text": "hello"}, timeout=30)
        assert audio.payload.read() == direct.content and direct.content.startswith(b"RIFF")

        clip = wav_bytes()
        transcript = post_inference.sync(client=client, body=PostInferenceBody.from_dict(
            {"file_base64": base64.b64encode(clip).decode(), "temperature": "0.2"}))
        assert transcript == requests.post(service + "/inference", files={"file": ("file.wav", clip, "audio/wav")},
                                           data={"temperature": "0.2"}, timeout=30).json()

        models = get_v1_models.sync(client=client, limit=1)
        assert models == requests.get(service + "/v1/models", params={"limit": 1}, timeout=30).json()
        assert get_v1_text.sync(client=client) == requests.get(service + "/v1/text", timeout=30).text

        one = post_proxy.sync(client=client, body=PostProxyBody(path="/v1/models/demo-tts-1",
                                                                method=PostProxyBodyMethod.GET))
        assert one == requests.get(service + "/v1/models/demo-tts-1", timeout=30).json()

        health = get_health.sync_detailed(client=client)
        assert health.status_code == 200 and json.loads(health.content)["status"] == "healthy"

        refused = post_proxy.sync_detailed(client=client, body=PostProxyBody(path="/v1/nothing/here"))
        assert refused.status_code == 400 and refused.parsed.detail.startswith("Invalid request: ")
