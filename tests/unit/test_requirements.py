"""Every package the toolkit imports is declared: each module of tools/ (and deploy_example.py) imports
only the standard library, the project itself, and distributions named in requirements.txt.

A package that arrives only as a dependency of another (orjson and cryptography through chutes) breaks
the day that other package drops it: chutes 0.6.10 replaces substrate-interface with bittensor-wallet,
so code importing `substrateinterface` without declaring it breaks on the next pin bump. Import names
are mapped to distributions with `importlib.metadata.packages_distributions()`.

An import inside `try:` whose handler catches ImportError is optional: the module works without it.
Each optional import is listed in OPTIONAL with the reason, so adding one is a decision too.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements.txt"
OWN = {"tools", "tests", "deploy_example"}

# import name -> why it may be missing
OPTIONAL = {
    "bittensor_wallet": "tools/runtime/sdk/keys.py: the keypair library of the SDK's next release "
                        "(substrate-interface, declared, serves chutes 0.6.9)",
    "brotli": "tools/runtime/cords/answer.py: decodes a service's `Content-Encoding: br` answer when present",
    "brotlicffi": "tools/runtime/cords/answer.py: the same, from the CFFI build of brotli",
    "backports": "tools/runtime/cords/answer.py: `backports.zstd` decodes `Content-Encoding: zstd` (Python < 3.14)",
    "compression": "tools/runtime/cords/answer.py: `compression.zstd`, the standard library's zstd from Python 3.14",
    "zstandard": "tools/runtime/cords/answer.py: decodes `Content-Encoding: zstd` when present",
}


def normalise(name: str) -> str:
    """PEP 503 names: `PyYAML` and `pyyaml`, `python_multipart` and `python-multipart` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    names = set()
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(normalise(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]))
    return names


def sources() -> list[Path]:
    return sorted((ROOT / "tools").rglob("*.py")) + [ROOT / "deploy_example.py"]


def _guarded(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a `try:` whose handlers catch ImportError, in its body or in
    those handlers (the fallback: `try: import a` / `except ImportError: import b`)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught |= {t.id for t in types if isinstance(t, ast.Name)}
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for statement in node.body + [s for handler in node.handlers for s in handler.body]:
                out |= {id(inner) for inner in ast.walk(statement) if isinstance(inner, (ast.Import, ast.ImportFrom))}
    return out


def imported(path: Path) -> list[tuple[str, bool, int]]:
    """(top-level import name, optional?, line) for every absolute import, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    guarded = _guarded(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(name.split(".", 1)[0], id(node) in guarded, node.lineno) for name in names]
    return out


def undeclared_imports() -> list[str]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    owners = packages_distributions()
    wanted = declared()
    problems = []
    for path in sources():
        for name, optional, line in imported(path):
            if name in stdlib or name in OWN:
                continue
            if optional and name in OPTIONAL:
                continue
            distributions = {normalise(d) for d in owners.get(name, [])}
            if not distributions & wanted:
                where = f"{path.relative_to(ROOT)}:{line}"
                found = ", ".join(sorted(owners.get(name, []))) or "no installed distribution"
                problems.append(f"{where} imports {name!r} ({found}), not declared in requirements.txt")
    return problems


def test_every_imported_package_is_declared_in_requirements_txt():
    problems = undeclared_imports()
    assert not problems, "\n".join(problems)


def test_the_check_sees_an_undeclared_import(tmp_path, monkeypatch):
    """The check itself can fail: a module importing a package nobody declared is reported, and the
    same import guarded by `except ImportError` is not, once listed in OPTIONAL."""
    (tmp_path / "tools").mkdir()
    module = tmp_path / "tools" / "uses_hypothesis.py"
    module.write_text("import json\nimport hypothesis\n")
    (tmp_path / "deploy_example.py").write_text("import aiohttp\n")
    (tmp_path / "requirements.txt").write_text("aiohttp>=3\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "REQUIREMENTS", tmp_path / "requirements.txt")
    problems = undeclared_imports()
    assert len(problems) == 1 and "tools/uses_hypothesis.py:2 imports 'hypothesis'" in problems[0]
    module.write_text("try:\n    import hypothesis\nexcept ImportError:\n    hypothesis = None\n")
    monkeypatch.setitem(OPTIONAL, "hypothesis", "for this test")
    assert undeclared_imports() == []
