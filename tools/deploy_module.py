"""How a deploy module is found, imported, checked, and which route manifest it reads.

Every tool that takes MODULE uses this (in the spirit of uvicorn's `importer.py`), and deploy.sh asks it
(`python -m tools.deploy_module locate MODULE`) instead of repeating the rules:

- `deploy_x`, `deploy_x.py`: beside deploy.sh, else in the current directory; a path (with a `/`) is
  relative to the current directory. The name must be what `chutes run NAME:chute` accepts.
- `load(..., settings_only=True)` imports with CHUTES_SKIP_ROUTE_REGISTRATION=1 and tolerates a failure
  after the settings (discovery needs only them); otherwise the module is imported as `chutes run`
  would, and any failure is one line naming the module.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from tools.runtime.constants import PORT_MAX, PORT_MIN, SKIP_REGISTRATION_ENV, is_port
from tools.runtime.errors import ManifestError, UsageError, WrapperError, run_cli
from tools.runtime.routes import manifest_path

ROOT = Path(__file__).resolve().parent.parent
# What `chutes run MODULE:chute` accepts as a module name (chutes.entrypoint._shared.CHUTE_REF_RE).
MODULE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$", re.I)
NAME_HINT = "name it like deploy_myservice.py: letters, digits and '_', starting with a letter"


def locate(arg: str, cwd: Path | None = None) -> Path:
    """The deploy module file that `arg` names (see the module docstring for the rule)."""
    cwd = Path.cwd() if cwd is None else cwd
    raw = Path(arg if arg.endswith(".py") else arg + ".py")
    if "/" in arg:
        candidates = [raw if raw.is_absolute() else cwd / raw]
    else:
        candidates = [ROOT / raw, cwd / raw]
    name = raw.stem
    if not MODULE_NAME_RE.match(name):
        raise UsageError(f"{_shown(arg)} is not a deploy module name", NAME_HINT)
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate.resolve()
        except OSError as exc:  # ENAMETOOLONG: no file system holds a name (or path) that long
            raise UsageError(f"{_shown(arg)} ({len(arg)} characters) cannot name a file here: {exc.strerror}",
                             NAME_HINT) from None
    where = " or ".join(sorted({str(c.parent) for c in candidates}))
    raise WrapperError(f"no deploy module {raw.name} in {where}", "copy deploy_example.py to start one")


def _shown(arg: str, limit: int = 60) -> str:
    """`arg` quoted for an error line, cut short when it is long."""
    return repr(arg) if len(arg) <= limit else repr(arg[:limit]) + "..."


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The module's import-time INFO lines (registration, manifest) are noise for the CLIs."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - loguru is a runtime dependency
        yield
        return
    logger.remove()
    sink = logger.add(sys.stderr, level="WARNING", format="{message}")
    try:
        yield
    finally:
        logger.remove(sink)
        logger.add(sys.stderr)


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


def _import(path: Path, keep: bool, tolerant: bool) -> tuple[ModuleType, str | None]:
    """Execute the module file; returns it and the one-line failure of its code, if any.

    Our own one-line errors (a bad static route, say) pass through unless `tolerant`."""
    name = path.stem
    for entry in (str(path.parent), str(ROOT)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise WrapperError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # `chutes run` and pickling find the module by name
    problem = None
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise WrapperError(f"{path.name} line {exc.lineno}: {exc.msg}") from None
    except WrapperError as exc:
        if not tolerant:
            raise
        problem = str(exc).splitlines()[0]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # user code: anything can happen at import
        problem = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        if not keep or problem is not None:
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module, problem


@dataclass
class DeployModule:
    """An imported deploy module and its settings, each checked when read."""

    path: Path
    module: ModuleType
    import_problem: str | None = None  # settings_only: what the module raised after its settings

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def ref(self) -> str:
        """How hints name the module: its name when it is beside deploy.sh, else its path."""
        return self.name if self.directory == ROOT else str(self.path)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def manifest_path(self) -> Path:
        """Where discovery writes, and the module reads by default, its route manifest."""
        return manifest_path(self.path)

    def get(self, var: str, default: Any = None) -> Any:
        return getattr(self.module, var, default)

    def _missing(self, var: str, hint: str) -> WrapperError:
        if self.import_problem:
            return WrapperError(f"{self.path.name} failed before defining {var}: {self.import_problem}")
        return WrapperError(f"{self.path.name} has no {var}", hint)

    # The settings -----------------------------------------------------------------------------------

    @property
    def base_image(self) -> str:
        image = self.get("CHUTE_BASE_IMAGE")
        if not isinstance(image, str) or not image.strip():
            raise self._missing("CHUTE_BASE_IMAGE", "set CHUTE_BASE_IMAGE = 'registry/image:tag', the image to run")
        return image.strip()

    @property
    def chute_name(self) -> str:
        return str(self.get("CHUTE_NAME") or self.name)

    def ports(self, required: bool = True) -> list[int]:
        value = self.get("SERVICE_PORTS")
        if value is None:
            value = []
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise WrapperError(f"{self.path.name}: SERVICE_PORTS must be a list of port numbers, got {type(value).__name__}")
        ports: list[int] = []
        for item in value:
            number = int(item) if isinstance(item, str) and item.isdigit() else item
            if not is_port(number):
                raise WrapperError(f"{self.path.name}: SERVICE_PORTS entry {item!r} is not a port number {PORT_MIN}-{PORT_MAX}")
            if number not in ports:
                ports.append(number)
        if required and not ports:
            raise self._missing("SERVICE_PORTS", "set SERVICE_PORTS = [<port the service listens on>]")
        return ports

    @property
    def env(self) -> dict[str, str]:
        value = self.get("CHUTE_ENV")
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise WrapperError(f"{self.path.name}: CHUTE_ENV must be a dict of NAME: value")
        env = {}
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, (str, int, float, bool)):
                raise WrapperError(f"{self.path.name}: CHUTE_ENV[{key!r}] must be a string (or number)")
            env[key] = str(item)
        return env

    def _command(self, var: str) -> list[str] | None:
        value = self.get(var)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                words = shlex.split(value)
            except ValueError as exc:
                raise WrapperError(f"{self.path.name}: {var} cannot be split like a shell would: {exc}") from None
        elif isinstance(value, (list, tuple)) and all(isinstance(item, (str, int, float)) for item in value):
            words = [str(item) for item in value]
        else:
            raise WrapperError(f"{self.path.name}: {var} must be a string or a list of strings")
        return words or None

    @property
    def entrypoint(self) -> list[str] | None:
        """The command that starts the service in the image (None: the chute only waits for it)."""
        return self._command("ENTRYPOINT")

    @property
    def host_command(self) -> list[str] | None:
        """The command that starts the service on this machine for --run (None: start it yourself)."""
        return self._command("HOST_COMMAND")

    def ready_paths(self) -> dict[int, str]:
        """Each service port's readiness path: SERVICE_READY_PATHS, else what discovery wrote into the
        module's manifest (the rule of attach_service, tools/runtime/launcher.py)."""
        from tools.runtime.launcher import resolve_ready_paths

        try:
            return resolve_ready_paths(self.ports(), self.get("SERVICE_READY_PATHS"), self.path)
        except WrapperError as exc:
            raise WrapperError(f"{self.path.name}: {exc.message}", exc.hint) from None

    def _check_ready_paths(self) -> None:
        from tools.runtime.launcher import resolve_ready_paths

        try:
            resolve_ready_paths(self.ports(), self.get("SERVICE_READY_PATHS"))
        except WrapperError as exc:
            raise WrapperError(f"{self.path.name}: {exc.message}", exc.hint) from None

    def local_env(self) -> tuple[dict[str, str], list[str]]:
        """CHUTE_ENV as HOST_COMMAND gets it for --run, and a note per value changed: on this machine
        the service listens on loopback only, so a bind-everything address (0.0.0.0, ::) in a value
        (README's GRADIO_SERVER_NAME advice, say) becomes 127.0.0.1."""
        env, notes = {}, []
        for key, value in self.env.items():
            local = _loopback(value)
            if local != value:
                notes.append(f"CHUTE_ENV {key}={value} is {key}={local} for this run: locally the service "
                             "listens on loopback only")
            env[key] = local
        return env, notes

    def check_host_command(self) -> list[str] | None:
        """HOST_COMMAND, refused when it binds every interface: locally the service listens on loopback."""
        argv = self.host_command
        for word in argv or ():
            if _loopback(word.rpartition("=")[2]) != word.rpartition("=")[2]:
                raise WrapperError(f"{self.path.name}: HOST_COMMAND listens on every interface ({word})",
                                   "use 127.0.0.1 for --run: locally the service listens on loopback only")
        return argv

    @property
    def static_routes(self) -> list:
        from tools.runtime.routes import coerce_routes

        value = self.get("CHUTE_STATIC_ROUTES") or []
        if not isinstance(value, (list, tuple)):
            raise ManifestError(f"{self.path.name}: CHUTE_STATIC_ROUTES must be a list of routes")
        return coerce_routes(value, f"{self.path.name}: CHUTE_STATIC_ROUTES")

    @property
    def chute(self) -> Any:
        """The module-level `chute` (a chutes Chute), or a one-line error."""
        chute = self.get("chute")
        if chute is None or not hasattr(chute, "cords"):
            raise WrapperError(f"{self.path.name} defines no `chute`", "create one with chutes.chute.Chute(...)")
        return chute

    @property
    def image_ref(self) -> str:
        """`name:tag` of the chute's image (as `chutes build --local` tags it), or the image string."""
        image = getattr(self.chute, "image", None)
        if image is None:
            raise WrapperError(f"{self.path.name}'s chute has no image")
        return image if isinstance(image, str) else f"{image.name}:{image.tag}"

    def problems(self) -> list[str]:
        """What the module contract (README, "Module variables") requires and this module lacks."""
        found = []
        for var in ("CHUTE_NAME", "CHUTE_TAG", "CHUTE_BASE_IMAGE"):
            value = self.get(var)
            if not isinstance(value, str) or not value.strip():
                found.append(f"{var} must be a non-empty string")
        try:
            self.ports()
        except WrapperError as exc:
            found.append(str(exc).removeprefix(f"{self.path.name}: ").removeprefix(f"{self.path.name} "))
        for check in (lambda: self.env, lambda: self.entrypoint, lambda: self.host_command, self._check_ready_paths):
            try:
                check()
            except WrapperError as exc:
                found.append(str(exc).removeprefix(f"{self.path.name}: "))
        chute = self.get("chute")
        if chute is None:
            found.append("there is no module-level `chute`")
        else:
            from tools.runtime.sdk.chute import is_chute

            if not is_chute(chute):
                found.append(f"`chute` is a {type(chute).__name__}, not a chutes.chute.Chute")
            elif isinstance(self.get("CHUTE_NAME"), str) and chute.name != self.get("CHUTE_NAME"):
                found.append(f"chute.name is {chute.name!r} but CHUTE_NAME is {self.get('CHUTE_NAME')!r}")
        return [f"{self.path.name}: {text}" for text in found]

    def manifest_source(self) -> str:
        """Which manifest the module's load_route_manifest() reads, in words."""
        from tools.runtime.routes import choose_manifest

        choice = choose_manifest(self.path)
        if choice.kind == "file" and choice.path == self.manifest_path:
            return str(choice.path)
        if choice.kind == "none" and choice.reason == "absent":
            return (f"none ({self.manifest_path.name} not found: CHUTE_STATIC_ROUTES only; "
                    f"./deploy.sh --discover {self.name} writes it)")
        return choice.describe()


