"""Which cord every route gets: a pure plan, from routes and overrides to cords and skipped routes.

No SDK, no I/O: `plan()` takes the routes, the module's overrides and the cords the module already
defines, and returns a `Plan` (typed cords, and every skipped route with its reason). The SDK adapter
(`tools.runtime.sdk.apply_plan`) turns a plan into cords on a Chute; `deploy.sh` prints the plan.

Every route is served by one kind of cord, a proxy cord (`tools.runtime.cords.request`), which carries what the SDK's
own passthrough cannot (uploads, binary/text answers, query strings, streams, upstream errors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, NamedTuple

from loguru import logger

from tools.runtime.constants import API_PING_PATH, DEFAULT_SERVICE_TIMEOUT
from tools.runtime.errors import ManifestError, WrapperError
from tools.runtime.routes import UNSERVED_METHODS, Route, coerce_routes, decide_public_path

OVERRIDE_KEYS = ("mode", "timeout", "file_fields", "example")
# "mode" chose between the SDK's passthrough and our proxy cord; every route is a proxy cord now.
LEGACY_MODES = ("auto", "passthrough", "proxy")


@dataclass(frozen=True)
class RouteOptions:
    """A module's per-route override (CHUTE_ROUTE_OVERRIDES["METHOD /path"])."""

    timeout: float | None = None
    file_fields: Mapping[str, str | None] = field(default_factory=dict)  # field -> content type
    example: Mapping[str, Any] | None = None  # a real call of the route (--smoke, curl lines): the module's

    @classmethod
    def parse(cls, key: str, raw: Any) -> "RouteOptions":
        where = f"CHUTE_ROUTE_OVERRIDES[{key!r}]"
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{where}: expected an object")
        unknown = set(raw) - set(OVERRIDE_KEYS)
        if unknown:
            raise ManifestError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} ({', '.join(OVERRIDE_KEYS)})")
        mode = raw.get("mode", "auto")
        if mode not in LEGACY_MODES:
            raise ManifestError(f"{where}: key 'mode' must be auto, passthrough or proxy, got {mode!r}")
        if mode == "passthrough":
            logger.warning(f"{where}: mode 'passthrough' has no effect: every route is a proxy cord, which carries JSON too")
        timeout = raw.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ManifestError(f"{where}: key 'timeout' must be a positive number of seconds, got {timeout!r}")
        files = raw.get("file_fields") or {}
        if isinstance(files, (list, tuple)):
            files = {name: None for name in files}
        if not isinstance(files, Mapping) or not all(isinstance(k, str) and k for k in files):
            raise ManifestError(f"{where}: key 'file_fields' must be a list of names or {{name: content_type}}")
        example = raw.get("example")
        if example is not None and not isinstance(example, Mapping):
            raise ManifestError(f"{where}: key 'example' must be an object of what a caller sends "
                                "(path parameters under '_path'), e.g. {'_path': {'model_name': 'my-model'}}")
        if example is not None and "_path" in example and not isinstance(example["_path"], Mapping):
            raise ManifestError(f"{where}: key 'example': '_path' must be an object of path parameters")
        return cls(timeout=float(timeout) if timeout else None, file_fields=dict(files),
                   example=dict(example) if example is not None else None)


@dataclass(frozen=True)
class Target:
    """Where and how one proxy cord forwards: the route, its port, and the module's options."""

    route: Route
    port: int
    timeout: float = DEFAULT_SERVICE_TIMEOUT
    file_fields: Mapping[str, str | None] = field(default_factory=dict)
    upstream_error_status: int | None = 502

    @property
    def all_file_fields(self) -> set[str]:
        return set(self.route.file_fields) | set(self.file_fields)

    @property
    def label(self) -> str:
        return f"{self.route.method} {self.route.upstream_path}"


