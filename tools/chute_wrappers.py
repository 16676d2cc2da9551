"""The public API of deploy modules: build the wrapper image, load routes, register cords, run the service.

A deploy module (`deploy_*.py`) imports these helpers; everything here imports without a container
engine, a GPU, network access or a Chutes account.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from loguru import logger

from tools.runtime.sdk.chute import add_cord, apply_plan, module_cords, resource, used_names
from tools.runtime.constants import (
    DEFAULT_SERVICE_PORTS, DEFAULT_SERVICE_TIMEOUT, PORT_MAX, PORT_MIN, SKIP_REGISTRATION_ENV, env_flag, is_port,
)
from tools.runtime.errors import WrapperError
from tools.runtime.launcher import (
    ServiceLauncher, attach_service, probe_services, resolve_ready_paths, service_state, wait_for_services,
)
from tools.runtime.registration import CordPlan, Plan, check_upstream_headers, plan, resolve_upstream_headers
from tools.runtime.routes import Route, choose_manifest, coerce_routes, merge_routes

if TYPE_CHECKING:  # importing chutes.chute costs ~0.7 s; only the type checker needs it here
    from chutes.chute import Chute

__all__ = [
    "build_wrapper_image",
    "load_route_manifest",
    "register_routes",
    "register_passthrough_routes",
    "wait_for_services",
    "probe_services",
    "parse_service_ports",
    "resolve_username",
    "add_health_cord",
    "attach_service",
    "ServiceLauncher",
    "WrapperError",
]

PLACEHOLDER_USERNAME = "chutes-user"


# --------------------------------------------------------------------------------------------------
# Identity and image


def build_wrapper_image(username: str, name: str, tag: str, base_image: str, **options: Any):
    """A Chutes-compatible image from any base image; see tools.runtime.image for the options."""
    from tools.runtime.image import build_wrapper_image as build

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
# Ports and the health cord


def parse_service_ports(env_value: str | None = None) -> list[int]:
    """Ports from a comma-separated string (default: the `CHUTE_PORTS` env var, else 8020,8080)."""
    source = "CHUTE_PORTS"
    if env_value is None:
        env_value = os.environ.get("CHUTE_PORTS")
        if env_value is None:
            return list(DEFAULT_SERVICE_PORTS)
    else:
        source = "ports"
    items = [item for item in re.split(r"[,\s]+", env_value.strip()) if item]
    if not items:
        raise WrapperError(f"{source} is empty", "give comma-separated port numbers, e.g. 8020,8080")
    ports: list[int] = []
    for item in items:
        if not item.isdigit() or not is_port(int(item)):
            raise WrapperError(
                f"{source}: {item!r} is not a port number",
                f"give comma-separated integers from {PORT_MIN} to {PORT_MAX}, e.g. 8020,8080",
            )
        if int(item) not in ports:
            ports.append(int(item))
    return ports


def add_health_cord(
    chute: "Chute",
    ports: Sequence[int],
    *,
    public_path: str = "/health",
    timeout: float = 5,
    function_name: str = "wrapper_health",
    ready_paths: Mapping[int, str | None] | None = None,
):
    """A GET `/health` cord reporting liveness and readiness apart, per service port:

        {"status": "healthy" | "unhealthy", "live": bool, "ready": bool,
         "ports": {port: "ok" | why not live}, "readiness": {port: "ok" | why not ready}}

    Live: the port accepts connections. Ready: also its readiness path answers 2xx (`ready_paths` as
    for attach_service: SERVICE_READY_PATHS, else what discovery found). "healthy" means ready.
    Answered like every cord of ours (a caller's `?stream=1` gets the report as a stream, never an
    instance failure)."""
    from tools.runtime.cords.handler import json_handler
    from tools.runtime.image import caller_file

    ports = [int(port) for port in ports]
    paths = resolve_ready_paths(ports, ready_paths, caller_file())

    async def health() -> dict:
        return await health_report(ports, paths, timeout)

    return add_cord(chute, path=f"/{function_name}", public_path=public_path, method="GET",
                    function_name=function_name, handler=json_handler(health))


async def health_report(ports: Sequence[int], ready_paths: Mapping[int, str] | None = None, timeout: float = 5) -> dict:
    """What the health cord answers (add_health_cord): each port's liveness and readiness."""
    paths = dict(ready_paths or {})
    states = await asyncio.gather(*(service_state(port, paths.get(port), timeout=timeout) for port in ports))
    live = {str(port): error or "ok" for port, (error, _) in zip(ports, states)}
    ready = {str(port): error or "ok" for port, (_, error) in zip(ports, states)}
    is_live = all(v == "ok" for v in live.values())
    is_ready = all(v == "ok" for v in ready.values())
    return {"status": "healthy" if is_ready else "unhealthy", "live": is_live, "ready": is_ready,
            "ports": live, "readiness": ready}


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
    from tools.runtime.image import caller_file

    choice = choose_manifest(caller_file(), manifest_path)
    if choice.kind == "none":
        logger.info(f"route manifest: {choice.describe()}")
        if choice.reason == "skipped":
            return []
    manifest = choice.read()
    static = coerce_routes(static_routes or [], "CHUTE_STATIC_ROUTES")
    routes, duplicates = merge_routes(manifest.routes if manifest else [], static)
    for route in duplicates:
        logger.info(f"static route {route.method} {route.path} is already in the manifest: kept the manifest's")
    return routes


