"""`deploy.sh --new NAME --image IMAGE`: a new deploy module (deploy_NAME.py) from a local image.

Reads the image's exposed ports, environment and entrypoint+command with `inspect`, writes the module
from deploy_example.py's template with those values as Python literals (an image is untrusted input:
its values are validated, written with repr() and checked by parsing the result), then offers
discovery. Never overwrites an existing module.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python tools/commands/new.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import ast
import pprint
import re
from dataclasses import dataclass, field
from typing import Any, TextIO

from tools.runtime.constants import port_argument
from tools.containers import ImageConfig, detect_engine, inspect_image
from tools.runtime.errors import Interrupted, WrapperError, run_cli

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy_example.py"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Environment every base image carries: already in the image, noise in CHUTE_ENV.
BASE_ENV = {"PATH", "HOME", "HOSTNAME", "TERM", "LANG", "LANGUAGE", "GPG_KEY", "DEBIAN_FRONTEND", "LD_LIBRARY_PATH",
            "LIBRARY_PATH", "CUDA_VERSION", "PYTHON_VERSION", "PYTHON_SHA256", "PYTHON_PIP_VERSION",
            "PYTHON_SETUPTOOLS_VERSION", "PYTHON_GET_PIP_URL", "PYTHON_GET_PIP_SHA256"}
BASE_ENV_PREFIXES = ("LC_", "NV_", "NVIDIA_", "NCCL_VERSION")
TAGLINE_LABELS = ("org.opencontainers.image.description", "org.opencontainers.image.title", "description")


@dataclass
class ModuleValues:
    """The module variables written from the image; every value is a plain Python literal."""

    name: str
    image: str
    ports: list[int]
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    tagline: str = ""
    dropped_env: list[str] = field(default_factory=list)

    def assignments(self) -> dict[str, tuple[str, Any]]:
        """NAME -> (comment, value), in the order the template has them."""
        return {
            "CHUTE_NAME": ("Name and version of the chute and its image.", self.name),
            "CHUTE_TAG": ("", "v0.1.0"),
            "CHUTE_BASE_IMAGE": ("The image that holds the service; it is wrapped, not rebuilt.", self.image),
            "SERVICE_PORTS": ("Ports the service listens on (the image's EXPOSE); routes without a port go to the first.",
                              self.ports),
            "SERVICE_READY_PATHS": ("Per port, the path that answers 2xx once the service can take calls (e.g. "
                                    "{8080: '/health'}); ports left out take what discovery finds.", {}),
            "CHUTE_ENV": ("Environment for the service (read from the image): baked into the wrapper, passed to "
                          "discovery.", self.env),
            "ENTRYPOINT": ("The command that starts the service (the image's ENTRYPOINT + CMD, which Chutes replaces).",
                           self.entrypoint),
            "HOST_COMMAND": ("The command that starts the service on this machine for `./deploy.sh --run`; None: "
                             "start it yourself.", None),
            "CHUTE_STATIC_ROUTES": ("Routes for services without OpenAPI; merged with the discovered manifest.", []),
            "CHUTE_ROUTE_OVERRIDES": ("Per-route overrides keyed \"METHOD /path\" (see deploy_example.py).", {}),
            "CHUTE_TAGLINE": ("Short description shown in chute listings.", self.tagline),
        }


def module_file_name(name: str) -> str:
    return f"deploy_{name.replace('-', '_')}.py"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise WrapperError(
            f"{name!r} is not a usable chute name",
            "use up to 63 lowercase letters, digits, '-' and '_', e.g. my-service",
        )
    return name


def values_from_image(name: str, config: ImageConfig, ports: list[int] | None = None) -> ModuleValues:
    """Module values from what the image declares (already type-checked by containers.inspect_image)."""
    chosen = list(dict.fromkeys(ports or config.exposed_ports))
    if not chosen:
        raise WrapperError(f"image {config.ref!r} exposes no ports", "pass --port PORT (the port the service listens on)")
    env = {
        key: value
        for key, value in config.env.items()
        if key not in BASE_ENV and not key.startswith(BASE_ENV_PREFIXES)
    }
    # A Dockerfile ENV (the wrapper) and an env file (discovery) hold one line per value.
    dropped = [key for key, value in env.items() if any(ch in value for ch in "\n\r\0")]
    for key in dropped:
        del env[key]
    command = [*config.entrypoint, *config.cmd]
    tagline = next((config.labels[key] for key in TAGLINE_LABELS if config.labels.get(key)), "")
    tagline = " ".join(tagline.split())[:120] or f"{name}, wrapped with chutes-wrappers"
    return ModuleValues(name=name, image=config.ref, ports=chosen, env=env, entrypoint=command or None,
                        tagline=tagline, dropped_env=dropped)


# --------------------------------------------------------------------------------------------------
# Rendering from the template


def _literal(value: Any) -> str:
    return pprint.pformat(value, width=100, sort_dicts=False)


def _comment(text: str) -> list[str]:
    if not text:
        return []
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + len(word) + 1 > 100:
            lines.append(line)
            line = "#"
        line += " " + word
    return lines + [line]


def render(values: ModuleValues, template: str) -> str:
    """The template with its docstring and settings block replaced; everything else kept."""
    tree = ast.parse(template)
    lines = template.splitlines()
    body = tree.body
    if not body or not (isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)):
        raise WrapperError(f"{TEMPLATE.name} no longer starts with a docstring; cannot use it as the template")
    start = next((i for i, node in enumerate(body) if _setting_name(node)), None)
    if start is None:
        raise WrapperError(f"{TEMPLATE.name} has no settings block (CHUTE_NAME = ...); cannot use it as the template")
    end = start
    while end + 1 < len(body) and _setting_name(body[end + 1]):
        end += 1
    block = body[start:end + 1]
    names = [_setting_name(node) for node in block]
    generated = values.assignments()
    missing = [name for name in ("CHUTE_NAME", "CHUTE_BASE_IMAGE", "SERVICE_PORTS") if name not in names]
    if missing:
        raise WrapperError(f"{TEMPLATE.name}'s settings block lacks {', '.join(missing)}; cannot use it as the template")

    out: list[str] = ['"""' + _docstring(values) + '"""']
    out += lines[body[0].end_lineno:_comment_start(lines, block[0], body[start - 1])]
    previous = body[start - 1]
    for node in block:
        name = _setting_name(node)
        if name in generated:
            comment, value = generated[name]
            if not comment and out and not out[-1]:
                out.pop()  # no comment of its own: keep it beside the setting above
            out += _comment(comment) + [f"{name} = {_literal(value)}", ""]
        else:  # a setting we know nothing about: keep it (and its comment) as the template has it
            out += lines[_comment_start(lines, node, previous):node.end_lineno] + [""]
        previous = node
    for name in generated:
        if name not in names and name in ("ENTRYPOINT", "CHUTE_ENV"):
            comment, value = generated[name]
            out += _comment(comment) + [f"{name} = {_literal(value)}", ""]
    tail = lines[block[-1].end_lineno:]
    while tail and not tail[0].strip():
        tail = tail[1:]
    text = "\n".join(out + tail) + "\n"
    verify(text, {name: generated[name][1] for name in generated if name in names or name in ("ENTRYPOINT", "CHUTE_ENV")})
    return text


def _setting_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        name = node.targets[0].id
        return name if name.isupper() else None
    return None


def _comment_start(lines: list[str], node: ast.stmt, previous: ast.stmt) -> int:
    """Index of the first comment line directly above `node` (blank lines end the comment)."""
    index = node.lineno - 1
    while index - 1 >= previous.end_lineno and lines[index - 1].lstrip().startswith("#"):
        index -= 1
    return index


def _docstring(values: ModuleValues) -> str:
    return (
        f"Deploy module for {values.name}, made by `deploy.sh --new` from a local image.\n\n"
        "Edit the settings below, then:\n"
        f"  ./deploy.sh --discover {module_file_name(values.name)[:-3]}   # write the route manifest\n"
        f"  ./deploy.sh --build {module_file_name(values.name)[:-3]} --local\n"
    )


def verify(text: str, expected: dict[str, Any]) -> None:
    """Parse the result and check every written setting is exactly the literal we meant."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise WrapperError(f"refusing to write the module: the result does not parse ({exc.msg})") from None
    found: dict[str, list[Any]] = {}
    for node in tree.body:
        name = _setting_name(node)
        if name in expected:
            try:
                found.setdefault(name, []).append(ast.literal_eval(node.value))
            except ValueError:
                raise WrapperError(f"refusing to write the module: {name} is not a plain literal") from None
    for name, value in expected.items():
        if found.get(name) != [value]:
            raise WrapperError(f"refusing to write the module: {name} did not come out as intended")


