"""`deploy.sh --delete CHUTE` and `--delete-image IMAGE`: deleted with the real `chutes` CLI, reported
deleted only when the API said so.

    python -m tools.commands.delete chutes|images ID [--debug]
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from tools.chutes_cli import require_account, run_chutes
from tools.runtime.errors import WrapperError, run_cli



@dataclass
class DeleteConfig:
    kind: str  # chutes | images
    ref: str
    debug: bool = False


def delete(args: DeleteConfig) -> int:
    require_account()
    singular = args.kind[:-1]
    outcome = run_chutes([args.kind, "delete", args.ref])
    match = re.search(rf"Successfully deleted {singular} (\S+)", outcome.text)
    if outcome.code != 0 or not match:
        raise WrapperError(f"{singular} {args.ref} was not deleted: "
                           + (outcome.errors() or [f"the chutes CLI exited {outcome.code} without a success message"])[-1])
    print(f"deleted {singular} {match.group(1)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --delete|--delete-image", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("chutes", "images"))
    parser.add_argument("ref")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the CLI's debug output")
    args = DeleteConfig(**vars(parser.parse_args(argv)))
    run_cli(lambda: delete(args), debug=args.debug, prog="deploy.sh " + ("--delete" if args.kind == "chutes" else "--delete-image"))


if __name__ == "__main__":
    main()