# --------------------------------------------------------------------------------------------------
# Cord registration


def register_routes(
    chute: "Chute",
    routes: Iterable[Route | Mapping],
    default_port: int,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    catch_all: str | None = None,
    upstream_error_status: int | None = 502,
    timeout: float = DEFAULT_SERVICE_TIMEOUT,
    upstream_headers: Mapping[str, str] | None = None,
) -> Plan:
    """Register a cord for every route; skip what cannot be a cord, with the reason.

    Every route becomes a proxy cord (tools/runtime/cords/) that carries JSON, uploads, forms, binary
    and text answers, query strings and streams. `overrides` maps "METHOD /path" to {"timeout": s,
    "file_fields": {name: content_type}}. `catch_all` (e.g. "/proxy") adds one cord that reaches
    routes with path parameters, strictly by the manifest's templates. `upstream_error_status` is the
    status a cord answers when the service answers 5xx (None: the service's own status).
    `upstream_headers` (CHUTE_UPSTREAM_HEADERS) are added to every request to the service; `${NAME}` in
    a value is read from the chute's environment when it starts (a Chutes secret, say), never logged.

    The decisions are `tools.runtime.registration.plan` (see there); the returned plan says what was
    registered and what was skipped, and why. Never raises InvalidPath or DuplicatePath.
    """
    if env_flag(SKIP_REGISTRATION_ENV):
        return Plan()
    headers = check_upstream_headers(upstream_headers)
    result = plan(
        routes,
        default_port,
        overrides=overrides,
        catch_all=catch_all,
        upstream_error_status=upstream_error_status,
        timeout=timeout,
        module_cords=module_cords(chute),
        used_names=used_names(chute),
    )
    apply_plan(chute, result, lambda item: _handler(chute, item))
    if headers:
        _resolve_headers_on_startup(chute, headers)
    logger.info(result.summary())
    return result


# The seed's name: it registers no SDK passthrough cords any more, but deploy modules call it so.
register_passthrough_routes = register_routes


def _pool(chute: "Chute"):
    from tools.runtime.cords.pool import UpstreamPool

    return resource(chute, "upstream pool", UpstreamPool)


def _resolve_headers_on_startup(chute: "Chute", headers: dict[str, str]) -> None:
    pool = _pool(chute)

    @chute.on_startup(priority=5)
    def upstream_headers_from_environment(self) -> None:
        pool.headers.update(resolve_upstream_headers(headers, os.environ))


def _handler(chute: "Chute", item: CordPlan):
    from tools.runtime.cords.handler import handler_for

    return handler_for(_pool(chute), item)
