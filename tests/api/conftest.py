"""The api tier: deploy.sh and the real `chutes` CLI against a local Chutes API (tests/api/fake_chutes_api.py).

Every test gets a fresh account (a random hotkey seed, a config at CHUTES_CONFIG_PATH in a temporary
HOME) and server state. A sampler watches `ps` for the whole tier: no secret may appear there.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools.runtime.sdk import keys

from tests.api.fake_chutes_api import FakeChutesAPI, State
from tests.api.terminal import Terminal, tmux_available
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy.sh"
SECRETS_SEEN: list[str] = []  # every secret the tier made, for the ps check


@dataclass
class Account:
    home: Path
    config: Path
    seed: str
    api_key: str
    api: FakeChutesAPI
    env: dict[str, str]

    @property
    def state(self) -> State:
        return self.api.state

    def run(self, *args: str, input: str | None = None, timeout: float = 120, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(DEPLOY), *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.home,
            env=env or self.env,
        )
        self.assert_no_secret(result.stdout + result.stderr)
        return result

    def assert_no_secret(self, text: str) -> None:
        assert self.seed not in text, "the hotkey seed was printed"
        assert self.api_key not in text, "the API key was printed"

    def write_api_key(self, mode: int = 0o600) -> Path:
        path = self.home / ".chutes" / "api_key"
        path.write_text(self.api_key + "\n")
        path.chmod(mode)
        return path


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUTES_", "CHUTE_", "PYTEST_"))}
    env.update(HOME=str(home), NO_COLOR="1", COLUMNS="200")
    env.update(extra)
    return env


@pytest.fixture
def account(tmp_path) -> Account:
    home = tmp_path / "home"
    (home / ".chutes").mkdir(parents=True)
    seed = secrets.token_hex(32)
    keypair = keys.from_seed(seed)
    api_key = "cpk_" + secrets.token_hex(24)
    SECRETS_SEEN.extend([seed, api_key])
    state = State(hotkey=keypair.ss58_address, api_key=api_key)
    config = home / ".chutes" / "config.ini"
    config.write_text(
        "[auth]\n"
        f"username = {state.username}\nuser_id = {state.user_id}\nhotkey_seed = {seed}\n"
        f"hotkey_name = default\nhotkey_ss58address = {keypair.ss58_address}\n\n"
        f"[payment]\naddress = {state.payment_address}\n"
    )
    config.chmod(0o600)
    with FakeChutesAPI(state) as api:
        env = base_env(home, CHUTES_API_URL=api.url, CHUTES_CONFIG_PATH=str(config))
        yield Account(home, config, seed, api_key, api, env)
    assert not state.auth_failures, f"requests that failed authentication: {state.auth_failures}"


class PsSampler:
    """Reads every process's command line a few times a second while the tier runs."""

    def __init__(self) -> None:
        self.lines: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        self.lines.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
                    except OSError:
                        continue
            self.samples += 1
            self._stop.wait(0.1)

    def __enter__(self) -> "PsSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="session", autouse=True)
def no_secret_on_any_command_line():
    with PsSampler() as sampler:
        yield sampler
    leaked = [line for line in sampler.lines for secret in SECRETS_SEEN if secret in line]
    assert not leaked, f"a secret appeared in a process's command line: {leaked[:1]}"
    assert not SECRETS_SEEN or sampler.samples > 10


@pytest.fixture
def terminal():
    if not tmux_available():
        pytest.skip("tmux is not installed (apt-get install tmux)")
    opened: list[Terminal] = []

    def open_terminal(command: list[str], env: dict[str, str], cwd: Path) -> Terminal:
        term = Terminal(f"cwtest{os.getpid()}x{len(opened)}x{secrets.token_hex(3)}", command, env, cwd)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()
