"""`deploy.sh --keep-warm SECONDS CHUTE`: a warmup every SECONDS until Ctrl-C or SIGTERM.

    python -m tools.commands.keep_warm NAME --interval S
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from tools import chutes_api
from tools.chutes_api import APIError
from tools.commands.warmup import describe
from tools.processes import Signals
from tools.runtime.errors import WrapperError, run_cli



@dataclass
class KeepWarmConfig:
    name: str
    interval: float
    rounds: int | None = None
    debug: bool = False


def keep_warm(args: KeepWarmConfig) -> int:
    if args.interval <= 0:
        raise WrapperError("--keep-warm needs a positive number of seconds")
    api = chutes_api.client()
    name = str(api.get_object("chutes", args.name).get("name") or args.name)
    print(f"keeping {name} warm: a warmup every {args.interval:g}s; Ctrl-C stops", flush=True)
    rounds = failures = 0
    try:
        while args.rounds is None or rounds < args.rounds:
            stamp = time.strftime("%H:%M:%S")
            try:
                state = api.warmup(args.name)
                print(f"[{stamp}] {name}: {describe(state)}", flush=True)
            except APIError as exc:
                if exc.status == 404:
                    raise
                failures += 1
                print(f"[{stamp}] {name}: warmup failed: {exc} (trying again in {args.interval:g}s)", flush=True)
            rounds += 1
            if args.rounds is None or rounds < args.rounds:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        print()
    print(f"stopped keeping {name} warm after {rounds} warmup(s), {failures} failed")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --keep-warm", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = KeepWarmConfig(**vars(parser.parse_args(argv)))

    def go() -> int:
        with Signals(interrupt=True):
            return keep_warm(args)

    run_cli(go, debug=args.debug, prog="deploy.sh --keep-warm")


if __name__ == "__main__":
    main()
