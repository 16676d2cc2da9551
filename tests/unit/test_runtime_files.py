"""What the image holds of tools/ (tools/runtime/image.py: the deploy modules' API and the runtime
package, whole) is all that runs inside it: a deploy module, and the node runner `--run-docker` starts
there, import from a directory holding only those files; every import of an image file stays inside
them, including imports made inside functions (they run at chute startup, not at import); and every
file of the runtime package is reached (no developer-machine code rides along)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.runtime.image import RUNTIME_FILES, SETUP_SCRIPT

ROOT = Path(__file__).resolve().parents[2]
# Modules that run inside the wrapped image: the template users copy (with its manifest).
DEPLOY_MODULES = ["deploy_example"]
# What starts there: the deploy modules' API, and the node runner (tools/commands/run_docker.py's entrypoint).
ENTRY_MODULES = ["tools.chute_wrappers", "tools.runtime.sdk.node"]


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tools_imports(path: Path) -> set[str]:
    """Every `tools.x` module the file imports, at top level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tools.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tools" or node.module.startswith("tools."):
                if node.module != "tools":
                    found.add(node.module)
                # `from tools.runtime.sdk import keys` names a module
                found |= {f"{node.module}.{alias.name}" for alias in node.names
                          if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file()}
    return found


def test_the_image_gets_the_deploy_modules_api_and_every_python_file_of_the_runtime_package():
    package = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tools" / "runtime").rglob("*.py"))
    assert list(RUNTIME_FILES) == ["tools/__init__.py", "tools/chute_wrappers.py", *package]
    assert SETUP_SCRIPT not in RUNTIME_FILES  # build time only: ADDed to the image's state directory


def test_imports_of_listed_files_stay_inside_the_list_and_every_file_is_reached():
    listed = {module_name(path) for path in RUNTIME_FILES}
    reached = {"tools", *ENTRY_MODULES}
    todo = list(ENTRY_MODULES)
    while todo:
        module = todo.pop()
        path = next(p for p in RUNTIME_FILES if module_name(p) == module)
        for imported in tools_imports(ROOT / path):
            assert imported in listed, f"{path} imports {imported}, which is not in RUNTIME_FILES"
            parts = imported.split(".")
            for package in (".".join(parts[:n]) for n in range(2, len(parts))):
                reached.add(package)  # importing a module runs its packages' __init__ first
            if imported not in reached:
                reached.add(imported)
                todo.append(imported)
    assert reached == listed, f"listed but never imported at run time: {sorted(listed - reached)}"


def runtime_copy(directory: Path) -> None:
    for path in RUNTIME_FILES:
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, directory / path)


def isolated_env(directory: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CHUTES_", "CHUTE_"))}
    env["PYTHONPATH"] = str(directory)  # and registration on: it is what runs in the image
    return env


def test_the_node_runner_starts_with_only_the_runtime_files(tmp_path):
    runtime_copy(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tools.runtime.sdk.node", "--help"], cwd=tmp_path, env=isolated_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("module", DEPLOY_MODULES)
def test_deploy_module_imports_with_only_the_runtime_files(module, tmp_path):
    runtime_copy(tmp_path)
    for name in (f"{module}.py", f"{module}.routes.json"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    env = isolated_env(tmp_path)
    # `chutes run` imports the module from /app, where the image's ADDs put these files.
    code = f"import {module} as m; assert m.chute is not None; print(len(m.chute.cords))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 1, "registration ran and registered cords"
    assert not (tmp_path / "tools" / "commands").exists() and not (tmp_path / "tools" / "platform").exists()
