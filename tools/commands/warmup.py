"""`deploy.sh --warmup CHUTE`: warm a deployed chute up until it is hot, with a progress line.

    python -m tools.commands.warmup NAME [--timeout S] [--interval S]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from tools import chutes_api
from tools.processes import Signals
from tools.runtime.constants import DEFAULT_SERVICE_TIMEOUT
from tools.runtime.errors import WrapperError, run_cli



@dataclass
class WarmupConfig:
    name: str
    timeout: float = DEFAULT_SERVICE_TIMEOUT
    interval: float = 10
    debug: bool = False


def describe(state: dict) -> str:
    status = str(state.get("status") or "unknown")
    instances = state.get("instances")
    count = len(instances) if isinstance(instances, list) else state.get("instance_count")
    return f"{status}, {count if count is not None else '?'} instance(s)"


class Progress:
    """One line rewritten in place on a terminal; plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()
        elif text.split(" (")[0] != self.last:  # a new state, not just a new elapsed time
            print(text, flush=True)
        self.last = text.split(" (")[0]

    def done(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


def warmup(args: WarmupConfig) -> int:
    api = chutes_api.client()
    chute = api.get_object("chutes", args.name)  # a clear "no chute named ..." before anything else
    name = str(chute.get("name") or args.name)
    started = time.monotonic()
    progress = Progress()
    while True:
        state = api.warmup(args.name)
        elapsed = time.monotonic() - started
        progress.show(f"warming up {name}: {describe(state)} ({elapsed:.0f}s)")
        if state.get("status") == "hot":
            progress.done()
            print(f"{name} is hot")
            return 0
        if elapsed >= args.timeout:
            progress.done()
            raise WrapperError(f"{name} is not hot after {args.timeout:g}s ({describe(state)})",
                               "Chutes keeps starting it; check later with ./deploy.sh --status " + args.name)
        time.sleep(min(args.interval, max(0.0, args.timeout - elapsed)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --warmup", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--timeout", type=float, default=DEFAULT_SERVICE_TIMEOUT,
                        help=f"seconds to wait for 'hot' (default {DEFAULT_SERVICE_TIMEOUT:g})")
    parser.add_argument("--interval", type=float, default=10, help="seconds between checks (default 10)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = WarmupConfig(**vars(parser.parse_args(argv)))

    def go() -> int:
        with Signals(interrupt=True):
            return warmup(args)

    run_cli(go, debug=args.debug, prog="deploy.sh --warmup")


if __name__ == "__main__":
    main()
