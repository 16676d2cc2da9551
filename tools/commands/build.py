"""`deploy.sh --build MODULE`: the wrapper image, built by the real `chutes build` (locally with docker or
podman, or remotely), then checked to start the chute runtime.

    python -m tools.commands.build MODULE [--local] [--skip-check] [--debug]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools import deploy_module
from tools.chutes_cli import INSPECTO_PROBE, module_env, require_account, run_chutes
from tools.runtime.constants import DEFAULT_SERVICE_TIMEOUT, MANIFEST_ENV
from tools.runtime.errors import WrapperError, run_cli



@dataclass
class BuildConfig:
    module: str
    local: bool = False
    skip_check: bool = False
    debug: bool = False


def build(args: BuildConfig) -> int:
    path = deploy_module.locate(args.module)
    name, directory = path.stem, path.parent
    env = module_env(path)
    if MANIFEST_ENV in env:
        print(f"route manifest: {env[MANIFEST_ENV]}")
    command = ["build", f"{name}:chute"] + (["--local"] if args.local else ["--wait"]) + (["--debug"] if args.debug else [])
    if not args.local:
        require_account()
        outcome = run_chutes(command, cwd=directory, env=env, debug=args.debug)
        if outcome.code != 0 or "Uploaded image package" not in outcome.text:
            raise outcome.failure("the remote build")
        match = re.search(r"image_id=(\S+)", outcome.text)
        print(f"image uploaded for a remote build{f' (image id {match.group(1)})' if match else ''}; "
              "see it with ./deploy.sh --list-images")
        return 0
    engine = local_engine()
    with docker_on_path(engine, env):
        outcome = run_chutes(command, cwd=directory, env=env, debug=args.debug)
    if outcome.code != 0:
        raise outcome.failure("the local build")
    if args.skip_check:
        return 0
    image = image_ref(path, env)
    print(f"built {image}; checking that it can start the chute runtime ...", flush=True)
    check_runtime(engine, image)
    print(f"ok: {image} starts the chute runtime (chutes run --generate-inspecto-hash)")
    return 0


def local_engine():
    from tools.containers import detect_engine

    return detect_engine()


class docker_on_path:
    """`chutes build --local` runs `docker`: when the engine is another command (podman, or docker with
    flags from CHUTES_CONTAINER_ENGINE), put a `docker` shim for it first on PATH for the build."""

    def __init__(self, engine, env: dict[str, str]):
        self.engine, self.env, self.dir = engine, env, None

    def __enter__(self):
        if tuple(self.engine.argv) == ("docker",):
            return self
        self.dir = tempfile.mkdtemp(prefix="chutes-wrappers-docker-")
        shim = Path(self.dir) / "docker"
        shim.write_text("#!/bin/sh\nexec " + shlex.join(self.engine.argv) + ' "$@"\n')
        shim.chmod(0o700)
        self.env["PATH"] = self.dir + os.pathsep + self.env.get("PATH", "")
        return self

    def __exit__(self, *exc):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def image_ref(path: Path, env: dict[str, str]) -> str:
    """`name:tag` as `chutes build --local` tagged it (the module's image)."""
    if env.get(MANIFEST_ENV):
        os.environ[MANIFEST_ENV] = env[MANIFEST_ENV]
    module = deploy_module.load(path)
    if isinstance(getattr(module.chute, "image", None), str):
        raise WrapperError(f"{path.name}'s chute has no image built from the module")
    return module.image_ref


def check_runtime(engine, image: str) -> None:
    """What Chutes does first with an image: start its runtime (the original tool's inspecto check)."""
    proc = engine.call("run", "--rm", "--pull=never", "--entrypoint", "chutes", image, *INSPECTO_PROBE, timeout=DEFAULT_SERVICE_TIMEOUT)
    if proc.returncode == 0:
        return
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    if proc.returncode == 139:
        raise WrapperError(f"the chute runtime crashes in {image} (segfault in chutes-inspecto.so):\n{tail}",
                           "Chutes would reject this image; conda Pythons do this: use a base with the distro's Python")
    raise WrapperError(f"{image} cannot start the chute runtime (exit {proc.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --build", description=__doc__.splitlines()[0])
    parser.add_argument("module")
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--skip-check", action="store_true", help="no runtime check after a local build")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the CLI's debug output")
    args = BuildConfig(**vars(parser.parse_args(argv)))
    run_cli(lambda: build(args), debug=args.debug, prog="deploy.sh --build")


if __name__ == "__main__":
    main()