@dataclass(frozen=True)
class CordPlan:
    """One cord to register: its public path and method, internal name, and what it forwards to."""

    public_path: str
    method: str
    function_name: str
    target: Target | None  # None for the catch-all
    stream: bool = False
    content_type: str = "application/json"
    templates: tuple[Target, ...] = ()  # the catch-all's routes
    kind: str = "proxy"  # "proxy" | "catch-all"

    @property
    def route(self) -> Route | None:
        return self.target.route if self.target else None

    @property
    def port(self) -> int | None:
        return self.target.port if self.target else None

    @property
    def internal_path(self) -> str:
        return f"/{self.function_name}"


class Skip(NamedTuple):
    route: Route
    reason: str


@dataclass
class Plan:
    """What registration does: cords (the catch-all last, if any) and skipped routes with reasons."""

    cords: list[CordPlan] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    @property
    def registered(self) -> list[CordPlan]:
        """The cords that serve one route each (not the catch-all)."""
        return [cord for cord in self.cords if cord.kind != "catch-all"]

    @property
    def catch_all(self) -> tuple[str, list[str]] | None:
        for cord in self.cords:
            if cord.kind == "catch-all":
                return cord.public_path, list(dict.fromkeys(t.label for t in cord.templates))
        return None

    def summary(self) -> str:
        parts = [f"registered {len(self.registered)} route(s)"]
        if self.registered:
            parts[0] += ": " + ", ".join(f"{c.method} {c.public_path}" for c in self.registered)
        if self.catch_all:
            parts.append(f"catch-all POST {self.catch_all[0]} for {len(self.catch_all[1])} route template(s)")
        if self.skipped:
            parts.append(
                f"skipped {len(self.skipped)}: "
                + "; ".join(f"{route.method} {route.path} ({reason})" for route, reason in self.skipped)
            )
        return " | ".join(parts)


# CHUTE_UPSTREAM_HEADERS: a header's value may name environment variables as ${NAME}, read when the
# chute starts (so an API key can come from a Chutes secret and is never written into the image).
ENV_REFERENCE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
# Headers the proxy sets per request, or that would break the upstream connection.
RESERVED_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection"}
SECRET_HEADER_RE = re.compile(r"auth|key|token|secret|password|cookie", re.I)


