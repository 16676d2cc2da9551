"""A small real HTTP service shaped like the ones users wrap (XTTS, whisper.cpp, OpenAI-style APIs).

Self-contained on purpose: it is copied alone into container images, so it imports nothing from
`tools` and needs only the stdlib, fastapi, uvicorn and python-multipart (Debian bookworm's old
FastAPI 0.92 / pydantic 1.10 included). Run: `python tools/demo_service.py --port 8020`.
"""

import argparse
import array
import asyncio
import hashlib
import io
import json
import math
import os
import sys
import time
import wave
from typing import IO, Any, AsyncIterator, Dict, List, Optional

import uvicorn
from fastapi import Body, FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8020
SERVICE_NAME = "chutes-wrappers demo"

SAMPLE_RATE = 16_000
TONE_HZ = 400  # divides SAMPLE_RATE, so one period tiles the whole tone exactly
SECONDS_PER_CHAR = 0.05
MIN_TTS_SECONDS = 0.1
MAX_TTS_SECONDS = 30.0

UPLOAD_CHUNK = 1024 * 1024
BLOB_CHUNK = 64 * 1024
BLOB_PATTERN = bytes(range(256)) * (BLOB_CHUNK // 256)
MAX_BLOB_BYTES = 200 * 1024 * 1024
MAX_SLOW_SECONDS = 60.0
NO_BODY_STATUSES = frozenset({204, 205, 304})

BINARY_SCHEMA = {"type": "string", "format": "binary"}
ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}}}

DEMO_MODELS: List[Dict[str, Any]] = [
    {"id": "demo-tts-1", "object": "model", "created": 1700000000, "owned_by": "demo"},
    {"id": "demo-whisper-1", "object": "model", "created": 1700000001, "owned_by": "demo"},
    {"id": "demo-chat-1", "object": "model", "created": 1700000002, "owned_by": "demo"},
    {"id": "community-llama-1", "object": "model", "created": 1700000003, "owned_by": "community"},
    {"id": "community-sdxl-1", "object": "model", "created": 1700000004, "owned_by": "community"},
]


# --- audio helpers ---------------------------------------------------------------------------


def tts_duration(text: str) -> float:
    """Seconds of audio the fake TTS produces for `text`: grows with its length, clamped."""
    return min(MAX_TTS_SECONDS, max(MIN_TTS_SECONDS, len(text) * SECONDS_PER_CHAR))


