"""Start the wrapped service from the chute's startup hook, and stop it on shutdown.

Chutes replaces the image's entrypoint with `chutes run`, so the service the image used to start by
itself is started here: with the base image's own PATH and working directory (recorded when the
wrapper image was built), its output streamed into the chute's log, and its last lines kept so that
a service that dies at startup is reported with the reason.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shlex
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import aiohttp
from loguru import logger

from tools.runtime.sdk.chute import on_shutdown
from tools.runtime.constants import APP_DIR, DEFAULT_SERVICE_TIMEOUT, SERVICE_EXTERNAL_ENV, env_flag, without_chutes_secrets
from tools.runtime.errors import ServiceError, WrapperError
from tools.runtime.process_groups import KILL_GRACE, die_with_parent, stop_group
from tools.runtime.image import BASE_ENV_FILE, VENV_DIR, caller_file
from tools.runtime.routes import choose_manifest, parse_ready_paths

if TYPE_CHECKING:
    from chutes.chute import Chute

# The wrapper image records the base image's PATH, PYTHONPATH and WORKDIR in BASE_ENV_FILE; the
# chute's own virtualenv (VENV_DIR) must not reach the service (it would shadow the base's packages).



def split_command(command: str | Sequence[str]) -> list[str]:
    """ENTRYPOINT as the module gives it: a shell-like string (split with shlex) or a list."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise WrapperError(f"ENTRYPOINT {command!r} cannot be split: {exc}", "fix its quoting") from None
    else:
        argv = [str(part) for part in command]
    if not argv:
        raise WrapperError("ENTRYPOINT is empty", "set ENTRYPOINT to the command that starts the service")
    return argv


def read_base_env(path: str | Path = BASE_ENV_FILE) -> dict[str, str]:
    """The base image's recorded PATH/PYTHONPATH/WORKDIR; empty outside a wrapper image."""
    values: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return values
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value
    return values


