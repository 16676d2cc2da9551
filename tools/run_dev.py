"""`deploy.sh --run MODULE`: the service and the chute on this machine, in the SDK's dev mode.

Starts the module's HOST_COMMAND, waits for SERVICE_PORTS, starts the real `chutes run MODULE:chute
--dev`, waits until it answers, prints every cord with a ready-to-paste curl line, then streams both
logs until Ctrl-C. Everything it started is stopped on Ctrl-C, SIGTERM, or when either process dies.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator, Mapping

from tools.errors import ServiceError, WrapperError, run_cli
from tools.ports import logging_port_for, port_number
from tools.routes import Route

ROOT = Path(__file__).resolve().parent.parent
MODULE_RE = r"^[a-z][a-z0-9_]*$"  # what `chutes run MODULE:chute` accepts (chutes' CHUTE_REF_RE)


@dataclass
class Cord:
    method: str
    public_path: str
    upstream: str
    stream: bool
    example: object = None
    file_fields: tuple[str, ...] = ()
    binary_type: str | None = None  # content type of a binary answer: curl writes it to a file
    route: Route | None = None  # None for the module's own cords
    mode: str = "module"  # passthrough | proxy | catch-all | module
    templates: tuple[Route, ...] = ()  # for the catch-all: the routes it reaches


# --------------------------------------------------------------------------------------------------
# The module


def locate_module(arg: str) -> tuple[str, Path]:
    """`deploy_x`, `deploy_x.py` or `some/dir/deploy_x.py` -> (`deploy_x`, its directory).

    A bare name is looked up beside deploy.sh; a path may point anywhere.
    """
    import re

    path = Path(arg)
    name = path.name[:-3] if path.name.endswith(".py") else path.name
    directory = path.parent.resolve() if ("/" in arg) else ROOT
    if not re.match(MODULE_RE, name):
        raise WrapperError(
            f"{arg!r} is not a deploy module name",
            "use the file name without .py, lowercase letters, digits and '_', e.g. deploy_example",
        )
    if not (directory / f"{name}.py").is_file():
        raise WrapperError(f"no module {name}.py in {directory}", "copy deploy_example.py to start one")
    return name, directory


def import_module(name: str, directory: Path = ROOT) -> ModuleType:
    """Import a deploy module quietly; any failure becomes one line naming the module."""
    from loguru import logger

    for entry in (str(ROOT), str(directory)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    logger.remove()
    sink = logger.add(sys.stderr, level="WARNING", format="{message}")
    try:
        return importlib.import_module(name)
    except WrapperError:
        raise
    except SyntaxError as exc:
        raise WrapperError(f"{name}.py line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the module is user code: anything can happen at import
        raise WrapperError(f"cannot import {name}.py: {type(exc).__name__}: {exc}") from None
    finally:
        logger.remove(sink)


def cords_of(module: ModuleType) -> list[Cord]:
    chute = getattr(module, "chute", None)
    if chute is None or not hasattr(chute, "cords"):
        raise WrapperError(f"{module.__name__}.py defines no `chute`", "create one with chutes.chute.Chute(...)")
    routes, catch_all, templated = {}, None, []
    for report in getattr(chute, "wrapper_reports", []):
        for item in report.registered:
            routes[item.function_name] = item
        catch_all = report.catch_all or catch_all
        templated += [route for route, reason in report.skipped if "reachable through" in reason]
    cords = []
    for cord in chute.cords:
        item = routes.get(cord._func.__name__)
        public = cord.public_api_path or cord.path
        if item:
            upstream = f":{item.port}{item.route.upstream_path}" + (" (proxy)" if item.mode == "proxy" else "")
        elif catch_all and public == catch_all[0]:
            upstream = "catch-all: " + ", ".join(label for label in catch_all[1] if "{" in label)
        else:
            upstream = "module code"
        example = item.route.example if item else None
        is_catch_all = bool(catch_all and public == catch_all[0] and not item)
        if is_catch_all:
            example = _catch_all_example(catch_all[1])
        cords.append(
            Cord(
                method=(cord._public_api_method or "POST").upper(),
                public_path=public,
                upstream=upstream,
                stream=bool(cord._stream),
                example=example,
                file_fields=_file_fields(item.route) if item else (),
                binary_type=item.route.content_type if item and item.route.response_kind == "binary" else None,
                route=item.route if item else None,
                mode=item.mode if item else ("catch-all" if is_catch_all else "module"),
                templates=tuple(templated) if is_catch_all else (),
            )
        )
    return cords


def _file_fields(route) -> tuple[str, ...]:
    """Fields a caller sends as `<name>_base64`: the form's files, or `body` for a raw body."""
    if route.request_kind == "raw":
        from tools.proxy import RAW_BASE64_KEY

        return (RAW_BASE64_KEY.removesuffix("_base64"),)
    return route.file_fields


