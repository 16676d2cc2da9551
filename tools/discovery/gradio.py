"""Gradio apps found by discovery: an app's named functions from what it serves, as routes.

`discover_app` reads `GET /config` (its version, the API prefix, which functions are generators) and
`GET <prefix>/info` (each named function's parameters with their defaults and types, and its
outputs); `routes_for` makes one route of request kind "gradio" per named function, whose cord
(tools/runtime/cords/gradio.py) runs Gradio's two-step call. The prefix is `/gradio_api` from Gradio
5 on and empty in 4.x.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping
from urllib.parse import quote

from tools.runtime.errors import NotGradio
from tools.runtime.gradio_spec import API_PREFIX_5, KIND, ChatSpec, GradioFunction, Output, Parameter
from tools.runtime.routes import Route

_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
          "array": "array", "object": "object", "null": "null"}
_CORD_CHARS_RE = re.compile(r"[^a-z0-9_]+")




def schema_type(schema: Any, python_type: str | None = None) -> str:
    """The short type of an info entry's JSON schema: a Gradio file object is "file", a list of them
    "files"; else the JSON type, or "any"."""
    if not isinstance(schema, Mapping):
        return "any"
    if _is_file_schema(schema) or python_type == "filepath":
        return "file"
    kind = schema.get("type")
    if kind == "array" and _is_file_schema(schema.get("items")):
        return "files"
    if isinstance(kind, str):
        return _TYPES.get(kind, "any")
    return "any"


def _is_file_schema(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    props = schema.get("properties")
    if isinstance(props, Mapping) and "path" in props and ("meta" in props or "url" in props):
        return True
    return schema.get("title") in ("FileData", "ImageData")


def cord_path(api_name: str) -> str:
    """A cord path for a function: `/<api_name>`, lowercase, `_` for what the SDK's rule refuses."""
    slug = _CORD_CHARS_RE.sub("_", api_name.strip("/").lower()).strip("_") or "predict"
    return "/" + slug


def parse_app(config: Mapping[str, Any], info: Mapping[str, Any]) -> list[GradioFunction]:
    """Every named function of an app from its `/config` and `<prefix>/info` documents."""
    version = str(config.get("version") or "")
    prefix = _api_prefix(config)
    deps = [dep for dep in config.get("dependencies") or [] if isinstance(dep, Mapping)]
    by_name = {str(dep.get("api_name")): dep for dep in deps if dep.get("api_name")}
    components = {comp.get("id"): comp for comp in config.get("components") or [] if isinstance(comp, Mapping)}
    generators = {name: bool((dep.get("types") or {}).get("generator")) for name, dep in by_name.items()}
    named = info.get("named_endpoints") or {}
    if not isinstance(named, Mapping):
        raise NotGradio("the app's info has no named_endpoints object")
    functions = []
    for endpoint, spec in named.items():
        if not isinstance(spec, Mapping):
            continue
        api_name = str(endpoint).strip("/")
        params = []
        for index, raw in enumerate(spec.get("parameters") or []):
            python_type = (raw.get("python_type") or {}).get("type")
            name = raw.get("parameter_name") or _identifier(raw.get("label")) or f"param_{index}"
            kind = schema_type(raw.get("type"), python_type)
            params.append(Parameter(
                name=name, type=kind, has_default=bool(raw.get("parameter_has_default")),
                default=raw.get("parameter_default"), label=raw.get("label"), component=raw.get("component"),
                python_type=python_type, example=None if kind in ("file", "files") else raw.get("example_input"),
            ))
        outputs = [
            Output(type=schema_type(raw.get("type"), (raw.get("python_type") or {}).get("type")),
                   label=raw.get("label"), component=raw.get("component"))
            for raw in spec.get("returns") or [] if isinstance(raw, Mapping)
        ]
        dep = by_name.get(api_name) or {}
        functions.append(GradioFunction(
            api_name=api_name, parameters=tuple(params), outputs=tuple(outputs),
            generator=generators.get(api_name, False), api_prefix=prefix, version=version or None,
            description=spec.get("description") or None,
            hidden_inputs=_hidden(dep.get("inputs"), components), hidden_outputs=_hidden(dep.get("outputs"), components),
            chat=_chat(dep, deps, components, _major(version)),
        ))
    return functions


def _is_hidden(component: Any) -> bool:
    """A component the API info leaves out: gr.State always; what Gradio marks `skip_api` (6.x Buttons)."""
    if not isinstance(component, Mapping):
        return False
    return bool(component.get("skip_api", component.get("type") == "state"))


def _hidden(ids: Any, components: Mapping[Any, Mapping]) -> tuple[int, ...]:
    return tuple(i for i, cid in enumerate(ids or []) if _is_hidden(components.get(cid)))


def _kind(components: Mapping[Any, Mapping], cid: Any) -> str | None:
    component = components.get(cid)
    return component.get("type") if isinstance(component, Mapping) else None


