"""Docker or podman for discovery and new modules: pick the engine, read images, run labelled
containers published on 127.0.0.1 only, and remove them (also the leftovers of a killed run).

Environment values never reach a command line: they go through an env file (mode 600, in a private
temporary directory) that is deleted as soon as the engine has read it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tools.runtime.constants import ENV_KEY_RE, SECRET_KEY_RE, is_port
from tools.runtime.errors import EngineError, WrapperError

ENGINE_ENV = "CHUTES_CONTAINER_ENGINE"
LABEL = "chutes-wrappers"
LABEL_MODULE = "chutes-wrappers.module"
LABEL_CHUTE = "chutes-wrappers.chute"
LABEL_OWNER = "chutes-wrappers.owner"
ENV_DIR_PREFIX = "chutes-wrappers-env-"
CONTAINER_NAME_RE = re.compile(r"[^a-zA-Z0-9_.-]")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class Engine:
    """A docker-compatible CLI: its command words (with global flags) and which one it really is."""

    argv: tuple[str, ...]
    kind: str  # "docker" or "podman"

    @property
    def label(self) -> str:
        return Path(self.argv[0]).name

    def command(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    def call(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run the engine quietly; a process in its own session, so a terminal Ctrl-C reaches only us."""
        return self.run_argv(self.command(*args), timeout=timeout, check=check)

    def run_argv(self, argv: list[str], timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """`call` for a full command line (starting with this engine's words)."""
        args = argv[len(self.argv):] or [""]
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise EngineError(f"`{self.label} {args[0]}` did not finish within {timeout:g}s") from None
        except OSError as exc:
            raise EngineError(f"cannot run {self.argv[0]}: {exc.strerror or exc}") from None
        if check and proc.returncode != 0:
            raise EngineError(f"`{self.label} {args[0]}` failed: {last_line(proc.stderr)}")
        return proc

    def has_gpu_runtime(self) -> bool:
        """Docker with the NVIDIA runtime, or podman with an NVIDIA CDI spec."""
        if self.kind == "docker":
            proc = self.call("info", "--format", "{{json .Runtimes}}", timeout=20)
            return proc.returncode == 0 and "nvidia" in proc.stdout
        for directory in CDI_DIRS:
            for path in Path(directory).glob("*") if Path(directory).is_dir() else []:
                try:
                    if "nvidia.com/gpu" in path.read_text(errors="replace"):
                        return True
                except OSError:
                    continue
        return False


def last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _kind_of(argv: Sequence[str]) -> str:
    """'podman' when the command is podman (also behind a `docker` shim), else 'docker'."""
    if Path(argv[0]).name.startswith("podman"):
        return "podman"
    try:
        out = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "docker"
    return "podman" if "podman" in out.lower() else "docker"


def _not_answering(engine: Engine) -> str | None:
    """Why the engine cannot run containers now (daemon down), or None."""
    probe = ("version", "--format", "{{.Server.Version}}") if engine.kind == "docker" else (
        "version", "--format", "{{.Client.Version}}"
    )
    try:
        proc = engine.call(*probe, timeout=20)
    except EngineError as exc:
        return str(exc)
    if proc.returncode != 0 or not proc.stdout.strip():
        return last_line(proc.stderr)
    return None


def detect_engine(environ: Mapping[str, str] | None = None) -> Engine:
    """`CHUTES_CONTAINER_ENGINE` (a command, split like a shell), else a docker whose daemon answers,
    else podman. EngineError when there is none or it does not answer."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(ENGINE_ENV, "").strip()
    if chosen:
        try:
            argv = shlex.split(chosen)
        except ValueError as exc:
            raise EngineError(f"{ENGINE_ENV}={chosen!r} cannot be parsed: {exc}") from None
        if not argv or not shutil.which(argv[0]):
            raise EngineError(
                f"{ENGINE_ENV} names {argv[0] if argv else 'nothing'!r}, which is not installed",
                "set it to docker, or podman with its flags",
            )
        engine = Engine(tuple(argv), _kind_of(argv))
        problem = _not_answering(engine)
        if problem:
            raise EngineError(f"{engine.label} does not answer: {problem}", _start_hint(engine))
        return engine
    docker, podman = shutil.which("docker"), shutil.which("podman")
    problem = None
    if docker:
        engine = Engine(("docker",), _kind_of(["docker"]))
        problem = _not_answering(engine)
        if problem is None:
            return engine
    if podman:
        engine = Engine(("podman",), "podman")
        podman_problem = _not_answering(engine)
        if podman_problem is None:
            return engine
        raise EngineError(f"podman does not answer: {podman_problem}")
    if docker:
        raise EngineError(f"docker is installed but its daemon does not answer: {problem}", _start_hint(None))
    raise EngineError("no container engine found", "install docker or podman, or set CHUTES_CONTAINER_ENGINE")


def _start_hint(engine: Engine | None) -> str:
    if engine is not None and engine.kind == "podman":
        return "check `podman info`; see CONTAINERS.md for the flags this machine needs"
    return "start it, e.g. `sudo systemctl start docker`, or install podman and set CHUTES_CONTAINER_ENGINE=podman"


def gpu_args(engine: Engine, gpus: str | None) -> list[str]:
    """`--gpus` (docker) or CDI devices (podman): when asked, or when a GPU runtime is present.

    gpus: None or 'auto' (only with a GPU runtime), 'none', 'all', a count, or device indexes '0,1'.
    """
    value = (gpus or "auto").strip().lower()
    if value == "auto":
        value = "all" if engine.has_gpu_runtime() else "none"
    if value in ("none", "", "0", "no", "false"):
        return []
    if engine.kind == "docker":
        return ["--gpus", gpus if gpus and gpus.strip().lower() != "auto" else "all"]
    if value == "all":
        return ["--device", "nvidia.com/gpu=all"]
    indexes = value.removeprefix("device=").strip("\"'")
    if indexes.isdigit() and "," not in gpus:
        devices = [str(i) for i in range(int(indexes))]
    else:
        devices = [item.strip() for item in indexes.split(",") if item.strip().isdigit()]
    if not devices:
        raise EngineError(f"--docker-gpus {gpus!r} is not understood", "use all, none, a count, or indexes like 0,1")
    return [arg for index in devices for arg in ("--device", f"nvidia.com/gpu={index}")]


# --------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageConfig:
    """What an image declares: exposed TCP ports, environment, entrypoint and command, labels."""

    ref: str
    exposed_ports: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


def require_image(engine: Engine, ref: str) -> dict:
    """The image's inspect record; EngineError when it is not present locally (we never pull)."""
    proc = engine.call("image", "inspect", ref, timeout=60)
    if proc.returncode != 0:
        raise EngineError(
            f"image {ref!r} is not present locally",
            f"build or pull it first, e.g. `{engine.label} pull {ref}`; discovery never pulls",
        )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise EngineError(f"`{engine.label} image inspect {ref}` printed something that is not JSON") from None
    record = data[0] if isinstance(data, list) and data else data
    return record if isinstance(record, dict) else {}


def inspect_image(engine: Engine, ref: str) -> ImageConfig:
    """The image's config, every value checked for type: an image is untrusted input."""
    config = require_image(engine, ref).get("Config") or {}
    if not isinstance(config, dict):
        config = {}
    ports = []
    for key in config.get("ExposedPorts") or {}:
        number, _, proto = str(key).partition("/")
        if number.isdigit() and is_port(int(number)) and proto in ("", "tcp"):
            ports.append(int(number))
    env = {}
    for item in config.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            if ENV_KEY_RE.match(key):
                env[key] = value
    labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items() if isinstance(v, (str, int, float))}
    return ImageConfig(
        ref=ref,
        exposed_ports=tuple(sorted(set(ports))),
        env=env,
        entrypoint=_words(config.get("Entrypoint")),
        cmd=_words(config.get("Cmd")),
        labels=labels,
    )