def _catch_all_example(labels: list[str]) -> dict:
    """A call of the first templated route, with its parameters spelled as placeholders."""
    import re

    for label in labels:
        method, _, path = label.partition(" ")
        if "{" in path:
            return {"method": method, "path": re.sub(r"\{([^}]+)\}", lambda m: m.group(1).upper(), path)}
    method, _, path = labels[0].partition(" ")
    return {"method": method, "path": path}


def curl_line(base_url: str, cord: Cord) -> str:
    example = dict(cord.example) if isinstance(cord.example, dict) else cord.example
    if isinstance(example, dict):
        example.pop("_path", None)
    parts = ["curl", "-sS"]
    if cord.stream:
        parts.append("-N")
    if cord.method != "GET":
        parts += ["-X", cord.method]
    url = base_url + cord.public_path
    if cord.method not in ("POST", "PUT", "PATCH") and isinstance(example, dict) and example:
        from urllib.parse import urlencode

        url += "?" + urlencode(example, doseq=True)
    parts.append(url)
    if cord.binary_type:
        from tools.proxy import extension_for

        parts += ["-o", "response" + (extension_for(cord.binary_type) or ".bin")]
    if cord.method not in ("POST", "PUT", "PATCH"):
        return shlex.join(parts)
    parts += ["-H", "Content-Type: application/json"]
    if cord.file_fields:
        # the file goes base64-encoded in the JSON: let the shell do it
        fields = [f'\\"{name}_base64\\": \\"$(base64 -w0 FILE)\\"' for name in cord.file_fields]
        for key, value in (example or {}).items():
            fields.append(_in_double_quotes(json.dumps(key)) + ": " + _in_double_quotes(json.dumps(value)))
        return shlex.join(parts) + ' -d "{' + ", ".join(fields) + '}"'
    return shlex.join(parts + ["-d", json.dumps(example if example is not None else {})])


def _in_double_quotes(text: str) -> str:
    """`text` escaped for the inside of a shell double-quoted string."""
    return "".join("\\" + ch if ch in '"\\$`' else ch for ch in text)