def check_upstream_headers(headers: Any) -> dict[str, str]:
    """CHUTE_UPSTREAM_HEADERS checked at import: names are HTTP tokens, values strings without CR/LF.
    A literal value in a header that looks secret is a warning: it would be written into the image."""
    where = "CHUTE_UPSTREAM_HEADERS"
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ManifestError(f"{where}: expected a dict of header name: value")
    out = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME_RE.match(name):
            raise ManifestError(f"{where}: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ManifestError(f"{where}[{name!r}]: set by the proxy for each request; it cannot be fixed")
        if not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
            raise ManifestError(f"{where}[{name!r}]: the value must be a string without CR, LF or NUL")
        if SECRET_HEADER_RE.search(name) and value and not ENV_REFERENCE_RE.search(value):
            logger.warning(f"{where}[{name!r}] holds a literal value that looks secret: it is written into the "
                           "module and the image; name an environment variable instead, e.g. 'Bearer ${SERVICE_API_KEY}'")
        out[name] = value
    return out


def resolve_upstream_headers(headers: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The header values with every ${NAME} replaced from `environ` (the chute's, when it starts).
    A variable that is not set is an error naming it (never a value)."""
    missing = sorted({name for value in headers.values() for name in ENV_REFERENCE_RE.findall(value)} - set(environ))
    if missing:
        raise WrapperError(
            f"CHUTE_UPSTREAM_HEADERS needs {', '.join(missing)}, which is not set in the chute's environment",
            "set it (on Chutes: a secret of the chute; locally: export it before ./deploy.sh --run)",
        )
    resolved = {name: ENV_REFERENCE_RE.sub(lambda m: environ[m.group(1)], value) for name, value in headers.items()}
    for name, value in resolved.items():
        if any(ch in value for ch in "\r\n\0"):
            raise WrapperError(f"CHUTE_UPSTREAM_HEADERS[{name!r}]: its environment value holds CR, LF or NUL")
    return resolved


def function_name_for(route: Route, public_path: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", public_path.lower()).strip("_") or "root"
    return f"wrap_{route.method.lower()}_{slug}"[:96]


def parse_overrides(overrides: Mapping[str, Any] | None, routes: list[Route]) -> dict[tuple[str, str], RouteOptions]:
    """"METHOD /path" -> RouteOptions. A key naming no loaded route is a warning, not an error: the
    manifest it refers to may not be discovered yet; the warning still shows a typo."""
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


def unique_name(name: str, used: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... if taken; recorded in `used`."""
    base, suffix = name, 2
    while name in used:
        name, suffix = f"{base}_{suffix}", suffix + 1
    used.add(name)
    return name


def plan(
    routes: Iterable[Route | Mapping],
    default_port: int,
    *,
    overrides: Mapping[str, Any] | None = None,
    catch_all: str | None = None,
    upstream_error_status: int | None = 502,
    timeout: float = DEFAULT_SERVICE_TIMEOUT,
    module_cords: Iterable[tuple[str, str]] = (),
    used_names: Iterable[str] = (),
) -> Plan:
    """The cords for `routes`. `module_cords` are the (public path, method) the module serves itself,
    `used_names` the function names and internal paths already taken on the chute.

    Public paths are judged with the SDK's own rule; internal paths and function names are unique;
    GET and POST on one path both register; one path on two ports is served as `/<port>/<path>` for
    the later port; a route the module serves with its own cord is left to the module.
    """
    result = Plan()
    routes = coerce_routes(routes)
    options = parse_overrides(overrides, routes)
    module_keys = set(module_cords)
    taken = set(module_keys)
    names = set(used_names)
    owner: dict[tuple[str, str], CordPlan] = {}
    templates: list[Target] = []

    for route in routes:
        port = route.port if route.port is not None else int(default_port)
        opts = options.get(route.key, RouteOptions())
        if opts.example is not None:
            route = replace(route, example=opts.example, example_source="module")
        target = Target(route, port, opts.timeout or timeout, opts.file_fields, upstream_error_status)
        decision = decide_public_path(route.path, route.method, route.public_path)
        if decision.skip_reason:
            if catch_all and "{" in route.path and route.method not in UNSERVED_METHODS:
                templates.append(target)
                result.skipped.append(Skip(route, f"{decision.skip_reason}; reachable through {catch_all}"))
            else:
                result.skipped.append(Skip(route, decision.skip_reason))
            continue
        public = decision.public_path
        if public == API_PING_PATH:
            reason = (f"{API_PING_PATH} on a chute's host is answered by the Chutes API itself "
                      '({"message": "pong"}): a cord there would never be called')
            if catch_all:
                templates.append(target)
                reason += f"; reachable through {catch_all}"
            result.skipped.append(Skip(route, reason))
            continue
        key = (public, route.method)
        if key in module_keys:
            result.skipped.append(Skip(route, f"the module defines its own cord for {route.method} {public}"))
            continue
        if key in owner:
            first = owner[key]
            if first.port == port:
                result.skipped.append(Skip(route, f"duplicate of {route.method} {first.route.path} on port {port}"))
                continue
            public = f"/{port}{public}"
            key = (public, route.method)
            if key in taken:
                result.skipped.append(Skip(route, f"{route.method} {public} is already registered"))
                continue
        name = unique_name(route.function_name or function_name_for(route, public), names)
        cord = CordPlan(
            public_path=public,
            method=route.method,
            function_name=name,
            target=target,
            stream=route.stream,
            content_type=route.content_type or ("text/event-stream" if route.stream else "application/json"),
        )
        taken.add(key)
        owner.setdefault((decision.public_path, route.method), cord)
        result.cords.append(cord)
        if catch_all:
            templates.append(target)

    if catch_all and templates:
        decision = decide_public_path(catch_all, "POST")
        if decision.skip_reason or (decision.public_path, "POST") in taken:
            raise WrapperError(
                f"catch-all path {catch_all!r} cannot be used",
                decision.skip_reason or "another cord serves it; pick another path",
            )
        name = "wrap_catch_all"
        while name in names:
            name += "_"
        names.add(name)
        result.cords.append(CordPlan(decision.public_path, "POST", name, None, templates=tuple(templates), kind="catch-all"))
    return result
