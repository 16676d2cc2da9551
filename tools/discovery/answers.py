"""What the running service says beyond its spec, asked once discovery has the routes: which path tells
that it is ready, and what media type the routes whose spec says only "JSON" really answer.

- `ready_path`: the first of READY_CANDIDATES that answers 2xx now, else the first the spec declares
  that answers as a service still loading would (MLServer's 400, a 503): the chute waits for it
  to answer 2xx before it serves a call (tools/runtime/launcher.py). A Gradio app: its `/config`.
- `real_kinds`: GET routes without parameters whose spec says JSON (FastAPI says it of every route
  without a response model: `/metrics`, `/healthz`, Swagger UI pages) are asked once, headers only;
  a text or HTML answer is recorded as such. Never a route that acts on the service itself
  (`routes.acts_on_service`: SGLang answers GET /flush_cache and /start_profile).
"""

from __future__ import annotations

import http.client
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Iterable
from urllib.parse import urlsplit

from tools.discovery.openapi import classify_media, media_type
from tools.runtime.routes import Route, acts_on_service

# Readiness paths, most specific first: readiness proper, then health, then an LLM server's model list.
READY_CANDIDATES = ("/v2/health/ready", "/readyz", "/ready", "/healthz", "/health", "/v1/models")
GRADIO_READY_PATH = "/config"
# Answers that say "this path is not for us" (missing, auth needed, wrong method): never a readiness path.
_NOT_A_READY_PATH = (401, 403, 404, 405)
# Everything is asked at once, and what has not answered within ASK_TIMEOUT is left as the spec says
# (discovery must finish within half a second of the spec: README, "Performance").
ASK_TIMEOUT = 0.4
MAX_ASKED = 64

# (url, timeout) -> (status, content type), or raises OSError / http.client.HTTPException
Head = Callable[[str, float], "tuple[int, str]"]


def head_of(url: str, timeout: float = ASK_TIMEOUT) -> tuple[int, str]:
    """GET `url` and read only the status and Content-Type (a slow or endless body is never read)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"Accept": "*/*"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or ""
    finally:
        conn.close()


def _ask(head: Head, urls: Iterable[str]) -> dict[str, tuple[int, str] | None]:
    urls = list(dict.fromkeys(urls))[:MAX_ASKED]

    def one(url: str) -> tuple[int, str] | None:
        try:
            return head(url, ASK_TIMEOUT)
        except (OSError, http.client.HTTPException):
            return None

    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(urls))) as pool:
        return dict(zip(urls, pool.map(one, urls)))


def ready_path(base_url: str, routes: list[Route], gradio: bool = False, head: Head = head_of) -> str | None:
    """The path that tells the service on `base_url` is ready, or None (the open port will have to do)."""
    if gradio:
        return GRADIO_READY_PATH
    declared = {route.upstream_path for route in routes if route.method == "GET" and not route.path_params}
    base = base_url.rstrip("/")
    answers = _ask(head, (base + path for path in READY_CANDIDATES))
    for path in READY_CANDIDATES:
        answer = answers.get(base + path)
        if answer and 200 <= answer[0] < 300:
            return path
    for path in READY_CANDIDATES:
        answer = answers.get(base + path)
        if path in declared and answer and answer[0] not in _NOT_A_READY_PATH:
            return path  # declared, and answering as a service that is still loading does
    return None


def real_kinds(base_url: str, routes: list[Route], head: Head = head_of) -> list[Route]:
    """`routes` with the response kind of each parameterless GET said to answer JSON set to what
    it really answers, when that is not JSON (text, HTML, a stream, bytes)."""
    base = base_url.rstrip("/")
    asked = [route for route in routes if route.method == "GET" and not route.path_params
             and route.response_kind == "json" and route.source == "openapi" and not acts_on_service(route.path)]
    answers = _ask(head, (base + route.upstream_path for route in asked))
    out = []
    for route in routes:
        answer = answers.get(base + route.upstream_path) if route in asked else None
        if answer and 200 <= answer[0] < 300 and answer[1]:
            ctype = media_type(answer[1])
            kind = classify_media(ctype)
            if kind != "json":
                route = replace(route, response_kind=kind, content_type=ctype, stream=kind == "stream")
        out.append(route)
    return out
