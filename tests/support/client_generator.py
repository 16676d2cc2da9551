"""A real client generator (openapi-python-client) run on a chute's API document, and the client it
writes imported into the test: what a caller of the chute would do with /openapi.json.

The generator lives in its own virtualenv, ~/.cache/chutes-wrappers/venvs/openapi-client-<key> (keyed
by generator-requirements.txt and the Python version), built once under a lock and reused: it pins
typer<0.28, which would downgrade the chutes SDK's own in the project's venv. The generated client
runs here and needs httpx<0.29 and attrs (requirements-dev.txt).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REQUIREMENTS = Path(__file__).with_name("generator-requirements.txt")
VENVS = Path(os.environ.get("CHUTES_WRAPPERS_CACHE", Path.home() / ".cache" / "chutes-wrappers")) / "venvs"
# The generator's config: no post hooks (they would need ruff on PATH); binary media types it does not
# know (audio/wav, image/png) read as application/octet-stream, the generator's own remedy.
CONFIG = "post_hooks: []\npackage_name_override: {package}\ncontent_type_overrides: {overrides}\n"


def generator() -> Path:
    """openapi-python-client in its cached virtualenv (skipped with a reason where it cannot be installed,
    outside CI)."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.split()[0].encode()).hexdigest()[:16]
    final = VENVS / f"openapi-client-{key}"
    executable = final / "bin" / "openapi-python-client"
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"openapi-client-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "install-seconds").is_file():
            return executable
        shutil.rmtree(final, ignore_errors=True)
        started = time.monotonic()
        try:
            subprocess.run([sys.executable, "-m", "venv", str(final)], check=True, capture_output=True, timeout=120)
            subprocess.run([str(final / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                           check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            shutil.rmtree(final, ignore_errors=True)
            if os.environ.get("CI"):
                raise
            detail = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()
            pytest.skip(f"openapi-python-client not installable here: {detail[-1] if detail else exc}")
        (final / "install-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    return executable


def binary_media_types(document: dict) -> list[str]:
    found = set()
    for item in document["paths"].values():
        for operation in item.values():
            for answer in operation["responses"].values():
                for media, content in answer.get("content", {}).items():
                    if content.get("schema", {}).get("format") == "binary":
                        found.add(media)
    return sorted(found - {"application/octet-stream"})


def generate_client(document: dict, out: Path, package: str) -> tuple[ModuleType, str]:
    """Write `document`, generate `package` from it into `out`, import it; returns (package, the
    generator's output). The generator's warnings (an operation it could not read) fail the test."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "openapi.json").write_text(json.dumps(document))
    overrides = json.dumps({media: "application/octet-stream" for media in binary_media_types(document)})
    (out / "config.yaml").write_text(CONFIG.format(package=package, overrides=overrides))
    run = subprocess.run([str(generator()), "generate", "--path", str(out / "openapi.json"), "--meta", "none",
                          "--output-path", str(out / package), "--config", str(out / "config.yaml")],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout, run.stdout
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module(package), run.stdout
    finally:
        sys.path.remove(str(out))
