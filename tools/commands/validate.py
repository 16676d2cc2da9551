"""`deploy.sh --validate MODULE`: import a deploy module, check its variables, manifest and routes, and
print the cord plan and table it would serve, without starting anything (no service, no container, no API).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tools import deploy_module
from tools.runtime.sdk.chute import owner, plans_of
from tools.runtime.constants import DEFAULT_CHUTE_PORT
from tools.cord_table import cord_table, cords_of
from tools.runtime.errors import WrapperError, run_cli
from tools.runtime.registration import Plan
from tools.runtime.routes import Route, acts_on_service

DEV_URL = f"http://127.0.0.1:{DEFAULT_CHUTE_PORT}"  # where ./deploy.sh --run serves the cords by default


@dataclass
class ValidateConfig:
    module: str
    debug: bool = False


def plan_lines(plan: Plan) -> list[str]:
    """A registration plan as deploy.sh prints it: counts, then each skipped route with its reason."""
    lines = [f"routes:    {len(plan.registered)} cord(s)" + (f", catch-all POST {plan.catch_all[0]} for "
                                                           f"{len(plan.catch_all[1])} route(s)" if plan.catch_all else "")
             + (f", {len(plan.skipped)} skipped" if plan.skipped else "")]
    lines += [f"  skipped  {route.method} {route.path}: {reason}" for route, reason in plan.skipped]
    return lines


def served_routes(plans: list[Plan]) -> list[Route]:
    """Every route a caller can reach, by its own cord or the catch-all, once."""
    routes = {}
    for plan in plans:
        for route in [cord.route for cord in plan.registered] + \
                [target.route for cord in plan.cords if cord.kind == "catch-all" for target in cord.templates]:
            routes.setdefault((route.method, route.path, route.port), route)
    return list(routes.values())


def header_warnings(plans: list[Plan]) -> list[str]:
    """One warning per served route whose spec declares response headers: the Chutes gateway passes
    only an answer's media type (README, "On Chutes"), so callers of the deployed chute never get them."""
    return [f"warning:   {route.method} {route.path} answers with header(s) {', '.join(route.response_headers)} "
            "(its spec says): on Chutes callers get only the media type of an answer, so put what they need in the body"
            for route in served_routes(plans) if route.response_headers]


def action_warnings(plans: list[Plan], manifest: str) -> list[str]:
    """One warning per served route that acts on the service itself (routes.acts_on_service): on
    Chutes every caller of the chute can call it, and a call that stops the service or drops its
    model fails the calls after it, each an instance failure (seven in a row delete the instance)."""
    return [f"warning:   {route.method} {route.path} acts on the service itself: on Chutes any caller can call it, "
            "and the calls after one that stops the service or drops its model fail the instance; remove it from "
            f"{manifest} unless callers need it"
            for route in served_routes(plans) if acts_on_service(route.path)]


def gradio_hint_of(module) -> str | None:
    """Evidence that the module wraps a Gradio app without exposing a function (tools/discovery/gradio.py)."""
    from tools.discovery.gradio import gradio_hint
    from tools.runtime.routes import read_manifest_file

    routes, skipped = [], []
    for plan in plans_of(module.chute):
        routes += [cord.route for cord in plan.registered] + [route for route, _ in plan.skipped]
    if module.manifest_path.is_file():
        try:
            skipped = read_manifest_file(module.manifest_path).skipped
        except WrapperError:
            pass  # the module's own import has already judged its manifest
    return gradio_hint(routes, skipped, module.base_image)


def validate(config: ValidateConfig) -> int:
    module = deploy_module.load(config.module)
    problems = module.problems()
    if problems:
        raise WrapperError(f"{module.path.name} does not satisfy the module contract:\n  " + "\n  ".join(problems))
    chute = module.chute
    image = chute.image
    image_text = image if isinstance(image, str) else f"{image.name}:{image.tag} (wraps {module.base_image})"
    print(f"module:    {module.path}")
    print(f"chute:     {chute.name}  (user {owner(chute) or module.get('USERNAME') or '?'})")
    print(f"image:     {image_text}")
    print(f"ports:     {', '.join(str(p) for p in module.ports())}")
    print(f"manifest:  {module.manifest_source()}")
    plans = plans_of(chute)
    for plan in plans:
        print("\n".join(plan_lines(plan)))
    for line in header_warnings(plans) + action_warnings(plans, module.manifest_path.name):
        print(line)
    hint = gradio_hint_of(module)
    if hint:
        print(f"warning:   {module.path.name} seems to wrap a Gradio app ({hint}) but exposes none of its functions: "
              f"run ./deploy.sh --discover {module.name} while the app runs")
    cords = cords_of(chute)
    if not cords:
        raise WrapperError(f"{module.path.name} registers no cord", "discover routes (--discover) or set CHUTE_STATIC_ROUTES")
    print()
    print(cord_table(DEV_URL, cords))
    print(f"\nok: {module.name} is valid ({len(cords)} cord(s)); nothing was started")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.sh --validate", description=__doc__.splitlines()[0])
    parser.add_argument("module", help="deploy module, e.g. deploy_example (or a path to one)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    config = ValidateConfig(args.module, args.debug)
    run_cli(lambda: validate(config), debug=config.debug, prog="deploy.sh --validate")


if __name__ == "__main__":
    main()
