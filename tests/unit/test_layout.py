"""The shape of tools/: no import circle; what runs inside a chute (tools/runtime) imports nothing of
tools/ outside it; the SDK's internals, and any `chutes` import but its public `Chute`,
`NodeSelector` and `Image`, only in the SDK adapter (tools/runtime/sdk), tests included; every
exception in tools/runtime/errors.py, one rooted tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
ADAPTER = "tools.runtime.sdk"


def modules() -> dict[str, Path]:
    found = {}
    for path in TOOLS.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """tools.* modules a module imports, at module level or inside functions alike."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tools"):
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names} & known
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("tools")}
    return out & known


def test_the_import_graph_of_tools_has_no_circle():
    mods = modules()
    graph = {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}
    # a package imports its parent implicitly: ignore edges to a parent package
    graph = {name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


# What only tools/runtime/sdk/ may touch: the SDK's private attributes and runtime wiring.
SDK_INTERNALS = re.compile(
    r"\bcord\._|\._request_handler\b|\._passthrough|\._public_api_method\b|\._directives\b|\._stream\b"
    r"|\._func\b|\._username\b|\._build_context\b|\._startup_hooks\b|\._cords\b|router\.on_shutdown"
    r"|request\.state\."
)
# What a deploy module, and so anything of ours, may import from the SDK.
PUBLIC_SDK = {"chutes.chute": {"Chute", "NodeSelector"}, "chutes.image": {"Image"}}


def test_only_the_sdk_adapter_touches_the_sdks_internals():
    offenders = []
    for name, path in modules().items():
        if name.startswith("tools.runtime.sdk"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SDK_INTERNALS.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_runtime_package_imports_nothing_of_tools_outside_it():
    mods = modules()
    for name, path in mods.items():
        if name.startswith("tools.runtime"):
            outside = {dep for dep in imports_of(path, set(mods)) if not dep.startswith("tools.runtime")}
            assert outside == set(), f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def sdk_imports(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every import of the chutes SDK that is not its public Chute/NodeSelector/Image."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "chutes"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chutes":
            extra = {alias.name for alias in node.names} - PUBLIC_SDK.get(node.module, set())
            if extra:
                found.append((node.lineno, f"from {node.module} import {', '.join(sorted(extra))}"))
    return found


def test_only_the_sdk_adapter_imports_more_of_the_sdk_than_its_public_classes():
    adapter = TOOLS / "runtime" / "sdk"
    ours = [*ROOT.glob("*.py"), *(ROOT / "tools").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    files = [p for p in ours if adapter not in p.parents]
    files += [p for p in (ROOT / "bench").iterdir() if p.is_file() and p.read_text(errors="replace").startswith("#!")]
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in files for line, what in sdk_imports(path)]
    assert offenders == []


def test_tests_touch_no_sdk_internals():
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name == "test_layout.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SDK_INTERNALS.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_every_exception_class_is_defined_in_tools_errors():
    defined = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                (isinstance(base, ast.Name) and (base.id.endswith(("Error", "Exception")) or base.id in ("BadRequest",)))
                for base in node.bases
            ):
                defined.append(f"{name}.{node.name}")
    assert all(item.startswith("tools.runtime.errors.") for item in defined), defined
