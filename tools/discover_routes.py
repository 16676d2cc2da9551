"""`deploy.sh --discover MODULE`: find a service's HTTP routes in its OpenAPI document and write the
route manifest (`<module>.routes.json`, the version `tools.runtime.routes.MANIFEST_VERSION` says).

Runs the module's image in a labelled container published on 127.0.0.1 (or probes a running service
with --base-url), polls every port's probe paths at once until each has answered with a spec or
plainly has none — no fixed sleeps: --startup-delay and --probe-timeout are upper bounds — then
writes the manifest atomically and removes the container on every exit path.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/discover_routes.py`, as the README shows
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import http.client
import json
import os
import shlex
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TextIO
from urllib.parse import urljoin, urlsplit

from tools.runtime.constants import ENV_KEY_RE, PORT_MAX, PORT_MIN, is_port, port_argument
from tools.containers import (
    LABEL,
    LABEL_CHUTE,
    LABEL_MODULE,
    LABEL_OWNER,
    Container,
    Engine,
    RunSpec,
    check_extra_args,
    container_name,
    detect_engine,
    gpu_args,
    owner_label,
    remove_leftovers,
    remove_stale_env_dirs,
    require_image,
    secret_values,
)
from tools import deploy_module
from tools.runtime.errors import Interrupted, NotGradio, ServiceError, WrapperError, run_cli
from tools.processes import Signals
from tools.runtime.ports import free_port, port_is_free
from tools.discovery.openapi import EAGER_PROBES, PROBE_PATHS, SpecError, convert_document, decode_document
from tools.runtime.sdk.rules import cord_path_re
from tools.runtime.routes import (
    Manifest,
    Route,
    decide_public_path,
    manifest_path,
    merge_routes,
    write_manifest,
)

PROG = "discover_routes"
ROLE = "discovery"

DEFAULT_STARTUP_DELAY = 120.0  # container mode: the README's defaults
DEFAULT_PROBE_TIMEOUT = 180.0
URL_STARTUP_DELAY = 5.0  # --base-url mode: the service should already be up
NO_SPEC_GRACE = 2.0
POLL_INTERVAL = 0.1
ABSENT_INTERVAL = 0.5  # a path that answered 404 rarely turns into the spec: poll it gently
REQUEST_TIMEOUT = 5.0
MAX_SPEC_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class Config:
    """What a discovery run does; built from the command line or by tests."""

    chute_file: str | None = None
    base_url: str | None = None
    ports: list[int] = field(default_factory=list)
    startup_delay: float | None = None
    probe_timeout: float | None = None
    no_spec_grace: float = NO_SPEC_GRACE
    interval: float = POLL_INTERVAL
    gpus: str | None = None
    docker_env: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    image: str | None = None
    free_host_ports: bool = False
    probe_paths: tuple[str, ...] = PROBE_PATHS
    output: str | None = None
    live: bool | None = None  # None: live lines when stderr is a terminal


@dataclass
class ModuleSettings:
    """The deploy module's variables that discovery uses."""

    name: str
    path: Path
    chute_name: str
    base_image: str | None
    ports: list[int]
    env: dict[str, str]
    static_routes: list[Route]
    entrypoint: list[str] | None
    import_problem: str | None = None

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)


# --------------------------------------------------------------------------------------------------
# Reading the deploy module


def read_module(arg: str, need_image: bool = True, need_ports: bool = True) -> ModuleSettings:
    """The settings of a deploy module, each checked; one-line errors name the module and the variable.

    Imported with route registration skipped (tools.deploy_module): a module may fail after its
    settings (overrides naming routes not yet discovered), which is kept, not fatal."""
    module = deploy_module.load(arg, settings_only=True)
    base_image = module.base_image if need_image else None
    if not need_image:
        image = module.get("CHUTE_BASE_IMAGE")
        base_image = image.strip() if isinstance(image, str) and image.strip() else None
    return ModuleSettings(
        name=module.name,
        path=module.path,
        chute_name=module.chute_name,
        base_image=base_image,
        ports=module.ports(required=need_ports),
        env=module.env,
        static_routes=module.static_routes,
        entrypoint=module.entrypoint,
        import_problem=module.import_problem,
    )


