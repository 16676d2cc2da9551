"""Child processes and signals of the CLIs: children start in their own process group, are logged, and
are stopped with their children by the one stop rule (tools/runtime/process_groups.py); SIGINT and
SIGTERM are handled the one way `Signals` says.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from tools.runtime.errors import Interrupted, ServiceError, WrapperError
from tools.runtime.process_groups import die_with_parent, stop_group

class Child:
    """A child process in its own process group, its output echoed with a prefix and remembered.

    `show(line)` says which lines are echoed (all when None; every line is remembered and logged
    anyway); `pass_fds` are file descriptors the child inherits (a listening socket)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | str, echo: bool = True,
                 log: BinaryIO | None = None, show: Callable[[str], bool] | None = None,
                 pass_fds: tuple[int, ...] = ()):
        self.name = name
        self.echo = echo
        self.show = show
        self.log = log  # also written here, line by line, as the child wrote it
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self._stopped = False
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
                pass_fds=pass_fds,
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
            if self.echo and (self.show is None or self.show(line)):
                print(f"[{self.name}] {line}", flush=True)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def failure(self) -> ServiceError:
        tail = "\n".join(self.tail) or "(no output)"
        return ServiceError(f"{self.name} exited with status {self.proc.returncode}; last output:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child and its process group (once: a later call does nothing, so a group id the
        system has given to someone else since is never signalled)."""
        if self._stopped:
            return
        self._stopped = True

        def exited_within(seconds: float) -> bool:
            try:
                self.proc.wait(seconds)
                return True
            except subprocess.TimeoutExpired:
                return False

        stop_group(self.proc.pid, exited_within, timeout, leader_gone=self.proc.poll() is not None)
        self._thread.join(2.0)


def wait_until(ready, child: Child, timeout: float, what: str, stop: threading.Event,
               others: Iterable[Child] = ()) -> None:
    """Until `ready()`; ServiceError with its last output if `child` (or one of `others`) exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        for one in (child, *others):
            if one.exited():
                raise one.failure()
        if stop.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not answer within {timeout:g}s", "see its log above")
        time.sleep(0.1)


def wait_for_service(ports: list[int], ready_paths: dict[int, str], timeout: float, stop: threading.Event,
                     child: Child | None = None) -> None:
    """Wait until the service on `ports` is ready (tools/runtime/launcher.py `wait_for_services`: each
    port accepts connections and its readiness path answers 2xx); raises with `child`'s last output
    if it dies, KeyboardInterrupt when `stop` is set."""
    import asyncio

    from tools.runtime.launcher import wait_for_services

    def check() -> None:
        if child is not None and child.exited():
            raise child.failure()
        if stop.is_set():
            raise KeyboardInterrupt

    check()
    asyncio.run(wait_for_services(ports, timeout, ready_paths=ready_paths, interval=0.1, check=check,
                                  log=False))


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


class Signals:
    """SIGINT and SIGTERM while the block runs, the one way every CLI takes them: they set `stop` (and
    `received`), which the work checks at safe points (`check()` raises Interrupted), so starting and
    removing containers and children are never cut in half and every exit path cleans up. With
    `interrupt=True` they raise KeyboardInterrupt at once instead, as Ctrl-C does (for waits that hold
    nothing to clean up). The previous handlers come back after; off the main thread nothing changes."""

    def __init__(self, interrupt: bool = False) -> None:
        self.interrupt = interrupt
        self.stop = threading.Event()
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
        self.stop.set()
        if self.interrupt:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (`Signals().stop`)."""
    with Signals() as signals:
        yield signals.stop


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM ignored through a section that must not be cut in half (removing what a run
    started), whatever handler is installed; the handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
