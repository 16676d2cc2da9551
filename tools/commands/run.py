"""`deploy.sh --run MODULE`: the service and its chute on this machine, called as on Chutes.

Starts them (tools.platform.stack), prints every cord with a ready-to-paste curl line (and the same call
to the deployed chute), then streams the logs until Ctrl-C, SIGTERM, or any process dying, and stops
everything it started. `--dev` runs the SDK's dev server instead of the node and the local gateway.
"""

from __future__ import annotations

import argparse
import threading

from tools.cord_table import cord_table
from tools.runtime.errors import run_cli
from tools.platform.stack import RunConfig, add_stack_arguments, check_chute_ports, stack_config, start_stack
from tools.processes import stop_on_signals


def run(config: RunConfig, stop: threading.Event) -> int:
    with start_stack(config, stop) as stack:
        print("\n" + cord_table(stack.base_url, stack.cords, stack.public_url) + "\n", flush=True)
        print("ready: streaming logs, Ctrl-C stops the chute and the service", flush=True)
        if config.exit_when_ready:
            return 0
        while not stop.is_set():
            stack.check()
            stop.wait(0.2)
        print("stopping...", flush=True)
        return 130


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --run", description=__doc__.splitlines()[0])
    add_stack_arguments(parser)
    parser.add_argument("--exit-when-ready", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_chute_ports(parser, args.port, args.logging_port)
    config = stack_config(args, exit_when_ready=args.exit_when_ready)

    def go() -> int:
        with stop_on_signals() as stop:
            return run(config, stop)

    run_cli(go, debug=config.debug, prog="deploy.sh --run")


if __name__ == "__main__":
    main()
