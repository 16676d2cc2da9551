"""Run the real `chutes` CLI for deploy.sh and check what it says, not only its exit code.

Several `chutes` commands exit 0 after the API refused them (they log an error and return), so every
run here is judged by its output: "deployed" or "deleted" is reported only when the CLI printed the
API's success. The SDK's y/n prompts are answered here (deploy.sh has already asked the user, or was
given --yes), so scripted runs never wait for a keyboard.

    python -m tools.chutes_cli list chutes|images [--page N] [--limit N]
    python -m tools.chutes_cli status NAME_OR_ID
    python -m tools.chutes_cli delete chutes|images ID
    python -m tools.chutes_cli build MODULE [--local] [--debug]
    python -m tools.chutes_cli deploy MODULE [--accept-fee] [--public] [--debug]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools import chutes_api, deploy_module
from tools.constants import DEFAULT_SERVICE_TIMEOUT, MANIFEST_ENV
from tools.deploy_module import ROOT
from tools.errors import WrapperError, run_cli
from tools.processes import chutes_executable
from tools.routes import manifest_path
from tools.wrapper_image import SETUP_ERROR

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT_RE = re.compile(r"\(y/n\):?\s*$")
LOG_ERROR_RE = re.compile(r"\|\s*(?:ERROR|CRITICAL)\s*\|[^|]*?- (.*)$")
TRACEBACK_START = "Traceback (most recent call last)"
# The CLI's chatter that says nothing to a deploy.sh user (shown with --debug).
NOISE_RE = re.compile(r"\|\s*DEBUG\s*\||- Loading chutes config from ")
INSPECTO_PROBE = ("run", "does_not_exist:chute", "--generate-inspecto-hash")


@dataclass
class Outcome:
    """What one `chutes` run printed (ANSI stripped) and how it exited."""

    argv: list[str]
    code: int
    text: str

    def errors(self) -> list[str]:
        """The messages of the CLI's ERROR log lines, then the last line of a traceback, if any."""
        found = [m.group(1).strip() for line in self.text.splitlines() if (m := LOG_ERROR_RE.search(line))]
        if TRACEBACK_START in self.text:
            tail = [line.strip() for line in self.text.split(TRACEBACK_START)[-1].splitlines() if line.strip()]
            if tail:
                found.append(tail[-1])
        return found

    def failure(self, what: str) -> WrapperError:
        # Our image setup script's own error line (tools/wrapper_image.py) says more than the
        # builder's "exit status 1" that follows it.
        ours = [line.split(SETUP_ERROR, 1)[1].strip() for line in self.text.splitlines() if SETUP_ERROR in line]
        errors = ours or self.errors()
        reason = errors[-1] if errors else (f"exit status {self.code}" if self.code else "no success message")
        return WrapperError(f"{what} failed: {reason}")


def answer_for(prompt: str) -> str:
    """deploy.sh confirmed the action already: yes to the SDK's confirmations, no to 'see all files?'."""
    return "n" if "see the rest" in prompt else "y"


def run_chutes(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
               echo: bool = True, debug: bool = False) -> Outcome:
    """Run `chutes ARGS`, echoing its output live, answering its y/n prompts, capturing everything.

    A traceback is captured but not echoed (its last line becomes the error) unless debug is set.
    The CLI talks to the API our own requests go to (CHUTES_API_URL wins; chutes_api.cli_env).
    """
    with chutes_api.cli_env(os.environ if env is None else env) as cli_env:
        return _run_chutes(args, cwd, cli_env, echo, debug)


def _run_chutes(args: list[str], cwd: Path | None, env: dict[str, str], echo: bool, debug: bool) -> Outcome:
    argv = [chutes_executable(), *args]
    child_env = dict(env)
    child_env.update(PYTHONUNBUFFERED="1", TYPER_STANDARD_TRACEBACK="1", NO_COLOR="1")
    if sys.stdout.isatty():
        child_env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    pythonpath = child_env.get("PYTHONPATH")
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), pythonpath]))
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        raise WrapperError(f"cannot run the chutes CLI ({argv[0]}): {exc.strerror or exc}", "run ./setup.sh") from None
    assert proc.stdin is not None and proc.stdout is not None
    captured: list[str] = []
    pending = ""  # the current, unfinished line: a prompt waits there for its answer
    quiet = False
    fd = proc.stdout.fileno()
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text = ANSI_RE.sub("", chunk.decode("utf-8", "replace")).replace("\r", "")
            captured.append(text)
            lines = (pending + text).split("\n")
            pending = lines.pop()
            for line in lines:
                quiet = quiet or (TRACEBACK_START in line and not debug)
                if echo and not quiet and (debug or not NOISE_RE.search(line)):
                    print(line, flush=True)
            if PROMPT_RE.search(pending):
                if echo:
                    print(pending + answer_for(pending), flush=True)
                try:
                    proc.stdin.write((answer_for(pending) + "\n").encode())
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass
                pending = ""
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    if pending and echo and not quiet:
        print(pending, flush=True)
    return Outcome(argv, proc.wait(), "".join(captured))


