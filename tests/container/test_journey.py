"""The product's main path on a real engine, as a user walks it: copy the template, discover, build,
run in a container, call every cord, stop — and nothing of the run is left.

The base image (engine.services_base) holds two services started by one sh script: the demo service
(OpenAPI) and a whisper.cpp-like one (no spec, multipart upload) on a second port, so the module needs
discovery *and* static routes. Every step goes through deploy.sh:

    ./deploy.sh --discover MODULE --free-host-ports --plain --yes    (discover_routes --chute-file)
    ./deploy.sh --build MODULE --local --yes                         (chutes build --local via the docker shim)
    ./deploy.sh --run-docker MODULE --port P                         (Ctrl-C stops and removes it)

A last test runs the built image directly as Chutes does (`chutes run` as the container's PID 1) and
stops it with SIGTERM, as `docker stop` and Kubernetes do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import textwrap
import uuid
import wave
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Callable

import pytest

import engine
from tools.commands.smoke import sample_wav  # 0.25 s, 16 kHz mono

SKIP_REASON = engine.skip_reason()

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    pytest.mark.timeout(1200),
]

RUN_ID = uuid.uuid4().hex[:8]
MODULE = f"deploy_journey_{RUN_ID}"
IMAGE_NAME = "cw-journey"
IMAGE_TAG = RUN_ID
# Service ports inside the container; run-docker also publishes them on 127.0.0.1, so they are
# picked free here and handed to the image's start script through CHUTE_ENV.
DEMO_PORT = engine.free_port()
WHISPER_PORT = engine.free_port()
# Survives the Dockerfile's ENV quoting and reaches the service (the demo's /v1/text prints it).
GREETING = 'hello "journey" $HOME \\o/'


WAV = sample_wav()
WAV_B64 = base64.b64encode(WAV).decode()
WAV_SHA = hashlib.sha256(WAV).hexdigest()


@dataclass
class Journey:
    project: Path
    env: dict[str, str]
    base: str
    discovery: subprocess.CompletedProcess | None = None
    build: subprocess.CompletedProcess | None = None
    run: engine.Background | None = None
    base_url: str = ""
    health: dict = field(default_factory=dict)

    @property
    def image(self) -> str:
        return f"localhost/{IMAGE_NAME}:{IMAGE_TAG}"


@pytest.fixture(scope="module")
def podman():
    with engine.podman_engine() as instance:
        yield instance


@pytest.fixture(scope="module")
def journey(podman, tmp_path_factory) -> Journey:
    base = engine.services_base(podman)
    project = tmp_path_factory.mktemp("journey")
    engine.make_project(project, MODULE, {
        "CHUTE_NAME": IMAGE_NAME,
        "CHUTE_TAG": IMAGE_TAG,
        "CHUTE_BASE_IMAGE": base,
        "SERVICE_PORTS": [DEMO_PORT, WHISPER_PORT],
        "CHUTE_ENV": {"DEMO_GREETING": GREETING, "DEMO_PORT": str(DEMO_PORT), "WHISPER_PORT": str(WHISPER_PORT)},
        "ENTRYPOINT": [engine.START_SERVICES],
        # The whisper.cpp-like service has no OpenAPI document: its routes are static.
        "CHUTE_STATIC_ROUTES": [
            {"path": "/stt/inference", "method": "POST", "port": WHISPER_PORT, "target_path": "/inference",
             "request": {"kind": "multipart", "file_fields": ["file"]},
             "response": {"kind": "json", "content_type": "application/json"}},
            {"path": "/stt/whoami", "method": "GET", "port": WHISPER_PORT, "target_path": "/whoami",
             "request": {"kind": "none"}, "response": {"kind": "json", "content_type": "application/json"}},
        ],
    })
    state = Journey(project, engine.project_env(podman), base)
    try:
        yield state
    finally:
        if state.run is not None:
            state.run.interrupt()
        for name in podman.containers(f"label=chutes-wrappers.module={MODULE}"):
            podman.remove_container(name)
        podman.remove_image(state.image)


@pytest.fixture(scope="module")
def discovered(journey) -> Journey:
    journey.discovery = engine.deploy_sh(
        journey.project, "--discover", MODULE, "--free-host-ports", "--plain", "--yes", env=journey.env, timeout=300
    )
    return journey


@pytest.fixture(scope="module")
def built(discovered) -> Journey:
    assert discovered.discovery.returncode == 0, discovered.discovery.stderr[-3000:]
    discovered.build = engine.deploy_sh(discovered.project, "--build", MODULE, "--local", "--yes", env=discovered.env)
    return discovered


@pytest.fixture(scope="module")
def running(built) -> Journey:
    assert built.build.returncode == 0, engine._tail(built.build.stdout + built.build.stderr, 60)
    port = engine.free_port()
    built.base_url = f"http://127.0.0.1:{port}"
    built.run = engine.Background(
        ["./deploy.sh", "--run-docker", MODULE, "--port", str(port)],
        cwd=built.project, env=built.env, log=built.project / "run-docker.log",
    )
    built.health = engine.wait_for_health(built.base_url, 300, built.run.alive, lambda: built.run.output)
    return built


def manifest_of(journey: Journey) -> dict:
    return json.loads((journey.project / f"{MODULE}.routes.json").read_text())


# --------------------------------------------------------------------------------------------------
# Discovery and build


def test_discovery_writes_the_manifest_from_the_spec_and_the_static_routes(discovered):
    assert discovered.discovery.returncode == 0, discovered.discovery.stderr[-3000:]
    routes = {(r["method"], r["path"]): r for r in manifest_of(discovered)["routes"]}
    spec_routes = [r for r in routes.values() if r["port"] == DEMO_PORT]
    assert len(spec_routes) >= 10  # the demo's OpenAPI routes
    assert routes[("POST", "/tts_to_audio/")]["response"]["content_type"] == "audio/wav"
    assert routes[("POST", "/inference")]["request"] == {"kind": "multipart", "file_fields": ["file"]}
    assert routes[("POST", "/v1/audio/raw")]["request"] == {"kind": "raw", "file_fields": [], "content_type": "audio/wav"}
    assert routes[("GET", "/v1/models")]["query_params"] == ["limit", "owned_by"]
    assert routes[("POST", "/v1/stream")]["stream"] is True
    assert "{model_id}" in routes[("GET", "/v1/models/{model_id}")]["path"]
    whisper = routes[("POST", "/stt/inference")]
    assert (whisper["port"], whisper["target_path"]) == (WHISPER_PORT, "/inference")


def test_discovery_says_the_second_port_has_no_spec(discovered):
    text = discovered.discovery.stdout + discovered.discovery.stderr
    assert f"port {WHISPER_PORT}: answers HTTP but serves no OpenAPI document" in text
    assert f"port {DEMO_PORT}: spec at /openapi.json" in text


def test_build_makes_the_wrapper_image_and_checks_its_runtime(built, podman):
    log = built.build.stdout + built.build.stderr
    assert built.build.returncode == 0, engine._tail(log, 60)
    assert "chutes-wrappers: using /usr/bin/python3.11 (Python 3.11)" in engine.wrapper_lines(log)
    assert podman.image_exists(built.image)
    assert "starts the chute runtime" in log


# --------------------------------------------------------------------------------------------------
# Every cord, through the chute inside the container


@dataclass
class Call:
    method: str
    path: str  # the cord's public path (query strings go in `query`)
    check: Callable[[int, Message, bytes], None]
    body: object = None
    query: str = ""

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}{'?' + self.query if self.query else ''}"


def ok_json(status: int, headers, body: bytes) -> object:
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("application/json"), headers
    return json.loads(body)


def check_health(status, headers, body):
    ports = {str(DEMO_PORT): "ok", str(WHISPER_PORT): "ok"}
    assert ok_json(status, headers, body) == {
        "status": "healthy", "live": True, "ready": True, "ports": ports, "readiness": ports,
    }


def check_echo(status, headers, body):
    assert ok_json(status, headers, body) == {"echo": {"message": "hello", "list": [1, 2, 3]}}


def check_tts(status, headers, body):
    # through the gateway, as on Chutes: a non-JSON answer arrives whole, without a Content-Length
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(body)) as audio:
        assert audio.getframerate() == 16000 and audio.getnframes() > 0
        assert len(body) == 44 + audio.getnframes() * audio.getsampwidth() * audio.getnchannels()


def check_demo_upload(status, headers, body):
    answer = ok_json(status, headers, body)
    assert (answer["bytes"], answer["sha256"], answer["duration_s"]) == (len(WAV), WAV_SHA, 0.25)
    assert answer["temperature"] == 0.3


def check_transcription(status, headers, body):
    answer = ok_json(status, headers, body)
    assert (answer["sha256"], answer["model"]) == (WAV_SHA, "demo-whisper-1")


def check_raw_body(status, headers, body):
    answer = ok_json(status, headers, body)
    assert (answer["sha256"], answer["content_type"], answer["language"]) == (WAV_SHA, "audio/wav", "de")


def check_whisper_upload(status, headers, body):
    answer = ok_json(status, headers, body)
    assert answer["sha256"] == WAV_SHA and answer["temperature"] == 0.2
    assert answer["text"] == f" [0.25 s of audio, {len(WAV)} bytes, model ggml-base.en.bin]"


def check_stream(status, headers, body):
    # A proxy cord: the SDK's own stream cord would drop the Content-Type SSE clients need.
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream"), headers
    events = [line[len("data: "):] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events == [json.dumps({"index": i, "text": f"token {i}"}) for i in range(3)] + ["[DONE]"]


def check_models_limit(status, headers, body):
    assert [m["id"] for m in ok_json(status, headers, body)["data"]] == ["demo-tts-1", "demo-whisper-1"]


def check_models_owner(status, headers, body):
    assert [m["id"] for m in ok_json(status, headers, body)["data"]] == ["community-llama-1", "community-sdxl-1"]


def check_blob(status, headers, body):
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert body == (bytes(range(256)) * 400)[:100_000]


def check_text(status, headers, body):
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert body.decode() == GREETING + "\n"  # CHUTE_ENV, baked into the image, reached the service


def check_slow(status, headers, body):
    assert ok_json(status, headers, body) == {"slept": 0.0}


def check_model_by_id(status, headers, body):
    assert ok_json(status, headers, body)["id"] == "demo-tts-1"


def check_status_path(status, headers, body):
    # the service answered 201; the gateway answers every success 200, as the Chutes API does
    assert status == 200 and json.loads(body) == {"status": 201}


def check_not_a_template(status, headers, body):
    assert status == 400 and "/v1/models/{model_id}" in body.decode()


def check_traversal_refused(status, headers, body):
    assert status == 400, body


def check_whoami(status, headers, body):
    answer = ok_json(status, headers, body)
    # The service runs with the base image's Python, PATH and WORKDIR, as the chute's user, not root.
    assert answer["executable"] == "/usr/bin/python3" and answer["prefix"] == "/usr"
    assert answer["cwd"] == "/srv"
    assert answer["uid"] != 0
    assert "chutes-wrappers" not in answer["path"]


CALLS = [
    Call("GET", "/health", check_health),
    Call("POST", "/v1/echo", check_echo, {"message": "hello", "list": [1, 2, 3]}),
    Call("POST", "/tts_to_audio", check_tts, {"text": "Hello from the journey", "language": "en"}),
    Call("POST", "/inference", check_demo_upload, {"file_base64": WAV_B64, "file_filename": "clip.wav", "temperature": 0.3}),
    Call("POST", "/v1/audio/transcriptions", check_transcription, {"file_base64": WAV_B64, "model": "demo-whisper-1"}),
    Call("POST", "/v1/audio/raw", check_raw_body, {"body_base64": WAV_B64, "language": "de"}),
    Call("POST", "/stt/inference", check_whisper_upload, {"file_base64": WAV_B64, "temperature": 0.2}),
    Call("GET", "/stt/whoami", check_whoami),
    Call("POST", "/v1/stream", check_stream, {"count": 3}),
    Call("GET", "/v1/models", check_models_limit, query="limit=2"),
    Call("GET", "/v1/models", check_models_owner, query="owned_by=community"),
    Call("GET", "/v1/blob", check_blob, query="size=100000"),
    Call("GET", "/v1/text", check_text),
    Call("GET", "/v1/slow", check_slow, query="seconds=0"),
    Call("POST", "/proxy", check_model_by_id, {"method": "GET", "path": "/v1/models/demo-tts-1"}),
    Call("POST", "/proxy", check_status_path, {"method": "GET", "path": "/v1/status/201"}),
    Call("POST", "/proxy", check_not_a_template, {"method": "GET", "path": "/v1/echo/x"}),
    Call("POST", "/proxy", check_traversal_refused, {"method": "GET", "path": "/v1/models/../../etc/passwd"}),
]


@pytest.mark.parametrize("call", CALLS, ids=[f"{c.id} {c.check.__name__}" for c in CALLS])
def test_cord_answers_through_the_chute_in_the_container(running, call):
    url = running.base_url + call.path + (f"?{call.query}" if call.query else "")
    status, headers, body = engine.http_json(call.method, url, call.body)
    call.check(status, headers, body)


def test_every_cord_of_the_module_is_called_above(running):
    """The cords the chute serves (as deploy.sh lists them) are exactly the ones CALLS exercises."""
    script = (
        "import json; from tools import deploy_module; from tools.cord_table import cords_of; "
        f"print(json.dumps(sorted({{(c.method, c.public_path) for c in cords_of(deploy_module.load({MODULE!r}).chute)}})))"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=running.project, env=running.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = {tuple(item) for item in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert served == {(c.method, c.path) for c in CALLS}


KILL_WHISPER = textwrap.dedent("""
    import os, signal
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if int(pid) != os.getpid() and b"/srv/whisper/whisper_like.py" in cmdline:
            os.kill(int(pid), signal.SIGKILL)
