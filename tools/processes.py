"""Child processes of the CLIs: started in their own process group, logged, stopped with their children.

One stop rule for every process group we start (host service, chute, node, gateway, and the wrapped
service inside a chute): SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from tools.errors import ServiceError, WrapperError

KILL_GRACE = 5.0  # seconds after SIGKILL before we stop waiting


def stop_group(pid: int, exited_within: Callable[[float], bool], timeout: float = 10.0, *, leader_gone: bool = False) -> None:
    """SIGTERM the process group `pid`, SIGKILL it if it is still there after `timeout`.

    `exited_within(seconds)` waits for the leader and says whether it exited. When the leader is
    already gone (`leader_gone`), what is left of its group is killed at once.
    """
    steps = [(signal.SIGKILL, KILL_GRACE)] if leader_gone else [(signal.SIGTERM, timeout), (signal.SIGKILL, KILL_GRACE)]
    for sig, grace in steps:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if leader_gone or exited_within(grace):
            return


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (SO_REUSEADDR, as engines bind: TIME_WAIT is not 'taken')."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def die_with_parent() -> None:
    """In the child (preexec_fn): get SIGTERM when our process dies without stopping it, even by
    SIGKILL, so no service or chute outlives the CLI or chute that started it (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """A child process in its own process group, its output echoed with a prefix and remembered."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | str, echo: bool = True,
                 log: BinaryIO | None = None):
        self.name = name
        self.echo = echo
        self.log = log  # also written here, line by line, as the child wrote it
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if self.log is not None:
                self.log.write(raw)
                self.log.flush()
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if self.echo:
                print(f"[{self.name}] {line}", flush=True)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def failure(self) -> ServiceError:
        tail = "\n".join(self.tail) or "(no output)"
        return ServiceError(f"{self.name} exited with status {self.proc.returncode}; last output:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        def exited_within(seconds: float) -> bool:
            try:
                self.proc.wait(seconds)
                return True
            except subprocess.TimeoutExpired:
                return False

        stop_group(self.proc.pid, exited_within, timeout, leader_gone=self.proc.poll() is not None)
        self._thread.join(2.0)


def wait_until(ready, child: Child, timeout: float, what: str, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if child.exited():
            raise child.failure()
        if stop.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not answer within {timeout:g}s", "see its log above")
        time.sleep(0.1)


def http_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except (urllib.error.URLError, OSError):
        return False
    return True


def chutes_executable() -> str:
    candidate = Path(sys.executable).with_name("chutes")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("chutes")
    if not found:
        raise WrapperError("the chutes CLI is not installed", "run ./setup.sh")
    return found


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs; the previous handlers come back after."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
