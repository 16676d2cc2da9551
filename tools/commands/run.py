"""`deploy.sh --run MODULE`: the service and its chute on this machine, called as on Chutes.

Starts them (tools.platform.stack), prints every cord with a ready-to-paste curl line (and the same call
to the deployed chute), then streams the logs until Ctrl-C, SIGTERM, or any process dying, and stops
everything it started. `--dev` runs the SDK's dev server instead of the node and the local gateway;
`--reload` restarts the chute on every change of the module, its manifest or tools/
(tools/platform/reload.py); `--verbose` shows the SDK's own chatter (tools/platform/chatter.py).
"""

from __future__ import annotations

import argparse
import threading

from tools.cord_table import cord_table
from tools.runtime.errors import run_cli
from tools.platform.stack import RunConfig, Stack, add_stack_arguments, check_chute_ports, stack_config, start_stack
from tools.platform.front_door import DOCS_PATHS, DOCUMENT_PATHS, METRICS_PATH
from tools.processes import stop_on_signals


def print_ready(stack: Stack) -> None:
    print("\n" + cord_table(stack.base_url, stack.cords, stack.public_url) + "\n", flush=True)
    if stack.platform is not None:
        print(f"the chute's API as callers see it: {stack.base_url}{DOCS_PATHS[0]} (document: {DOCUMENT_PATHS[0]}, "
              f"metrics: {METRICS_PATH})", flush=True)
    print("ready: streaming logs, one line per call; Ctrl-C stops the chute and the service", flush=True)


def run(config: RunConfig, stop: threading.Event) -> int:
    if config.reload:
        from tools.platform.reload import run_with_reload

        return run_with_reload(config, stop, print_ready)
    with start_stack(config, stop) as stack:
        print_ready(stack)
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
    parser.add_argument("--reload", action="store_true",
                        help="restart the chute (not the service) when the module, its manifest or tools/ change")
    parser.add_argument("--verbose", action="store_true", help="show the SDK's own debug chatter in the chute's log")
    parser.add_argument("--exit-when-ready", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_chute_ports(parser, args.port, args.logging_port)
    if args.reload and args.dev:
        parser.error("--reload restarts the chute as on a Chutes node; it does not apply to --dev")
    config = stack_config(args, exit_when_ready=args.exit_when_ready, reload=args.reload, verbose=args.verbose)

    def go() -> int:
        with stop_on_signals() as stop:
            return run(config, stop)

    run_cli(go, debug=config.debug, prog="deploy.sh --run")


if __name__ == "__main__":
    main()
