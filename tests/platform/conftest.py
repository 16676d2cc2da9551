"""The local platform in tests: the demo service, a deploy module's chute on the node runner
(tools/runtime/sdk/node.py), and the gateway (tools/platform/gateway.py) in front, all real processes on loopback."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import PYTHON, ROOT, free_port, stop_process, wait_for_port
from tools.runtime.errors import ServiceError
from tools.platform.stack import Platform, start_platform
from tools.runtime.sdk.node import GATEWAY_SOURCE_ADDRESS, PlatformKey


@contextlib.contextmanager
def demo_service(tmp: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp / "service.log", "wb")
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "tools" / "demo_service.py"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def platform_for(module_ref: str, directory: Path, service_url: str, tmp: Path, cords: str | None = None,
                 gateway_options: tuple[str, ...] = (), **env: str) -> Iterator[Platform]:
    """The module's chute on the node runner and the gateway, the service already running."""
    port = service_url.rsplit(":", 1)[1]
    environ = dict(os.environ, CHUTE_PORTS=port, CHUTES_SERVICE_EXTERNAL="1", **env)
    log_path = tmp / "platform.log"
    with open(log_path, "ab") as log:
        try:
            with start_platform(module_ref, directory, env=environ, cords=cords, log=log, timeout=90,
                                gateway_options=gateway_options) as platform:
                yield platform
        except ServiceError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()[-3000:]}") from None


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Iterator[tuple[Platform, str]]:
    """(platform, service URL) for deploy_example, as README runs it."""
    tmp = tmp_path_factory.mktemp("example")
    with demo_service(tmp) as service, platform_for("deploy_example:chute", ROOT, service, tmp) as platform:
        yield platform, service


def copy_module(tmp: Path, name: str, source: str) -> Path:
    (tmp / f"{name}.py").write_text(source)
    shutil.copy(ROOT / "deploy_example.routes.json", tmp / f"{name}.routes.json")
    return tmp


def node_call(
    node_url: str,
    path: str,
    body: bytes | str = b"",
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    source: str = GATEWAY_SOURCE_ADDRESS,
) -> tuple[int, bytes]:
    """One HTTP call to the node from `source` (not 127.0.0.1, unless asked)."""
    host, port = node_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def signed_call(platform: Platform, internal_path: str, payload: Any, key: PlatformKey | None = None) -> tuple[int, bytes]:
    """What the gateway sends for one cord: encrypted path and body, validator signature."""
    key = key or platform.key
    body = key.encrypt_body(payload)
    return node_call(platform.node_url, key.encrypt_path(internal_path), body, headers=key.sign(body))


def decrypt_envelope(key: PlatformKey, raw: bytes) -> Any:
    envelope = json.loads(raw)
    return json.loads(key.decrypt_answer(envelope["json"]))
