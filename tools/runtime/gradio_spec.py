"""A Gradio function as the route manifest keeps it (request kind "gradio"): its parameters, with
their defaults and types, and its outputs. Pure data, read by tools.runtime.routes when it parses a manifest;
discovery is tools/discovery/gradio.py, the call tools/runtime/cords/gradio.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

API_PREFIX_5 = "/gradio_api"  # Gradio 5+ serves its API under this prefix; 4.x at the root
KIND = "gradio"  # the manifest's request kind for a Gradio function


@dataclass(frozen=True)
class Parameter:
    """One argument of a Gradio function, in the order the app takes it."""

    name: str
    type: str = "any"  # string, integer, number, boolean, array, object, file, files, any
    has_default: bool = False
    default: Any = None
    label: str | None = None
    component: str | None = None
    python_type: str | None = None
    example: Any = None

    @property
    def is_file(self) -> bool:
        return self.type in ("file", "files")

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": not self.has_default}
        if self.has_default:
            out["default"] = self.default
        for key in ("label", "component", "python_type", "example"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Parameter":
        return cls(
            name=str(raw["name"]), type=str(raw.get("type") or "any"),
            has_default="default" in raw or raw.get("required") is False, default=raw.get("default"),
            label=raw.get("label"), component=raw.get("component"), python_type=raw.get("python_type"),
            example=raw.get("example"),
        )


@dataclass(frozen=True)
class Output:
    """One output of a Gradio function."""

    type: str = "any"
    label: str | None = None
    component: str | None = None

    @property
    def is_file(self) -> bool:
        return self.type in ("file", "files")

    def to_json(self) -> dict:
        out: dict[str, Any] = {"type": self.type}
        if self.label is not None:
            out["label"] = self.label
        if self.component is not None:
            out["component"] = self.component
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Output":
        return cls(type=str(raw.get("type") or "any"), label=raw.get("label"), component=raw.get("component"))


@dataclass(frozen=True)
class ChatSpec:
    """How a ChatInterface function takes a caller's history. Its history lives in a gr.State, which
    Gradio fills from the session, never from the call: so the history is put into a fresh session
    first. Either `setter` (5.x later, 6.x: the hidden function that copies a Chatbot value into the
    function's history State), or, where there is none (4.x, 5.0), the UI's own chain is replayed:
    `save` (the message into the saved-input State) then `submit` (saved input and Chatbot value ->
    the Chatbot's new value, the reply last). All of it internals of gr.ChatInterface, found by
    structure at discovery (tools/discovery/gradio.py)."""

    format: str = "messages"  # the app's Chatbot: "messages" ({"role", "content"}) or "tuples" ([user, bot])
    parts: bool = False  # 6.x: a message's content is a list of {"type": "text", "text": ...}
    setter: str | None = None
    save: str | None = None
    save_inputs: int = 1
    submit: str | None = None
    submit_inputs: tuple[str, ...] = ()  # per input of `submit`: "state", "chatbot" or "arg"

    def to_json(self) -> dict:
        out: dict[str, Any] = {"format": self.format, "parts": self.parts}
        if self.setter:
            out["setter"] = self.setter
        if self.save and self.submit:
            out.update(save=self.save, save_inputs=self.save_inputs, submit=self.submit,
                       submit_inputs=list(self.submit_inputs))
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str) -> "ChatSpec | None":
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or raw.get("format") not in ("messages", "tuples"):
            raise ValueError(f"{where}: expected {{\"format\": \"messages\" | \"tuples\", ...}}")
        roles = raw.get("submit_inputs") or []
        if not isinstance(roles, list) or not all(role in ("state", "chatbot", "arg") for role in roles):
            raise ValueError(f"{where}.submit_inputs: expected a list of \"state\", \"chatbot\" or \"arg\"")
        return cls(format=raw["format"], parts=bool(raw.get("parts")), setter=raw.get("setter"),
                   save=raw.get("save"), save_inputs=int(raw.get("save_inputs") or 1), submit=raw.get("submit"),
                   submit_inputs=tuple(roles))


@dataclass(frozen=True)
class GradioFunction:
    """A named function of a Gradio app: what its cord needs to call it (the manifest's `gradio`)."""

    api_name: str  # without the leading slash
    parameters: tuple[Parameter, ...] = ()
    outputs: tuple[Output, ...] = ()
    generator: bool = False
    api_prefix: str = API_PREFIX_5
    version: str | None = None
    description: str | None = None
    # Positions, in the app's own order of the function's inputs and outputs, of those its API info
    # leaves out (gr.State, and on 6.x Buttons): the call sends null there, the answer drops them.
    hidden_inputs: tuple[int, ...] = ()
    hidden_outputs: tuple[int, ...] = ()
    chat: ChatSpec | None = None

    @property
    def single_file_output(self) -> bool:
        return len(self.outputs) == 1 and self.outputs[0].type == "file"

    @property
    def file_parameters(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if p.is_file)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "api_name": self.api_name,
            "api_prefix": self.api_prefix,
            "version": self.version,
            "generator": self.generator,
            "parameters": [p.to_json() for p in self.parameters],
            "outputs": [o.to_json() for o in self.outputs],
        }
        if self.description:
            out["description"] = self.description
        if self.hidden_inputs:
            out["hidden_inputs"] = list(self.hidden_inputs)
        if self.hidden_outputs:
            out["hidden_outputs"] = list(self.hidden_outputs)
        if self.chat is not None:
            out["chat"] = self.chat.to_json()
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str = "gradio") -> "GradioFunction":
        """From the manifest; raises ValueError naming what is wrong (the caller adds the route)."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected an object")
        name = raw.get("api_name")
        if not isinstance(name, str) or not name.strip("/"):
            raise ValueError(f"{where}.api_name: expected the function's api_name, e.g. 'predict'")
        prefix = raw.get("api_prefix", API_PREFIX_5)
        if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
            raise ValueError(f"{where}.api_prefix: expected '/gradio_api' (Gradio 5+) or '' (4.x)")
        params, outputs = raw.get("parameters") or [], raw.get("outputs") or []
        if not isinstance(params, list) or not all(isinstance(p, Mapping) and isinstance(p.get("name"), str) for p in params):
            raise ValueError(f"{where}.parameters: expected a list of {{\"name\": ..., \"type\": ...}}")
        if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
            raise ValueError(f"{where}.outputs: expected a list of {{\"type\": ...}}")
        hidden = {}
        for key in ("hidden_inputs", "hidden_outputs"):
            value = raw.get(key) or []
            if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                      for i in value):
                raise ValueError(f"{where}.{key}: expected a list of positions (0, 1, ...)")
            hidden[key] = tuple(value)
        return cls(
            api_name=name.strip("/"),
            parameters=tuple(Parameter.from_json(p) for p in params),
            outputs=tuple(Output.from_json(o) for o in outputs),
            generator=bool(raw.get("generator")),
            api_prefix=prefix.rstrip("/"),
            version=raw.get("version"),
            description=raw.get("description"),
            chat=ChatSpec.from_json(raw.get("chat"), f"{where}.chat"),
            **hidden,
        )
