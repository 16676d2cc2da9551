"""Proxy cords through the real `chutes run --dev`, in front of the real demo service (the SDK's dev
mode; the platform's call path is tests/platform)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import textwrap
import wave

import pytest
import requests

from tests.conftest import PYTHON, ROOT, free_port, wait_for_port

pytestmark = pytest.mark.integration

MODULE = textwrap.dedent(
    """
    import os
    from chutes.chute import Chute
    from tools.chute_wrappers import add_health_cord, load_route_manifest, parse_service_ports, register_passthrough_routes

    SERVICE_PORTS = parse_service_ports(os.environ["CHUTE_PORTS"])
    DEAD_PORT = int(os.environ["DEAD_PORT"])
    STATIC = [
        {"path": "/fail", "method": "GET", "target_path": "/v1/status/500", "request": {"kind": "none"}},
        {"path": "/teapot", "method": "GET", "target_path": "/v1/status/418", "request": {"kind": "none"}},
        {"path": "/slowpoke", "method": "GET", "target_path": "/v1/slow", "request": {"kind": "none"},
         "query_params": ["seconds"]},
        {"path": "/down", "method": "GET", "port": DEAD_PORT, "target_path": "/v1/text",
         "request": {"kind": "none"}, "response": {"kind": "text", "content_type": "text/plain"}},
    ]
    chute = Chute(username="test", name="proxytest", image="unused")
    add_health_cord(chute, SERVICE_PORTS)
    register_passthrough_routes(
        chute, load_route_manifest(static_routes=STATIC), SERVICE_PORTS[0],
        overrides={"GET /slowpoke": {"timeout": 1}, "GET /fail": {"mode": "proxy"}, "GET /teapot": {"mode": "proxy"}},
        catch_all="/proxy",
    )
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(chute base URL, demo base URL): the demo service, and a test module's chute in the SDK's dev
    mode started by the library as `deploy.sh --run --dev --no-service` does (tools.platform.stack.start_stack).
    The same cords on the platform's call path: tests/platform."""
    import subprocess
    import threading

    from tests.conftest import stop_process
    from tools.platform.stack import RunConfig, start_stack

    tmp = tmp_path_factory.mktemp("proxy")
    (tmp / "deploy_proxytest.py").write_text(MODULE)
    shutil.copy(ROOT / "deploy_example.routes.json", tmp / "deploy_proxytest.routes.json")
    service_port, dead_port = free_port(), free_port()
    service = subprocess.Popen(
        [PYTHON, str(ROOT / "tools" / "demo_service.py"), "--port", str(service_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    saved = dict(os.environ)
    os.environ.update(CHUTE_PORTS=str(service_port), DEAD_PORT=str(dead_port))
    try:
        wait_for_port(service_port, service)
        config = RunConfig(str(tmp / "deploy_proxytest.py"), port=free_port(), logging_port=free_port(),
                           no_service=True, quiet=True, dev=True, timeout=90)
        with start_stack(config, threading.Event()) as running:
            yield running.base_url, f"http://127.0.0.1:{service_port}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stop_process(service)


def wav_bytes(seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x01\x00" * int(8000 * seconds))
    return buffer.getvalue()


def test_binary_wav_answer_is_byte_exact_with_its_content_type(stack):
    chute, service = stack
    body = {"text": "Byte exact please", "language": "en"}
    direct = requests.post(f"{service}/tts_to_audio/", json=body, timeout=30)
    through = requests.post(f"{chute}/tts_to_audio", json=body, timeout=30)
    assert through.status_code == 200
    assert through.headers["content-type"] == "audio/wav"
    assert int(through.headers["content-length"]) == len(direct.content)
    assert through.content == direct.content
    with wave.open(io.BytesIO(through.content)) as audio:
        assert audio.getnframes() > 0


def test_multipart_route_is_proxied_with_file_field_from_base64(stack):
    chute, _ = stack
    audio = wav_bytes()
    answer = requests.post(
        f"{chute}/inference",
        json={"file_base64": base64.b64encode(audio).decode(), "file_filename": "clip.wav", "temperature": 0.25},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["bytes"] == len(audio) and data["sha256"] == hashlib.sha256(audio).hexdigest()
    assert data["filename"] == "clip.wav" and data["content_type"] == "audio/wav"
    assert data["temperature"] == 0.25 and data["duration_s"] == pytest.approx(0.5)


def test_multipart_file_field_as_data_url(stack):
    chute, _ = stack
    audio = wav_bytes(0.25)
    url = "data:audio/x-wav;base64," + base64.b64encode(audio).decode()
    answer = requests.post(f"{chute}/v1/audio/transcriptions", json={"file": url, "model": "demo-whisper-1"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["content_type"] == "audio/x-wav" and answer.json()["model"] == "demo-whisper-1"


def test_raw_body_route_gets_the_bytes_as_the_body_with_their_type(stack):
    """A route whose request body is the audio itself: body_base64 (or a data: URL, or text in
    `body`) becomes the raw body; `content_type` or the manifest's type is its Content-Type; other
    keys are query parameters."""
    chute, _ = stack
    audio = wav_bytes(0.25)
    answer = requests.post(f"{chute}/v1/audio/raw",
                           json={"body_base64": base64.b64encode(audio).decode(), "language": "de"}, timeout=30)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert (got["bytes"], got["sha256"]) == (len(audio), hashlib.sha256(audio).hexdigest())
    assert (got["content_type"], got["duration_s"], got["language"]) == ("audio/wav", 0.25, "de")
    url = "data:audio/x-wav;base64," + base64.b64encode(audio).decode()
    answer = requests.post(f"{chute}/v1/audio/raw", json={"body": url}, timeout=30)
    assert answer.json()["content_type"] == "audio/x-wav" and answer.json()["language"] == "en"
    answer = requests.post(f"{chute}/v1/audio/raw", json={"body": "plain words", "content_type": "text/plain"}, timeout=30)
    assert (answer.json()["bytes"], answer.json()["content_type"]) == (11, "text/plain")
    missing = requests.post(f"{chute}/v1/audio/raw", json={"language": "de"}, timeout=30)
    assert missing.status_code == 400 and "body_base64" in missing.json()["detail"]
    through = requests.post(f"{chute}/proxy", json={"method": "POST", "path": "/v1/audio/raw",
                                                    "raw": {"body_base64": base64.b64encode(audio).decode()},
                                                    "query": {"language": "fr"}}, timeout=30)
    assert through.status_code == 200 and through.json()["language"] == "fr" and through.json()["bytes"] == len(audio)


def test_bad_base64_is_a_400_not_a_crash(stack):
    chute, _ = stack
    answer = requests.post(f"{chute}/inference", json={"file_base64": "not base64!!"}, timeout=30)
    assert answer.status_code == 400 and "file_base64" in answer.json()["detail"]


def test_query_parameters_from_url_json_and_underscore_query(stack):
    chute, _ = stack
    assert len(requests.get(f"{chute}/v1/models?limit=2", timeout=30).json()["data"]) == 2
    assert len(requests.get(f"{chute}/v1/models", data=json.dumps({"limit": 1}), timeout=30).json()["data"]) == 1
    owned = requests.get(f"{chute}/v1/models", data=json.dumps({"_query": {"owned_by": "nobody"}}), timeout=30)
    assert owned.json()["data"] == []
    invalid = requests.get(f"{chute}/v1/models?limit=0", timeout=30)
    # the service's own 4xx: 400 for the caller (never an instance failure on Chutes), with its body
    assert invalid.status_code == 400 and invalid.json()["upstream_status"] == 422
    assert "limit" in invalid.json()["upstream_body"]


def test_text_answer_is_text(stack):
    chute, _ = stack
    answer = requests.get(f"{chute}/v1/text", timeout=30)
    assert answer.status_code == 200 and answer.text == "hello from demo\n"
    assert answer.headers["content-type"].startswith("text/plain")


def test_sse_stream_arrives_event_by_event(stack):
    chute, _ = stack
    with requests.post(f"{chute}/v1/stream", json={"count": 4}, stream=True, timeout=30) as answer:
        assert answer.status_code == 200
        # the SDK's passthrough drops it; EventSource and OpenAI-style clients need it
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines() if line.startswith(b"data: ")]
    assert [json.loads(e[6:])["index"] for e in events[:-1]] == [0, 1, 2, 3] and events[-1] == b"data: [DONE]"


def test_json_passthrough_still_works(stack):
    chute, _ = stack
    assert requests.post(f"{chute}/v1/echo", json={"k": [1, "two"]}, timeout=30).json() == {"echo": {"k": [1, "two"]}}


def test_hundred_megabyte_binary_answer_streams_through(stack):
    chute, service = stack
    size = 100 * 1024 * 1024
    digest, total = hashlib.sha256(), 0
    with requests.get(f"{chute}/v1/blob?size={size}", stream=True, timeout=120) as answer:
        assert answer.status_code == 200
        assert int(answer.headers["content-length"]) == size
        for chunk in answer.iter_content(1 << 20):
            digest.update(chunk)
            total += len(chunk)
    direct = hashlib.sha256()
    with requests.get(f"{service}/v1/blob?size={size}", stream=True, timeout=120) as answer:
        for chunk in answer.iter_content(1 << 20):
            direct.update(chunk)
    assert total == size and digest.hexdigest() == direct.hexdigest()


def test_fifty_megabyte_upload_goes_through(stack):
    chute, _ = stack
    payload = os.urandom(50 * 1024 * 1024)
    answer = requests.post(
        f"{chute}/inference", json={"file_base64": base64.b64encode(payload).decode()}, timeout=120
    )
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["bytes"] == len(payload)
    assert answer.json()["sha256"] == hashlib.sha256(payload).hexdigest()


def test_service_down_is_503_with_retry_after(stack):
    chute, _ = stack
    answer = requests.get(f"{chute}/down", timeout=30)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "not answering" in answer.json()["detail"]


def test_slow_service_hits_the_route_timeout_with_504(stack):
    chute, _ = stack
    assert requests.get(f"{chute}/slowpoke?seconds=0.1", timeout=30).status_code == 200
    answer = requests.get(f"{chute}/slowpoke?seconds=5", timeout=30)
    assert answer.status_code == 504 and "within 1s" in answer.json()["detail"]


def test_upstream_5xx_becomes_502_and_4xx_becomes_400_with_the_services_body(stack):
    chute, _ = stack
    failed = requests.get(f"{chute}/fail", timeout=30)
    assert failed.status_code == 502
    assert failed.json()["upstream_status"] == 500 and "500" in failed.json()["upstream_body"]
    teapot = requests.get(f"{chute}/teapot", timeout=30)
    assert teapot.status_code == 400
    assert teapot.json()["status"] == 418 and teapot.json()["upstream_status"] == 418  # its own JSON, kept


def test_catch_all_reaches_path_parameter_routes(stack):
    chute, _ = stack
    found = requests.post(f"{chute}/proxy", json={"method": "GET", "path": "/v1/models/demo-tts-1"}, timeout=30)
    assert found.status_code == 200 and found.json()["id"] == "demo-tts-1"
    missing = requests.post(f"{chute}/proxy", json={"method": "GET", "path": "/v1/models/nope"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["upstream_status"] == 404 and "nope" in missing.text
    upload = requests.post(
        f"{chute}/proxy",
        json={"method": "POST", "path": "/inference", "form": {"file_base64": base64.b64encode(b"abc").decode()}},
        timeout=30,
    )
    assert upload.status_code == 200 and upload.json()["bytes"] == 3
    listing = requests.post(f"{chute}/proxy", json={"method": "GET", "path": "/v1/models", "query": {"limit": 1}},
                            timeout=30)
    assert len(listing.json()["data"]) == 1


@pytest.mark.parametrize(
    "call, status",
    [
        ({"method": "GET", "path": "/v1/models/../../etc/passwd"}, 400),
        ({"method": "GET", "path": "/v1/models/.."}, 400),
        ({"method": "GET", "path": "/v1/models/a%2F..%2F..%2Fhealth"}, 400),
        ({"method": "GET", "path": "/v1/models/%2e%2e"}, 400),
        ({"method": "GET", "path": "http://127.0.0.1:22/"}, 400),
        ({"method": "GET", "path": "//evil.example/v1/models/x"}, 400),
        ({"method": "GET", "path": "/v1/models/user@evil.example"}, 400),
        ({"method": "GET", "path": "/v1/models/x\r\nHost: evil"}, 400),
        ({"method": "GET", "path": "/v1/models/x y"}, 400),
        ({"method": "GET", "path": "/v1/models/" + "a" * 5000}, 400),
        ({"method": "GET", "path": "/v1/models\\..\\secret"}, 400),
        ({"method": "GET", "path": "/etc/passwd"}, "no route"),
        ({"method": "DELETE", "path": "/v1/models/demo-tts-1"}, "no route"),
        ({"method": "GET", "path": "/v1/models/a/b"}, "no route"),
        ({"method": "GET", "path": 5}, 400),
        ({"path": None}, 400),
    ],
)
def test_catch_all_denies_everything_outside_the_manifest(stack, call, status):
    chute, _ = stack
    answer = requests.post(f"{chute}/proxy", json=call, timeout=30)
    assert answer.status_code == 400, answer.text  # a caller's mistake is never an instance failure
    if status == "no route":
        assert "GET /v1/models/{model_id}" in answer.json()["allowed"]


def test_catch_all_never_reaches_another_port(stack):
    chute, _ = stack
    answer = requests.post(f"{chute}/proxy", json={"method": "GET", "path": ":22/"}, timeout=30)
    assert answer.status_code == 400
