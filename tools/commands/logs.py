"""`deploy.sh --logs CHUTE`: an instance's log, its last lines then live, until Ctrl-C.

    python -m tools.commands.logs NAME [--instance ID] [--backfill N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tools import chutes_api
from tools.processes import Signals
from tools.runtime.errors import WrapperError, run_cli



@dataclass
class LogsConfig:
    name: str
    instance: str | None = None
    backfill: int = 100
    debug: bool = False


def choose_instance(instances: list[dict], wanted: str | None) -> dict:
    if wanted:
        for inst in instances:
            if inst.get("instance_id") == wanted:
                return inst
        raise WrapperError(f"no instance {wanted!r} in this chute",
                           "instances: " + ", ".join(str(i.get("instance_id")) for i in instances))
    ranked = sorted(instances, key=lambda i: (not i.get("active"), not i.get("verified")))
    if len(ranked) == 1 or not sys.stdin.isatty():
        return ranked[0]
    print("Instances:")
    for number, inst in enumerate(ranked, 1):
        flags = ", ".join(word for word in ("active", "verified") if inst.get(word)) or "starting"
        print(f"  {number}) {inst.get('instance_id')}  ({flags}, {inst.get('region') or 'n/a'})")
    try:
        answer = input(f"Instance (1-{len(ranked)}) [1]: ").strip() or "1"
    except EOFError:
        answer = "1"
    if not answer.isdigit() or not 1 <= int(answer) <= len(ranked):
        raise WrapperError(f"no instance {answer!r}")
    return ranked[int(answer) - 1]


def logs(args: LogsConfig) -> int:
    api = chutes_api.client(prefer_api_key=True)
    chute = api.get_object("chutes", args.name)
    name = str(chute.get("name") or args.name)
    instances = [i for i in chute.get("instances") or [] if isinstance(i, dict) and i.get("instance_id")]
    if not instances:
        raise WrapperError(f"{name} has no running instance, so there is no log to show",
                           f"start one with ./deploy.sh --warmup {args.name}")
    instance = choose_instance(instances, args.instance)
    ident = str(instance["instance_id"])
    via = "API key" if api.api_key else "hotkey"
    print(f"logs of {name}, instance {ident} (last {args.backfill} lines, then live; {via}); Ctrl-C stops", flush=True)
    count = 0
    try:
        for line in api.instance_logs(ident, backfill=args.backfill):
            print(line, flush=True)
            count += 1
    except KeyboardInterrupt:
        print()
        return 0
    print(f"the log stream of instance {ident} ended ({count} line(s))")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --logs", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--instance", help="instance id (default: the first active one, or ask)")
    parser.add_argument("--backfill", type=int, default=100, help="earlier lines to show first (default 100)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = LogsConfig(**vars(parser.parse_args(argv)))

    def go() -> int:
        with Signals(interrupt=True):
            return logs(args)

    run_cli(go, debug=args.debug, prog="deploy.sh --logs")


if __name__ == "__main__":
    main()