def make_wav(duration_s: float, sample_rate: int = SAMPLE_RATE, frequency: int = TONE_HZ) -> bytes:
    """A 16-bit mono PCM WAV file holding a sine tone of `duration_s` seconds."""
    n_frames = int(round(duration_s * sample_rate))
    period = max(1, sample_rate // frequency)
    cycle = array.array("h", (int(12_000 * math.sin(2 * math.pi * i / period)) for i in range(period)))
    samples = (cycle * (n_frames // period + 1))[:n_frames]
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def wav_duration(fileobj: IO[bytes]) -> Optional[float]:
    """Duration of a WAV file object (read from its start), or None if it is not a readable WAV."""
    try:
        fileobj.seek(0)
        with wave.open(fileobj, "rb") as wav:
            rate = wav.getframerate()
            return round(wav.getnframes() / rate, 6) if rate else None
    except (wave.Error, EOFError, ValueError):
        return None


async def describe_upload(upload: UploadFile) -> Dict[str, Any]:
    """Size, sha256 and WAV duration of an upload, read in chunks so a large file is never held whole."""
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = await upload.read(UPLOAD_CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    duration = await run_in_threadpool(wav_duration, upload.file)
    return {
        "text": f"demo transcript of {upload.filename or 'upload'} ({size} bytes)",
        "filename": upload.filename,
        "content_type": upload.content_type,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "duration_s": duration,
    }


# --- streaming bodies ------------------------------------------------------------------------


async def blob_chunks(size: int) -> AsyncIterator[bytes]:
    """`size` bytes where byte i is i % 256, in 64 KiB chunks."""
    remaining = size
    while remaining > 0:
        chunk = BLOB_PATTERN if remaining >= BLOB_CHUNK else BLOB_PATTERN[:remaining]
        remaining -= len(chunk)
        yield chunk


async def sse_events(count: int, interval: float) -> AsyncIterator[bytes]:
    """`count` server-sent events carrying JSON, then the OpenAI-style `[DONE]` marker."""
    for index in range(count):
        if index and interval:
            await asyncio.sleep(interval)
        payload = json.dumps({"index": index, "text": f"token {index}"})
        yield f"data: {payload}\n\n".encode()
    yield b"data: [DONE]\n\n"


# --- request bodies --------------------------------------------------------------------------


class TTSRequest(BaseModel):
    text: str
    language: str = "en"
    speaker_wav: Optional[str] = None


class StreamRequest(BaseModel):
    count: int = Field(5, ge=0, le=1000)
    interval: float = Field(0.0, ge=0.0, le=10.0)


# --- spec delay ------------------------------------------------------------------------------


class SpecDelayMiddleware:
    """Answers 503 for the OpenAPI document until `ready_at` (a time.monotonic() value).

    Plain ASGI rather than BaseHTTPMiddleware, so streamed bodies pass through untouched.
    """

    def __init__(self, app: Any, openapi_url: str, ready_at: float) -> None:
        self.app = app
        self.openapi_url = openapi_url
        self.ready_at = ready_at

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.openapi_url:
            wait = self.ready_at - time.monotonic()
            if wait > 0:
                response = JSONResponse(
                    {"detail": "model is loading, OpenAPI document not ready"},
                    status_code=503,
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def media_response(description: str, media_type: str, schema: Dict[str, Any]) -> Dict[str, Any]:
    """An OpenAPI response entry, so route discovery sees the real media type of a non-JSON body."""
    return {"description": description, "content": {media_type: {"schema": schema}}}


# --- application -----------------------------------------------------------------------------


def create_app(spec_delay: float = 0.0, no_spec: bool = False) -> FastAPI:
    """The demo app. `spec_delay`: /openapi.json answers 503 for that many seconds from now.
    `no_spec`: no /openapi.json, /docs or /redoc at all (like whisper.cpp's server)."""
    if no_spec:
        app = FastAPI(title=SERVICE_NAME, openapi_url=None, docs_url=None, redoc_url=None)
    else:
        app = FastAPI(title=SERVICE_NAME, version="1.0.0")
        if spec_delay > 0:
            app.add_middleware(
                SpecDelayMiddleware, openapi_url=app.openapi_url, ready_at=time.monotonic() + spec_delay
            )
    add_basic_routes(app)
    add_audio_routes(app)
    add_openai_routes(app)
    add_fixture_routes(app)
    add_contract_routes(app)
    return app


def add_basic_routes(app: FastAPI) -> None:
    @app.get("/", operation_id="root")
    async def root() -> Dict[str, str]:
        return {"service": SERVICE_NAME}

    @app.get("/health", operation_id="health")
    async def health() -> Dict[str, str]:
        return {"status": "ok"}


def add_audio_routes(app: FastAPI) -> None:
    @app.post(
        "/tts_to_audio/",
        operation_id="tts_to_audio",
        response_class=Response,
        responses={
            200: media_response("WAV audio", "audio/wav", BINARY_SCHEMA),
            400: media_response("Empty text", "application/json", ERROR_SCHEMA),
        },
    )
    async def tts_to_audio(request: TTSRequest) -> Response:
        """XTTS-like text to speech: a tone whose length follows the text."""
        if not request.text.strip():
            raise HTTPException(status_code=400, detail="text must not be empty")
        audio = await run_in_threadpool(make_wav, tts_duration(request.text))
        return Response(content=audio, media_type="audio/wav")

    @app.post("/inference", operation_id="inference")
    async def inference(
        file: UploadFile = File(...),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
    ) -> Dict[str, Any]:
        """whisper.cpp-like transcription of an uploaded audio file."""
        result = await describe_upload(file)
        result.update(response_format=response_format, temperature=temperature)
        return result

    @app.post(
        "/v1/audio/raw",
        operation_id="transcribe_raw",
        openapi_extra={"requestBody": {"required": True, "content": {
            "audio/wav": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def transcribe_raw(request: Request, language: str = Query("en")) -> Dict[str, Any]:
        """Speech to text of a raw audio body (the WAV is the request body), like many ASR servers."""
        digest, size, buffer = hashlib.sha256(), 0, io.BytesIO()
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
            buffer.write(chunk)
        return {
            "content_type": request.headers.get("content-type"),
            "bytes": size,
            "sha256": digest.hexdigest(),
            "duration_s": await run_in_threadpool(wav_duration, buffer),
            "language": language,
        }


def add_openai_routes(app: FastAPI) -> None:
    @app.post("/v1/audio/transcriptions", operation_id="create_transcription")
    async def create_transcription(file: UploadFile = File(...), model: str = Form(..., examples=["demo-whisper-1"])) -> Dict[str, Any]:
        """OpenAI-style transcription of an uploaded audio file."""
        result = await describe_upload(file)
        result["model"] = model
        return result

    @app.get("/v1/models", operation_id="list_models")
    async def list_models(
        limit: int = Query(10, ge=1, le=100),
        owned_by: Optional[str] = Query(None),
    ) -> Dict[str, Any]:
        models = [m for m in DEMO_MODELS if owned_by is None or m["owned_by"] == owned_by]
        return {"object": "list", "data": models[:limit]}

    @app.get(
        "/v1/models/{model_id}",
        operation_id="get_model",
        responses={404: media_response("Unknown model", "application/json", ERROR_SCHEMA)},
    )
    async def get_model(model_id: str = Path(..., examples=["demo-tts-1"])) -> Dict[str, Any]:
        for model in DEMO_MODELS:
            if model["id"] == model_id:
                return model
        raise HTTPException(status_code=404, detail=f"model {model_id!r} not found")

    @app.post(
        "/v1/stream",
        operation_id="stream",
        response_class=StreamingResponse,
        responses={200: media_response("Server-sent events", "text/event-stream", {"type": "string"})},
    )
    async def stream(request: Optional[StreamRequest] = None) -> StreamingResponse:
        """OpenAI-style SSE stream of `count` events then `[DONE]`."""
        options = request or StreamRequest()
        return StreamingResponse(
            sse_events(options.count, options.interval),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def add_fixture_routes(app: FastAPI) -> None:
    """Routes that exist to exercise proxies: JSON echo, binary, text, status codes, slowness."""

    @app.post("/v1/echo", operation_id="echo")
    async def echo(body: Dict[str, Any] = Body(...)) -> Dict[str, Any]:
        return {"echo": body}

    @app.get(
        "/v1/blob",
        operation_id="blob",
        response_class=StreamingResponse,
        responses={200: media_response("Deterministic bytes", "application/octet-stream", BINARY_SCHEMA)},
    )
    async def blob(size: int = Query(1024, ge=0, le=MAX_BLOB_BYTES)) -> StreamingResponse:
        return StreamingResponse(
            blob_chunks(size), media_type="application/octet-stream", headers={"Content-Length": str(size)}
        )

    @app.get("/v1/text", operation_id="text", response_class=PlainTextResponse)
    async def text() -> PlainTextResponse:
        # DEMO_GREETING comes from CHUTE_ENV in deploy_example.py: it shows env reaching the service.
        return PlainTextResponse(os.environ.get("DEMO_GREETING", "hello from demo") + "\n")

    @app.get("/v1/status/{code}", operation_id="status")
    async def status(code: int = Path(..., ge=200, le=599)) -> Response:
        if code in NO_BODY_STATUSES:
            return Response(status_code=code)
        return JSONResponse({"status": code}, status_code=code)

    @app.get("/v1/slow", operation_id="slow")
    async def slow(seconds: float = Query(1.0, ge=0.0, le=MAX_SLOW_SECONDS)) -> Dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}


# The platform contract's awkward answers: a multi-byte character split across stream chunks.
UTF8_EVENT = "data: {\"text\": \"h\u00e9llo w\u00f6rld \u2713 \U0001f389\"}\n\n".encode()


async def utf8_split_events(count: int, interval: float) -> AsyncIterator[bytes]:
    """`count` SSE events of non-ASCII JSON text, each sent in two chunks that split a character
    (`interval` seconds apart, so that they travel as two chunks)."""
    cut = UTF8_EVENT.index("\u00e9".encode()) + 1  # inside the two bytes of "é"
    for _ in range(count):
        yield UTF8_EVENT[:cut]
        await asyncio.sleep(interval)
        yield UTF8_EVENT[cut:]
    yield b"data: [DONE]\n\n"


async def byte_stream(size: int, chunk: int) -> AsyncIterator[bytes]:
    """`size` bytes (byte i is 255 - i % 256: newlines and invalid UTF-8 included), `chunk` at a time."""
    pattern = bytes(range(255, -1, -1)) * (max(chunk, 256) // 256 + 1)
    sent = 0
    while sent < size:
        start = sent % 256
        piece = pattern[start : start + min(chunk, size - sent)]
        sent += len(piece)
        yield piece
        await asyncio.sleep(0)


def add_contract_routes(app: FastAPI) -> None:
    """Routes for the platform-contract tests, left out of the OpenAPI document (so discovery and
    deploy_example's manifest do not change): tests register them as static routes."""

    @app.api_route("/v1/inspect", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def inspect(request: Request) -> Dict[str, Any]:
        body = await request.body()
        return {
            "method": request.method,
            "query": [[key, value] for key, value in request.query_params.multi_items()],
            "content_type": request.headers.get("content-type"),
            "headers": {k: v for k, v in request.headers.items() if k.startswith("x-") or k == "authorization"},
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }

    @app.get("/v1/chunked", include_in_schema=False)
    async def chunked(count: int = Query(3, ge=0, le=10_000)) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"["
            for index in range(count):
                yield (b"," if index else b"") + json.dumps({"index": index, "text": f"item {index}"}).encode()
                await asyncio.sleep(0)
            yield b"]"

        return StreamingResponse(parts(), media_type="application/json")  # no Content-Length: chunked

    @app.post("/v1/stream/utf8", include_in_schema=False)
    async def stream_utf8(count: int = Query(3, ge=0, le=1000),
                          interval: float = Query(0.05, ge=0.0, le=10.0)) -> StreamingResponse:
        return StreamingResponse(utf8_split_events(count, interval), media_type="text/event-stream")

    @app.get("/v1/stream/bytes", include_in_schema=False)
    async def stream_bytes(size: int = Query(4096, ge=0, le=MAX_BLOB_BYTES),
                           chunk: int = Query(1000, ge=1, le=1 << 20)) -> StreamingResponse:
        return StreamingResponse(byte_stream(size, chunk), media_type="application/octet-stream")

    @app.get("/v1/empty", include_in_schema=False)
    async def empty() -> Response:
        return Response(b"", media_type="text/plain")

    @app.get("/v1/typed", include_in_schema=False)
    async def typed() -> Response:
        return Response(b"<demo><typed>yes</typed></demo>", media_type="application/xml")


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo_service", description="Demo HTTP service (XTTS / whisper.cpp / OpenAI-like routes)."
    )
    parser.add_argument("--host", default=os.environ.get("DEMO_HOST", DEFAULT_HOST))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", DEFAULT_PORT)))
    parser.add_argument(
        "--spec-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer 503 for /openapi.json during the first SECONDS (a slow-loading model server)",
    )
    parser.add_argument("--no-spec", action="store_true", help="serve no OpenAPI document (like whisper.cpp)")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"]
    )
    args = parser.parse_args(argv)
    if args.spec_delay < 0:
        parser.error("--spec-delay must be >= 0")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    app = create_app(spec_delay=args.spec_delay, no_spec=args.no_spec)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
