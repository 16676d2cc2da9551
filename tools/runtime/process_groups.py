"""The one stop rule for every process group chutes-wrappers starts (the service inside a chute; the
service, node, gateway and chute the CLIs start on this machine): SIGTERM, a grace period, then
SIGKILL; and children that die with their parent."""

from __future__ import annotations

import os
import signal
from typing import Callable

KILL_GRACE = 5.0  # seconds after SIGKILL before we stop waiting


def stop_group(pid: int, exited_within: Callable[[float], bool], timeout: float = 10.0, *, leader_gone: bool = False) -> None:
    """SIGTERM the process group `pid`, SIGKILL it if it is still there after `timeout`.

    `exited_within(seconds)` waits for the leader and says whether it exited. When the leader is
    already gone (`leader_gone`), what is left of its group is killed at once.
    """
    steps = [(signal.SIGKILL, KILL_GRACE)] if leader_gone else [(signal.SIGTERM, timeout), (signal.SIGKILL, KILL_GRACE)]
    for sig, grace in steps:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if leader_gone or exited_within(grace):
            return


def die_with_parent() -> None:
    """In the child (preexec_fn): get SIGTERM when our process dies without stopping it, even by
    SIGKILL, so no service or chute outlives the CLI or chute that started it (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
