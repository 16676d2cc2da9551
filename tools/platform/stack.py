"""The local platform, started one way for `--run`, `--smoke`, `--run-docker` and the tests.

- `start_stack(RunConfig)` (--run, --smoke): the module's HOST_COMMAND, then `start_platform`; with
  `dev=True` the SDK's dev server (`chutes run --dev`) instead of the platform.
- `start_platform`: the chute as `chutes run` runs it on a GPU node (tools/runtime/sdk/node.py: cords
  at their internal paths behind the SDK's real GraValMiddleware), then `start_gateway` in front.
- `start_gateway`: the local gateway (tools/platform/gateway.py: the Chutes API's invocation rules) in
  front of any node, also one in a container (--run-docker).

Each child runs in its own process group with `chute_environment` (the shared platform key only in
their environment); everything started is stopped on the way out, the gateway first. The SDK's own
chatter in the node's output is hidden unless `verbose` (tools/platform/chatter.py). With `listen` (a
socket bound to the callers' port, held by `--run --reload` across restarts: tools/platform/reload.py)
the gateway takes calls on it only once the node answers, so a new chute can start beside a running one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from tools import deploy_module
from tools.cord_table import Cord, chutes_url, cords_of
from tools.deploy_module import ROOT, DeployModule
from tools.platform.chatter import SdkChatter
from tools.platform.gateway import STATS_PATH
from tools.processes import Child, chutes_executable, http_answers, wait_for_service, wait_until
from tools.runtime.constants import (
    DEFAULT_CHUTE_PORT, DEFAULT_LOCAL_TIMEOUT, EXECUTION_CONTEXT_ENV, REMOTE, SERVICE_EXTERNAL_ENV, chute_ports,
    port_argument, without_chutes_secrets,
)
from tools.runtime.errors import WrapperError
from tools.runtime.ports import ensure_free, free_port, port_listens
from tools.runtime.sdk.chute import owner
from tools.runtime.sdk.node import KEY_ENV, PlatformKey


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
    verbose: bool = False  # show the SDK's own chatter in the chute's output
    reload: bool = False  # restart the chute when the module, its manifest or tools/ change (reload.py)


@dataclass
class Stack:
    """A running service (maybe) and chute, as `start_stack` started them."""

    module: DeployModule
    base_url: str
    cords: list[Cord]
    children: list[Child]
    stop: threading.Event
    platform: "Platform | None" = None  # unless --dev
    platform_args: dict[str, Any] | None = None  # how start_platform was called: a reload starts the next one alike

    @property
    def public_url(self) -> str:
        """Where callers reach this chute once deployed on Chutes."""
        chute = self.module.chute
        return chutes_url(owner(chute) or self.module.get("USERNAME") or "you", chute.name)

    def check(self) -> None:
        """Raise with the last output of a child that died."""
        for child in self.children:
            if child.exited():
                raise child.failure()
        if self.platform is not None:
            self.platform.check()


@contextlib.contextmanager
def start_stack(config: RunConfig, stop: threading.Event | None = None,
                listen: socket.socket | None = None) -> Iterator[Stack]:
    """Start the module's service (HOST_COMMAND) and the chute; stop both on the way out.

    `stop` is set by the caller (main()'s signal handlers) to end the wait early; `listen`, a socket
    already bound to the chute port, is where the gateway takes calls (see the module docstring).
    """
    module = deploy_module.load(config.module)
    name = module.name
    ports = module.ports()
    host_command = module.check_host_command()
    ready_paths = module.ready_paths()
    cords = cords_of(module.chute)
    port, logging_port = chute_ports(config.port, config.logging_port)
    start_service = host_command is not None and not config.no_service

    ensure_free({**({} if listen else {port: "chute port (--port)"}), logging_port: "chute logging port (--logging-port)",
                 **({p: f"service port of {name}" for p in ports} if start_service else {})})
    stop = stop or threading.Event()
    env = without_chutes_secrets(os.environ)
    local_env, notes = module.local_env()
    service_env = dict(env, **local_env)
    children: list[Child] = []
    try:
        if start_service:
            for note in notes:
                print(f"note: {note}", flush=True)
            print(f"starting service: {shlex.join(host_command)}", flush=True)
            service = Child("service", host_command, service_env, module.directory, echo=not config.quiet)
            children.append(service)
            wait_for_service(ports, ready_paths, config.timeout, stop, service)
        elif not all(port_listens(p) for p in ports):
            closed = ", ".join(str(p) for p in ports if not port_listens(p))
            raise WrapperError(
                f"nothing listens on service port(s) {closed}",
                f"start the service first, or set HOST_COMMAND in {name}.py",
            )
        else:
            wait_for_service(ports, ready_paths, config.timeout, stop)

        chute_env = chute_environment(env)
        chute_env[SERVICE_EXTERNAL_ENV] = "1"  # the service runs on the host: the chute only waits for it
        base_url = f"http://127.0.0.1:{port}"
        if not config.dev:
            print(f"starting the chute as on a Chutes node, behind the local gateway at {base_url}", flush=True)
            platform_args = dict(module_ref=f"{name}:chute", directory=module.directory, env=chute_env,
                                 timeout=config.timeout, echo=not config.quiet, stop=stop, listen=listen,
                                 verbose=config.verbose)
            with start_platform(port=0 if listen else port, logging_port=logging_port, **platform_args) as platform:
                yield Stack(module, base_url, cords, children, stop, platform, platform_args)
            return
        argv = [chutes_executable(), "run", f"{name}:chute", "--dev", "--host", "127.0.0.1", "--port", str(port),
                "--logging-port", str(logging_port)]
        print(f"starting chute: {shlex.join(argv[1:])}", flush=True)
        chute = Child("chute", argv, chute_env, module.directory, echo=not config.quiet,
                      show=None if config.verbose else SdkChatter())
        children.append(chute)
        wait_until(lambda: http_answers(base_url + "/"), chute, config.timeout, "the chute", stop)
        yield Stack(module, base_url, cords, children, stop)
    finally:
        for child in reversed(children):
            child.stop()


def chute_environment(env: Mapping[str, str] | None = None, key: PlatformKey | None = None) -> dict[str, str]:
    """The environment of a chute, node or gateway started here: the remote execution context (cords
    are served, not called), this project on PYTHONPATH, and the platform's shared key when given
    (in the environment only, never on a command line)."""
    out = dict(os.environ if env is None else env)
    out[EXECUTION_CONTEXT_ENV] = REMOTE
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    if key is not None:
        out[KEY_ENV] = key.hex
    return out


@dataclass
class Platform:
    """A running node and gateway; `url` is what callers call (as they would call the chute's URL)."""

    url: str
    node_url: str
    key: PlatformKey  # for tests that call the node directly, as the gateway does
    children: list[Child]
    control_url: str = ""  # the gateway alone (with `listen`, `url` may reach another gateway on the same socket)

    def stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.url + STATS_PATH, timeout=5) as answer:
            return json.loads(answer.read())

    def check(self) -> None:
        """Raise ServiceError (with its last output) if the node or the gateway has exited."""
        for child in self.children:
            if child.exited():
                raise child.failure()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the gateway, then the node (which stops its service)."""
        for child in reversed(self.children):
            child.stop(timeout)


@contextlib.contextmanager
def start_platform(
    module_ref: str,
    directory: str | os.PathLike,
    *,
    env: dict[str, str] | None = None,
    cords: str | None = None,
    port: int = 0,
    node_port: int = 0,
    logging_port: int = 0,
    timeout: float = DEFAULT_LOCAL_TIMEOUT,
    log: Any = None,
    echo: bool = False,
    stop: threading.Event | None = None,
    listen: socket.socket | None = None,
    verbose: bool = True,
    key: PlatformKey | None = None,
    spawn: Callable[..., Child] = Child,
    gateway_options: tuple[str, ...] = (),
) -> Iterator[Platform]:
    """Start `python -m tools.runtime.sdk.node MODULE_REF` (in `directory`) and the gateway in front of it.

    Each runs in its own process group with a fresh shared key, on free ports unless given; yields a
    `Platform` once the gateway answers, stops both on the way out. `cords` defaults to the module
    itself; `log` (a binary file) receives both processes' output, `echo` prints it with a
    [node]/[gateway] prefix (without the SDK's chatter unless `verbose`); `stop` ends the wait early.
    With `listen`, the gateway starts beside the node at once and takes calls on that socket when the
    node answers (`port` is then the gateway's own). `key` and `spawn` (how a child is started, by
    default a new `Child`) let --reload hand over processes it started in advance. Raises ServiceError
    if either exits or does not answer within `timeout`. `gateway_options` go on the gateway's command
    line (tests: `--disable-seconds 1`).
    """
    key = key or PlatformKey.generate()
    base_env = chute_environment(env, key)
    node_port = node_port or free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    platform = Platform("", node_url, key, [])
    stop = stop or threading.Event()
    try:
        node = spawn("node", [sys.executable, "-m", "tools.runtime.sdk.node", module_ref, "--host", "127.0.0.1",
                              "--port", str(node_port), "--logging-port", str(logging_port or free_port())],
                     base_env, directory, echo=echo, log=log, show=None if verbose else SdkChatter())
        platform.children.append(node)
        if listen is None:
            # The node listens only after the chute's startup hooks (its service is up).
            wait_until(lambda: http_answers(node_url + "/"), node, timeout, "the node", stop)
            gateway, platform.url = start_gateway(node_url, cords or module_ref, directory, base_env, port, echo=echo,
                                                  log=log, options=gateway_options)
            platform.control_url = platform.url
        else:
            gateway, platform.control_url = start_gateway(node_url, cords or module_ref, directory, base_env, port,
                                                          echo=echo, log=log, listen=listen, node_wait=timeout,
                                                          spawn=spawn, options=gateway_options)
            platform.url = "http://127.0.0.1:%d" % listen.getsockname()[1]
        platform.children.append(gateway)
        wait_until(lambda: http_answers(platform.control_url + STATS_PATH), gateway, timeout, "the gateway", stop,
                   others=platform.children)
        yield platform
    finally:
        platform.stop()


def start_gateway(node_url: str, cords: str, directory: str | os.PathLike, env: dict[str, str], port: int = 0, *,
                  echo: bool = False, log: Any = None, source_address: str | None = None,
                  listen: socket.socket | None = None, node_wait: float = 0.0,
                  spawn: Callable[..., Child] = Child, options: tuple[str, ...] = ()) -> tuple[Child, str]:
    """The gateway as a child process in front of `node_url` (a node on this machine or in a
    container); `env` from `chute_environment` with the node's key. Returns the child and the URL
    callers call (with `listen`: the gateway's own port; callers call the socket's).

    `source_address` overrides where the gateway calls from (default 127.0.0.2, so that a node on this
    machine does not take the call for a local one); "" lets the system choose, which a node in a
    container needs: it sees the engine's bridge address anyway, and the engine forwards a published
    127.0.0.1 port only to callers from 127.0.0.1."""
    port = port or free_port()
    argv = [sys.executable, "-m", "tools.platform.gateway", "--chute-url", node_url, "--cords", cords, "--port", str(port)]
    if source_address is not None:
        argv += ["--source-address", source_address]
    argv += list(options)
    fds: tuple[int, ...] = ()
    if listen is not None:
        fds = (listen.fileno(),)
        argv += ["--fd", str(fds[0]), "--wait-for-node", f"{node_wait:g}"]
    return spawn("gateway", argv, env, directory, echo=echo, log=log, pass_fds=fds), f"http://127.0.0.1:{port}"


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