def service_environment(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The service's environment: ours, minus the chute venv and Chutes credentials, with the base
    image's PATH restored."""
    env = without_chutes_secrets(os.environ)
    base = read_base_env() if base is None else base
    if base.get("PATH"):
        env["PATH"] = base["PATH"]
    else:
        env["PATH"] = os.pathsep.join(
            part for part in env.get("PATH", "").split(os.pathsep) if not part.startswith(VENV_DIR)
        )
    if env.get("VIRTUAL_ENV", "").startswith(VENV_DIR):
        env.pop("VIRTUAL_ENV")
    # PYTHONPATH=/app[:base] is set for the chute module; the service gets the base image's own.
    if "PYTHONPATH" in base:
        env["PYTHONPATH"] = base["PYTHONPATH"]
    elif env.get("PYTHONPATH") == APP_DIR:
        env.pop("PYTHONPATH")
    if not env.get("PYTHONPATH"):
        env.pop("PYTHONPATH", None)
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


# --------------------------------------------------------------------------------------------------
# Readiness
#
# A port that accepts connections is a live service, not a ready one: model servers open their port
# long before their model is loaded (MLServer answers 400 until then, BentoML's /readyz 503, and some
# hold every request until they are done). A call sent in that window is an instance failure on
# Chutes. So a port may have a readiness path (SERVICE_READY_PATHS, else what discovery found), and
# the service is ready when that path answers 2xx.

READY_PROBE_TIMEOUT = 5.0  # seconds one readiness GET may take (a service may hold it while loading)
_BODY_SNIPPET = 160


async def port_open(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port succeeds, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return f"port {port}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def http_ready(session: aiohttp.ClientSession, host: str, port: int, path: str, timeout: float) -> str | None:
    """None when GET http://host:port/path answers 2xx, else the answer (or why there was none)."""
    try:
        async with session.get(f"http://{host}:{port}{path}", timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
            if 200 <= answer.status < 300:
                return None
            body = (await answer.content.read(_BODY_SNIPPET)).decode("utf-8", "replace").strip()
            return f"GET {path} answered {answer.status}" + (f" {body!r}" if body else "")
    except asyncio.TimeoutError:
        return f"GET {path}: no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return f"GET {path}: {type(exc).__name__}: {exc}"


def resolve_ready_paths(
    ports: Iterable[int], given: Mapping | None = None, module_file: str | os.PathLike | None = None,
) -> dict[int, str]:
    """Each port's readiness path: the module's (`given`, SERVICE_READY_PATHS) wins, the ports it leaves
    out take the module's manifest's (what discovery found); None in `given` means the port alone."""
    ports = [int(port) for port in ports]
    given_paths = parse_ready_paths(given)
    strays = sorted(set(given_paths) - set(ports))
    if strays:
        raise WrapperError(f"SERVICE_READY_PATHS names port(s) {', '.join(map(str, strays))}, not in SERVICE_PORTS "
                           f"({', '.join(map(str, ports))})", "key it by a service port")
    found: dict[int, str] = {}
    if module_file is not None:
        manifest = choose_manifest(module_file).read()
        found = dict(manifest.ready_paths) if manifest else {}
    paths = {}
    for port in ports:
        path = given_paths[port] if port in given_paths else found.get(port)
        if path:
            paths[port] = path
    return paths


async def service_state(
    port: int, path: str | None, *, host: str = "127.0.0.1", timeout: float = READY_PROBE_TIMEOUT,
    session: aiohttp.ClientSession | None = None,
) -> tuple[str | None, str | None]:
    """(liveness error, readiness error) of one port: None each when live (the port accepts
    connections) and ready (its readiness path answers 2xx; no path: live is ready)."""
    live = await port_open(host, port, min(timeout, 1.0))
    if live or not path:
        return live, live
    if session is None:
        async with aiohttp.ClientSession(trust_env=False) as own:
            return None, await http_ready(own, host, port, path, timeout)
    return None, await http_ready(session, host, port, path, timeout)


async def wait_for_services(
    ports: Iterable[int],
    timeout: float = DEFAULT_SERVICE_TIMEOUT,
    *,
    ready_paths: Mapping[int, str] | None = None,
    host: str = "127.0.0.1",
    interval: float = 0.2,
    launcher: ServiceLauncher | None = None,
    check: Callable[[], None] | None = None,
    log: bool = True,
) -> None:
    """Wait until every port accepts connections and, where `ready_paths` names a path for it,
    that path answers 2xx; all ports at once.

    Raises ServiceError at the deadline naming the ports still closed and, for each port that is open
    but not ready, its readiness path's last answer. Raises at once (with the service's last output)
    when `launcher`'s process exits while we wait; `check` runs every round and may raise too.
    """
    ports = list(dict.fromkeys(int(port) for port in ports))
    paths = {int(port): path for port, path in (ready_paths or {}).items() if path}
    pending = list(ports)
    last: dict[int, str] = {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    took: dict[int, float] = {}
    async with aiohttp.ClientSession(trust_env=False) as session:
        while pending:
            probe_timeout = max(0.5, min(READY_PROBE_TIMEOUT, deadline - loop.time()))
            results = await asyncio.gather(*(
                service_state(port, paths.get(port), host=host, timeout=probe_timeout, session=session)
                for port in pending))
            still = []
            for port, (live, ready) in zip(pending, results):
                if ready is None:
                    took[port] = loop.time() - started
                else:
                    still.append(port)
                    last[port] = ready if live is None else ""
            pending = still
            if not pending:
                break
            if launcher is not None:
                launcher.check_alive()
            if check is not None:
                check()
            if loop.time() >= deadline:
                raise ServiceError(_not_ready(pending, paths, last, timeout),
                                   "check the service's log above, raise the timeout, or fix SERVICE_READY_PATHS")
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
    detail = ", ".join(f"{port}: GET {paths[port]} 2xx after {took.get(port, 0):.1f}s" for port in ports if port in paths)
    if log:
        logger.info(f"services ready on port(s) {', '.join(str(p) for p in ports)}" + (f" ({detail})" if detail else ""))


def _not_ready(pending: list[int], paths: Mapping[int, str], last: Mapping[int, str], timeout: float) -> str:
    closed = [port for port in pending if not last.get(port)]
    parts = []
    if closed:
        parts.append(f"service port(s) {', '.join(map(str, closed))} not accepting connections after {timeout:g}s")
    for port in pending:
        if last.get(port):
            parts.append(f"port {port} accepts connections but is not ready after {timeout:g}s "
                         f"(ready when GET {paths[port]} answers 2xx; its last answer: {last[port].removeprefix(f'GET {paths[port]} ')})")
    return "; ".join(parts)


async def probe_services(
    ports: Iterable[int], timeout: float = 5, *, host: str = "127.0.0.1", ready_paths: Mapping[int, str] | None = None,
) -> list[str]:
    """Check every port concurrently (and its readiness path, if any); one error string per port
    that does not answer or is not ready."""
    ports = list(dict.fromkeys(int(port) for port in ports))
    paths = dict(ready_paths or {})
    results = await asyncio.gather(*(service_state(port, paths.get(port), host=host, timeout=timeout) for port in ports))
    return [f"port {port}: {ready}" if live is None else live
            for port, (live, ready) in zip(ports, results) if ready]


# --------------------------------------------------------------------------------------------------
# The service process


class ServiceLauncher:
    """One service process: started in its own process group, logged, and stopped with its children."""

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        name: str = "service",
        keep_lines: int = 40,
    ):
        self.argv = split_command(command)
        self.env = env
        self.cwd = cwd
        self.name = name
        self.last_lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def start(self) -> None:
        base = read_base_env()
        cwd = self.cwd or base.get("WORKDIR") or None
        logger.info(f"starting {self.name}: {shlex.join(self.argv)}" + (f" (in {cwd})" if cwd else ""))
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=service_environment(self.env, base),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except FileNotFoundError:
            raise ServiceError(
                f"{self.name} command not found: {self.argv[0]}",
                "check ENTRYPOINT against the base image (its PATH is used)",
            ) from None
        except PermissionError:
            raise ServiceError(f"{self.name} command is not executable: {self.argv[0]}") from None
        self._reader = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self.process and self.process.stdout
        while True:
            line = await self.process.stdout.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip()
            self.last_lines.append(text)
            logger.info(f"[{self.name}] {text}")

    def check_alive(self) -> None:
        """Raise ServiceError with the service's last output if it has exited."""
        if self.process is not None and self.process.returncode is not None:
            tail = "\n".join(self.last_lines) or "(no output)"
            raise ServiceError(
                f"{self.name} exited with status {self.process.returncode} during startup; last output:\n{tail}"
            )

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout`; safe to call twice."""
        proc = self.process
        if proc is None:
            return
        if proc.returncode is None:
            def exited_within(seconds: float) -> bool:
                # the event loop sets returncode while this runs in a worker thread
                deadline = time.monotonic() + seconds
                while proc.returncode is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                return proc.returncode is not None

            await asyncio.to_thread(stop_group, proc.pid, exited_within, timeout)
            try:
                await asyncio.wait_for(proc.wait(), KILL_GRACE)
            except asyncio.TimeoutError:
                pass
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 2.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
        logger.info(f"{self.name} stopped (status {proc.returncode})")


def _sigterm_like_sigint() -> None:
    """Make SIGTERM stop the chute as Ctrl-C does, when nothing else handles it.

    `chutes run` installs no SIGTERM handler. As a container's PID 1 the kernel then ignores
    SIGTERM, so `docker stop` waits its grace period and kills everything with SIGKILL: the
    shutdown hooks never run. Re-sending SIGTERM as SIGINT gives the graceful path in both cases.
    """
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, os.kill, os.getpid(), signal.SIGINT)
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread, or a platform without loop signal handlers


def attach_service(
    chute: "Chute",
    entrypoint: str | Sequence[str] | None,
    ports: Sequence[int],
    *,
    timeout: float = DEFAULT_SERVICE_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    ready_paths: Mapping[int, str | None] | None = None,
) -> ServiceLauncher | None:
    """Start `entrypoint` when the chute starts, wait until `ports` are ready, stop it when the chute stops.

    Ready: every port accepts connections and, where it has a readiness path, that path answers 2xx
    (`ready_paths`, the module's SERVICE_READY_PATHS; ports it leaves out take what discovery wrote
    into the module's manifest). The chute serves no call before that.

    With no entrypoint, or with CHUTES_SERVICE_EXTERNAL=1 (the service is started by someone else,
    as `deploy.sh --run` does on the host), the chute only waits.
    """
    paths = resolve_ready_paths(ports, ready_paths, caller_file())
    external = env_flag(SERVICE_EXTERNAL_ENV)
    launcher = None if (entrypoint is None or external) else ServiceLauncher(entrypoint, env=env, cwd=cwd)

    @chute.on_startup(priority=10)
    async def start_wrapped_service(self) -> None:
        _sigterm_like_sigint()
        if launcher is not None:
            await launcher.start()
        try:
            await wait_for_services(ports, timeout=timeout, launcher=launcher, ready_paths=paths)
        except BaseException:
            if launcher is not None:
                await launcher.stop()
            raise

    async def stop_wrapped_service() -> None:
        if launcher is not None:
            await launcher.stop()

    on_shutdown(chute, stop_wrapped_service)

    return launcher
