"""deploy_example on the platform's call path: the node as `chutes run` serves it, the gateway in front."""

from __future__ import annotations

import json

import pytest
import requests

from tests.platform.conftest import decrypt_envelope, node_call, signed_call
from tools.platform.gateway import NO_TARGETS, ChuteRecord
from tools.runtime.sdk.chute import cord_records
from tools.runtime.sdk.node import PlatformKey

pytestmark = pytest.mark.integration


def failures(platform) -> int:
    return platform.stats()["instance_failures"]


# --- the node: internal paths, POST only, the real GraValMiddleware -------------------------------


def test_node_mounts_cords_at_internal_paths_with_post_only(example):
    platform, _ = example
    # From 127.0.0.1 GraValMiddleware steps aside, so the routing itself shows: no public paths...
    assert node_call(platform.node_url, "/health", method="GET", source="127.0.0.1")[0] == 404
    assert node_call(platform.node_url, "/v1/echo", b"{}", source="127.0.0.1")[0] == 404
    # ...and the internal path answers POST only.
    assert node_call(platform.node_url, "/wrapper_health", method="GET", source="127.0.0.1")[0] == 405


def test_plain_call_from_another_address_is_refused(example):
    platform, _ = example
    status, body = node_call(platform.node_url, "/wrapper_health", b"{}")
    assert status == 404 and json.loads(body) == {"detail": "Bad path: /wrapper_health"}


def test_encrypted_path_without_signature_is_refused(example):
    platform, _ = example
    key = platform.key
    status, body = node_call(platform.node_url, key.encrypt_path("/wrapper_health"), key.encrypt_body({}))
    assert status == 401 and json.loads(body) == {"detail": "go away (missing)"}


def test_another_key_cannot_call_the_node(example):
    platform, _ = example
    status, body = signed_call(platform, "/wrapper_health", {}, key=PlatformKey.generate())
    assert status == 404 and json.loads(body)["detail"].startswith("Bad path")


def test_body_not_encrypted_with_the_key_is_refused(example):
    platform, _ = example
    key = platform.key
    body = "bm90IG91cnM="  # base64, but not our ciphertext
    status, answer = node_call(platform.node_url, key.encrypt_path("/wrapper_health"), body, headers=key.sign(body))
    assert status == 400 and b"Decryption failed" in answer


def test_signed_encrypted_call_answers_an_encrypted_envelope(example):
    platform, _ = example
    status, raw = signed_call(platform, "/wrapper_health", {})
    assert status == 200
    envelope = json.loads(raw)
    assert list(envelope) == ["json"] and "healthy" not in envelope["json"]  # ciphertext, not JSON
    assert decrypt_envelope(platform.key, raw)["status"] == "healthy"


# --- through the gateway: what callers get ----------------------------------------------------


