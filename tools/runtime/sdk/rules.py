"""The SDK's own rules, applied without importing the SDK (importing chutes.chute costs ~0.8 s,
which discovery and the CLIs should not pay for one regex or a version string)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

SDK = "chutes"
# chutes/chute/cord.py: `PATH_RE = re.compile(r"...")`, the cord path rule.
_PATH_RE_LINE = re.compile(r'^PATH_RE = re\.compile\(r"([^"]+)"\)', re.M)


@functools.lru_cache(maxsize=1)
def cord_path_re() -> re.Pattern:
    """The SDK's cord path rule (`chutes.chute.cord.PATH_RE`): the single source of truth.

    Read from the SDK's source; falls back to importing it when the source reads otherwise."""
    try:
        spec = importlib.util.find_spec(SDK)
        source = Path(spec.origin).parent / "chute" / "cord.py"
        match = _PATH_RE_LINE.search(source.read_text(encoding="utf-8"))
        if match:
            return re.compile(match.group(1))
    except (AttributeError, OSError, TypeError, re.error):
        pass
    return imported_cord_path_re()


def imported_cord_path_re() -> re.Pattern:
    """The same rule, imported from the SDK (slow; for the fallback and the test that they agree)."""
    from chutes.chute.cord import PATH_RE

    return PATH_RE


def is_valid_cord_path(path: str) -> bool:
    """True when the SDK accepts `path` as a cord path exactly as written."""
    return "//" not in path and bool(cord_path_re().match(path))


def cli_options(command: str) -> set[str]:
    """The options of `chutes COMMAND`, from the CLI's own Typer app (what `chutes COMMAND --help` lists)."""
    import typer.main
    from chutes.cli import app

    group = typer.main.get_command(app)
    return {option for param in group.commands[command].params for option in getattr(param, "opts", [])}


def signing_message(hotkey: str, nonce: str, payload: bytes | None = None, purpose: str | None = None) -> str:
    """The message the SDK signs for an API request (chutes.util.auth `get_signing_message`)."""
    from chutes.util.auth import get_signing_message

    return get_signing_message(hotkey, nonce, payload, purpose=purpose)


def installed_version() -> str:
    """The installed SDK's version (what `chutes build --local` pins in the image)."""
    return importlib.metadata.version(SDK)
