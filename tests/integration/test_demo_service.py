"""The bundled demo service as a real process on loopback: every route called over HTTP with requests."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
import wave

import pytest
import requests

from tests.conftest import PYTHON, ROOT, free_port, stop_process, wait_for_port
from tools.demo_service import make_wav

pytestmark = pytest.mark.integration

TIMEOUT = 30


def demo_command(port: int, *flags: str, module: bool = False) -> list[str]:
    entry = ["-m", "tools.demo_service"] if module else [str(ROOT / "tools" / "demo_service.py")]
    return [PYTHON, *entry, "--host", "127.0.0.1", "--port", str(port), *flags]


def start_demo(processes, *flags: str, module: bool = False) -> str:
    """Start the demo service with extra flags; returns its base URL once the port is open."""
    port = free_port()
    proc = processes(demo_command(port, *flags, module=module), cwd=ROOT)
    wait_for_port(port, proc)
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def demo_service():
    """One demo service shared by this module's route tests (the routes keep no state)."""
    port = free_port()
    proc = subprocess.Popen(demo_command(port, "--log-level", "warning"), cwd=ROOT, start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def wav_params(data: bytes) -> tuple[int, int, int, float]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        return wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes() / wav.getframerate()


# --- plain JSON routes -----------------------------------------------------------------------


def test_root_and_health_answer_json(demo_service):
    assert requests.get(f"{demo_service}/", timeout=TIMEOUT).json() == {"service": "chutes-wrappers demo"}
    response = requests.get(f"{demo_service}/health", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


def test_echo_round_trips_a_json_object(demo_service):
    body = {"text": "héllo", "n": 3, "nested": {"list": [1, 2.5, None, True]}}
    response = requests.post(f"{demo_service}/v1/echo", json=body, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"echo": body}


def test_echo_rejects_a_non_object_body(demo_service):
    response = requests.post(f"{demo_service}/v1/echo", json=[1, 2], timeout=TIMEOUT)
    assert response.status_code == 422


# --- TTS: JSON in, WAV out -------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("hi", 0.1), ("hello world, this is a test", 1.35), ("z" * 2000, 30.0)])
def test_tts_returns_wav_whose_duration_follows_text(demo_service, text, seconds):
    response = requests.post(
        f"{demo_service}/tts_to_audio/", json={"text": text, "language": "en", "speaker_wav": None}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert int(response.headers["content-length"]) == len(response.content)
    channels, width, rate, duration = wav_params(response.content)
    assert (channels, width, rate) == (1, 2, 16_000)
    assert duration == pytest.approx(seconds)


def test_tts_rejects_empty_text_with_400(demo_service):
    response = requests.post(f"{demo_service}/tts_to_audio/", json={"text": "   "}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_tts_rejects_missing_text_with_422(demo_service):
    response = requests.post(f"{demo_service}/tts_to_audio/", json={"language": "en"}, timeout=TIMEOUT)
    assert response.status_code == 422


# --- uploads ---------------------------------------------------------------------------------


def test_inference_upload_reports_size_hash_and_wav_duration(demo_service):
    audio = make_wav(2.5)
    response = requests.post(
        f"{demo_service}/inference",
        files={"file": ("clip.wav", audio, "audio/wav")},
        data={"response_format": "verbose_json", "temperature": "0.4"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    result = response.json()
    assert result["bytes"] == len(audio)
    assert result["sha256"] == hashlib.sha256(audio).hexdigest()
    assert result["duration_s"] == pytest.approx(2.5)
    assert (result["filename"], result["content_type"]) == ("clip.wav", "audio/wav")
    assert (result["response_format"], result["temperature"]) == ("verbose_json", 0.4)
    assert "clip.wav" in result["text"]


def test_inference_form_fields_have_defaults_and_non_wav_has_no_duration(demo_service):
    payload = b"\x00\x01not audio" * 1000
    response = requests.post(
        f"{demo_service}/inference", files={"file": ("x.bin", payload, "application/octet-stream")}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    result = response.json()
    assert (result["bytes"], result["duration_s"]) == (len(payload), None)
    assert (result["response_format"], result["temperature"]) == ("json", 0.0)


def test_inference_without_file_is_422(demo_service):
    response = requests.post(f"{demo_service}/inference", data={"response_format": "json"}, timeout=TIMEOUT)
    assert response.status_code == 422


def test_inference_accepts_a_50_mb_upload(demo_service):
    chunk = bytes(range(256)) * 4096  # 1 MiB
    payload = chunk * 50
    response = requests.post(
        f"{demo_service}/inference", files={"file": ("big.bin", payload, "application/octet-stream")}, timeout=120
    )
    assert response.status_code == 200
    result = response.json()
    assert result["bytes"] == 50 * 1024 * 1024
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()


def test_openai_transcription_echoes_model_and_hashes_upload(demo_service):
    audio = make_wav(0.75)
    response = requests.post(
        f"{demo_service}/v1/audio/transcriptions",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": "whisper-1"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    result = response.json()
    assert result["model"] == "whisper-1"
    assert result["sha256"] == hashlib.sha256(audio).hexdigest()
    assert result["duration_s"] == pytest.approx(0.75)


def test_raw_audio_body_is_read_whole_and_its_spec_says_audio_wav(demo_service):
    audio = make_wav(0.5)
    response = requests.post(f"{demo_service}/v1/audio/raw?language=de", data=audio,
                             headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"content_type": "audio/wav", "bytes": len(audio),
                               "sha256": hashlib.sha256(audio).hexdigest(), "duration_s": 0.5, "language": "de"}
    spec = requests.get(f"{demo_service}/openapi.json", timeout=TIMEOUT).json()
    assert list(spec["paths"]["/v1/audio/raw"]["post"]["requestBody"]["content"]) == ["audio/wav"]


def test_openai_transcription_requires_model(demo_service):
    response = requests.post(
        f"{demo_service}/v1/audio/transcriptions", files={"file": ("a.wav", make_wav(0.1), "audio/wav")}, timeout=TIMEOUT
    )
    assert response.status_code == 422


# --- query and path parameters ---------------------------------------------------------------


def test_models_limit_and_owner_filter_are_applied(demo_service):
    everything = requests.get(f"{demo_service}/v1/models", timeout=TIMEOUT).json()
    assert everything["object"] == "list" and len(everything["data"]) == 5
    two = requests.get(f"{demo_service}/v1/models", params={"limit": 2}, timeout=TIMEOUT).json()
    assert two["data"] == everything["data"][:2]
    community = requests.get(f"{demo_service}/v1/models", params={"owned_by": "community"}, timeout=TIMEOUT).json()
    assert [m["owned_by"] for m in community["data"]] == ["community", "community"]


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
def test_models_limit_is_validated(demo_service, limit):
    response = requests.get(f"{demo_service}/v1/models", params={"limit": limit}, timeout=TIMEOUT)
    assert response.status_code == 422


def test_model_by_id_path_param(demo_service):
    response = requests.get(f"{demo_service}/v1/models/demo-whisper-1", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["id"] == "demo-whisper-1"
    missing = requests.get(f"{demo_service}/v1/models/no-such-model", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert "no-such-model" in missing.json()["detail"]


@pytest.mark.parametrize("code", [200, 201, 204, 301, 400, 404, 418, 500, 502, 503])
def test_status_route_answers_the_requested_code(demo_service, code):
    response = requests.get(f"{demo_service}/v1/status/{code}", allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == code
    if code == 204:
        assert response.content == b""
    else:
        assert response.json() == {"status": code}


@pytest.mark.parametrize("code", ["199", "600", "abc"])
def test_status_route_rejects_codes_out_of_range(demo_service, code):
    assert requests.get(f"{demo_service}/v1/status/{code}", timeout=TIMEOUT).status_code == 422


def test_slow_route_sleeps_then_answers(demo_service):
    response = requests.get(f"{demo_service}/v1/slow", params={"seconds": 0.2}, timeout=TIMEOUT)
    assert response.json() == {"slept": 0.2}
    assert requests.get(f"{demo_service}/v1/slow", params={"seconds": 61}, timeout=TIMEOUT).status_code == 422


# --- streams, binary and text bodies ---------------------------------------------------------


def read_sse(response: requests.Response) -> list[str]:
    events, data = [], []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data.append(line[len("data: "):])
        elif line == "" and data:
            events.append("\n".join(data))
            data = []
    return events


def test_stream_yields_count_events_then_done(demo_service):
    with requests.post(f"{demo_service}/v1/stream", json={"count": 4, "interval": 0.01}, stream=True,
                       timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_sse(response)
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["index"] for e in events[:-1]] == [0, 1, 2, 3]


def test_stream_without_body_uses_default_count(demo_service):
    with requests.post(f"{demo_service}/v1/stream", stream=True, timeout=TIMEOUT) as response:
        events = read_sse(response)
    assert len(events) == 6 and events[-1] == "[DONE]"


@pytest.mark.parametrize("size", [0, 1, 1024, 65_536, 65_537, 3 * 1024 * 1024 + 17])
def test_blob_has_exact_size_and_deterministic_bytes(demo_service, size):
    response = requests.get(f"{demo_service}/v1/blob", params={"size": size}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert int(response.headers["content-length"]) == size
    assert response.content == (bytes(range(256)) * (size // 256 + 1))[:size]


def test_blob_default_size_and_limit(demo_service):
    assert len(requests.get(f"{demo_service}/v1/blob", timeout=TIMEOUT).content) == 1024
    too_big = requests.get(f"{demo_service}/v1/blob", params={"size": 200 * 1024 * 1024 + 1}, timeout=TIMEOUT)
    assert too_big.status_code == 422


def test_text_route_is_plain_text(demo_service):
    response = requests.get(f"{demo_service}/v1/text", timeout=TIMEOUT)
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "hello from demo\n"


# --- the OpenAPI document --------------------------------------------------------------------

EXPECTED_MEDIA_TYPES = {
    # (method, path): (request media type or None, 200 response media type)
    ("get", "/"): (None, "application/json"),
    ("get", "/health"): (None, "application/json"),
    ("post", "/tts_to_audio/"): ("application/json", "audio/wav"),
    ("post", "/inference"): ("multipart/form-data", "application/json"),
    ("post", "/v1/audio/raw"): ("audio/wav", "application/json"),
    ("post", "/v1/audio/transcriptions"): ("multipart/form-data", "application/json"),
    ("get", "/v1/models"): (None, "application/json"),
    ("get", "/v1/models/{model_id}"): (None, "application/json"),
    ("post", "/v1/stream"): ("application/json", "text/event-stream"),
    ("post", "/v1/echo"): ("application/json", "application/json"),
    ("get", "/v1/blob"): (None, "application/octet-stream"),
    ("get", "/v1/text"): (None, "text/plain"),
    ("get", "/v1/status/{code}"): (None, "application/json"),
    ("get", "/v1/slow"): (None, "application/json"),
}


def test_openapi_describes_every_route_media_types(demo_service):
    doc = requests.get(f"{demo_service}/openapi.json", timeout=TIMEOUT).json()
    found = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert found == set(EXPECTED_MEDIA_TYPES)
    for (method, path), (request_type, response_type) in EXPECTED_MEDIA_TYPES.items():
        op = doc["paths"][path][method]
        request_types = list(op.get("requestBody", {}).get("content", {}))
        assert request_types == ([request_type] if request_type else []), (method, path)
        assert list(op["responses"]["200"]["content"]) == [response_type], (method, path)
    for method, path in (("post", "/tts_to_audio/"), ("get", "/v1/blob")):
        (media,) = doc["paths"][path][method]["responses"]["200"]["content"].values()
        assert media["schema"] == {"type": "string", "format": "binary"}, path


# --- startup modes ---------------------------------------------------------------------------


def test_spec_delay_answers_503_until_the_delay_has_passed(processes):
    base = start_demo(processes, "--spec-delay", "2")
    first = requests.get(f"{base}/openapi.json", timeout=TIMEOUT)
    assert first.status_code == 503
    assert requests.get(f"{base}/health", timeout=TIMEOUT).status_code == 200
    deadline = time.monotonic() + 15
    response = first
    while response.status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
        response = requests.get(f"{base}/openapi.json", timeout=TIMEOUT)
    assert response.status_code == 200
    assert "/inference" in response.json()["paths"]


def test_no_spec_serves_routes_but_no_openapi_document(processes):
    base = start_demo(processes, "--no-spec")
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert requests.get(f"{base}{path}", timeout=TIMEOUT).status_code == 404, path
    assert requests.get(f"{base}/health", timeout=TIMEOUT).json() == {"status": "ok"}


def test_runs_as_a_module(processes):
    base = start_demo(processes, "--log-level", "warning", module=True)
    assert requests.get(f"{base}/v1/text", timeout=TIMEOUT).text == "hello from demo\n"
