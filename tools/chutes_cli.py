"""The real `chutes` CLI, run for deploy.sh's actions and judged by what it says, not only its exit code.

Several `chutes` commands exit 0 after the API refused them (they log an error and return), so every
run here is judged by its output (`Outcome`): the actions (tools/commands/build.py, deploy.py,
listing.py, status.py, delete.py) report "deployed" or "deleted" only when the CLI printed the API's
success. The SDK's y/n prompts are answered here (deploy.sh has already asked the user, or was
given --yes), so scripted runs never wait for a keyboard. The API itself: tools/chutes_api.py.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tools import chutes_api
from tools.runtime.constants import MANIFEST_ENV
from tools.deploy_module import ROOT
from tools.runtime.errors import WrapperError
from tools.processes import chutes_executable
from tools.runtime.routes import manifest_path
from tools.runtime.image import SETUP_ERROR

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
        # Our image setup script's own error line (tools/runtime/image.py) says more than the
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


def module_env(module_file: Path) -> dict[str, str]:
    """Our environment, naming the module's manifest (so `chutes build` reads the one beside it)."""
    env = dict(os.environ)
    manifest = manifest_path(module_file)
    if manifest.is_file() and not env.get(MANIFEST_ENV):
        env[MANIFEST_ENV] = str(manifest)
    return env
