"""The catch-all cord: routes with path parameters, reached strictly by the manifest's templates.

A cord path cannot hold parameters, so one cord takes `{"method", "path", "query", "json" | "form" |
"raw"}` and forwards only when `METHOD path` matches a route template; anything else is the caller's
mistake (400), never another host, port or file of the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tools.runtime.cords.request import QUERY_KEY, kind_of
from tools.runtime.errors import BadRequest
from tools.runtime.registration import Target
from tools.runtime.routes import Route

MAX_PATH = 2048
SHAPE = '{"method": "GET", "path": "/...", "query": {...}, "json" | "form" | "raw": {...}}'
_SEGMENT_VALUE_RE = re.compile(r"^[A-Za-z0-9_~.\-+=,:]{1,200}$")
PATH_SAFE = "/~.-_+=,:"  # what stays unquoted when the checked path goes upstream


@dataclass(frozen=True)
class Template:
    route: Route
    target: Target
    pattern: re.Pattern

    @classmethod
    def of(cls, target: Target) -> "Template":
        """Each `{name}` matches within one path segment, also beside literal text in it
        (`/v1beta/models/{model}:generateContent`)."""
        parts = []
        for segment in target.route.upstream_path.strip("/").split("/"):
            pattern, last = "", 0
            for match in re.finditer(r"\{[^{}/]+\}", segment):
                pattern += re.escape(segment[last:match.start()]) + r"([^/]+?)"
                last = match.end()
            parts.append(pattern + re.escape(segment[last:]))
        trailing = "/?" if not target.route.upstream_path.endswith("/") else "/"
        return cls(target.route, target, re.compile("^/" + "/".join(parts) + trailing + "$"))

    @property
    def label(self) -> str:
        return f"{self.route.method} {self.route.upstream_path}"


def check_proxy_path(path: Any) -> str:
    """A concrete path that may only name a route of this service, never another host, port or file."""
    if not isinstance(path, str) or not path:
        raise BadRequest("path: expected a string like /v1/models/some-id")
    if len(path) > MAX_PATH:
        raise BadRequest(f"path: longer than {MAX_PATH} characters")
    if not path.startswith("/") or path.startswith("//") or "://" in path:
        raise BadRequest("path: must be an absolute path on the service, like /v1/models/x")
    if any(ch in path for ch in "\r\n\t\\@?#%") or any(ord(ch) <= 0x20 or ord(ch) > 0x7e for ch in path):
        raise BadRequest("path: contains a character that is not allowed (control, space, \\, @, ?, #, %)")
    segments = path.strip("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments[:-1]) or segments[-1] in (".", ".."):
        raise BadRequest("path: empty, '.' or '..' segments are not allowed")
    return path


def match_template(templates: list[Template], method: str, path: str) -> tuple[Template | None, list[str]]:
    allowed = list(dict.fromkeys(t.label for t in templates))
    for template in templates:
        if template.route.method != method:
            continue
        match = template.pattern.match(path)
        if match and all(_SEGMENT_VALUE_RE.match(value) for value in match.groups()):
            return template, allowed
    return None, allowed


@dataclass(frozen=True)
class Routed:
    """A catch-all call resolved: its template, the method and path, and the body as its route takes it."""

    template: Template | None
    method: str
    path: str
    allowed: list[str]
    inner: Any = None


def route_call(templates: list[Template], payload: Any) -> Routed:
    """Where a catch-all call goes (template None: nowhere; the caller gets `allowed`)."""
    if not isinstance(payload, dict):
        raise BadRequest(f"expected {SHAPE}")
    method = str(payload.get("method", "GET")).upper()
    path = check_proxy_path(payload.get("path"))
    template, allowed = match_template(templates, method, path)
    if template is None:
        return Routed(None, method, path, allowed)
    inner = payload.get(kind_of(template.route).catch_all_key)
    if inner is None:
        inner = {}
    if isinstance(inner, dict):
        inner = dict(inner)
        if payload.get("query") is not None:
            inner[QUERY_KEY] = payload["query"]
    elif payload.get("query") is not None:
        raise BadRequest("query: only with an object body")
    return Routed(template, method, path, allowed, inner)
