"""The service and the chute on this machine, as `deploy.sh --run` and `--smoke` start them.

`start_stack(RunConfig)` starts the module's HOST_COMMAND, waits for SERVICE_PORTS, then the chute as
`chutes run` runs it on a GPU node (tools.sdk.node: cords at their internal paths behind the SDK's
real GraValMiddleware) with the local gateway in front (tools.gateway: the Chutes API's invocation
rules), so every call takes the platform's path; with `dev=True` the SDK's dev server instead
(`chutes run --dev`). Everything it started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from tools import deploy_module, sdk
from tools.constants import DEFAULT_CHUTE_PORT, DEFAULT_LOCAL_TIMEOUT, SERVICE_EXTERNAL_ENV, chute_ports, port_argument
from tools.containers import without_chutes_secrets
from tools.cord_table import Cord, chutes_url, cords_of
from tools.deploy_module import ROOT, DeployModule
from tools.errors import WrapperError
from tools.processes import Child, chutes_executable, http_answers, port_in_use, wait_until


@dataclass
class RunConfig:
    """What `--run` and `--smoke` start; built from the command line or by tests."""

    module: str
    port: int = DEFAULT_CHUTE_PORT
    logging_port: int | None = None
    no_service: bool = False
    timeout: float = DEFAULT_LOCAL_TIMEOUT
    quiet: bool = False
    debug: bool = False
    exit_when_ready: bool = False
    dev: bool = False  # the SDK's dev server (`chutes run --dev`) instead of the local platform


@dataclass
class Stack:
    """A running service (maybe) and chute, as `start_stack` started them."""

    module: DeployModule
    base_url: str
    cords: list[Cord]
    children: list[Child]
    stop: threading.Event
    platform: Any = None  # tools.gateway.Platform, unless --dev

    @property
    def public_url(self) -> str:
        """Where callers reach this chute once deployed on Chutes."""
        chute = self.module.chute
        return chutes_url(sdk.owner(chute) or self.module.get("USERNAME") or "you", chute.name)

    def check(self) -> None:
        """Raise with the last output of a child that died."""
        for child in self.children:
            if child.exited():
                raise child.failure()
        if self.platform is not None:
            self.platform.check()


@contextlib.contextmanager
def start_stack(config: RunConfig, stop: threading.Event | None = None) -> Iterator[Stack]:
    """Start the module's service (HOST_COMMAND) and the chute; stop both on the way out.

    `stop` is set by the caller (main()'s signal handlers) to end the wait early.
    """
    module = deploy_module.load(config.module)
    name = module.name
    ports = module.ports()
    host_command = module.host_command
    cords = cords_of(module.chute)
    port, logging_port = chute_ports(config.port, config.logging_port)
    start_service = host_command is not None and not config.no_service

    for taken, why in [(port, "chute port (--port)"), (logging_port, "chute logging port")] + (
        [(p, f"service port of {name}") for p in ports] if start_service else []
    ):
        if port_in_use(taken):
            raise WrapperError(
                f"port {taken} ({why}) is already in use",
                "stop what listens there, or pick another port" + (" with --port" if taken == port else ""),
            )
    stop = stop or threading.Event()
    env = without_chutes_secrets(os.environ)
    service_env = dict(env, **module.env)
    children: list[Child] = []
    try:
        if start_service:
            print(f"starting service: {shlex.join(host_command)}", flush=True)
            service = Child("service", host_command, service_env, module.directory, echo=not config.quiet)
            children.append(service)
            wait_until(lambda: all(port_in_use(p) for p in ports), service, config.timeout, "the service", stop)
        elif not all(port_in_use(p) for p in ports):
            closed = ", ".join(str(p) for p in ports if not port_in_use(p))
            raise WrapperError(
                f"nothing listens on service port(s) {closed}",
                f"start the service first, or set HOST_COMMAND in {name}.py",
            )

        pythonpath = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        chute_env = dict(env, CHUTES_EXECUTION_CONTEXT="REMOTE", PYTHONPATH=pythonpath)
        chute_env[SERVICE_EXTERNAL_ENV] = "1"  # the service runs on the host: the chute only waits for it
        base_url = f"http://127.0.0.1:{port}"
        if not config.dev:
            from tools.gateway import start_platform

            print(f"starting the chute as on a Chutes node, behind the local gateway at {base_url}", flush=True)
            with start_platform(f"{name}:chute", module.directory, env=chute_env, port=port,
                                logging_port=logging_port, timeout=config.timeout, echo=not config.quiet,
                                stop=stop) as platform:
                yield Stack(module, base_url, cords, children, stop, platform)
            return
        argv = [chutes_executable(), "run", f"{name}:chute", "--dev", "--host", "127.0.0.1", "--port", str(port),
                "--logging-port", str(logging_port)]
        print(f"starting chute: {shlex.join(argv[1:])}", flush=True)
        chute = Child("chute", argv, chute_env, module.directory, echo=not config.quiet)
        children.append(chute)
        wait_until(lambda: http_answers(base_url + "/"), chute, config.timeout, "the chute", stop)
        yield Stack(module, base_url, cords, children, stop)
    finally:
        for child in reversed(children):
            child.stop()


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", help="deploy module, e.g. deploy_example (or a path to one)")
    parser.add_argument("--port", type=port_argument, default=DEFAULT_CHUTE_PORT,
                        help=f"chute port (default {DEFAULT_CHUTE_PORT})")
    parser.add_argument("--logging-port", type=port_argument, default=None, help="chute logging port (default port+1)")
    parser.add_argument("--no-service", action="store_true", help="do not start HOST_COMMAND; use the running service")
    parser.add_argument("--timeout", type=float, default=DEFAULT_LOCAL_TIMEOUT,
                        help=f"seconds to wait for the service and the chute (default {DEFAULT_LOCAL_TIMEOUT:g})")
    parser.add_argument("--dev", action="store_true",
                        help="the SDK's dev server (chutes run --dev) instead of the node and the local gateway")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def check_chute_ports(parser: argparse.ArgumentParser, port: int, logging_port: int | None) -> None:
    """A --port whose logging port (port+1) is no port is a usage error: exit 2 before anything starts."""
    try:
        chute_ports(port, logging_port)
    except WrapperError as exc:
        parser.error(str(exc))


def stack_config(args: argparse.Namespace, **extra) -> RunConfig:
    return RunConfig(module=args.module, port=args.port, logging_port=args.logging_port, no_service=args.no_service,
                     timeout=args.timeout, debug=args.debug, dev=args.dev, **extra)