_EVERY_INTERFACE = re.compile(r"^(?:0\.0\.0\.0|::|\[::\])(?=$|:\d+$)")


def _loopback(value: str) -> str:
    """`value` with a bind-everything address (0.0.0.0, ::, [::], with or without :port) as 127.0.0.1."""
    return _EVERY_INTERFACE.sub("127.0.0.1", value)


def load(arg: str | Path, *, settings_only: bool = False, keep: bool = True) -> DeployModule:
    """Locate and import a deploy module.

    settings_only: import with route registration skipped; a failure after the settings is kept in
    `import_problem` instead of raised. Otherwise any failure is a one-line WrapperError.
    keep: leave the module in sys.modules (as `chutes run` does), so its chute can be run or pickled.
    """
    path = locate(str(arg))
    with _quiet_logs(), _env(SKIP_REGISTRATION_ENV, "1" if settings_only else None):
        module, problem = _import(path, keep=keep and not settings_only, tolerant=settings_only)
    if problem and not settings_only:
        raise WrapperError(f"cannot import {path.name}: {problem}")
    return DeployModule(path=path, module=module, import_problem=problem)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tools.deploy_module", description="Locate a deploy module (for deploy.sh).")
    parser.add_argument("command", choices=["locate", "manifest"],
                        help="locate: print the module's absolute path; manifest: its route manifest's path")
    parser.add_argument("module", help="deploy_x, deploy_x.py or a path to one")
    parser.add_argument("--cwd", type=Path, default=None, help="the directory a relative MODULE is relative to")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def run() -> int:
        path = locate(args.module, args.cwd)
        print(path if args.command == "locate" else manifest_path(path))
        return 0

    run_cli(run, debug=args.debug, prog="deploy.sh")


if __name__ == "__main__":
    main()