def _chat(dep: Mapping, deps: list[Mapping], components: Mapping[Any, Mapping], major: int) -> ChatSpec | None:
    """How a ChatInterface function takes a caller's history (gradio_spec.ChatSpec), or None when the
    function keeps no chat history in a State."""
    inputs = list(dep.get("inputs") or [])
    states = [cid for cid in inputs if _kind(components, cid) == "state"]
    if not inputs or not states:
        return None

    def chat_format(chatbot_id: Any) -> str:
        declared = (components.get(chatbot_id, {}).get("props") or {}).get("type")
        return declared if declared in ("messages", "tuples") else ("messages" if major >= 6 else "tuples")

    for other in deps:  # 5.x (later) and 6.x: a hidden function copies a Chatbot into the history State
        ins = list(other.get("inputs") or [])
        if len(ins) == 1 and _kind(components, ins[0]) == "chatbot" and set(states) & set(other.get("outputs") or []) \
                and other.get("api_name"):
            return ChatSpec(format=chat_format(ins[0]), parts=major >= 6, setter=str(other["api_name"]))
    # 4.x, 5.0: replay the UI's chain: `_clear_and_save_textbox` (this function's textbox -> the saved
    # input State), then `_submit_fn` (that State and the Chatbot -> the Chatbot, the reply last)
    save = next((d for d in deps if str(d.get("api_name", "")).startswith("_clear_and_save_textbox")
                 and (d.get("inputs") or [None])[0] == inputs[0]), None)
    saved = [cid for cid in (save or {}).get("outputs") or [] if _kind(components, cid) == "state"]
    submit = next((d for d in deps if str(d.get("api_name", "")).startswith(("_submit_fn", "_stream_fn"))
                   and saved and (d.get("inputs") or [None])[0] == saved[0]), None)
    if save is None or submit is None:
        return None
    roles = tuple("state" if _kind(components, cid) == "state" else "chatbot" if _kind(components, cid) == "chatbot"
                  else "arg" for cid in submit.get("inputs") or [])
    chatbot = next(cid for cid in submit["inputs"] if _kind(components, cid) == "chatbot") if "chatbot" in roles else None
    if chatbot is None:
        return None
    return ChatSpec(format=chat_format(chatbot), parts=major >= 6, save=str(save["api_name"]),
                    save_inputs=len(save.get("inputs") or []), submit=str(submit["api_name"]), submit_inputs=roles)


def _api_prefix(config: Mapping[str, Any]) -> str:
    prefix = config.get("api_prefix")
    if isinstance(prefix, str):
        return prefix.rstrip("/")
    major = _major(str(config.get("version") or ""))
    return API_PREFIX_5 if major >= 5 else ""


def _major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else 0


def _identifier(label: Any) -> str | None:
    if not isinstance(label, str):
        return None
    slug = re.sub(r"\W+", "_", label.strip().lower()).strip("_")
    return slug if slug and slug.isidentifier() else None


def looks_like_config(doc: Any) -> bool:
    """A Gradio app's `/config`: its version, components and dependencies."""
    return isinstance(doc, Mapping) and isinstance(doc.get("version"), str) and \
        isinstance(doc.get("components"), list) and isinstance(doc.get("dependencies"), list)


def discover_app(
    base_url: str, get: Callable[[str, float], tuple[int, str, bytes]], timeout: float = 5.0
) -> list[GradioFunction] | None:
    """The named functions of the Gradio app at `base_url`, or None when it is not a Gradio app.

    `get(url, timeout)` answers (status, content type, body); discovery passes its own fetcher.
    Raises NotGradio when it is a Gradio app this toolkit cannot call (3.x, an unreadable info).
    """
    base = base_url.rstrip("/")
    config = _get_json(get, f"{base}/config", timeout)
    if not looks_like_config(config):
        return None
    version = config["version"]
    if _major(version) < 4:
        raise NotGradio(f"Gradio {version} at {base}: only Gradio 4 and later serve the API this toolkit calls")
    info_url = f"{base}{_api_prefix(config)}/info"
    info = _get_json(get, info_url, timeout)
    if not isinstance(info, Mapping):
        raise NotGradio(f"Gradio {version} at {base}: {info_url} did not answer its API info")
    return parse_app(config, info)


def _get_json(get, url: str, timeout: float) -> Any:
    try:
        status, _, body = get(url, timeout)
    except OSError:
        return None
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def routes_for(functions: list[GradioFunction], port: int | None) -> list[Route]:
    """One route of request kind "gradio" per function, at `/<api_name>`."""
    routes, taken = [], set()
    for function in functions:
        path, suffix = cord_path(function.api_name), 2
        base = path
        while path in taken:  # `Predict` and `predict` are two functions but one cord path
            path, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(path)
        example = {p.name: p.example if p.example is not None else p.default
                   for p in function.parameters if not p.is_file and (p.example is not None or p.has_default)}
        if function.single_file_output:
            response_kind, content_type = "binary", "application/octet-stream"
        else:
            response_kind, content_type = "json", "application/json"
        routes.append(Route(
            path=path, method="POST", port=port,
            target_path=f"{function.api_prefix}/call/{quote(function.api_name, safe='')}",
            request_kind=KIND, file_fields=function.file_parameters,
            response_kind=response_kind, content_type=content_type,
            example=example or None, source="gradio", gradio=function,
        ))
    return routes



def gradio_hint(routes: list[Route], skipped: list[Mapping[str, Any]], image: str | None = None) -> str | None:
    """Why a module looks like it wraps a Gradio app although it exposes none of its functions
    (its manifest lists the web UI's routes, or its image is named after Gradio), else None."""
    if any(route.request_kind == KIND for route in routes):
        return None
    paths = {route.upstream_path for route in routes} | {str(entry.get("path", "")) for entry in skipped}
    ui = sorted(p for p in paths if p.startswith(API_PREFIX_5) or p in _UI_PATHS)
    if any(p.startswith(API_PREFIX_5) for p in ui) or len(ui) >= 2:
        return "its manifest has Gradio's web-UI routes (" + ", ".join(ui[:3]) + ")"
    if image and "gradio" in image.lower():
        return f"its image {image} is named after Gradio"
    return None


_UI_PATHS = ("/config", "/theme.css", "/upload", "/queue/join", "/info", "/monitoring", "/startup-events")
