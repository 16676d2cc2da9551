"""`deploy.sh --deploy MODULE`: the chute deployed with the real `chutes deploy`, reported deployed only
when the API said so.

    python -m tools.commands.deploy MODULE [--accept-fee] [--public] [--debug]
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from tools import deploy_module
from tools.chutes_cli import module_env, require_account, run_chutes
from tools.runtime.errors import run_cli



@dataclass
class DeployConfig:
    module: str
    accept_fee: bool = False
    public: bool = False
    debug: bool = False


def deploy(args: DeployConfig) -> int:
    path = deploy_module.locate(args.module)
    name, directory = path.stem, path.parent
    require_account()
    env = module_env(path)
    command = ["deploy", f"{name}:chute"] + [flag for flag, on in (("--accept-fee", args.accept_fee),
                                                                  ("--public", args.public),
                                                                  ("--debug", args.debug)) if on]
    outcome = run_chutes(command, cwd=directory, env=env, debug=args.debug)
    match = re.search(r"Successfully deployed chute (\S+) chute_id='?([^'\s]+)'? version='?([^'\s]+)", outcome.text)
    if outcome.code != 0 or not match:
        raise outcome.failure(f"deploying {name}")
    print(f"deployed chute {match.group(1)} (id {match.group(2)}, version {match.group(3)}); "
          f"warm it up with ./deploy.sh --warmup {match.group(1)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --deploy", description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("--accept-fee", action="store_true")
    parser.add_argument("--public", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the CLI's debug output")
    args = DeployConfig(**vars(parser.parse_args(argv)))
    run_cli(lambda: deploy(args), debug=args.debug, prog="deploy.sh --deploy")


if __name__ == "__main__":
    main()
