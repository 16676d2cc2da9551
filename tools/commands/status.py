"""`deploy.sh --status CHUTE`: a chute's state, as `chutes chutes get` shows it.

    python -m tools.commands.status NAME_OR_ID [--debug]
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from tools.chutes_cli import require_account, run_chutes
from tools.runtime.errors import run_cli



@dataclass
class StatusConfig:
    ref: str
    debug: bool = False


def status(args: StatusConfig) -> int:
    require_account()
    outcome = run_chutes(["chutes", "get", args.ref])
    if outcome.code != 0 or not re.search(r"- chute \S+:$", outcome.text, re.M):
        raise outcome.failure(f"getting the status of {args.ref!r}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --status", description=__doc__.splitlines()[0])
    parser.add_argument("ref")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the CLI's debug output")
    args = StatusConfig(**vars(parser.parse_args(argv)))
    run_cli(lambda: status(args), debug=args.debug, prog="deploy.sh --status")


if __name__ == "__main__":
    main()
