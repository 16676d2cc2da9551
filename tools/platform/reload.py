"""`deploy.sh --run MODULE --reload`: the chute restarts when the deploy module, its route manifest or a
Python file of tools/ changes, and says which cords were added, removed or changed.

- Watching: watchfiles, on folders rather than files (editors save by renaming a new file into place,
  which a watch on the old file never sees), not recursively (a recursive watch of the project would
  watch every folder of .venv): the module's and the manifest's folders for those two files, each
  folder of tools/ for its *.py. A batch of saves is one restart; saves during a restart, one more.
- Restarting: the service keeps running (HOST_COMMAND is not restarted, the model not reloaded). This
  process holds the callers' socket for the whole run; a new chute (node and gateway,
  tools/platform/stack.py `start_platform`) starts beside the running one and its gateway takes calls
  on that socket only once its node answers; then the old chute is stopped. Calls never find the port
  closed, and a module that no longer imports leaves the last good chute serving.
- Faster: the next chute's two processes are started in advance (`Standbys`, tools/platform/standby.py)
  with the SDK and the servers imported; a change only makes them import the module and tools/.
- What changed: each gateway describes its cords from the registration plan (GET /_gateway/cords,
  tools/platform/front_door.py); the two descriptions are compared (`diff_cords`).
- A change of HOST_COMMAND or ENTRYPOINT restarts the service too (the whole stack).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tools import deploy_module
from tools.deploy_module import ROOT
from tools.platform.front_door import CORDS_PATH
from tools.platform.stack import Platform, RunConfig, Stack, chute_environment, start_platform, start_stack
from tools.processes import Child
from tools.runtime.constants import chute_ports
from tools.runtime.errors import ServiceError, WrapperError
from tools.runtime.ports import ensure_free
from tools.runtime.routes import choose_manifest, manifest_path
from tools.runtime.sdk.node import PlatformKey

SKIP_FOLDERS = {"__pycache__"}
STEP_MS = 50  # a batch ends after this long without another change (watchfiles' `step`)
DEBOUNCE_MS = 400  # ... or after this long in all (watchfiles' `debounce`)
RESTART_ALL = "restart-all"  # HOST_COMMAND or ENTRYPOINT changed


# --------------------------------------------------------------------------------------------------
# Watching


@dataclass(frozen=True)
class WatchPlan:
    """Folders to watch (not recursively) and which of their files count."""

    folders: tuple[str, ...]
    files: frozenset[str]  # exact paths: the module, its manifest
    trees: tuple[str, ...]  # folders whose *.py count, with a trailing separator

    def wants(self, path: str) -> bool:
        return path in self.files or (path.endswith(".py") and path.startswith(self.trees))


def watch_plan(module: Path, manifest: Path | None, tools: Path = ROOT / "tools") -> WatchPlan:
    files = {module.resolve()} | ({manifest.resolve()} if manifest else set())
    folders = {str(path.parent) for path in files}
    tools = tools.resolve()
    for folder, subfolders, _ in os.walk(tools):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIP_FOLDERS and not name.startswith("."))
        folders.add(folder)
    return WatchPlan(tuple(sorted(folders)), frozenset(str(path) for path in files), (str(tools) + os.sep,))


def module_watch_plan(module: Path) -> WatchPlan:
    """The module, the manifest it reads (or would read, once discovery writes it) and tools/."""
    choice = choose_manifest(module)
    manifest = choice.path if choice.kind == "file" and choice.path else manifest_path(module)
    return watch_plan(module, manifest)


class Watcher:
    """watchfiles in a thread: `changed` is set when a batch of changes arrives; `take()` empties it."""

    def __init__(self, plan: WatchPlan) -> None:
        try:
            import watchfiles  # noqa: F401 - here, so that a missing package is one line before anything starts
        except ImportError:
            raise WrapperError("--reload needs the watchfiles package", "run ./setup.sh (requirements.txt has it)") from None
        self.plan = plan
        self.changed = threading.Event()
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reload-watcher", daemon=True)

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        import watchfiles

        for changes in watchfiles.watch(
            *self.plan.folders, watch_filter=lambda _change, path: self.plan.wants(path), debounce=DEBOUNCE_MS,
            step=STEP_MS, stop_event=self._stop, recursive=False, raise_interrupt=False, yield_on_timeout=True,
            rust_timeout=500,
        ):
            if changes:
                with self._lock:
                    self._paths |= {path for _, path in changes}
                self.changed.set()

    def take(self) -> set[str]:
        with self._lock:
            paths, self._paths = self._paths, set()
            self.changed.clear()
        return paths

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


# --------------------------------------------------------------------------------------------------
# What changed


def diff_cords(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """One line per cord added (+), removed (-) or changed (~, with what changed in it)."""
    lines = [f"+ {key}{_summary(new[key])}" for key in new if key not in old]
    lines += [f"- {key}" for key in old if key not in new]
    for key in new:
        if key in old and old[key] != new[key]:
            changes = [f"{name} {_text(old[key].get(name))} -> {_text(new[key].get(name))}"
                       for name in dict.fromkeys([*old[key], *new[key]]) if old[key].get(name) != new[key].get(name)]
            lines.append(f"~ {key}: " + "; ".join(changes))
    return lines


def _summary(item: dict) -> str:
    if "forwards to" in item:
        return f" -> {item['forwards to']}"
    if "routes" in item:
        return " -> catch-all: " + ", ".join(item["routes"])
    return f" ({item.get('cord')} cord {item.get('function')})"


def _text(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)


def one_line(exc: BaseException) -> str:
    """An error as one line: a child's own one-line error from its last output, if it printed one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines[1:]):
        if "error:" in line or line.split(":", 1)[0].endswith(("Error", "Exception")):
            return re.sub(r"^(?:node|gateway): error: ", "", line)
    return lines[-1] if lines else type(exc).__name__


