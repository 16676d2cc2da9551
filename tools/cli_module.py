"""`deploy.sh --validate MODULE`: import a deploy module, check its variables, manifest and routes, and
print the cord table it would serve, without starting anything (no service, no container, no API).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import ModuleType

from tools.errors import WrapperError, run_cli
from tools.run_dev import cord_table, cords_of, import_module, locate_module

DEV_URL = "http://127.0.0.1:8000"  # where ./deploy.sh --run serves the cords by default


def manifest_source(name: str, directory: Path) -> str:
    """Which manifest the module's load_route_manifest() reads (same precedence)."""
    if os.environ.get("CHUTES_SKIP_ROUTE_REGISTRATION", "").strip().lower() in ("1", "true", "yes", "on"):
        return "none (CHUTES_SKIP_ROUTE_REGISTRATION is set)"
    if os.environ.get("CHUTES_ROUTE_MANIFEST_JSON", "").strip():
        return "CHUTES_ROUTE_MANIFEST_JSON (inline)"
    if os.environ.get("CHUTES_ROUTE_MANIFEST", "").strip():
        return os.environ["CHUTES_ROUTE_MANIFEST"] + " (CHUTES_ROUTE_MANIFEST)"
    path = directory / f"{name}.routes.json"
    if path.is_file():
        return str(path)
    return f"none ({path.name} not found: CHUTE_STATIC_ROUTES only; ./deploy.sh --discover {name} writes it)"


def problems_of(name: str, module: ModuleType) -> list[str]:
    """What the module contract (README, "Module variables") requires and this module lacks."""
    found = []
    for var in ("CHUTE_NAME", "CHUTE_TAG", "CHUTE_BASE_IMAGE"):
        value = getattr(module, var, None)
        if not isinstance(value, str) or not value.strip():
            found.append(f"{var} must be a non-empty string")
    ports = getattr(module, "SERVICE_PORTS", None)
    if not isinstance(ports, (list, tuple)) or not ports:
        found.append("SERVICE_PORTS must be a non-empty list of ports")
    else:
        bad = [p for p in ports if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535]
        if bad:
            found.append(f"SERVICE_PORTS has values that are not ports 1-65535: {bad}")
    env = getattr(module, "CHUTE_ENV", None)
    if env is not None and not isinstance(env, dict):
        found.append("CHUTE_ENV must be a dict")
    chute = getattr(module, "chute", None)
    if chute is None:
        found.append("there is no module-level `chute`")
    else:
        from chutes.chute import Chute, ChutePack

        if not isinstance(chute, (Chute, ChutePack)):
            found.append(f"`chute` is a {type(chute).__name__}, not a chutes.chute.Chute")
        elif isinstance(getattr(module, "CHUTE_NAME", None), str) and chute.name != module.CHUTE_NAME:
            found.append(f"chute.name is {chute.name!r} but CHUTE_NAME is {module.CHUTE_NAME!r}")
    return [f"{name}.py: {text}" for text in found]


def gradio_hint_of(name: str, directory: Path, module: ModuleType) -> str | None:
    """Evidence that the module wraps a Gradio app without exposing a function (tools.gradio_app)."""
    from tools.gradio_app import gradio_hint
    from tools.routes import read_manifest_file

    routes, skipped = [], []
    for report in getattr(module.chute, "wrapper_reports", []):
        routes += [item.route for item in report.registered] + [route for route, _ in report.skipped]
    path = directory / f"{name}.routes.json"
    if path.is_file():
        try:
            skipped = read_manifest_file(path).skipped
        except WrapperError:
            pass  # the module's own import has already judged its manifest
    return gradio_hint(routes, skipped, getattr(module, "CHUTE_BASE_IMAGE", None))


def validate(args: argparse.Namespace) -> int:
    name, directory = locate_module(args.module)
    module = import_module(name, directory)
    problems = problems_of(name, module)
    if problems:
        raise WrapperError(f"{name}.py does not satisfy the module contract:\n  " + "\n  ".join(problems))
    chute = module.chute
    image = chute.image
    image_text = image if isinstance(image, str) else f"{image.name}:{image.tag} (wraps {module.CHUTE_BASE_IMAGE})"
    print(f"module:    {directory / (name + '.py')}")
    owner = getattr(chute, "_username", None) or getattr(module, "USERNAME", None) or "?"
    print(f"chute:     {chute.name}  (user {owner})")
    print(f"image:     {image_text}")
    print(f"ports:     {', '.join(str(p) for p in module.SERVICE_PORTS)}")
    print(f"manifest:  {manifest_source(name, directory)}")
    for report in getattr(chute, "wrapper_reports", []):
        print(f"routes:    {report.summary()}")
    hint = gradio_hint_of(name, directory, module)
    if hint:
        print(f"warning:   {name}.py seems to wrap a Gradio app ({hint}) but exposes none of its functions: "
              f"run ./deploy.sh --discover {name} while the app runs")
    cords = cords_of(module)
    if not cords:
        raise WrapperError(f"{name}.py registers no cord", "discover routes (--discover) or set CHUTE_STATIC_ROUTES")
    print()
    print(cord_table(DEV_URL, cords))
    print(f"\nok: {name} is valid ({len(cords)} cord(s)); nothing was started")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --validate", description=__doc__.splitlines()[0])
    parser.add_argument("module", help="deploy module, e.g. deploy_example (or a path to one)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    run_cli(lambda: validate(args), debug=args.debug, prog="deploy.sh --validate")


if __name__ == "__main__":
    main()
