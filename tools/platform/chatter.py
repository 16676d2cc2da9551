"""Which lines of a chute's output are the SDK's own chatter: quiet in `--run` by default, shown with
`--verbose` (a `Child`'s `show`). Chatter is what the chutes SDK and its servers say about themselves
on every start and call ([aegis-debug] steps, "Decrypted request path", "Added new API route", the
E2E path map, server banners, a hypercorn deprecation warning); everything else is shown: our own
lines (registration, services ready), the service's output, and any warning, error or traceback.
"""

from __future__ import annotations

import re

# loguru's default format, as the SDK logs: "2026-01-01 10:00:00.123 | INFO     | chutes.x:func:12 - text"
_LOGURU = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.,]\d+ \| (?P<level>[A-Z]+)\s*\| (?P<where>[\w.]+):")
_QUIET_LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS"}
# The node's servers: uvicorn (the SDK's logging server) and hypercorn (the chute), at start and stop.
_BANNERS = re.compile(
    r"^INFO: {5}(Started server process|Waiting for application startup|Application startup complete"
    r"|Uvicorn running on|Shutting down|Waiting for application shutdown|Application shutdown complete"
    r"|Finished server process)"
    r"|^\[[^\]]+\] \[\d+\] \[INFO\] (Running on|Goodbye)"
)
# A Python warning raised inside an installed library (hypercorn's verify_mode, FastAPI's ORJSONResponse),
# and its second line: the source line, indented.
_LIBRARY_WARNING = re.compile(r"^\S+/site-packages/\S+\.py:\d+: \w*Warning: ")
_SOURCE_LINE = re.compile(r"^\s+\S")


class SdkChatter:
    """show(line) for a node's or `chutes run --dev`'s output: False for the SDK's chatter. Stateful
    (a warning's second line goes with its first), so one instance per child."""

    def __init__(self) -> None:
        self._after_warning = False

    def __call__(self, line: str) -> bool:
        warning = bool(_LIBRARY_WARNING.match(line))
        hide = warning or is_chatter(line) or (self._after_warning and bool(_SOURCE_LINE.match(line)))
        self._after_warning = warning
        return not hide


def is_chatter(line: str) -> bool:
    """One line on its own: the SDK's INFO-or-lower log lines and its servers' banners."""
    match = _LOGURU.match(line)
    if match:
        return match.group("where").startswith("chutes.") and match.group("level") in _QUIET_LEVELS
    return bool(_BANNERS.match(line))