def describe(platform: Platform) -> dict[str, dict]:
    with urllib.request.urlopen(platform.control_url + CORDS_PATH, timeout=10) as answer:
        return json.loads(answer.read())


# --------------------------------------------------------------------------------------------------
# Processes started in advance


class Standby:
    """One `python -m tools.platform.standby` waiting, with the environment, folder and inherited file
    descriptors the next chute's process will have; `go(argv)` makes it that process."""

    def __init__(self, name: str, env: dict[str, str], cwd: Any, pass_fds: tuple[int, ...] = (), **output: Any):
        read, self._control = os.pipe()
        try:
            self.child = Child(name, [sys.executable, "-m", "tools.platform.standby", str(read)], env, cwd,
                               pass_fds=(read, *pass_fds), **output)
        except BaseException:
            os.close(self._control)
            raise
        finally:
            os.close(read)
        self.env, self.cwd, self.pass_fds = env, str(cwd), tuple(pass_fds)

    def fits(self, argv: list[str], env: dict[str, str], cwd: Any, pass_fds: tuple[int, ...]) -> bool:
        return (argv[:2] == [sys.executable, "-m"] and env == self.env and str(cwd) == self.cwd
                and tuple(pass_fds) == self.pass_fds and not self.child.exited())

    def go(self, argv: list[str], **output: Any) -> Child:
        for name, value in output.items():  # echo, log, show: as a new Child would have them
            setattr(self.child, name, value)
        with os.fdopen(self._control, "w") as control:
            control.write(json.dumps(argv[1:]) + "\n")
        return self.child

    def discard(self) -> None:
        try:
            os.close(self._control)  # end of input: it exits by itself
        except OSError:
            pass
        self.child.stop(2.0)


class Standbys:
    """A standby for the next chute's node and gateway, and `spawn`, which start_platform calls instead
    of starting a new Child (it falls back to one when a standby does not fit)."""

    def __init__(self, platform_args: dict[str, Any]) -> None:
        self.key = PlatformKey.generate()
        env = chute_environment(platform_args["env"], self.key)
        listen = platform_args.get("listen")
        output = dict(echo=platform_args.get("echo", False) and platform_args.get("verbose", True))
        self.ready = {
            "node": Standby("node", env, platform_args["directory"], **output),
            "gateway": Standby("gateway", env, platform_args["directory"],
                               (listen.fileno(),) if listen is not None else (), **output),
        }

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Any, *, pass_fds: tuple[int, ...] = (),
              **output: Any) -> Child:
        standby = self.ready.pop(name, None)
        if standby is not None:
            if standby.fits(argv, env, cwd, pass_fds):
                return standby.go(argv, **output)
            standby.discard()
        return Child(name, argv, env, cwd, pass_fds=pass_fds, **output)

    def discard(self) -> None:
        for standby in self.ready.values():
            standby.discard()
        self.ready.clear()


# --------------------------------------------------------------------------------------------------
# Restarting


def callers_socket(port: int) -> socket.socket:
    """The chute port, bound by this process for the whole run: every gateway takes calls on it."""
    ensure_free({port: "chute port (--port)"})
    try:
        return socket.create_server(("127.0.0.1", port))
    except OSError as exc:
        raise WrapperError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
                           "stop what listens there, or pick another port") from None


