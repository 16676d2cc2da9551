"""deploy.sh's pickers: a page of the account's chutes or images as TSV, or one of them by name or id.

    python -m tools.commands.pick list chutes|images [--page N] [--limit N]   # TOTAL<TAB>n, then id<TAB>name<TAB>status
    python -m tools.commands.pick resolve chutes|images NAME_OR_ID       # id<TAB>name, or exit 1
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tools import chutes_api
from tools.chutes_api import APIError
from tools.processes import Signals
from tools.runtime.errors import run_cli

KINDS = ("chutes", "images")



@dataclass
class PickConfig:
    command: str  # list | resolve
    kind: str = "chutes"
    ref: str = ""
    page: int = 0
    limit: int = 10
    debug: bool = False


def clean(value: object) -> str:
    """One TSV cell: no tabs or line breaks can reach deploy.sh's `read`."""
    return " ".join(str(value if value is not None else "").split())


def row_of(kind: str, item: dict) -> tuple[str, str, str]:
    if kind == "chutes":
        status = "hot" if item.get("hot") else "cold"
        return clean(item.get("chute_id")), clean(item.get("name")), status
    name = f"{clean(item.get('name'))}:{clean(item.get('tag'))}"
    return clean(item.get("image_id")), name, clean(item.get("status"))


def pick(args: PickConfig) -> int:
    total, items = chutes_api.client().list_objects(args.kind, page=args.page, limit=args.limit)
    print(f"TOTAL\t{total}")
    for item in items:
        print("\t".join(row_of(args.kind, item)))
    return 0


def resolve(args: PickConfig) -> int:
    item = chutes_api.client().get_object(args.kind, args.ref)
    ident, name, _ = row_of(args.kind, item)
    if not ident:
        raise APIError(f"the API's answer for {args.ref!r} has no id")
    print(f"{ident}\t{name}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.commands.pick", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--page", type=int, default=0)
    p.add_argument("--limit", type=int, default=10)
    p = sub.add_parser("resolve", parents=[common])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("ref")
    args = PickConfig(**vars(parser.parse_args(argv)))
    action = pick if args.command == "list" else resolve

    def go() -> int:
        with Signals(interrupt=True):
            return action(args)

    run_cli(go, debug=args.debug, prog="deploy.sh")


if __name__ == "__main__":
    main()
