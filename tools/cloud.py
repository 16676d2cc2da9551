"""deploy.sh's API actions the `chutes` CLI does not script well: pickers, warmup, keep-warm, logs.

    python -m tools.cloud pick chutes|images [--page N] [--limit N]   # TSV for deploy.sh's pickers
    python -m tools.cloud resolve chutes|images NAME_OR_ID            # "id<TAB>name", or exit 1
    python -m tools.cloud warmup NAME [--timeout S]                   # until hot, with a progress line
    python -m tools.cloud keep-warm NAME --interval S                 # warm it every S seconds, Ctrl-C stops
    python -m tools.cloud logs NAME [--instance ID] [--backfill N]    # tail an instance's log
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from typing import Iterator

from tools import chutes_api
from tools.chutes_api import APIError
from tools.constants import DEFAULT_SERVICE_TIMEOUT
from tools.errors import WrapperError, run_cli

KINDS = ("chutes", "images")


@dataclass
class CloudCommand:
    """One run of this CLI: pick/resolve for deploy.sh's pickers, warmup, keep-warm, logs."""

    command: str
    kind: str = "chutes"
    ref: str = ""
    name: str = ""
    page: int = 0
    limit: int = 10
    timeout: float = DEFAULT_SERVICE_TIMEOUT
    interval: float = 10
    rounds: int | None = None
    instance: str | None = None
    backfill: int = 100
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


def pick(args: CloudCommand) -> int:
    total, items = chutes_api.client().list_objects(args.kind, page=args.page, limit=args.limit)
    print(f"TOTAL\t{total}")
    for item in items:
        print("\t".join(row_of(args.kind, item)))
    return 0


def resolve(args: CloudCommand) -> int:
    item = chutes_api.client().get_object(args.kind, args.ref)
    ident, name, _ = row_of(args.kind, item)
    if not ident:
        raise APIError(f"the API's answer for {args.ref!r} has no id")
    print(f"{ident}\t{name}")
    return 0


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


def warmup(args: CloudCommand) -> int:
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (`kill PID` on deploy.sh, which execs this; a process manager; CI) stops a long
    action as Ctrl-C does; the previous handler comes back after."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def keep_warm(args: CloudCommand) -> int:
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


def logs(args: CloudCommand) -> int:
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
    parser = argparse.ArgumentParser(prog="python -m tools.cloud", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pick", parents=[common])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--page", type=int, default=0)
    p.add_argument("--limit", type=int, default=10)
    p = sub.add_parser("resolve", parents=[common])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("ref")
    p = sub.add_parser("warmup", parents=[common])
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=DEFAULT_SERVICE_TIMEOUT,
                   help=f"seconds to wait for 'hot' (default {DEFAULT_SERVICE_TIMEOUT:g})")
    p.add_argument("--interval", type=float, default=10, help="seconds between checks (default 10)")
    p = sub.add_parser("keep-warm", parents=[common])
    p.add_argument("name")
    p.add_argument("--interval", type=float, required=True)
    p.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    p = sub.add_parser("logs", parents=[common])
    p.add_argument("name")
    p.add_argument("--instance", help="instance id (default: the first active one, or ask)")
    p.add_argument("--backfill", type=int, default=100, help="earlier lines to show first (default 100)")
    args = CloudCommand(**vars(parser.parse_args(argv)))
    action = {"pick": pick, "resolve": resolve, "warmup": warmup, "keep-warm": keep_warm, "logs": logs}[args.command]
    prog = "deploy.sh" if args.command in ("pick", "resolve") else f"deploy.sh --{args.command}"

    def go() -> int:
        with sigterm_like_ctrl_c():
            return action(args)

    run_cli(go, debug=args.debug, prog=prog)


if __name__ == "__main__":
    main()
