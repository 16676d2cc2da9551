"""What the local gateway serves besides the chute's cords, for the developer in front of it:

  GET /openapi.json, /_gateway/openapi.json   the chute's API as callers on Chutes call it (openapi_doc.py)
  GET /docs, /_gateway/docs                   that document in Swagger UI, offline: its files come from an
                                              installed package (fastapi-offline), under /_gateway/assets
  GET /_gateway/metrics                       Prometheus metrics per cord (metrics.py)
  GET /_gateway/cords                         what each cord does, from the registration plan: what
                                              `--run --reload` compares before and after a change

These routes go before the gateway's catch-all route. A cord of the chute whose public path is one of
them (only a module's own cord can be /docs: discovery and registration skip /docs routes) keeps its
path, as it would on Chutes; its page stays at /_gateway/... and a warning says so.
"""

from __future__ import annotations

import html
import importlib.util
import json
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tools.platform.metrics import GatewayMetrics
from tools.platform.openapi_doc import build_document
from tools.runtime.cords.request import kind_of
from tools.runtime.sdk.chute import cord_views, unwrap

DOCUMENT_PATHS = ("/openapi.json", "/_gateway/openapi.json")
DOCS_PATHS = ("/docs", "/_gateway/docs")
ASSETS_PATH = "/_gateway/assets"
METRICS_PATH = "/_gateway/metrics"
CORDS_PATH = "/_gateway/cords"
ASSETS_PACKAGE = "fastapi_offline"  # Swagger UI 5's files, in its static/ folder

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - API as callers on Chutes call it</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" href="{assets}/favicon.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{document}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      displayOperationId: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    }});
  </script>
</body>
</html>
"""


def assets_directory() -> Path | None:
    """Swagger UI's files from the installed package (never a CDN); None when it is not installed."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def describe_cords(chute: Any) -> dict[str, dict]:
    """"METHOD /public/path" -> what the cord does, from its plan (the module's own cords: its function)."""
    out = {}
    for view in cord_views(unwrap(chute)):
        plan = view.plan
        if plan is None:
            item: dict[str, Any] = {"cord": "the module's own", "function": view.function_name}
        elif plan.kind == "catch-all":
            item = {"cord": "catch-all", "routes": [t.label for t in plan.templates if "{" in t.route.path]}
        else:
            route, target = plan.route, plan.target
            item = {
                "cord": "gradio" if route.gradio is not None else "proxy",
                "forwards to": f"{route.method} :{target.port}{route.upstream_path}",
                "request": kind_of(route, target).name,
                "file fields": sorted(kind_of(route, target).caller_files(route, target)),
                "query": list(route.query_params),
                "answer": route.response_kind + (f" {route.content_type}" if route.content_type else ""),
                "timeout": target.timeout,
            }
            if route.gradio is not None:
                item["gradio"] = route.gradio.to_json()
        item["stream"] = view.stream
        item["internal path"] = view.internal_path
        out[f"{view.method} {view.public_path}"] = item
    return out


def front_door(chute: Any, metrics: GatewayMetrics, reserved: tuple[str, ...] = ()) -> tuple[list[BaseRoute], list[str]]:
    """The routes (before the gateway's catch-all) and a warning per cord that collides with a page of
    the gateway (`reserved`: the gateway's other pages)."""
    views = cord_views(unwrap(chute)) if chute is not None else []
    taken = {view.public_path for view in views if view.method in ("GET", "HEAD")}
    warnings = []
    routes: list[BaseRoute] = []
    assets = assets_directory()

    async def document(request: Request) -> Response:
        if chute is None:
            return JSONResponse({"detail": "this gateway was given a cord list, not a deploy module: no document"},
                                status_code=404)
        local = str(request.base_url).rstrip("/")
        return JSONResponse(build_document(chute, local_url=local))

    async def docs(request: Request) -> Response:
        if assets is None:
            return JSONResponse({"detail": f"the docs page needs the {ASSETS_PACKAGE} package: ./setup.sh installs it"},
                                status_code=404)
        title = html.escape(unwrap(chute).name if chute is not None else "chute")
        return HTMLResponse(DOCS_PAGE.format(title=title, assets=ASSETS_PATH, document=DOCUMENT_PATHS[1]))

    async def metrics_page(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    async def cords(_: Request) -> Response:
        return Response(json.dumps(describe_cords(chute) if chute is not None else {}), media_type="application/json")

    for paths, endpoint in ((DOCUMENT_PATHS, document), (DOCS_PATHS, docs)):
        for path in paths:
            if path in taken:
                warnings.append(f"GET {path} is a cord of this chute: it is served as on Chutes; "
                                f"the {'docs page' if endpoint is docs else 'API document'} is at {paths[-1]}")
                continue
            routes.append(Route(path, endpoint, methods=["GET"]))
    routes += [Route(METRICS_PATH, metrics_page, methods=["GET"]), Route(CORDS_PATH, cords, methods=["GET"])]
    if assets is not None:
        routes.append(Mount(ASSETS_PATH, app=StaticFiles(directory=assets)))
    own = {DOCUMENT_PATHS[-1], DOCS_PATHS[-1], METRICS_PATH, CORDS_PATH, *reserved}
    for path in sorted(taken):
        if path in own or path.startswith(ASSETS_PATH + "/"):
            warnings.append(f"GET {path} is a cord of this chute, but the local gateway answers that path itself: "
                            "call it on Chutes, or give it another path")
    return routes, warnings
