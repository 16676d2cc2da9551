"""Facts that several parts of chutes-wrappers share, each named once: default ports and timeouts,
where the image keeps the module, and the rules for ports, env flags and env keys.

Imports nothing of the SDK: every CLI (and `deploy.sh --help`'s helpers) may import it for free.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Mapping

# The chute's HTTP port for --run, --smoke and --run-docker; its logging port is the next one.
DEFAULT_CHUTE_PORT = 8000
# Service ports when a module gives none and CHUTE_PORTS is unset (the seed README's defaults).
DEFAULT_SERVICE_PORTS = (8020, 8080)
# Seconds a chute waits for its service at startup, and a proxy cord for one answer.
DEFAULT_SERVICE_TIMEOUT = 600.0
# Seconds --run/--smoke wait for the host service and the chute to answer.
DEFAULT_LOCAL_TIMEOUT = 120.0
# Where `chutes build` puts the module inside the image (and where `chutes run` looks for it).
APP_DIR = "/app"
# `/ping` on any chute's host is answered by the Chutes API itself, before it looks at the host
# (chutes-api cd60d64 api/main.py:274-281): a cord there is never called.
API_PING_PATH = "/ping"

PORT_MIN, PORT_MAX = 1, 65535
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

# Environment variables read by the toolkit (README, "Environment variables").
SKIP_REGISTRATION_ENV = "CHUTES_SKIP_ROUTE_REGISTRATION"
MANIFEST_ENV = "CHUTES_ROUTE_MANIFEST"
MANIFEST_JSON_ENV = "CHUTES_ROUTE_MANIFEST_JSON"
SERVICE_EXTERNAL_ENV = "CHUTES_SERVICE_EXTERNAL"  # set by --run: the service runs on the host
API_KEY_ENV = "CHUTES_API_KEY"
API_URL_ENV = "CHUTES_API_URL"  # wins over a base_url saved in the chutes config
# Set by Chutes inside a running chute (and by --run, --smoke, --run-docker): the SDK then serves cords
# instead of calling a deployed chute (chutes.util.context `is_remote`).
EXECUTION_CONTEXT_ENV, REMOTE = "CHUTES_EXECUTION_CONTEXT", "REMOTE"
# Names of environment variables that hold secrets (env files, logs); `is_chutes_secret` for Chutes's own.
SECRET_KEY_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS$|AUTH|CREDENTIAL|PRIVATE", re.I)


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """True when the variable is set to 1, true, yes or on (any case); the one rule for env flags."""
    value = (os.environ if environ is None else environ).get(name, "")
    return value.strip().lower() in TRUE_WORDS


def is_port(value: Any) -> bool:
    """A TCP port number a service can listen on: an int (not a bool) from 1 to 65535."""
    return isinstance(value, int) and not isinstance(value, bool) and PORT_MIN <= value <= PORT_MAX


def port_argument(text: str) -> int:
    """argparse `type=` for a port: one clear message for anything outside 1-65535."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-{PORT_MAX})") from None
    if not is_port(value):
        raise argparse.ArgumentTypeError(f"{value} is outside {PORT_MIN}-{PORT_MAX}")
    return value


def chute_ports(port: int, logging_port: int | None) -> tuple[int, int]:
    """The chute's port and logging port (default: the next one), both checked."""
    logging_port = port + 1 if logging_port is None else logging_port
    for name, value in (("--port", port), ("--logging-port", logging_port)):
        if not is_port(value):
            from tools.runtime.errors import WrapperError

            raise WrapperError(
                f"{name} {value} is outside {PORT_MIN}-{PORT_MAX}"
                + (" (the logging port is --port + 1)" if name == "--logging-port" and value == port + 1 else ""),
                "pick a port from 1 to 65534, or set --logging-port",
            )
    return port, logging_port


def is_chutes_secret(name: str) -> bool:
    """A Chutes credential by its name: CHUTES_API_KEY, a hotkey seed, anything CHUTES_* that
    SECRET_KEY_RE calls secret (the local platform's shared key too)."""
    upper = name.upper()
    return upper.startswith("CHUTES_") and bool(SECRET_KEY_RE.search(upper) or "SEED" in upper or "JWT" in upper)


def without_chutes_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without Chutes credentials, for the wrapped service (not ours, it has no use for them)
    and for `chutes run` on this machine (the tools that call the API read them in their own process)."""
    return {key: value for key, value in env.items() if not is_chutes_secret(key)}
