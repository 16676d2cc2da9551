"""Ports: whether one can be taken (`port_is_free`, `ensure_free`: by binding as servers and engines
bind, SO_REUSEADDR, so a port in TIME_WAIT is not taken), the one answer for every tool (the chute's
node runner, --run, --smoke, --run-docker and discovery); and whether a server listens on one
(`port_listens`, by connecting; the chute's own async check is launcher.port_open)."""

from __future__ import annotations

import socket
from typing import Mapping

from tools.runtime.errors import WrapperError

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the system's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_free(ports: Mapping[int, str], host: str = LOOPBACK, hint: str = "stop what listens there, or pick another port") -> None:
    """Raise one clear error for the first port (of `{port: what it is for}`) that is taken."""
    for port, what in ports.items():
        if not port_is_free(port, host):
            raise WrapperError(f"port {port} ({what}) is already in use on {host}", hint)


def port_listens(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when a connection to host:port is accepted."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0