""")


def test_health_cord_reports_a_dead_service(running, podman):
    """Kill the whisper-like service inside the container: /health names its port, the other stays ok."""
    names = podman.containers(f"label=chutes-wrappers.module={MODULE}")
    assert len(names) == 1, names
    podman("exec", names[0], "python", "-c", KILL_WHISPER)
    status, headers, body = engine.http_json("GET", running.base_url + "/health")
    report = ok_json(status, headers, body)
    assert report["status"] == "unhealthy"
    assert report["ports"][str(DEMO_PORT)] == "ok"
    assert str(WHISPER_PORT) in report["ports"][str(WHISPER_PORT)]  # "port N: Connection refused"
    status, _, body = engine.http_json("POST", running.base_url + "/stt/inference", {"file_base64": WAV_B64})
    # the chute answers 503 (its service is not listening): on Chutes an instance failure, which the
    # gateway, finding no other instance, answers 500 at once (not a hang)
    assert status == 500 and json.loads(body) == {"detail": "No infrastructure available to serve request"}, body


def test_ctrl_c_stops_and_removes_everything(running, podman):
    names = podman.containers(f"label=chutes-wrappers.module={MODULE}")
    assert len(names) == 1, names
    code = running.run.interrupt()
    running.run = None
    assert code in (0, 130), code
    assert podman.containers(f"label=chutes-wrappers.module={MODULE}") == []
    assert engine.processes_mentioning(names[0]) == []
    assert engine.processes_mentioning(MODULE) == []


# --------------------------------------------------------------------------------------------------
# The image as Chutes runs it: `chutes run` is PID 1, and it is stopped with SIGTERM


def test_sigterm_stops_the_service_before_the_container_exits(built, podman):
    assert built.build.returncode == 0
    name = f"cw-journey-term-{RUN_ID}"
    engine.run_chute(podman, built.image, MODULE, name)
    try:
        log = engine.wait_for_log(podman, name, "services ready on port(s)", timeout=300)
        assert "services ready on port(s)" in log, engine._tail(log)
        podman("stop", "--time", "15", name, timeout=120)
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())
        log = podman.logs(name)
        # 137 would be the SIGKILL that follows an ignored SIGTERM: the service never stopped cleanly.
        assert code != 137, engine._tail(log)
        assert "service stopped (status" in log, engine._tail(log)
    finally:
        podman.remove_container(name)
    assert podman.containers(f"name=^{name}$") == []


def test_nothing_of_the_journey_is_left(journey, podman):
    """Last: the wrapper image goes too; only the cached cw-test-* bases stay."""
    podman.remove_image(journey.image)
    assert not podman.image_exists(journey.image)
    assert podman.containers(f"label=chutes-wrappers.module={MODULE}") == []
    assert engine.processes_mentioning(MODULE) == []