def parse_docker_env(items: Sequence[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """`KEY=VALUE`, or `KEY` alone to take the value from our environment (keeping it off `ps`)."""
    environ = os.environ if environ is None else environ
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not ENV_KEY_RE.match(key):
            raise WrapperError(f"--docker-env {key!r}: not a valid variable name", "use NAME=value or NAME")
        if not sep:
            if key not in environ:
                raise WrapperError(f"--docker-env {key}: not set in this environment", "use NAME=value, or export NAME first")
            value = environ[key]
        env[key] = value
    return env


# --------------------------------------------------------------------------------------------------
# Probing


@dataclass
class Answer:
    """What one probe path said once."""

    kind: str  # no_answer, loading, absent, spec, invalid, unreachable
    detail: str
    doc: dict | None = None


@dataclass
class Outcome:
    """How a port ended: spec, no_spec, never_answered (or invalid/unreachable, which are fatal)."""

    kind: str
    detail: str
    url: str = ""
    doc: dict | None = None
    gradio: list | None = None  # kind "gradio": the app's functions (tools.runtime.gradio_spec.GradioFunction)


def fetch(url: str, timeout: float, redirects: int = 3) -> tuple[int, str, bytes]:
    """GET `url`: (status, content type, body); redirects followed on the same host only."""
    parts = urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Accept": "application/json, application/yaml;q=0.9, */*;q=0.5"})
        response = conn.getresponse()
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location and redirects > 0:
            target = urljoin(url, location)
            if urlsplit(target).netloc == parts.netloc:
                response.read(65536)
                return fetch(target, timeout, redirects - 1)
        body = response.read(MAX_SPEC_BYTES + 1)
        return response.status, response.getheader("Content-Type") or "", body
    finally:
        conn.close()


def probe(url: str, timeout: float = REQUEST_TIMEOUT) -> Answer:
    """Classify one probe: loading (5xx, 408, 429), absent (other 4xx, not a spec), spec, invalid."""
    try:
        status, ctype, body = fetch(url, timeout)
    except socket.gaierror as exc:
        return Answer("unreachable", f"cannot resolve {urlsplit(url).hostname!r} ({exc.strerror or exc})")
    except (OSError, http.client.HTTPException) as exc:
        return Answer("no_answer", _connection_problem(exc))
    if status >= 500 or status in (408, 425, 429):
        return Answer("loading", f"HTTP {status}")
    if status >= 300:
        return Answer("absent", f"HTTP {status}")
    if len(body) > MAX_SPEC_BYTES:
        return Answer("invalid", f"{url}: the document is larger than {MAX_SPEC_BYTES // 2**20} MB")
    try:
        doc = decode_document(body, url, ctype)
    except SpecError as exc:
        return Answer("invalid", str(exc))
    if doc is None:
        return Answer("absent", f"HTTP {status}, not an OpenAPI document")
    return Answer("spec", f"HTTP {status}", doc)


def _connection_problem(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
        return "connection closed before an answer"
    return getattr(exc, "strerror", None) or type(exc).__name__


@dataclass
class Bounds:
    startup_delay: float
    probe_timeout: float
    no_spec_grace: float


class PortWatch:
    """One service port: the latest answer of each probe path, and when it started answering."""

    def __init__(self, port: int, base_url: str, paths: Sequence[str], started: float, eager: int = EAGER_PROBES):
        self.port = port
        self.base_url = base_url.rstrip("/")
        self.paths = list(paths)
        self.eager = eager  # the first `eager` paths are polled from the start, the others once it answers
        self.started = started
        self.answers: dict[str, Answer] = {}
        self.first_http: float | None = None
        self.absent_since: float | None = None
        self.outcome: Outcome | None = None
        self.done = threading.Event()
        self.answering = threading.Event()  # the port gave an HTTP answer on some path

    def url(self, path: str) -> str:
        return self.base_url + path

    def evaluate(self, now: float, bounds: Bounds) -> Outcome | None:
        """The port's outcome once decided, else None (keep polling)."""
        answers = [self.answers.get(path) for path in self.paths]
        for index, (path, answer) in enumerate(zip(self.paths, answers)):
            # a spec is taken once every path before it has answered somehow: the most common
            # location wins when a service serves two documents (OpenAPI 3 and Swagger 2.0, say)
            if answer and answer.kind == "spec" and all(answers[:index]):
                return Outcome("spec", answer.detail, self.url(path), answer.doc)
            if answer and answer.kind == "unreachable":
                return Outcome("unreachable", answer.detail, self.url(path))
        if any(a and a.kind in ("loading", "absent", "invalid") for a in answers) and self.first_http is None:
            self.first_http = now
        complete = all(answers)
        if complete and not any(a.kind in ("loading", "no_answer") for a in answers):
            invalid = next((a for a in answers if a.kind == "invalid"), None)
            if invalid:
                return Outcome("invalid", invalid.detail)
            self.absent_since = self.absent_since or now
            if now - self.absent_since >= bounds.no_spec_grace:
                tried = ", ".join(self.paths)
                return Outcome("no_spec", f"answers HTTP but serves no OpenAPI document (tried {tried})")
        else:
            self.absent_since = None
        if self.first_http is None and self.answers and now - self.started >= bounds.startup_delay:
            return Outcome("never_answered", f"{self.last_detail()} after {bounds.startup_delay:g}s")
        if self.first_http is not None and now - self.first_http >= bounds.probe_timeout:
            return Outcome(
                "no_spec", f"answers HTTP but its spec was not ready within {bounds.probe_timeout:g}s ({self.last_detail()})"
            )
        return None

    def last_detail(self) -> str:
        answer = next((self.answers[p] for p in self.paths if p in self.answers), None)
        return answer.detail if answer else "no answer yet"

    def status(self, now: float, bounds: Bounds) -> tuple[str, float]:
        """A short state for the live line, and the seconds left before its bound."""
        if self.outcome:
            text = {"spec": f"spec at {urlsplit(self.outcome.url).path}", "no_spec": "no spec"}.get(
                self.outcome.kind, self.outcome.kind.replace("_", " ")
            )
            return text, 0.0
        if self.first_http is None:
            return f"starting ({self.last_detail()})", self.started + bounds.startup_delay - now
        loading = next((a for a in self.answers.values() if a.kind == "loading"), None)
        if loading:
            return f"answering, spec not ready ({loading.detail})", self.first_http + bounds.probe_timeout - now
        return "answering, no spec so far", self.first_http + bounds.probe_timeout - now


def eager_count(paths: Sequence[str]) -> int:
    """How many of `paths` to poll before the port answers: the user's own (--probe-path, listed
    first) and the most common locations."""
    return EAGER_PROBES + sum(1 for path in paths if path not in PROBE_PATHS)


class Prober:
    """Polls every probe path of every port at once, each on its own thread, and wakes the waiter
    the moment anything changes."""

    def __init__(self, watches: Sequence[PortWatch], interval: float, timeout: float = REQUEST_TIMEOUT):
        self.watches = list(watches)
        self.interval = interval
        self.timeout = timeout
        self.changed = threading.Condition()
        self.version = 0
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for watch in self.watches:
            for path in watch.paths:
                thread = threading.Thread(target=self._poll, args=(watch, path), daemon=True)
                thread.start()
                self.threads.append(thread)

    def stop(self) -> None:
        for watch in self.watches:
            watch.done.set()

    def _poll(self, watch: PortWatch, path: str) -> None:
        url = watch.url(path)
        if watch.paths.index(path) >= watch.eager:
            # the rarer locations wait until the service answers HTTP at all: while it starts, a few
            # connection attempts per tick tell as much as one per path
            while not (watch.answering.is_set() or watch.done.is_set()):
                watch.answering.wait(self.interval)
        while not watch.done.is_set():
            answer = probe(url, self.timeout)
            if answer.kind in ("loading", "absent", "spec", "invalid"):
                watch.answering.set()
            with self.changed:
                watch.answers[path] = answer
                self.version += 1
                self.changed.notify_all()
            pause = max(self.interval, ABSENT_INTERVAL) if answer.kind == "absent" else self.interval
            if answer.kind in ("spec", "unreachable") or watch.done.wait(pause):
                return

    def wait_for_change(self, seen: int, timeout: float) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.version != seen, timeout)
            return self.version


# --------------------------------------------------------------------------------------------------
# What the user sees


def is_probe_noise(line: str, paths: Sequence[str] = PROBE_PATHS) -> bool:
    """The service's access-log line for one of our own probes."""
    return any(f"GET {path} " in line or f"GET {path}?" in line for path in paths)


class Display:
    """One live line per port on a terminal; plain lines on state changes otherwise."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.probe_paths: Sequence[str] = PROBE_PATHS
        if live is None:
            live = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.live = live
        self.lock = threading.Lock()
        self.drawn = 0
        self.last_log = ""
        self.states: dict[int, str] = {}
        self.last_plain = 0.0

    def message(self, text: str) -> None:
        with self.lock:
            self._clear()
            print(text, file=self.stream, flush=True)

    def container_log(self, line: str) -> None:
        if is_probe_noise(line, self.probe_paths):
            return
        line = "".join(ch if ch.isprintable() else " " for ch in line).strip()  # no terminal escapes
        with self.lock:
            self.last_log = line
            if not self.live:
                print(f"  [container] {line}", file=self.stream, flush=True)

    def update(self, watches: Sequence[PortWatch], now: float, bounds: Bounds, started: float) -> None:
        rows = []
        for watch in watches:
            text, left = watch.status(now, bounds)
            rows.append((watch.port, text, max(0.0, left)))
        with self.lock:
            if self.live:
                self._draw(rows, now - started)
            else:
                self._plain(rows, now - started, now)

    def _draw(self, rows, elapsed: float) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        self._clear()
        for port, text, left in rows:
            line = f"port {port}: {text} | {elapsed:5.1f}s elapsed, {left:5.1f}s left"
            if self.last_log:
                line += f" | {self.last_log}"
            print(line[: width - 1], file=self.stream)
        self.stream.flush()
        self.drawn = len(rows)

    def _clear(self) -> None:
        if self.live and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _plain(self, rows, elapsed: float, now: float) -> None:
        heartbeat = now - self.last_plain >= 15.0
        for port, text, left in rows:
            if self.states.get(port) != text or (heartbeat and left > 0):
                self.states[port] = text
                suffix = f" ({elapsed:.1f}s elapsed, {left:.0f}s left)" if left > 0 else f" ({elapsed:.1f}s)"
                print(f"port {port}: {text}{suffix}", file=self.stream, flush=True)
        if heartbeat:
            self.last_plain = now

    def close(self) -> None:
        with self.lock:
            self.drawn = 0


def wait_for_specs(
    watches: Sequence[PortWatch],
    bounds: Bounds,
    interval: float,
    display: Display,
    checks: Sequence[Callable[[], None]] = (),
    before_probing: Callable[[], None] | None = None,
) -> dict[int, Outcome]:
    """Poll until every port is decided; `checks` run every tick (signals, container alive)."""
    prober = Prober(watches, interval)
    if before_probing is not None:
        before_probing()
    started = time.monotonic()  # the bounds count from the first probe, not from our own start-up
    for watch in watches:
        watch.started = started
    prober.start()
    seen = -1
    try:
        while True:
            for check in checks:
                check()
            now = time.monotonic()
            with prober.changed:
                seen = prober.version
                for watch in watches:
                    if watch.outcome is None:
                        watch.outcome = watch.evaluate(now, bounds)
                        if watch.outcome:
                            watch.done.set()
            for watch in watches:
                if watch.outcome and watch.outcome.kind in ("invalid", "unreachable"):
                    raise _fatal(watch)
            display.update(watches, now, bounds, started)
            if all(watch.outcome for watch in watches):
                return {watch.port: watch.outcome for watch in watches}
            prober.wait_for_change(seen, interval)
    finally:
        prober.stop()
        display.close()  # the last state of every port stays on screen


def with_gradio_apps(outcomes: dict[int, Outcome], urls: dict[int, str]) -> dict[int, Outcome]:
    """A port that serves a Gradio app is described by its functions, not by its OpenAPI document
    (which lists only the web UI's own routes): its outcome becomes kind "gradio"."""
    from tools.discovery.gradio import discover_app

    out = dict(outcomes)
    for port, outcome in outcomes.items():
        if outcome.kind not in ("spec", "no_spec"):
            continue
        try:
            functions = discover_app(urls[port], fetch, REQUEST_TIMEOUT)
        except NotGradio as exc:
            raise WrapperError(str(exc), "define its routes in CHUTE_STATIC_ROUTES") from None
        if functions is not None:
            out[port] = Outcome("gradio", f"Gradio app, {len(functions)} function(s)", urls[port] + "/config",
                                gradio=functions)
    return out


def _fatal(watch: PortWatch) -> WrapperError:
    outcome = watch.outcome
    if outcome.kind == "unreachable":
        return WrapperError(f"cannot reach {watch.base_url}: {outcome.detail}", "check --base-url")
    return SpecError(outcome.detail, "fix the service's OpenAPI document, or define CHUTE_STATIC_ROUTES instead")


# --------------------------------------------------------------------------------------------------
# The manifest


@dataclass
class Result:
    manifest: Manifest
    output: Path | None
    outcomes: dict[int, Outcome]
    static_merged: int = 0
    warnings: list[str] = field(default_factory=list)  # spec defects worked around


def build_manifest(outcomes: dict[int, Outcome], static: Sequence[Route],
                   warnings: list[str] | None = None) -> tuple[Manifest, int]:
    """Routes of every port with a spec, then the module's static routes (new path+method+port only).
    The spec defects worked around are appended to `warnings`, one line each naming the port."""
    routes: list[Route] = []
    skipped: list[dict] = []
    for port, outcome in outcomes.items():
        if outcome.kind == "gradio":
            from tools.discovery.gradio import routes_for

            routes += routes_for(outcome.gradio, port)
        elif outcome.kind == "spec":
            conversion = convert_document(outcome.doc, port, outcome.url)
            routes += conversion.routes
            skipped += conversion.skipped
            if warnings is not None:
                warnings += [f"port {port}: {line}" for line in conversion.warnings]
    merged, duplicates = merge_routes(routes, static)
    return Manifest(routes=merged, skipped=skipped), len(static) - len(duplicates)


def with_answers(manifest: Manifest, outcomes: dict[int, Outcome], urls: dict[int, str]) -> Manifest:
    """The manifest with what the running service says beyond its spec (tools/discovery/answers.py):
    each port's readiness path, and the real media type of GET routes said to answer JSON."""
    from tools.discovery.answers import ready_path, real_kinds

    routes = list(manifest.routes)
    ready = {}
    for port, outcome in outcomes.items():
        if outcome.kind not in ("spec", "gradio"):
            continue
        mine = [route for route in routes if route.port == port]
        fixed = dict(zip(map(id, mine), real_kinds(urls[port], mine)))
        routes = [fixed.get(id(route), route) for route in routes]
        path = ready_path(urls[port], mine, gradio=outcome.kind == "gradio")
        if path:
            ready[port] = path
    return Manifest(routes=routes, skipped=manifest.skipped, ready_paths=ready)


def judge_outcomes(outcomes: dict[int, Outcome], where: str, static: Sequence[Route],
                   paths: Sequence[str] = PROBE_PATHS) -> None:
    """Raise when no port has a spec: nothing answered at all, or nothing serves a spec."""
    if any(outcome.kind in ("spec", "gradio") for outcome in outcomes.values()):
        return
    if all(outcome.kind == "never_answered" for outcome in outcomes.values()):
        detail = "; ".join(f"port {port}: {o.detail}" for port, o in outcomes.items())
        raise ServiceError(f"nothing answered at {where}: {detail}", "is the service running? raise --startup-delay if it starts slowly")
    ports = ", ".join(str(port) for port in outcomes)
    hint = ("if the service serves its document elsewhere, name it with --probe-path /its/path; else define its "
            "routes in CHUTE_STATIC_ROUTES" + ("; the module has some already, so no manifest is needed" if static else ""))
    raise WrapperError(f"no OpenAPI spec on any port ({ports}) at {where}: tried {', '.join(paths)}", hint)


def resolve_output(config: Config, module: ModuleSettings | None) -> Path | None:
    """Where the manifest goes: -o, else beside the module; None means stdout."""
    if config.output == "-":
        return None
    if config.output:
        path = Path(config.output).expanduser().resolve()
    elif module is not None:
        path = module.manifest_path
    else:
        return None
    if path.is_dir():
        raise WrapperError(f"-o {config.output}: is a directory", "give a file name, e.g. deploy_x.routes.json")
    if not path.parent.is_dir():
        raise WrapperError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise WrapperError(f"cannot write {path}: permission denied")
    return path


def emit_manifest(manifest: Manifest, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(json.dumps(manifest.to_json(), indent=2) + "\n")
        sys.stdout.flush()
        return
    try:
        write_manifest(manifest, output)
    except OSError as exc:
        raise WrapperError(f"cannot write {output}: {exc.strerror or exc}") from None


def summary(result: Result) -> str:
    lines = []
    for port, outcome in result.outcomes.items():
        if outcome.kind in ("spec", "gradio"):
            count = sum(1 for route in result.manifest.routes if route.port == port)
            what = "Gradio function(s)" if outcome.kind == "gradio" else "route(s)"
            lines.append(f"port {port}: {count} {what} from {outcome.url}")
        elif outcome.kind == "never_answered":
            lines.append(f"port {port}: never answered ({outcome.detail}); its routes are not in the manifest")
        else:
            lines.append(f"port {port}: {outcome.detail}; define its routes in CHUTE_STATIC_ROUTES")
    for route in result.manifest.routes:
        kinds = f"{route.request_kind}"
        if route.file_fields:
            kinds += "(" + ",".join(route.file_fields) + ")"
        kinds += f" -> {route.response_kind}"
        if route.content_type and route.response_kind != "json":
            kinds += f" {route.content_type}"
        if route.path_params:
            public = "(path parameters)"
        else:
            decision = decide_public_path(route.path, route.method, route.public_path)
            public = decision.public_path or f"(skipped: {decision.skip_reason})"
        lines.append(f"  {route.method:<6} {route.path:<32} {public:<28} {kinds}")
    for entry in result.manifest.skipped:
        lines.append(f"  skipped {entry.get('method')} {entry.get('path')}: {entry.get('reason')}")
    for port, path in result.manifest.ready_paths.items():
        lines.append(f"port {port}: ready when GET {path} answers 2xx (the chute waits for it; SERVICE_READY_PATHS "
                     "overrides)")
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    where = result.output or "stdout"
    extra = f", {result.static_merged} static route(s) merged" if result.static_merged else ""
    lines.append(f"wrote {where}: {len(result.manifest.routes)} route(s), {len(result.manifest.skipped)} skipped{extra}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Running discovery


def url_for_port(base_url: str, port: int) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WrapperError(f"--base-url {base_url!r} is not an http(s) URL", "e.g. --base-url http://127.0.0.1:8020")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def resolve_ports(config: Config, module: ModuleSettings | None) -> list[int]:
    if config.ports:
        ports = list(dict.fromkeys(config.ports))
    elif config.base_url and urlsplit(config.base_url).port:
        ports = [urlsplit(config.base_url).port]
    elif module is not None and module.ports:
        ports = module.ports
    elif config.base_url:
        ports = [443 if config.base_url.startswith("https") else 80]
    else:
        ports = []
    for port in ports:
        if not is_port(port):
            raise WrapperError(f"--port {port} is outside {PORT_MIN}-{PORT_MAX}")
    return ports


def discover(config: Config, display: Display | None = None) -> Result:
    """One discovery run; raises WrapperError (one line) or Interrupted, never leaves a container."""
    display = display or Display(live=config.live)
    # The cord path rule comes from the SDK, whose import takes ~1 s: it runs while the module is read
    # and the container starts, and probing begins once it is done, so a spec is converted the moment
    # it arrives instead of waiting for the import.
    sdk_ready = threading.Thread(target=cord_path_re, daemon=True)
    sdk_ready.start()
    module = None
    if config.chute_file:
        module = read_module(config.chute_file, need_image=not config.base_url and not config.image,
                             need_ports=not config.ports and not config.base_url)
        if module.import_problem:
            display.message(f"note: {module.path.name} raised {module.import_problem} after its settings; using them")
    elif not config.base_url:
        raise WrapperError("nothing to discover", "give --chute-file MODULE (runs its image) or --base-url URL")
    ports = resolve_ports(config, module)
    output = resolve_output(config, module)
    static = module.static_routes if module else []
    if config.base_url:
        startup = config.startup_delay if config.startup_delay is not None else URL_STARTUP_DELAY
        bounds = Bounds(startup, _probe_timeout(config), config.no_spec_grace)
        return _discover_url(config, ports, bounds, static, output, display, sdk_ready.join)
    bounds = Bounds(_startup_delay(config), _probe_timeout(config), config.no_spec_grace)
    return _discover_container(config, module, ports, bounds, output, display, sdk_ready.join)


def _startup_delay(config: Config) -> float:
    return DEFAULT_STARTUP_DELAY if config.startup_delay is None else config.startup_delay


def _probe_timeout(config: Config) -> float:
    return DEFAULT_PROBE_TIMEOUT if config.probe_timeout is None else config.probe_timeout


def _discover_url(
    config: Config,
    ports: Sequence[int],
    bounds: Bounds,
    static: Sequence[Route],
    output: Path | None,
    display: Display,
    before_probing: Callable[[], None],
) -> Result:
    urls = {port: url_for_port(config.base_url, port) for port in ports}
    started = time.monotonic()
    watches = [PortWatch(port, urls[port], config.probe_paths, started, eager_count(config.probe_paths)) for port in ports]
    display.message(f"probing {', '.join(urls.values())} for an OpenAPI document")
    with Signals() as guard:
        outcomes = wait_for_specs(watches, bounds, config.interval, display, [guard.check], before_probing)
        outcomes = with_gradio_apps(outcomes, urls)
        judge_outcomes(outcomes, config.base_url, static, config.probe_paths)
        warnings: list[str] = []
        manifest, merged = build_manifest(outcomes, static, warnings)
        manifest = with_answers(manifest, outcomes, urls)
        emit_manifest(manifest, output)
    return Result(manifest, output, outcomes, merged, warnings)


def _discover_container(
    config: Config,
    module: ModuleSettings,
    ports: Sequence[int],
    bounds: Bounds,
    output: Path | None,
    display: Display,
    before_probing: Callable[[], None],
) -> Result:
    engine = detect_engine()
    image = config.image or module.base_image
    require_image(engine, image)
    env = {**module.env, **parse_docker_env(config.docker_env)}
    extra = [word for item in config.extra_args for word in shlex.split(item)]
    check_extra_args(extra)
    host_ports = _host_ports(ports, config.free_host_ports)
    spec = RunSpec(
        image=image,
        name=container_name("chutes-discovery", module.name),
        labels={LABEL: ROLE, LABEL_MODULE: module.name, LABEL_CHUTE: module.chute_name, LABEL_OWNER: owner_label()},
        ports=host_ports,
        env=env,
        entrypoint=module.entrypoint,
        gpu_args=gpu_args(engine, config.gpus),
        extra_args=extra,
    )
    container = Container(engine, spec, on_log=display.container_log, redact=secret_values(env))
    display.probe_paths = config.probe_paths
    with Signals() as guard:
        try:
            display.message(_run_line(engine, spec))
            container.start()
            guard.check()
            started = time.monotonic()
            watches = [PortWatch(p, f"http://127.0.0.1:{host_ports[p]}", config.probe_paths, started,
                                 eager_count(config.probe_paths)) for p in ports]
            outcomes = wait_for_specs(
                watches, bounds, config.interval, display, [guard.check, lambda: _check_running(container, display)],
                before_probing,
            )
            urls = {p: f"http://127.0.0.1:{host_ports[p]}" for p in ports}
            outcomes = with_gradio_apps(outcomes, urls)
            judge_outcomes(outcomes, f"image {image}", module.static_routes, config.probe_paths)
            warnings: list[str] = []
            manifest, merged = build_manifest(outcomes, module.static_routes, warnings)
            manifest = with_answers(manifest, outcomes, urls)
            emit_manifest(manifest, output)
            return Result(manifest, output, outcomes, merged, warnings)
        finally:
            display.close()
            container.remove()


def _run_line(engine: Engine, spec: RunSpec) -> str:
    published = ", ".join(f"127.0.0.1:{h}->{c}" for c, h in spec.ports.items())
    env = f", env {', '.join(sorted(spec.env))} (from a private file)" if spec.env else ""
    return f"starting {spec.image} as {spec.name} with {engine.label} ({published}{env})"


def _host_ports(ports: Sequence[int], free: bool) -> dict[int, int]:
    if free:
        return {port: free_port() for port in ports}
    for port in ports:
        if not port_is_free(port):
            raise WrapperError(
                f"host port {port} is already in use",
                "stop what listens there, or pass --free-host-ports to publish on free ports",
            )
    return {port: port for port in ports}


def _check_running(container: Container, display: Display) -> None:
    code = container.exit_code()
    if code is None:
        return
    tail = [line for line in container.last_lines(40) if not is_probe_noise(line, display.probe_paths)][-15:]
    display.message("last container log lines:\n" + ("\n".join(f"  {line}" for line in tail) or "  (no output)"))
    raise ServiceError(
        f"the container exited with status {code} while waiting for the service",
        "see its log lines above; check CHUTE_ENV, ENTRYPOINT and --docker-env",
    )


def cleanup(module: str | None = None, stream: TextIO | None = None) -> int:
    """Remove discovery containers (and env files) left by runs that were killed."""
    stream = stream or sys.stderr
    engine = detect_engine()
    removed, kept = remove_leftovers(engine, ROLE, module)
    stale = remove_stale_env_dirs()
    for item in removed:
        print(f"removed {item.name or item.id[:12]} (module {item.module or '?'})", file=stream)
    for item in kept:
        print(f"kept {item.name} (its discovery run is still going)", file=stream)
    if stale:
        print(f"removed {len(stale)} leftover env file(s)", file=stream)
    if not removed and not stale:
        print("no leftovers of discovery runs", file=stream)
    return 0


# --------------------------------------------------------------------------------------------------
# Command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="discover_routes",
        description=__doc__.split("\n\n")[0],
        epilog="The engine is a docker whose daemon answers, else podman; CHUTES_CONTAINER_ENGINE picks one, with "
        "flags (e.g. 'podman --cgroup-manager=cgroupfs --runtime runc'). Containers are published on 127.0.0.1 "
        "only, labelled chutes-wrappers=discovery, and removed on every exit; --cleanup removes leftovers of "
        "killed runs.",
    )
    p.add_argument("module", nargs="?", help="deploy module (same as --chute-file)")
    p.add_argument("--chute-file", help="deploy module (deploy_x, deploy_x.py or a path): runs its CHUTE_BASE_IMAGE")
    p.add_argument("--base-url", help="probe a running service instead of starting a container")
    p.add_argument("--port", type=port_argument, action="append", default=[], help="service port to probe (repeatable)")
    p.add_argument("--startup-delay", type=_seconds, help="longest wait, in seconds, for the service to start answering "
                   f"(an upper bound, not a sleep; default {DEFAULT_STARTUP_DELAY:g}, {URL_STARTUP_DELAY:g} with --base-url)")
    p.add_argument("--probe-timeout", type=_seconds, help="then longest wait per port for its spec while it "
                   f"answers 5xx (default {DEFAULT_PROBE_TIMEOUT:g})")
    p.add_argument("--no-spec-grace", type=_seconds, default=NO_SPEC_GRACE,
                   help=f"a port whose probe paths all answer 404 this long has no spec (default {NO_SPEC_GRACE:g})")
    p.add_argument("--docker-gpus", dest="gpus", help="auto (default: only with a GPU runtime), none, all, N, or 0,1")
    p.add_argument("--docker-env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="container env (repeatable); NAME alone takes the value from this environment")
    p.add_argument("--docker-extra-arg", dest="extra_args", action="append", default=[], metavar="ARG",
                   help="extra `run` argument(s), split like a shell (repeatable), e.g. --docker-extra-arg='--shm-size 2g'")
    p.add_argument("--image", help="run this image instead of the module's CHUTE_BASE_IMAGE")
    p.add_argument("--free-host-ports", action="store_true", help="publish on free host ports instead of the service's")
    p.add_argument("--probe-path", action="append", default=[],
                   help=f"another path to probe for the document, first (always probed: {', '.join(PROBE_PATHS)})")
    p.add_argument("-o", "--output", help="manifest file ('-': stdout; default: <module>.routes.json beside the module)")
    p.add_argument("--interactive", action="store_true", help="ask for the delays and GPUs not given (on a terminal)")
    p.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
    p.add_argument("--cleanup", action="store_true", help="remove containers left by killed discovery runs, then exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def config_from_args(args: argparse.Namespace) -> Config:
    if args.module and args.chute_file and args.module != args.chute_file:
        raise WrapperError("give the module once (positional or --chute-file)")
    extra_paths = tuple(p if p.startswith("/") else "/" + p for p in args.probe_path)
    return Config(
        chute_file=args.chute_file or args.module,
        base_url=args.base_url,
        ports=args.port,
        startup_delay=args.startup_delay,
        probe_timeout=args.probe_timeout,
        no_spec_grace=args.no_spec_grace,
        gpus=args.gpus,
        docker_env=args.docker_env,
        extra_args=args.extra_args,
        image=args.image,
        free_host_ports=args.free_host_ports,
        # the user's own paths first: polled from the start, and preferred when several answer
        probe_paths=tuple(dict.fromkeys(extra_paths + PROBE_PATHS)),
        output=args.output,
        live=False if args.plain else None,
    )


def ask(config: Config, stdin: TextIO = sys.stdin, stream: TextIO = sys.stderr) -> None:
    """The README's prompts (startup delay, probe timeout, --gpus) for values not given as flags."""
    if not stdin.isatty():
        return
    questions = []
    if config.startup_delay is None and not config.base_url:
        questions.append(("startup_delay", f"Startup delay, an upper bound in seconds [{DEFAULT_STARTUP_DELAY:g}]: ", DEFAULT_STARTUP_DELAY))
    if config.probe_timeout is None:
        questions.append(("probe_timeout", f"Probe timeout, seconds [{DEFAULT_PROBE_TIMEOUT:g}]: ", DEFAULT_PROBE_TIMEOUT))
    for attr, prompt, default in questions:
        while True:
            stream.write(prompt)
            stream.flush()
            answer = stdin.readline().strip()
            try:
                setattr(config, attr, _seconds(answer) if answer else default)
                break
            except argparse.ArgumentTypeError as exc:
                stream.write(f"  {exc}\n")
    if config.gpus is None and not config.base_url:
        stream.write("Docker --gpus (auto, none, all, N) [auto]: ")
        stream.flush()
        config.gpus = stdin.readline().strip() or None


def run(args: argparse.Namespace) -> int:
    if args.cleanup:
        module = args.chute_file or args.module
        return cleanup(Path(module).stem if module else None)
    config = config_from_args(args)
    if args.interactive:
        ask(config)
    display = Display(live=config.live)
    try:
        result = discover(config, display)
    except Interrupted as exc:
        display.message(f"discovery interrupted by {exc}; nothing left running")
        return 128 + exc.signum
    display.message(summary(result))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run_cli(lambda: run(args), debug=args.debug, prog=PROG)


if __name__ == "__main__":
    main()