def write_new(path: Path, text: str) -> None:
    """Create `path` with `text`; refuses when it exists (checked by the create itself)."""
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise WrapperError(f"{path} already exists", "pick another NAME, or edit the existing module") from None
    except OSError as exc:
        try:
            path.unlink()
        except OSError:
            pass
        raise WrapperError(f"cannot write {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------------
# Command line


def create_module(name: str, image: str, directory: Path = ROOT, ports: list[int] | None = None) -> Path:
    """Write deploy_NAME.py for `image` into `directory`; returns its path."""
    check_name(name)
    path = directory / module_file_name(name)
    if path.exists():
        raise WrapperError(f"{path} already exists", "pick another NAME, or edit the existing module")
    if not directory.is_dir():
        raise WrapperError(f"directory {directory} does not exist")
    engine = detect_engine()
    values = values_from_image(name, inspect_image(engine, image), ports)
    write_new(path, render(values, TEMPLATE.read_text(encoding="utf-8")))
    for key in values.dropped_env:
        print(f"note: left {key} out of CHUTE_ENV (its value in the image spans several lines)", file=sys.stderr)
    return path


def wants_discovery(args: argparse.Namespace, stdin: TextIO = sys.stdin, stream: TextIO = sys.stderr) -> bool:
    if args.no_discover:
        return False
    if args.yes:
        return True
    if not stdin.isatty():
        return False
    stream.write("Discover its routes now (runs the image)? [Y/n] ")
    stream.flush()
    return stdin.readline().strip().lower() in ("", "y", "yes")


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve() if args.dir else ROOT
    path = create_module(args.name, args.image, directory, args.port or None)
    print(f"wrote {path}", file=sys.stderr)
    if not wants_discovery(args):
        print(f"next: ./deploy.sh --discover {path.stem}", file=sys.stderr)
        return 0
    from tools import discover_routes

    config = discover_routes.Config(
        chute_file=str(path),
        startup_delay=args.startup_delay,
        probe_timeout=args.probe_timeout,
        gpus=args.docker_gpus,
        free_host_ports=args.free_host_ports,
    )
    display = discover_routes.Display()
    try:
        result = discover_routes.discover(config, display)
    except Interrupted as exc:
        display.message(f"discovery interrupted by {exc}; the module is written, run discovery later")
        return 128 + exc.signum
    display.message(discover_routes.summary(result))
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="new_module", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="chute name: lowercase letters, digits, '-' and '_'")
    p.add_argument("--image", required=True, help="a local image (never pulled)")
    p.add_argument("--port", type=port_argument, action="append", default=[], help="service port, when the image exposes none")
    p.add_argument("--dir", help="where to write the module (default: beside deploy.sh)")
    p.add_argument("--yes", action="store_true", help="run discovery without asking")
    p.add_argument("--no-discover", action="store_true", help="do not offer discovery")
    p.add_argument("--startup-delay", type=float, help="for discovery (see discover_routes)")
    p.add_argument("--probe-timeout", type=float, help="for discovery")
    p.add_argument("--docker-gpus", help="for discovery")
    p.add_argument("--free-host-ports", action="store_true", help="for discovery")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.yes and args.no_discover:
        p.error("--yes and --no-discover exclude each other")
    run_cli(lambda: run(args), debug=args.debug, prog="new_module")


if __name__ == "__main__":
    main()