def require_account() -> None:
    chutes_api.load_account(required=True)


# --------------------------------------------------------------------------------------------------
# Commands


@dataclass
class ChutesCommand:
    """One run of this CLI: which command, on what, with which flags."""

    command: str
    kind: str = "chutes"  # list, delete: chutes | images
    ref: str = ""  # status, delete: a name or id
    module: str = ""  # build, deploy
    page: int = 0
    limit: int = 25
    local: bool = False
    skip_check: bool = False
    accept_fee: bool = False
    public: bool = False
    debug: bool = False


def list_objects(args: ChutesCommand) -> int:
    require_account()
    outcome = run_chutes([args.kind, "list", "--page", str(args.page), "--limit", str(args.limit)])
    if outcome.code != 0 or f"Failed to list {args.kind}" in outcome.text or "Found " not in outcome.text:
        raise outcome.failure(f"listing {args.kind}")
    return 0


def status(args: ChutesCommand) -> int:
    require_account()
    outcome = run_chutes(["chutes", "get", args.ref])
    if outcome.code != 0 or not re.search(r"- chute \S+:$", outcome.text, re.M):
        raise outcome.failure(f"getting the status of {args.ref!r}")
    return 0


def delete(args: ChutesCommand) -> int:
    require_account()
    singular = args.kind[:-1]
    outcome = run_chutes([args.kind, "delete", args.ref])
    match = re.search(rf"Successfully deleted {singular} (\S+)", outcome.text)
    if outcome.code != 0 or not match:
        raise WrapperError(f"{singular} {args.ref} was not deleted: "
                           + (outcome.errors() or [f"the chutes CLI exited {outcome.code} without a success message"])[-1])
    print(f"deleted {singular} {match.group(1)}")
    return 0


def module_env(module_file: Path) -> dict[str, str]:
    """Our environment, naming the module's manifest (so `chutes build` reads the one beside it)."""
    env = dict(os.environ)
    manifest = manifest_path(module_file)
    if manifest.is_file() and not env.get(MANIFEST_ENV):
        env[MANIFEST_ENV] = str(manifest)
    return env


def build(args: ChutesCommand) -> int:
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


def deploy(args: ChutesCommand) -> int:
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
    parser = argparse.ArgumentParser(prog="python -m tools.chutes_cli", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and the CLI's debug output")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common])
    p.add_argument("kind", choices=("chutes", "images"))
    p.add_argument("--page", type=int, default=0)
    p.add_argument("--limit", type=int, default=25)
    p = sub.add_parser("status", parents=[common])
    p.add_argument("ref")
    p = sub.add_parser("delete", parents=[common])
    p.add_argument("kind", choices=("chutes", "images"))
    p.add_argument("ref")
    p = sub.add_parser("build", parents=[common])
    p.add_argument("module")
    p.add_argument("--local", action="store_true")
    p.add_argument("--skip-check", action="store_true", help="no runtime check after a local build")
    p = sub.add_parser("deploy", parents=[common])
    p.add_argument("module")
    p.add_argument("--accept-fee", action="store_true")
    p.add_argument("--public", action="store_true")
    args = ChutesCommand(**vars(parser.parse_args(argv)))
    action = {"list": list_objects, "status": status, "delete": delete, "build": build, "deploy": deploy}[args.command]
    prog = {"list": f"--list-{getattr(args, 'kind', '')}", "delete": "--delete" if getattr(args, "kind", "") == "chutes"
            else "--delete-image"}.get(args.command, f"--{args.command}")
    run_cli(lambda: action(args), debug=args.debug, prog=f"deploy.sh {prog}")


if __name__ == "__main__":
    main()
