"""A real terminal for tests: a tmux pane running a command, keys typed with send-keys, the screen read
with capture-pane."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


class Terminal:
    """A real terminal (a tmux pane) running a command; type keys, read the screen."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, width: int = 120,
                 height: int = 50):
        self.name = name
        # The tmux server (started here) passes its own environment on: ours, as given.
        subprocess.run(["tmux", "-L", name, "-f", "/dev/null", "new-session", "-d", "-s", name, "-x", str(width),
                        "-y", str(height), "-c", str(cwd), *command], check=True, env=env)
        subprocess.run(["tmux", "-L", name, "set-option", "-t", name, "remain-on-exit", "on"], check=True)
        subprocess.run(["tmux", "-L", name, "set-option", "-t", name, "history-limit", "5000"], check=True)

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.name, "send-keys", "-t", self.name, *keys], check=True)

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "-L", self.name, "send-keys", "-t", self.name, "-l", text], check=True)
        self.send("Enter")

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", self.name, "capture-pane", "-p", "-J", "-S", "-5000", "-t", self.name],
                              capture_output=True, text=True).stdout

    def wait_for(self, text: str, timeout: float = 60, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} (x{count}) not on the screen within {timeout}s:\n{screen[-4000:]}")
            time.sleep(0.1)

    def dead(self) -> bool:
        out = subprocess.run(["tmux", "-L", self.name, "display-message", "-p", "-t", self.name, "#{pane_dead}"],
                             capture_output=True, text=True).stdout.strip()
        return out == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True)
