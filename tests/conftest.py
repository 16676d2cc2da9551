"""Shared fixtures: repository paths, free loopback ports, and real processes that are always reaped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a process group started with start_new_session=True, then kill it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def processes():
    """Start processes in their own session; every one is stopped at teardown."""
    started: list[subprocess.Popen] = []

    def start(cmd, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(cmd, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        stop_process(proc)


@pytest.fixture
def demo_service(processes):
    """The bundled demo service on a free loopback port; yields its base URL."""
    port = free_port()
    proc = processes(
        [PYTHON, str(ROOT / "tools" / "demo_service.py"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
    )
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"


@pytest.fixture
def caplog_loguru():
    """Messages logged through loguru (which the SDK and our helpers use) during the test."""
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="DEBUG")
    yield messages
    logger.remove(sink)
