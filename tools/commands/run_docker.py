"""`deploy.sh --run-docker MODULE`: the locally built wrapper image, run with docker or podman, called
as on Chutes: the chute runs in the container as on a GPU node (tools.runtime.sdk.node), the local gateway runs
here in front of it (`--dev`: `chutes run --dev` in the container, called directly). Every port is
published on 127.0.0.1 only.

Waits for the chute with a progress line (default 10 minutes), shows the container's last output if
it exits first, prints the cords, then streams its log. Ctrl-C, SIGTERM or an error removes it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass

from tools.containers import (
    LABEL,
    LABEL_MODULE,
    LABEL_OWNER,
    Container,
    EngineError,
    RunSpec,
    container_name,
    detect_engine,
    gpu_args,
    owner_label,
    remove_leftovers,
    require_image,
)
from tools import deploy_module
from tools.cord_table import cord_table, cords_of
from tools.platform.gateway import STATS_PATH
from tools.platform.stack import chute_environment, start_gateway
from tools.processes import http_answers, signals_held, stop_on_signals, wait_until
from tools.runtime.constants import (
    APP_DIR, DEFAULT_CHUTE_PORT, DEFAULT_SERVICE_TIMEOUT, EXECUTION_CONTEXT_ENV, REMOTE, chute_ports, port_argument,
)
from tools.runtime.errors import ServiceError, WrapperError, run_cli
from tools.runtime.ports import ensure_free, free_port
from tools.runtime.sdk.node import KEY_ENV, PlatformKey

ROLE = "run-docker"
# What `chutes run` logs when the chute's startup raised (it then sleeps 60 s before exiting).
STARTUP_FAILED = "Unexpected error executing _run_chute()"


@dataclass
class RunDockerConfig:
    module: str
    port: int = DEFAULT_CHUTE_PORT
    gpus: str | None = "auto"
    timeout: float = DEFAULT_SERVICE_TIMEOUT
    image: str | None = None
    debug: bool = False
    dev: bool = False  # `chutes run --dev` in the container, no gateway


def container_spec(config: RunDockerConfig, key_hex: str | None = None):
    """The container to run. With `key_hex` (the local platform's shared key, passed in the env file,
    never on a command line) it runs the node runner on a free port; else `chutes run --dev` on --port."""
    module = deploy_module.load(config.module)
    name = module.name
    ports = module.ports(required=False)
    image = config.image or module.image_ref
    port, logging_port = chute_ports(config.port, None)
    engine = detect_engine()
    try:
        require_image(engine, image)
    except EngineError:
        raise EngineError(f"image {image!r} is not present in {engine.label}",
                          f"build it first: ./deploy.sh --build {module.ref} --local") from None
    chute_port = free_port() if key_hex else port
    published = {chute_port: chute_port}
    for service_port in ports:
        if service_port in published:
            raise WrapperError(f"--port {port} is also a service port of {name}", "pick another --port")
        published[service_port] = service_port
    ensure_free({port: "chute port (--port)", **{p: f"service port of {name}" for p in published if p != port}})
    spec = RunSpec(
        image=image,
        name=container_name("chute", name),
        labels={LABEL: ROLE, LABEL_MODULE: name, LABEL_OWNER: owner_label()},
        ports=published,
        env={EXECUTION_CONTEXT_ENV: REMOTE, **({KEY_ENV: key_hex} if key_hex else {})},
        entrypoint=(["python", "-m", "tools.runtime.sdk.node", f"{name}:chute"] if key_hex
                    else ["chutes", "run", f"{name}:chute", "--dev"])
        + ["--host", "0.0.0.0", "--port", str(chute_port), "--logging-port", str(logging_port)],
        gpu_args=gpu_args(engine, config.gpus),
        extra_args=["--workdir", APP_DIR],
    )
    return name, module, engine, spec


def run(config: RunDockerConfig, stop: threading.Event) -> int:
    key = None if config.dev else PlatformKey.generate()
    name, module, engine, spec = container_spec(config, key.hex if key else None)
    remove_leftovers(engine, ROLE, name)
    gateway = None
    streaming = threading.Event()
    crashed = threading.Event()

    def on_log(line: str) -> None:
        if STARTUP_FAILED in line:
            crashed.set()
        if streaming.is_set():
            print(f"[container] {line}", flush=True)

    container = Container(engine, spec, on_log=on_log)
    gpus = " ".join(spec.gpu_args) or "no GPU"
    print(f"starting {spec.image} with {engine.label} ({gpus}), container {spec.name}", flush=True)
    try:
        container.start()
        chute_url = f"http://127.0.0.1:{next(iter(spec.ports))}"
        wait_ready(container, chute_url, config.timeout, stop, crashed)
        base_url = chute_url
        if key is not None:
            gateway, base_url = start_gateway(chute_url, f"{name}:chute", module.directory,
                                              chute_environment(None, key), config.port, echo=True, source_address="")
            wait_until(lambda: http_answers(base_url + STATS_PATH), gateway, config.timeout, "the gateway", stop)
            print(f"the chute runs as on a Chutes node; callers go through the local gateway at {base_url}")
        print(cord_table(base_url, cords_of(module.chute)), flush=True)
        print("ready: streaming the container's log; Ctrl-C stops and removes the container", flush=True)
        for line in container.last_lines(40):
            print(f"[container] {line}")
        streaming.set()
        while not stop.is_set():
            if container.exit_code() is not None:
                raise ServiceError(f"the container exited with status {container.exit_code()}")
            if gateway is not None and gateway.exited():
                raise gateway.failure()
            stop.wait(0.5)
        print("stopping...", flush=True)
        return 130
    finally:
        with signals_held():  # removal must not be cut in half
            if gateway is not None:
                gateway.stop()
            container.remove()
        print(f"removed container {spec.name}", flush=True)


def startup_error(lines: list[str]) -> str:
    """What `chutes run` reported, without its traceback: the marker line's message and what follows
    up to the traceback (the service's last output, for a service that exited)."""
    for index in range(len(lines) - 1, -1, -1):
        _, marker, message = lines[index].partition(STARTUP_FAILED)
        if marker:
            rest = []
            for line in lines[index + 1:]:
                if line.startswith("Traceback (most recent call last)"):
                    break
                rest.append(line)
            return "\n".join([message.strip().lstrip(":").strip(), *rest]).strip() or "(no message)"
    return "\n".join(lines[-30:]) or "(no output)"


def wait_ready(
    container: Container, base_url: str, timeout: float, stop: threading.Event, crashed: threading.Event
) -> None:
    """Until the chute answers; fails at once when the container exits or `chutes run` reports that
    its startup failed (it then sleeps 60 s before exiting, to keep its log server up)."""
    started = time.monotonic()
    tty = sys.stdout.isatty()
    last_line = -1.0
    while not http_answers(base_url + "/"):
        elapsed = time.monotonic() - started
        code = container.exit_code()
        if code is not None:
            if tty:
                print()
            tail = "\n".join(container.last_lines(30)) or "(no output)"
            raise ServiceError(f"the container exited with status {code} before the chute answered; last output:\n{tail}")
        if crashed.is_set():
            if tty:
                print()
            time.sleep(0.5)  # the rest of the error is still arriving
            raise ServiceError(f"the chute failed to start: {startup_error(container.last_lines(200))}")
        if stop.is_set():
            if tty:
                print()
            raise KeyboardInterrupt
        if elapsed > timeout:
            if tty:
                print()
            tail = "\n".join(container.last_lines(30)) or "(no output)"
            raise ServiceError(f"the chute did not answer at {base_url} within {timeout:g}s; last output:\n{tail}",
                               "raise --timeout if the service loads big models")
        if tty:
            sys.stdout.write(f"\rwaiting for the chute at {base_url}: {elapsed:.0f}s / {timeout:g}s ")
            sys.stdout.flush()
        elif elapsed - last_line >= 10:
            print(f"waiting for the chute at {base_url}: {elapsed:.0f}s / {timeout:g}s", flush=True)
            last_line = elapsed
        time.sleep(0.5)
    if tty:
        print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --run-docker", description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", help="deploy module, e.g. deploy_example (or a path to one)")
    parser.add_argument("--port", type=port_argument, default=DEFAULT_CHUTE_PORT,
                        help=f"chute port on 127.0.0.1 (default {DEFAULT_CHUTE_PORT})")
    parser.add_argument("--gpus", default="auto", help="auto (only with a GPU runtime), none, all, N, or 0,1")
    parser.add_argument("--timeout", type=float, default=DEFAULT_SERVICE_TIMEOUT,
                        help=f"seconds to wait for the chute (default {DEFAULT_SERVICE_TIMEOUT:g})")
    parser.add_argument("--image", help="run this image instead of the module's")
    parser.add_argument("--dev", action="store_true", help="chutes run --dev in the container, without the local gateway")
    parser.add_argument("--cleanup", action="store_true", help="remove containers left by killed runs, then exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.cleanup:
        run_cli(cleanup, debug=args.debug, prog="deploy.sh --cleanup")
    if not args.module:
        parser.error("a deploy module is needed")
    try:  # the chute's logging port inside the container is --port + 1: a usage error, not a failure
        chute_ports(args.port, None)
    except WrapperError as exc:
        parser.error(str(exc))
    config = RunDockerConfig(args.module, args.port, args.gpus, args.timeout, args.image, args.debug, args.dev)

    def go() -> int:
        with stop_on_signals() as stop:
            return run(config, stop)

    run_cli(go, debug=config.debug, prog="deploy.sh --run-docker")


def cleanup() -> int:
    engine = detect_engine()
    removed, kept = remove_leftovers(engine, ROLE)
    for item in removed:
        print(f"removed run-docker container {item.name} ({item.module})")
    for item in kept:
        print(f"kept run-docker container {item.name}: its run is still going")
    if not removed and not kept:
        print("no run-docker containers left over")
    return 0


if __name__ == "__main__":
    main()
