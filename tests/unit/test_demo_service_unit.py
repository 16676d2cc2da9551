"""Unit tests of the bundled demo service: WAV generation, its OpenAPI document, its CLI, the spec delay."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import pytest

from tools import demo_service
from tools.demo_service import create_app, make_wav, parse_args, tts_duration, wav_duration


def read_wav(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        return wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()


def test_wav_has_riff_header_and_16bit_mono_16khz_params():
    data = make_wav(0.5)
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    channels, width, rate, frames = read_wav(data)
    assert (channels, width, rate, frames) == (1, 2, 16_000, 8_000)
    assert len(data) == 44 + frames * 2


def test_wav_is_a_tone_not_silence():
    with wave.open(io.BytesIO(make_wav(0.1)), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    samples = memoryview(pcm).cast("h")
    assert max(samples) > 10_000 and min(samples) < -10_000


@pytest.mark.parametrize(
    "text, seconds",
    [("a", 0.1), ("ab", 0.1), ("x" * 10, 0.5), ("x" * 100, 5.0), ("x" * 600, 30.0), ("x" * 10_000, 30.0)],
)
def test_tts_duration_grows_with_text_and_is_clamped(text, seconds):
    assert tts_duration(text) == pytest.approx(seconds)


def test_wav_for_long_text_is_capped_at_30_seconds():
    _, _, rate, frames = read_wav(make_wav(tts_duration("y" * 100_000)))
    assert frames / rate == pytest.approx(30.0)


def test_wav_duration_reads_generated_wav_and_rejects_other_bytes():
    assert wav_duration(io.BytesIO(make_wav(1.25))) == pytest.approx(1.25)
    assert wav_duration(io.BytesIO(b"definitely not a wav file")) is None
    assert wav_duration(io.BytesIO(b"")) is None


def test_blob_chunks_are_deterministic_and_exact():
    async def collect(size: int) -> bytes:
        return b"".join([chunk async for chunk in demo_service.blob_chunks(size)])

    for size in (0, 1, 255, 65_536, 65_537, 200_000):
        body = asyncio.run(collect(size))
        assert len(body) == size
        assert body == bytes(i % 256 for i in range(size))


def operation(doc: dict, method: str, path: str) -> dict:
    return doc["paths"][path][method]


def test_openapi_names_each_operation_and_documents_parameters():
    doc = create_app().openapi()
    assert operation(doc, "post", "/tts_to_audio/")["operationId"] == "tts_to_audio"
    params = {p["name"]: p for p in operation(doc, "get", "/v1/models")["parameters"]}
    assert params["limit"]["in"] == "query"
    assert (params["limit"]["schema"]["minimum"], params["limit"]["schema"]["maximum"]) == (1, 100)
    assert params["owned_by"]["in"] == "query"
    (model_id,) = operation(doc, "get", "/v1/models/{model_id}")["parameters"]
    assert (model_id["name"], model_id["in"], model_id["required"]) == ("model_id", "path", True)


def test_openapi_upload_routes_are_multipart_with_file_fields():
    doc = create_app().openapi()
    schemas = doc["components"]["schemas"]
    expected_fields = {
        "/inference": {"file", "response_format", "temperature"},
        "/v1/audio/transcriptions": {"file", "model"},
    }
    for path, fields in expected_fields.items():
        content = operation(doc, "post", path)["requestBody"]["content"]
        assert list(content) == ["multipart/form-data"]
        body = schemas[content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
        assert set(body["properties"]) == fields
        assert "file" in body["required"]
        file_schema = body["properties"]["file"]
        # FastAPI < 0.100 writes format: binary, newer ones contentMediaType.
        assert file_schema.get("format") == "binary" or "contentMediaType" in file_schema


def test_no_spec_app_serves_no_openapi_or_docs():
    app = create_app(no_spec=True)
    assert app.openapi_url is None and app.docs_url is None and app.redoc_url is None
    paths = {route.path for route in app.routes}
    assert "/tts_to_audio/" in paths and "/openapi.json" not in paths and "/docs" not in paths


def test_parse_args_defaults_and_flags(monkeypatch):
    monkeypatch.delenv("DEMO_HOST", raising=False)
    monkeypatch.delenv("DEMO_PORT", raising=False)
    args = parse_args([])
    assert (args.host, args.port, args.spec_delay, args.no_spec, args.log_level) == (
        "127.0.0.1", 8020, 0.0, False, "info")
    args = parse_args(["--port", "9001", "--spec-delay", "2.5", "--no-spec", "--log-level", "warning"])
    assert (args.port, args.spec_delay, args.no_spec, args.log_level) == (9001, 2.5, True, "warning")


def test_parse_args_reads_env_fallbacks(monkeypatch):
    monkeypatch.setenv("DEMO_HOST", "127.0.0.2")
    monkeypatch.setenv("DEMO_PORT", "9123")
    args = parse_args([])
    assert (args.host, args.port) == ("127.0.0.2", 9123)
    assert parse_args(["--port", "9124"]).port == 9124


def test_parse_args_rejects_negative_spec_delay(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--spec-delay", "-1"])
    assert exc.value.code == 2
    assert "--spec-delay" in capsys.readouterr().err


async def asgi_get(app, path: str) -> tuple[int, dict, bytes]:
    """One GET through the app's real ASGI interface (no HTTP client library needed)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], headers, body


async def test_spec_delay_answers_503_then_the_document():
    app = create_app(spec_delay=0.3)
    status, headers, body = await asgi_get(app, "/openapi.json")
    assert status == 503 and headers["retry-after"] == "1"
    assert "loading" in json.loads(body)["detail"]

    status, _, body = await asgi_get(app, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    deadline = time.monotonic() + 5
    while True:
        status, _, body = await asgi_get(app, "/openapi.json")
        if status != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    assert "/tts_to_audio/" in json.loads(body)["paths"]