def cord_table(base_url: str, cords: list[Cord]) -> str:
    width = max((len(c.public_path) for c in cords), default=10)
    lines = [f"{len(cords)} cord(s) at {base_url}:"]
    for cord in cords:
        kind = "stream" if cord.stream else ""
        lines.append(f"  {cord.method:<6} {cord.public_path:<{width}}  -> {cord.upstream} {kind}".rstrip())
        lines.append(f"         {curl_line(base_url, cord)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Processes


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Child:
    """A child process in its own process group, its output echoed with a prefix and remembered."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, echo: bool = True):
        self.name = name
        self.echo = echo
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
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
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
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # the leader is gone; its group may not be
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
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
    import shutil

    found = shutil.which("chutes")
    if not found:
        raise WrapperError("the chutes CLI is not installed", "run ./setup.sh")
    return found


# --------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A running service (maybe) and chute, as `dev_stack` started them."""

    module: ModuleType
    base_url: str
    cords: list[Cord]
    children: list[Child]
    stop: threading.Event

    def check(self) -> None:
        """Raise with the last output of a child that died."""
        for child in self.children:
            if child.exited():
                raise child.failure()


def is_chutes_secret(name: str) -> bool:
    """A Chutes credential by its name: CHUTES_API_KEY, a hotkey seed, anything CHUTES_* that the
    secret-name rule (tools.containers.SECRET_KEY_RE) calls secret."""
    from tools.containers import SECRET_KEY_RE

    upper = name.upper()
    return upper.startswith("CHUTES_") and bool(SECRET_KEY_RE.search(upper) or "SEED" in upper or "JWT" in upper)


def without_chutes_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without Chutes credentials: the wrapped service is not ours and has no use for them, and
    `chutes run --dev` signs nothing (the tools that call the API read them in their own process)."""
    return {key: value for key, value in env.items() if not is_chutes_secret(key)}


@contextlib.contextmanager
def dev_stack(args: argparse.Namespace, quiet: bool = False) -> Iterator[Stack]:
    """Start the module's service (HOST_COMMAND) and `chutes run --dev`; stop both on the way out."""
    name, directory = locate_module(args.module)
    module = import_module(name, directory)
    ports = [int(p) for p in getattr(module, "SERVICE_PORTS", None) or []]
    if not ports:
        raise WrapperError(f"{name}.py has no SERVICE_PORTS", "set SERVICE_PORTS = [<port the service listens on>]")
    host_command = getattr(module, "HOST_COMMAND", None)
    cords = cords_of(module)
    port = args.port
    logging_port = args.logging_port or port + 1
    start_service = host_command is not None and not args.no_service

    for taken, why in [(port, "chute port (--port)"), (logging_port, "chute logging port")] + (
        [(p, f"service port of {name}") for p in ports] if start_service else []
    ):
        if port_in_use(taken):
            raise WrapperError(
                f"port {taken} ({why}) is already in use",
                "stop what listens there, or pick another port" + (" with --port" if taken == port else ""),
            )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    env = without_chutes_secrets(os.environ)
    service_env = dict(env, **{str(k): str(v) for k, v in (getattr(module, "CHUTE_ENV", None) or {}).items()})
    children: list[Child] = []
    try:
        if start_service:
            argv = shlex.split(host_command) if isinstance(host_command, str) else [str(a) for a in host_command]
            print(f"starting service: {shlex.join(argv)}", flush=True)
            service = Child("service", argv, service_env, directory, echo=not quiet)
            children.append(service)
            wait_until(lambda: all(port_in_use(p) for p in ports), service, args.timeout, "the service", stop)
        elif not all(port_in_use(p) for p in ports):
            closed = ", ".join(str(p) for p in ports if not port_in_use(p))
            raise WrapperError(
                f"nothing listens on service port(s) {closed}",
                f"start the service first, or set HOST_COMMAND in {name}.py",
            )

        pythonpath = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        chute_env = dict(env, CHUTES_EXECUTION_CONTEXT="REMOTE", CHUTES_SERVICE_EXTERNAL="1", PYTHONPATH=pythonpath)
        argv = [chutes_executable(), "run", f"{name}:chute", "--dev", "--host", "127.0.0.1", "--port", str(port),
                "--logging-port", str(logging_port)]
        print(f"starting chute: {shlex.join(argv[1:])}", flush=True)
        chute = Child("chute", argv, chute_env, directory, echo=not quiet)
        children.append(chute)
        base_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_answers(base_url + "/"), chute, args.timeout, "the chute", stop)
        yield Stack(module, base_url, cords, children, stop)
    finally:
        for child in reversed(children):
            child.stop()


def run(args: argparse.Namespace) -> int:
    with dev_stack(args) as stack:
        print("\n" + cord_table(stack.base_url, stack.cords) + "\n", flush=True)
        print("ready: streaming logs, Ctrl-C stops the chute and the service", flush=True)
        if args.exit_when_ready:
            return 0
        while not stack.stop.is_set():
            stack.check()
            stack.stop.wait(0.2)
        print("stopping...", flush=True)
        return 130


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", help="deploy module, e.g. deploy_example (or a path to one)")
    parser.add_argument("--port", type=port_number, default=8000, help="chute port (default 8000)")
    parser.add_argument("--logging-port", type=port_number, default=None, help="chute logging port (default port+1)")
    parser.add_argument("--no-service", action="store_true", help="do not start HOST_COMMAND; use the running service")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the service and the chute")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --run", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--exit-when-ready", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.logging_port = logging_port_for(parser, args.port, args.logging_port)
    run_cli(lambda: run(args), debug=args.debug, prog="deploy.sh --run")


if __name__ == "__main__":
    main()