def _words(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    if isinstance(value, list):
        return tuple(str(item) for item in value if isinstance(item, (str, int, float)))
    return ()


# --------------------------------------------------------------------------------------------------
# Environment files


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Values to hide in echoed logs: those of keys that look like credentials."""
    return [value for key, value in env.items() if SECRET_KEY_RE.search(key) and len(value) >= 4]


def write_env_file(env: Mapping[str, str]) -> Path:
    """KEY=VALUE lines in a new private directory (0700), the file itself 0600."""
    for key, value in env.items():
        if not ENV_KEY_RE.match(key):
            raise WrapperError(f"environment name {key!r} is not valid", "use letters, digits and '_'")
        if "\n" in value or "\r" in value or "\0" in value:
            raise WrapperError(f"the value of {key} spans several lines", "container env files hold one line per value")
    directory = Path(tempfile.mkdtemp(prefix=f"{ENV_DIR_PREFIX}{os.getpid()}-{_start_time(os.getpid())}-"))
    path = directory / "env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{key}={value}\n" for key, value in env.items()))
    return path


def remove_env_file(path: Path | None) -> None:
    if path is None:
        return
    shutil.rmtree(path.parent, ignore_errors=True)


def remove_stale_env_dirs() -> list[Path]:
    """Env directories of runs whose process is gone (killed with SIGKILL)."""
    removed = []
    for directory in Path(tempfile.gettempdir()).glob(f"{ENV_DIR_PREFIX}*"):
        pid, _, rest = directory.name[len(ENV_DIR_PREFIX):].partition("-")
        if pid.isdigit() and not _pid_alive(int(pid), rest.partition("-")[0]):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


# --------------------------------------------------------------------------------------------------
# Containers


@dataclass
class RunSpec:
    """Everything `run` needs; ports map container port -> host port (published on 127.0.0.1)."""

    image: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    gpu_args: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)


def container_name(prefix: str, module: str) -> str:
    suffix = os.urandom(3).hex()
    return CONTAINER_NAME_RE.sub("-", f"{prefix}-{module}-{suffix}").strip("-.")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks (/proc), so a reused pid is not mistaken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def owner_label() -> str:
    """host:pid:start-time of this process, the owner of what it starts."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def run_argv(engine: Engine, spec: RunSpec, env_file: Path | None) -> list[str]:
    """The `run -d` command: labelled, published on 127.0.0.1 only, env from a file, no pulling."""
    args = ["run", "-d", "--pull=never", "--name", spec.name]
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    for container_port, host_port in spec.ports.items():
        args += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    args += spec.gpu_args
    args += spec.extra_args
    rest: list[str] = []
    if spec.entrypoint:
        args += ["--entrypoint", spec.entrypoint[0]]
        rest = list(spec.entrypoint[1:])
    return engine.command(*args, spec.image, *rest)


def check_extra_args(extra: Sequence[str]) -> None:
    """Refuse extra arguments that would publish ports beyond 127.0.0.1."""
    for index, arg in enumerate(extra):
        value = None
        if arg in ("-p", "--publish") and index + 1 < len(extra):
            value = extra[index + 1]
        elif arg.startswith("--publish=") or (arg.startswith("-p") and len(arg) > 2):
            value = arg.split("=", 1)[1] if arg.startswith("--publish=") else arg[2:]
        if arg in ("-P", "--publish-all") or (value is not None and not value.startswith("127.0.0.1:")):
            raise WrapperError(
                f"--docker-extra-arg {arg} would publish a port beyond 127.0.0.1",
                "discovery publishes the service ports itself, on 127.0.0.1 only",
            )


def explain_run_failure(engine: Engine, spec: RunSpec, stderr: str) -> EngineError:
    """One line a user can act on, from what the engine printed."""
    text = stderr.lower()
    if "address already in use" in text or "port is already allocated" in text or ("bind" in text and "in use" in text):
        ports = ", ".join(str(p) for p in spec.ports.values())
        return EngineError(f"a host port ({ports}) is already in use", "stop what listens there, or pass --free-host-ports")
    if "rlimit" in text:
        return EngineError(
            f"{engine.label} cannot set the container's rlimits here",
            "put `default_ulimits = []` under [containers] in containers.conf, see CONTAINERS.md",
        )
    if "no such image" in text or "image not known" in text or "unable to find image" in text:
        return EngineError(f"image {spec.image!r} is not present locally", f"build or pull it first, e.g. `{engine.label} pull {spec.image}`")
    if "executable file not found" in text or ("no such file or directory" in text and "exec" in text):
        return EngineError(f"the container's entrypoint cannot be started: {last_line(stderr)}", "check ENTRYPOINT in the module")
    return EngineError(f"`{engine.label} run` failed: {last_line(stderr)}")


class Container:
    """One container we started: its log tail, whether it exited, and its removal (idempotent)."""

    def __init__(self, engine: Engine, spec: RunSpec, on_log: Callable[[str], None] | None = None,
                 redact: Sequence[str] = ()):
        self.engine = engine
        self.spec = spec
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.started = False
        self._on_log = on_log
        self._redact = [value for value in redact if value]
        self._helpers: list[subprocess.Popen] = []
        self._waiter: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._exit_code: int | None = None

    # The caller defers SIGINT/SIGTERM around start() and remove(): neither may be cut in half.
    def start(self, timeout: float = 180) -> None:
        env_file = write_env_file(self.spec.env) if self.spec.env else None
        try:
            self.started = True  # from here on, remove() must run: the engine may create it
            proc = self.engine.run_argv(run_argv(self.engine, self.spec, env_file), timeout=timeout)
        finally:
            remove_env_file(env_file)
        if proc.returncode != 0:
            raise explain_run_failure(self.engine, self.spec, proc.stderr)
        self._follow()

    def _follow(self) -> None:
        def spawn(*args: str) -> subprocess.Popen:
            child = subprocess.Popen(
                self.engine.command(*args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if args[0] == "logs" else subprocess.DEVNULL,
                start_new_session=True,
            )
            self._helpers.append(child)
            return child

        logs = spawn("logs", "-f", self.spec.name)
        self._waiter = spawn("wait", self.spec.name)
        self._reader = threading.Thread(target=self._pump, args=(logs,), daemon=True)
        self._reader.start()

    def _pump(self, logs: subprocess.Popen) -> None:
        assert logs.stdout is not None
        for raw in logs.stdout:
            line = self.redact(raw.decode("utf-8", "replace").rstrip())
            self.tail.append(line)
            if self._on_log:
                self._on_log(line)

    def redact(self, line: str) -> str:
        for value in self._redact:
            line = line.replace(value, "***")
        return line

    def exit_code(self) -> int | None:
        """The container's exit status once it has exited, else None."""
        if self._exit_code is not None:
            return self._exit_code
        if self._waiter is None or self._waiter.poll() is None:
            return None
        out = self._waiter.stdout.read().decode(errors="replace").strip() if self._waiter.stdout else ""
        self._exit_code = int(out) if out.lstrip("-").isdigit() else -1
        return self._exit_code

    def last_lines(self, count: int = 15) -> list[str]:
        if self._reader is not None:
            self._reader.join(1.0)  # let the log reader catch up with a container that just exited
        return list(self.tail)[-count:]

    def remove(self) -> None:
        if not self.started:
            return
        self.started = False
        args = ["rm", "-f"] + (["-t", "0"] if self.engine.kind == "podman" else []) + [self.spec.name]
        try:
            self.engine.call(*args, timeout=120)
        except EngineError:
            pass  # --cleanup finds it by label
        for child in self._helpers:
            if child.poll() is None:
                child.kill()
            child.wait()
            if child.stdout:
                child.stdout.close()


# --------------------------------------------------------------------------------------------------
# Leftovers of killed runs


@dataclass(frozen=True)
class Leftover:
    id: str
    name: str
    module: str
    owner: str


def list_leftovers(engine: Engine, role: str, module: str | None = None) -> list[Leftover]:
    """Containers labelled `chutes-wrappers=<role>` (optionally of one module)."""
    args = ["ps", "-a", "-q", "--no-trunc", "--filter", f"label={LABEL}={role}"]
    if module:
        args += ["--filter", f"label={LABEL_MODULE}={module}"]
    ids = engine.call(*args, timeout=60, check=True).stdout.split()
    if not ids:
        return []
    proc = engine.call("inspect", *ids, timeout=60)
    try:
        records = json.loads(proc.stdout) if proc.stdout.strip() else []
    except json.JSONDecodeError:
        records = []
    out = []
    for record in records if isinstance(records, list) else []:
        labels = ((record.get("Config") or {}).get("Labels")) or {}
        out.append(
            Leftover(
                id=str(record.get("Id", "")),
                name=str(record.get("Name", "")).lstrip("/"),
                module=str(labels.get(LABEL_MODULE, "")),
                owner=str(labels.get(LABEL_OWNER, "")),
            )
        )
    return out


def owner_alive(owner: str) -> bool:
    """True when the run that labelled a container is still running on this machine."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return _pid_alive(int(parts[1]), parts[2])


def _pid_alive(pid: int, start_time: str = "") -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start_time or _start_time(pid) in ("", start_time)


def remove_leftovers(engine: Engine, role: str, module: str | None = None) -> tuple[list[Leftover], list[Leftover]]:
    """Remove containers of dead runs; returns (removed, kept because their run is still alive)."""
    removed, kept = [], []
    for leftover in list_leftovers(engine, role, module):
        if leftover.owner and owner_alive(leftover.owner):
            kept.append(leftover)
            continue
        args = ["rm", "-f"] + (["-t", "0"] if engine.kind == "podman" else []) + [leftover.id]
        engine.call(*args, timeout=120)
        removed.append(leftover)
    return removed, kept
