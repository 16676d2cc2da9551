"""TCP port numbers on the command line: the one range check every CLI and deploy.sh agree on.

A port outside 1-65535 is a usage error (exit 2, one line), never a traceback from `socket` later.
"""

from __future__ import annotations

import argparse

MIN_PORT, MAX_PORT = 1, 65535
# The chute's logging port, when not given, is the next one after its port.
LOGGING_PORT_OFFSET = 1


def port_number(text: str) -> int:
    """argparse `type=` for a port: an integer in 1-65535."""
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a port number ({MIN_PORT}-{MAX_PORT}), got {text!r}") from None
    if not MIN_PORT <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port number ({MIN_PORT}-{MAX_PORT})")
    return value


def logging_port_for(parser: argparse.ArgumentParser, port: int, logging_port: int | None) -> int:
    """The chute's logging port: the one given, else port+1, which must be a port too (else exit 2)."""
    if logging_port is not None:
        return logging_port
    derived = port + LOGGING_PORT_OFFSET
    if derived > MAX_PORT:
        parser.error(f"--port {port}: the logging port would be {derived}, which is not a port number "
                     f"({MIN_PORT}-{MAX_PORT}); pick a lower --port or give --logging-port")
    return derived
