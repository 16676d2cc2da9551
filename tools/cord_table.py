"""The cord table deploy.sh prints (--validate, --run, --run-docker): every cord of a chute, where it
forwards, and a ready-to-paste curl line, for this machine and for the deployed chute on Chutes.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tools.runtime.sdk.chute import cord_views
from tools.runtime.cords.request import kind_of
from tools.runtime.routes import BODY_METHODS, Route, extension_for

# How callers reach a deployed chute: https://{username}-{chute name}.chutes.ai/{path} with an API key.
CHUTES_URL = "https://{slug}.chutes.ai"
AUTH_HEADER = "Authorization: Bearer $CHUTES_API_KEY"


@dataclass
class Cord:
    method: str
    public_path: str
    upstream: str
    stream: bool
    example: object = None
    file_fields: tuple[str, ...] = ()
    binary_type: str | None = None  # content type of a binary answer: curl writes it to a file
    route: Route | None = None  # None for the module's own cords
    mode: str = "module"  # proxy | catch-all | module
    templates: tuple[Route, ...] = ()  # for the catch-all: the routes it reaches


def cords_of(chute: Any) -> list[Cord]:
    """The chute's cords as deploy.sh shows them (our plans say what each of ours forwards to)."""
    cords = []
    for view in cord_views(chute):
        item = view.plan
        if item is None:
            cords.append(Cord(view.method, view.public_path, "module code", view.stream))
        elif item.kind == "catch-all":
            labels = [t.label for t in item.templates]
            cords.append(Cord(
                view.method, view.public_path, "catch-all: " + ", ".join(label for label in labels if "{" in label),
                view.stream, example=catch_all_example(labels), mode="catch-all",
                templates=tuple(t.route for t in item.templates if "{" in t.route.path),
            ))
        else:
            route = item.route
            cords.append(Cord(
                view.method, view.public_path, f":{item.port}{route.upstream_path}", view.stream,
                example=route.example, file_fields=kind_of(route).caller_files(route),
                binary_type=route.content_type if route.response_kind == "binary" else None,
                route=route, mode=item.kind,
            ))
    return cords


def catch_all_example(labels: list[str]) -> dict:
    """A call of the first templated route, with its parameters spelled as placeholders."""
    for label in labels:
        method, _, path = label.partition(" ")
        if "{" in path:
            return {"method": method, "path": re.sub(r"\{([^}]+)\}", lambda m: m.group(1).upper(), path)}
    method, _, path = labels[0].partition(" ")
    return {"method": method, "path": path}


def chutes_url(username: str, chute_name: str) -> str:
    """The deployed chute's public URL (Chutes slugs `username-name`: lowercase, '-' for the rest)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{username}-{chute_name}".lower()).strip("-")
    return CHUTES_URL.format(slug=slug)


def as_caller_sends(url: str, method: str, example: Any) -> tuple[str, Any]:
    """(URL, JSON body) of a call with `example`: in the query string for GET and DELETE (the
    gateway reads no body for them), as the JSON body otherwise. `_path` (path parameters) is left out."""
    if isinstance(example, dict):
        example = {key: value for key, value in example.items() if key != "_path"}
    if method in BODY_METHODS or not isinstance(example, dict):
        return url, example
    if example:
        url += "?" + urlencode({k: json.dumps(v) if isinstance(v, dict) else v for k, v in example.items()},
                               doseq=True)
    return url, None


def curl_line(base_url: str, cord: Cord, auth: bool = False) -> str:
    url, example = as_caller_sends(base_url + cord.public_path, cord.method, cord.example)
    parts = ["curl", "-sS"]
    if cord.stream:
        parts.append("-N")
    if cord.method != "GET":
        parts += ["-X", cord.method]
    parts.append(url)
    if cord.binary_type:
        parts += ["-o", "response" + (extension_for(cord.binary_type) or ".bin")]
    tail = ' -H "' + AUTH_HEADER + '"' if auth else ""
    if cord.method not in BODY_METHODS:
        return shlex.join(parts) + tail
    parts += ["-H", "Content-Type: application/json"]
    if cord.file_fields:
        # the file goes base64-encoded in the JSON: let the shell do it
        fields = [f'\\"{name}_base64\\": \\"$(base64 -w0 FILE)\\"' for name in cord.file_fields]
        for key, value in (example or {}).items():
            fields.append(_in_double_quotes(json.dumps(key)) + ": " + _in_double_quotes(json.dumps(value)))
        return shlex.join(parts) + tail + ' -d "{' + ", ".join(fields) + '}"'
    return shlex.join(parts + ["-d", json.dumps(example if example is not None else {})]) + tail


def _in_double_quotes(text: str) -> str:
    """`text` escaped for the inside of a shell double-quoted string."""
    return "".join("\\" + ch if ch in '"\\$`' else ch for ch in text)


def cord_table(base_url: str, cords: list[Cord], public_url: str | None = None) -> str:
    width = max((len(c.public_path) for c in cords), default=10)
    lines = [f"{len(cords)} cord(s) at {base_url}" + (f" (on Chutes: {public_url})" if public_url else "") + ":"]
    for cord in cords:
        kind = "stream" if cord.stream else ""
        lines.append(f"  {cord.method:<6} {cord.public_path:<{width}}  -> {cord.upstream} {kind}".rstrip())
        lines.append(f"         {curl_line(base_url, cord)}")
        if public_url:
            lines.append(f"         on Chutes: {curl_line(public_url, cord, auth=True)}")
        if cord.route is not None and cord.route.response_headers:
            lines.append(f"         (on Chutes without its header(s) {', '.join(cord.route.response_headers)}: "
                         "only the media type reaches callers)")
    return "\n".join(lines)