@dataclass
class Reloader:
    """Serves one stack (service and chute), restarting its chute on every batch of changes."""

    stack: Stack
    watcher: Watcher
    say: Callable[[str], None] = lambda text: print(text, flush=True)
    cords: dict[str, dict] = field(default_factory=dict)
    _generation: contextlib.ExitStack | None = None  # the running chute, once it is not the first
    _standbys: Standbys | None = None

    def __post_init__(self) -> None:
        self.cords = describe(self.stack.platform)
        self.commands = (self.stack.module.host_command, self.stack.module.entrypoint)
        self._standbys = Standbys(self.stack.platform_args)

    def serve(self) -> str | None:
        """Until stopped (None) or a change that needs the service restarted too (RESTART_ALL)."""
        try:
            while not self.stack.stop.is_set():
                self.stack.check()
                if self.watcher.changed.wait(0.2):
                    if self.reload(self.watcher.take()) == RESTART_ALL:
                        return RESTART_ALL
            return None
        finally:
            if self._standbys is not None:
                self._standbys.discard()
            if self._generation is not None:
                self._generation.close()

    def reload(self, paths: set[str]) -> str | None:
        started = time.monotonic()
        self.say("reload: " + ", ".join(_relative(path) for path in sorted(paths)) + " changed")
        generation = contextlib.ExitStack()
        standbys, self._standbys = self._standbys, None
        args = dict(self.stack.platform_args)
        echo, quiet = args["echo"], not args["verbose"]
        args["echo"] = echo and not quiet  # a new chute's start is told by the lines below (its log once it serves)
        try:
            platform = generation.enter_context(start_platform(
                port=0, logging_port=0, key=standbys.key, spawn=standbys.spawn, **args))
            for child in platform.children:
                child.echo = echo
            cords = describe(platform)
        except (ServiceError, WrapperError, OSError) as exc:
            generation.close()
            self.say(f"reload: {one_line(exc)}; the last good chute keeps serving")
            return None
        finally:
            standbys.discard()
            self._standbys = Standbys(self.stack.platform_args)  # ready for the next change
        took = time.monotonic() - started  # the new chute takes calls from now on
        old, self.stack.platform = self.stack.platform, platform
        previous, self._generation = self._generation, generation
        for child in old.children:
            child.echo = echo and not quiet  # its stop is no news
        old.stop()
        if previous is not None:
            previous.close()
        for line in diff_cords(self.cords, cords) or ["no cord changed"]:
            self.say(f"reload:   {line}")
        self.cords = cords
        service = next((child for child in self.stack.children if child.name == "service"), None)
        kept = f"; the service kept running (pid {service.proc.pid})" if service is not None else ""
        self.say(f"reload: the new chute took calls {took:.1f}s after the change{kept}")
        return RESTART_ALL if self.commands_changed() else None

    def commands_changed(self) -> bool:
        """HOST_COMMAND or ENTRYPOINT differ from the running service's (the module's settings, read here
        without its routes; a module that fails after its settings is judged by the chute alone)."""
        try:
            settings = deploy_module.load(self.stack.module.path, settings_only=True, keep=False)
            if settings.import_problem is not None or (settings.host_command, settings.entrypoint) == self.commands:
                return False
        except WrapperError:
            return False
        self.say("reload: HOST_COMMAND or ENTRYPOINT changed: restarting the service and the chute")
        return True


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def run_with_reload(config: RunConfig, stop: threading.Event, print_ready: Callable[[Stack], None]) -> int:
    """--run --reload: start the stack, serve it with a Reloader, start it again when the service must
    restart; a stack that fails to start again waits for the next change."""
    port, _ = chute_ports(config.port, config.logging_port)
    module = deploy_module.locate(config.module)
    with contextlib.closing(callers_socket(port)) as listen:
        watcher = Watcher(module_watch_plan(module)).start()
        try:
            first = True
            while not stop.is_set():
                try:
                    with start_stack(config, stop, listen=listen) as stack:
                        print_ready(stack)
                        print(f"--reload: watching {_relative(str(module))}, its manifest and tools/", flush=True)
                        first = False
                        if Reloader(stack, watcher).serve() != RESTART_ALL:
                            break
                except (ServiceError, WrapperError) as exc:
                    if first:
                        raise
                    print(f"reload: {one_line(exc)}; save a fix to try again", flush=True)
                    while not stop.is_set() and not watcher.changed.wait(0.2):
                        pass
                    watcher.take()
        finally:
            watcher.stop()
    print("stopping...", flush=True)
    return 130


@contextlib.contextmanager
def watching(module: Path) -> Iterator[Watcher]:
    """A watcher of the module, its manifest and tools/, stopped on the way out (for tests and bench)."""
    watcher = Watcher(module_watch_plan(module)).start()
    try:
        yield watcher
    finally:
        watcher.stop()