def test_module_cord_through_the_gateway(example):
    platform, service = example
    before = failures(platform)
    answer = requests.get(f"{platform.url}/health", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    port = service.rsplit(":", 1)[1]
    assert answer.json() == {"status": "healthy", "live": True, "ready": True, "ports": {port: "ok"},
                             "readiness": {port: "ok"}}
    assert answer.headers["x-chutes-invocationid"]
    assert failures(platform) == before


def test_json_passthrough_cord_equals_the_service(example):
    platform, service = example
    body = {"text": "héllo", "n": [1, 2, 3], "nested": {"ok": True}}
    direct = requests.post(f"{service}/v1/echo", json=body, timeout=30)
    through = requests.post(f"{platform.url}/v1/echo", json=body, timeout=30)
    assert through.status_code == 200
    assert through.headers["content-type"] == "application/json"
    assert through.json() == direct.json() == {"echo": body}


def test_wav_cord_is_byte_exact_with_its_content_type(example):
    platform, service = example
    body = {"text": "Byte exact please", "language": "en"}
    direct = requests.post(f"{service}/tts_to_audio/", json=body, timeout=30)
    through = requests.post(f"{platform.url}/tts_to_audio", json=body, timeout=30)
    assert through.status_code == 200
    assert through.headers["content-type"] == "audio/wav"
    assert through.content == direct.content and through.content[:4] == b"RIFF"


def test_sse_cord_streams_the_services_events(example):
    platform, service = example
    body = {"count": 4}
    direct = requests.post(f"{service}/v1/stream", json=body, timeout=30)
    with requests.post(f"{platform.url}/v1/stream", json=body, timeout=30, stream=True) as through:
        assert through.status_code == 200
        assert through.headers["content-type"].startswith("text/event-stream")
        text = b"".join(through.iter_content(None)).decode()
    assert text == direct.text and text.endswith("data: [DONE]\n\n")


def test_gateway_rules_before_any_instance_call(example):
    platform, _ = example
    calls = platform.stats()["calls"]
    # router.py _invoke: no cord for this public path + method.
    for method, path in (("GET", "/nope"), ("DELETE", "/health"), ("GET", "/v1/echo")):
        answer = requests.request(method, f"{platform.url}{path}", timeout=30)
        assert answer.status_code == 404 and answer.json() == {"detail": "No matching cord found!"}
    # router.py _invoke: a POST body that is not JSON.
    answer = requests.post(f"{platform.url}/v1/echo", data=b"{nope", timeout=30)
    assert answer.status_code == 400 and answer.json()["detail"].startswith("invalid request JSON payload")
    assert platform.stats()["calls"] == calls


def test_gateway_cord_list_is_what_chutes_deploy_sends():
    import deploy_example

    records = cord_records(deploy_example.chute)
    by_public = {(r["public_api_path"], r["public_api_method"]): r for r in records}
    health = by_public[("/health", "GET")]
    assert health["path"] == "/wrapper_health" and health["stream"] is False
    assert by_public[("/v1/echo", "POST")]["passthrough"] is True
    assert by_public[("/v1/stream", "POST")]["stream"] is True
    assert set(health) == {"method", "path", "public_api_path", "public_api_method", "stream", "function",
                           "input_schema", "output_schema", "output_content_type", "minimal_input_schema",
                           "passthrough"}
    assert ChuteRecord.of(deploy_example.chute).concurrency == deploy_example.chute.concurrency


def test_instance_failure_is_counted_and_answered_as_the_gateway_does(tmp_path):
    """A chute whose service is down: the call fails the instance; the caller gets the API's 500."""
    from tests.conftest import free_port
    from tests.platform.conftest import copy_module, platform_for

    source = (
        "import os\n"
        "from chutes.chute import Chute\n"
        "from tools.chute_wrappers import register_passthrough_routes\n"
        "chute = Chute(username='test', name='downtest', image='unused')\n"
        "register_passthrough_routes(chute, [{'path': '/down', 'method': 'GET', 'target_path': '/v1/text',\n"
        "    'request': {'kind': 'none'}, 'response': {'kind': 'text', 'content_type': 'text/plain'}}],\n"
        "    int(os.environ['DEAD_PORT']))\n"
    )
    directory = copy_module(tmp_path, "deploy_downtest", source)
    dead = free_port()
    with platform_for("deploy_downtest:chute", directory, f"http://127.0.0.1:{dead}", tmp_path,
                      DEAD_PORT=str(dead)) as platform:
        answer = requests.get(f"{platform.url}/down", timeout=60)
        assert answer.status_code == 500 and answer.json() == {"detail": NO_TARGETS}
        stats = platform.stats()
        assert stats["instance_failures"] == 1 and stats["consecutive_failures"] == 1


def test_a_chute_whose_service_dies_at_startup_stops_the_node_with_the_reason(tmp_path):
    """Patch point 5: the SDK would sleep 60 s before exiting; the node exits 1 with one line."""
    from tests.conftest import free_port
    from tests.platform.conftest import copy_module
    from tools.runtime.errors import ServiceError
    from tools.platform.stack import start_platform

    source = (
        "import os\n"
        "from chutes.chute import Chute\n"
        "from tools.runtime.launcher import attach_service\n"
        "chute = Chute(username='test', name='diestest', image='unused')\n"
        "attach_service(chute, ['python3', '-c', 'raise SystemExit(3)'], [int(os.environ['DEAD_PORT'])], timeout=60)\n"
    )
    directory = copy_module(tmp_path, "deploy_diestest", source)
    env = dict(__import__("os").environ, DEAD_PORT=str(free_port()))
    env.pop("CHUTES_SERVICE_EXTERNAL", None)
    log_path = tmp_path / "platform.log"
    with open(log_path, "wb") as log, pytest.raises(ServiceError, match="node exited with status 1"):
        with start_platform("deploy_diestest:chute", directory, env=env, log=log, timeout=60):
            pass
    text = log_path.read_text()
    assert "node: error: chute startup failed" in text and "exited with status 3" in text


def test_busy_instance_is_rate_limiting_not_an_instance_failure(tmp_path, monkeypatch):
    """Calls beyond the chute's concurrency: the gateway answers 429 itself (api/instance/util.py
    get_targets: InfraOverload) and, when it lets one through, the node's GraValMiddleware answers
    429, which `_invoke_one` treats as a rate limit. Neither fails the instance."""
    import threading
    import time

    from tests.platform.conftest import copy_module, demo_service, platform_for
    from tools.platform.gateway import OVERLOAD, load_record

    source = (
        "import os\n"
        "from chutes.chute import Chute\n"
        "from tools.chute_wrappers import load_route_manifest, register_passthrough_routes\n"
        "chute = Chute(username='test', name='busytest', image='unused', concurrency=1)\n"
        "register_passthrough_routes(chute, load_route_manifest(), int(os.environ['CHUTE_PORTS']))\n"
    )
    directory = copy_module(tmp_path, "deploy_busytest", source)
    with demo_service(tmp_path) as service:
        monkeypatch.setenv("CHUTE_PORTS", service.rsplit(":", 1)[1])
        record = load_record("deploy_busytest:chute", directory)
        # The gateway believes in 2 calls at once: the second one reaches the node, which allows 1.
        (tmp_path / "cords.json").write_text(json.dumps({"cords": record.cords, "concurrency": 2}))
        for concurrency, cords in ((1, None), (2, str(tmp_path / "cords.json"))):
            with platform_for("deploy_busytest:chute", directory, service, tmp_path, cords=cords) as platform:
                slow = threading.Thread(target=requests.get, args=(f"{platform.url}/v1/slow?seconds=4",),
                                        kwargs={"timeout": 60})
                slow.start()
                try:
                    while platform.stats()["in_flight"] < 1:
                        assert slow.is_alive(), "the slow call ended before it was seen in flight"
                        time.sleep(0.02)
                    answer = requests.get(f"{platform.url}/v1/models", timeout=60)
                finally:
                    slow.join()
                assert answer.status_code == 429 and answer.json() == {"detail": OVERLOAD}, concurrency
                stats = platform.stats()
                assert stats["rate_limited"] == 1 and stats["instance_failures"] == 0, (concurrency, stats)
                # with the gateway's own gate at 2, the second call reached the node, which said 429
                assert stats["calls"] == concurrency, (concurrency, stats)


BUILD_APP_SCRIPT = """
import asyncio, http.client, json, socket
import uvicorn
from tools.runtime.sdk.node import PlatformKey, build_app

def call(port, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0))
    conn.request("POST", path, body=body, headers=headers)
    answer = conn.getresponse()
    return answer.status, answer.read().decode()

async def main():
    key = PlatformKey.generate()
    app = await build_app("deploy_appbuild:chute", key)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    body = key.encrypt_body({"x": 1})
    status, text = await asyncio.to_thread(call, port, key.encrypt_path("/hello"), body, key.sign(body))
    plain = await asyncio.to_thread(call, port, "/hello", b"{}", {})
    server.should_exit = True
    await task
    print(json.dumps({"status": status, "answer": json.loads(key.decrypt_answer(json.loads(text)["json"])),
                      "plain": plain}))

asyncio.run(main())
"""


def test_build_app_serves_the_node_app_in_process(tmp_path):
    """`build_app` (for in-process tests) gives the same wire as the node: POST at the internal
    path, GraValMiddleware with the stand-in crypto. Run in a child so the stand-ins stay there."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "deploy_appbuild.py").write_text(
        "from chutes.chute import Chute\n"
        "chute = Chute(username='test', name='appbuild', image='unused')\n"
        "@chute.cord(path='/hello', public_api_path='/hi', public_api_method='POST')\n"
        "async def hello(self, data: dict) -> dict:\n"
        "    return {'got': data}\n"
    )
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", BUILD_APP_SCRIPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["answer"] == {"got": {"x": 1}}
    assert result["plain"][0] == 404 and "Bad path" in result["plain"][1]


def test_an_upstream_header_naming_an_unset_variable_stops_the_chute_at_start_with_its_name(tmp_path):
    """CHUTE_UPSTREAM_HEADERS values are read when the chute starts: a missing secret is one line."""
    import os

    from tests.platform.conftest import copy_module, demo_service
    from tools.runtime.errors import ServiceError
    from tools.platform.stack import start_platform

    source = (
        "import os\n"
        "from chutes.chute import Chute\n"
        "from tools.chute_wrappers import register_passthrough_routes, attach_service\n"
        "chute = Chute(username='test', name='headers', image='unused')\n"
        "register_passthrough_routes(chute, [{'path': '/v1/echo'}], int(os.environ['CHUTE_PORTS']),\n"
        "                            upstream_headers={'Authorization': 'Bearer ${MISSING_SERVICE_KEY}'})\n"
        "attach_service(chute, None, [int(os.environ['CHUTE_PORTS'])], timeout=30)\n"
    )
    directory = copy_module(tmp_path, "deploy_headers", source)
    with demo_service(tmp_path) as service:
        env = dict(os.environ, CHUTE_PORTS=service.rsplit(":", 1)[1], CHUTES_SERVICE_EXTERNAL="1")
        env.pop("MISSING_SERVICE_KEY", None)
        log_path = tmp_path / "platform.log"
        with open(log_path, "wb") as log, pytest.raises(ServiceError, match="node exited with status 1"):
            with start_platform("deploy_headers:chute", directory, env=env, log=log, timeout=60):
                pass
    text = log_path.read_text()
    assert "CHUTE_UPSTREAM_HEADERS needs MISSING_SERVICE_KEY, which is not set" in text
    assert "Traceback" not in text
