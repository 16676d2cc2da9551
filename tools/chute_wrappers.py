"""The public API of deploy modules: build the wrapper image, load routes, register cords, run the service.

A deploy module (`deploy_*.py`) imports these helpers; everything here imports without a container
engine, a GPU, network access or a Chutes account.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from loguru import logger

from tools.errors import ManifestError, ServiceError, WrapperError
from tools.launcher import ServiceLauncher, attach_service
from tools.routes import (
    UNSERVED_METHODS,
    Manifest,
    Route,
    coerce_routes,
    decide_public_path,
    decode_json,
    merge_routes,
    parse_manifest,
    read_manifest_file,
)

if TYPE_CHECKING:  # importing chutes.chute costs ~0.7 s; only the type checker needs it here
    from chutes.chute import Chute

__all__ = [
    "build_wrapper_image",
    "load_route_manifest",
    "register_passthrough_routes",
    "wait_for_services",
    "probe_services",
    "parse_service_ports",
    "resolve_username",
    "add_health_cord",
    "attach_service",
    "ServiceLauncher",
    "RegistrationReport",
    "WrapperError",
]

DEFAULT_PORTS = (8020, 8080)
DEFAULT_TIMEOUT = 600.0  # seconds a proxy cord waits for the service
PLACEHOLDER_USERNAME = "chutes-user"
_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


# --------------------------------------------------------------------------------------------------
# Identity and image


def build_wrapper_image(username: str, name: str, tag: str, base_image: str, **options: Any):
    """A Chutes-compatible image from any base image; see tools.wrapper_image for the options."""
    from tools.wrapper_image import build_wrapper_image as build

    return build(username, name, tag, base_image, **options)


def resolve_username(default: str = PLACEHOLDER_USERNAME) -> str:
    """`CHUTES_USERNAME`, else the username in the chutes config, else a placeholder.

    The config is `CHUTES_CONFIG_PATH` or `~/.chutes/config.ini`; only its [auth] username is read.
    """
    name = os.environ.get("CHUTES_USERNAME", "").strip()
    if name:
        return name
    config_path = Path(os.environ.get("CHUTES_CONFIG_PATH") or Path.home() / ".chutes" / "config.ini")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config_path, encoding="utf-8")
        name = parser.get("auth", "username", fallback="").strip()
    except (configparser.Error, OSError, UnicodeDecodeError):
        name = ""
    return name or default


# --------------------------------------------------------------------------------------------------
# Ports and service readiness


def parse_service_ports(env_value: str | None = None) -> list[int]:
    """Ports from a comma-separated string (default: the `CHUTE_PORTS` env var, else 8020,8080)."""
    source = "CHUTE_PORTS"
    if env_value is None:
        env_value = os.environ.get("CHUTE_PORTS")
        if env_value is None:
            return list(DEFAULT_PORTS)
    else:
        source = "ports"
    items = [item for item in re.split(r"[,\s]+", env_value.strip()) if item]
    if not items:
        raise WrapperError(f"{source} is empty", "give comma-separated port numbers, e.g. 8020,8080")
    ports: list[int] = []
    for item in items:
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise WrapperError(
                f"{source}: {item!r} is not a port number",
                "give comma-separated integers from 1 to 65535, e.g. 8020,8080",
            )
        if int(item) not in ports:
            ports.append(int(item))
    return ports


async def _port_open(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port succeeds, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return f"port {port}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def wait_for_services(
    ports: Iterable[int],
    timeout: float = 600,
    *,
    host: str = "127.0.0.1",
    interval: float = 0.2,
    launcher: ServiceLauncher | None = None,
) -> None:
    """Wait until every port accepts connections, all ports at once.

    Raises ServiceError naming the ports still closed at the deadline, or at once (with the
    service's last output) when `launcher`'s process exits while we wait.
    """
    pending = list(dict.fromkeys(int(port) for port in ports))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        results = await asyncio.gather(*(_port_open(host, port, 1.0) for port in pending))
        pending = [port for port, error in zip(pending, results) if error]
        if not pending:
            break
        if launcher is not None:
            launcher.check_alive()
        if loop.time() >= deadline:
            names = ", ".join(str(port) for port in pending)
            raise ServiceError(
                f"service port(s) {names} not accepting connections after {timeout:g}s",
                "check the service's log above, or raise the timeout",
            )
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
    logger.info(f"services ready on port(s) {', '.join(str(int(p)) for p in ports)}")


async def probe_services(ports: Iterable[int], timeout: float = 5, *, host: str = "127.0.0.1") -> list[str]:
    """Check every port concurrently; returns one error string per port that does not answer."""
    ports = list(dict.fromkeys(int(port) for port in ports))
    results = await asyncio.gather(*(_port_open(host, port, timeout) for port in ports))
    return [error for error in results if error]


def add_health_cord(
    chute: "Chute",
    ports: Sequence[int],
    *,
    public_path: str = "/health",
    timeout: float = 5,
    function_name: str = "wrapper_health",
):
    """A GET `/health` cord that reports each service port: {"status", "ports": {port: "ok" | error}}."""
    ports = [int(port) for port in ports]

    async def health(self) -> dict:
        results = await asyncio.gather(*(_port_open("127.0.0.1", port, timeout) for port in ports))
        report = {str(port): error or "ok" for port, error in zip(ports, results)}
        return {"status": "healthy" if all(v == "ok" for v in report.values()) else "unhealthy", "ports": report}

    health.__name__ = health.__qualname__ = function_name
    return chute.cord(
        path=f"/{function_name}",
        public_api_path=public_path,
        public_api_method="GET",
        method="GET",
        output_content_type="application/json",
    )(health)


# --------------------------------------------------------------------------------------------------
# Route manifest


def load_route_manifest(
    static_routes: Iterable[Route | Mapping] | None = None,
    *,
    manifest_path: str | os.PathLike | None = None,
) -> list[Route]:
    """Routes from the manifest, merged with `static_routes` (duplicates by path+method+port skipped).

    The manifest is the first of: `CHUTES_ROUTE_MANIFEST_JSON` (inline JSON), `CHUTES_ROUTE_MANIFEST`
    (a file), `manifest_path`, `<caller>.routes.json` beside the calling module. None at all is fine
    (static routes only). With `CHUTES_SKIP_ROUTE_REGISTRATION` set, nothing is read: returns [].
    """
    if _env_flag("CHUTES_SKIP_ROUTE_REGISTRATION"):
        logger.info("CHUTES_SKIP_ROUTE_REGISTRATION is set: no routes loaded")
        return []
    manifest = _read_manifest(manifest_path)
    static = coerce_routes(static_routes or [], "CHUTE_STATIC_ROUTES")
    routes, duplicates = merge_routes(manifest.routes if manifest else [], static)
    for route in duplicates:
        logger.info(f"static route {route.method} {route.path} is already in the manifest: kept the manifest's")
    return routes


def _read_manifest(explicit: str | os.PathLike | None) -> Manifest | None:
    inline = os.environ.get("CHUTES_ROUTE_MANIFEST_JSON", "").strip()
    if inline:
        return parse_manifest(decode_json(inline, "CHUTES_ROUTE_MANIFEST_JSON"), "CHUTES_ROUTE_MANIFEST_JSON")
    env_path = os.environ.get("CHUTES_ROUTE_MANIFEST", "").strip()
    if env_path:
        return read_manifest_file(env_path)
    if explicit:
        return read_manifest_file(explicit)
    from tools.wrapper_image import caller_file

    caller = caller_file()
    if caller is None:
        return None
    caller = Path(caller)
    candidate = caller.with_name(caller.stem + ".routes.json")
    if not candidate.exists():
        logger.info(f"no route manifest at {candidate.name}: using static routes only")
        return None
    return read_manifest_file(candidate)


# --------------------------------------------------------------------------------------------------
# Cord registration


@dataclass
class RegisteredRoute:
    route: Route
    public_path: str
    function_name: str
    port: int
    mode: str = "passthrough"  # or "proxy"


@dataclass
class RegistrationReport:
    registered: list[RegisteredRoute] = field(default_factory=list)
    skipped: list[tuple[Route, str]] = field(default_factory=list)
    catch_all: tuple[str, list[str]] | None = None

    def summary(self) -> str:
        parts = [f"registered {len(self.registered)} route(s)"]
        if self.registered:
            parts[0] += ": " + ", ".join(
                f"{item.route.method} {item.public_path}" + (" (proxy)" if item.mode == "proxy" else "")
                for item in self.registered
            )
        if self.catch_all:
            parts.append(f"catch-all POST {self.catch_all[0]} for {len(self.catch_all[1])} route template(s)")
        if self.skipped:
            parts.append(
                f"skipped {len(self.skipped)}: "
                + "; ".join(f"{route.method} {route.path} ({reason})" for route, reason in self.skipped)
            )
        return " | ".join(parts)


def _function_name(route: Route, public_path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", public_path.lower()).strip("_") or "root"
    return f"wrap_{route.method.lower()}_{slug}"[:96]


def _passthrough_stub(name: str):
    async def stub(self, *args: Any, **kwargs: Any) -> None:
        """Never runs: a passthrough cord forwards the request to the service."""

    stub.__name__ = stub.__qualname__ = name
    return stub


def _module_cord_keys(chute: "Chute") -> set[tuple[str, str]]:
    return {
        (cord.public_api_path, (cord._public_api_method or "POST").upper())
        for cord in chute.cords
        if cord.public_api_path
    }


def register_passthrough_routes(
    chute: "Chute",
    routes: Iterable[Route | Mapping],
    default_port: int,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    catch_all: str | None = None,
    upstream_error_status: int | None = 502,
    timeout: float = DEFAULT_TIMEOUT,
) -> RegistrationReport:
    """Register a cord for every route; skip what cannot be a cord, with the reason.

    JSON-in/JSON-out routes become SDK passthrough cords; routes with an upload, a form, a binary or
    text answer, query parameters or a streamed answer become proxy cords (tools.proxy) that carry them.
    `overrides` maps "METHOD /path" to {"mode": "passthrough"|"proxy", "timeout": s, "file_fields":
    {name: content_type}}. `catch_all` (e.g. "/proxy") adds one cord that reaches routes with path
    parameters, strictly by the manifest's templates. `upstream_error_status` is the status a proxy
    cord answers when the service answers 5xx (None: pass the service's status through).

    Never raises InvalidPath or DuplicatePath: public paths are judged with the SDK's own rule, internal
    paths and function names are unique, GET and POST on one path both register, one path on two
    ports is served as `/<port>/<path>` for the later port, and a route the module serves with its
    own cord is left to the module (also when the module's cord is defined after this call).
    """
    from tools.proxy import RouteOptions, Target, Template

    report = RegistrationReport()
    if _env_flag("CHUTES_SKIP_ROUTE_REGISTRATION"):
        return report
    taken_keys = _module_cord_keys(chute)
    module_keys = set(taken_keys)
    owner: dict[tuple[str, str], RegisteredRoute] = {}
    used_names = {cord._func.__name__ for cord in chute.cords if getattr(cord, "_func", None)}
    used_names |= {cord.path.lstrip("/") for cord in chute.cords if cord.path}
    routes = coerce_routes(routes)
    options = _parse_overrides(overrides, routes)
    templates: list[Template] = []

    for route in routes:
        port = route.port if route.port is not None else int(default_port)
        opts = options.get(route.key, RouteOptions())
        target = Target(route, port, opts.timeout or timeout, opts.file_fields, upstream_error_status)
        decision = decide_public_path(route.path, route.method, route.public_path)
        if decision.skip_reason:
            if catch_all and "{" in route.path and route.method not in UNSERVED_METHODS:
                templates.append(Template.of(target))
                report.skipped.append((route, f"{decision.skip_reason}; reachable through {catch_all}"))
            else:
                report.skipped.append((route, decision.skip_reason))
            continue
        public = decision.public_path
        key = (public, route.method)
        if key in module_keys:
            report.skipped.append((route, f"the module defines its own cord for {route.method} {public}"))
            continue
        if key in owner:
            first = owner[key]
            if first.port == port:
                report.skipped.append((route, f"duplicate of {route.method} {first.route.path} on port {port}"))
                continue
            public = f"/{port}{public}"
            key = (public, route.method)
            if key in taken_keys:
                report.skipped.append((route, f"{route.method} {public} is already registered"))
                continue
        name = route.function_name or _function_name(route, public)
        base, suffix = name, 2
        while name in used_names:
            name, suffix = f"{base}_{suffix}", suffix + 1
        mode = opts.mode
        if mode == "auto":
            mode = "proxy" if route.needs_proxy() or opts.file_fields else "passthrough"
        cord = chute.cord(
            path=f"/{name}",
            public_api_path=public,
            public_api_method=route.method,
            method=route.method,
            passthrough=mode == "passthrough",
            passthrough_port=port,
            stream=route.stream,
            output_content_type=route.content_type
            or ("text/event-stream" if route.stream else "application/json"),
        )
        if mode == "passthrough":
            # The SDK's passthrough_path setter rejects what PATH_RE rejects and strips trailing
            # slashes; the upstream target must stay exactly as the service declares it.
            cord._passthrough_path = route.upstream_path
        cord(_passthrough_stub(name))
        if mode == "proxy":
            # Chute.initialize() mounts `cord._request_handler`: ours carries what the SDK's cannot.
            cord._request_handler = _proxy_handler(chute, target)
        used_names.add(name)
        taken_keys.add(key)
        item = RegisteredRoute(route, public, name, port, mode)
        owner.setdefault((decision.public_path, route.method), item)
        report.registered.append(item)
        if catch_all:
            templates.append(Template.of(target))

    if catch_all and templates:
        _register_catch_all(chute, catch_all, templates, used_names, taken_keys, report)

    # deploy.sh reads these to print the cord table with example requests.
    if not hasattr(chute, "wrapper_reports"):
        chute.wrapper_reports = []
    chute.wrapper_reports.append(report)
    if report.registered:
        _prune_shadowed_on_startup(chute, {item.function_name for item in report.registered})
    logger.info(report.summary())
    return report


def _proxy_handler(chute: "Chute", target):
    """A proxy cord's handler: a Gradio function runs its two-step call, any other route is forwarded."""
    from tools.proxy import make_handler, pool_for

    if target.route.gradio is not None:
        from tools.gradio_app import make_gradio_handler

        return make_gradio_handler(pool_for(chute), target.port, target.route.gradio, target.timeout)
    return make_handler(chute, target)


def _parse_overrides(overrides, routes: list[Route]) -> dict[tuple[str, str], Any]:
    """"METHOD /path" -> RouteOptions. A key naming no loaded route is a warning, not an error: the
    manifest it refers to may not be discovered yet; the warning still shows a typo."""
    from tools.proxy import RouteOptions

    parsed = {}
    known = {route.key for route in routes}
    for raw_key, raw in (overrides or {}).items():
        method, _, path = str(raw_key).strip().partition(" ")
        key = (path.strip(), method.upper())
        if not path.startswith("/"):
            raise ManifestError(
                f"CHUTE_ROUTE_OVERRIDES[{raw_key!r}]: not a route key",
                "keys are 'METHOD /path' as in the manifest, e.g. 'POST /inference'",
            )
        options = RouteOptions.parse(str(raw_key), raw)
        if key not in known:
            logger.warning(f"CHUTE_ROUTE_OVERRIDES[{raw_key!r}] names no loaded route: it has no effect")
        parsed[key] = options
    return parsed


def _register_catch_all(chute, public_path, templates, used_names, taken_keys, report) -> None:
    from tools.proxy import make_catch_all_handler

    decision = decide_public_path(public_path, "POST")
    if decision.skip_reason or (decision.public_path, "POST") in taken_keys:
        raise WrapperError(
            f"catch-all path {public_path!r} cannot be used",
            decision.skip_reason or "another cord serves it; pick another path",
        )
    name = "wrap_catch_all"
    while name in used_names:
        name += "_"
    cord = chute.cord(path=f"/{name}", public_api_path=decision.public_path, public_api_method="POST", method="POST")
    cord(_passthrough_stub(name))
    cord._request_handler = make_catch_all_handler(chute, templates)
    report.catch_all = (decision.public_path, list(dict.fromkeys(t.label for t in templates)))


def _prune_shadowed_on_startup(chute: "Chute", ours: set[str]) -> None:
    """Drop our cord where the module defined its own cord for the same route after registering ours."""

    @chute.on_startup(priority=0)
    def prune_shadowed_routes(self) -> None:
        theirs = {
            (cord.public_api_path, (cord._public_api_method or "POST").upper())
            for cord in self.cords
            if cord._func.__name__ not in ours
        }
        shadowed = [
            cord
            for cord in self.cords
            if cord._func.__name__ in ours
            and (cord.public_api_path, (cord._public_api_method or "POST").upper()) in theirs
        ]
        for cord in shadowed:
            self.cords.remove(cord)
            logger.info(
                f"{cord._public_api_method} {cord.public_api_path}: the module's own cord serves it"
            )
