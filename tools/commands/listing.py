"""`deploy.sh --list-chutes` and `--list-images`: the account's chutes or images, as the `chutes` CLI lists them.

    python -m tools.commands.listing chutes|images [--page N] [--limit N]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tools.chutes_cli import require_account, run_chutes
from tools.runtime.errors import run_cli



@dataclass
class ListConfig:
    kind: str  # chutes | images
    page: int = 0
    limit: int = 25
    debug: bool = False


def list_objects(args: ListConfig) -> int:
    require_account()
    outcome = run_chutes([args.kind, "list", "--page", str(args.page), "--limit", str(args.limit)])
    if outcome.code != 0 or f"Failed to list {args.kind}" in outcome.text or "Found " not in outcome.text:
        raise outcome.failure(f"listing {args.kind}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --list-chutes|--list-images", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("chutes", "images"))
    parser.add_argument("--page", type=int, default=0)
    parser.add_argument("--limit", type=int, default=25)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the CLI's debug output")
    args = ListConfig(**vars(parser.parse_args(argv)))
    run_cli(lambda: list_objects(args), debug=args.debug, prog=f"deploy.sh --list-{args.kind}")


if __name__ == "__main__":
    main()
