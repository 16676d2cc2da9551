"""deploy.sh's Python helpers: output checks of the chutes CLI, request signing, private files, config."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tools.runtime.sdk import keys

from tools import chutes_api
from tools.commands import account
from tools.chutes_cli import Outcome, answer_for
from tools.runtime.errors import WrapperError

LOG = "2025-01-01 00:00:00.000 | {level:<8} | chutes.crud:_delete_object:180 - {message}"


def test_errors_come_from_the_clis_error_lines_and_a_tracebacks_last_line():
    text = "\n".join([
        LOG.format(level="INFO", message="Loading chutes config"),
        LOG.format(level="ERROR", message='Failed to delete chutes/x: {"detail": "nope"}'),
    ])
    assert Outcome(["chutes"], 0, text).errors() == ['Failed to delete chutes/x: {"detail": "nope"}']
    crash = "Traceback (most recent call last):\n  File \"x\", line 1\naiohttp.ClientConnectorError: Cannot connect\n"
    assert Outcome(["chutes"], 1, crash).errors() == ["aiohttp.ClientConnectorError: Cannot connect"]


def test_failure_without_any_error_line_says_what_is_missing():
    assert str(Outcome(["chutes"], 0, "").failure("deploying x")) == "deploying x failed: no success message"
    assert str(Outcome(["chutes"], 3, "").failure("deploying x")) == "deploying x failed: exit status 3"


def test_prompts_are_answered_yes_except_showing_every_file():
    assert answer_for("Confirm submitting build context? (y/n) ") == "y"
    assert answer_for("You are about to upload x.py and deploy y, confirm? (y/n) ") == "y"
    assert answer_for("Showing 10 of 42, would you like to see the rest? (y/n) ") == "n"


@pytest.fixture
def config(tmp_path, monkeypatch):
    seed = secrets.token_hex(32)
    keypair = keys.from_seed(seed)
    path = tmp_path / "config.ini"
    path.write_text(f"[auth]\nusername = u\nuser_id = id-1\nhotkey_seed = {seed}\nhotkey_name = hk\n"
                    f"hotkey_ss58address = {keypair.ss58_address}\n[payment]\naddress = pay\n")
    monkeypatch.setenv("CHUTES_CONFIG_PATH", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CHUTES_API_KEY", raising=False)
    return path, seed, keypair


@pytest.mark.parametrize("payload, purpose", [(None, "chutes"), (b'{"name": "x"}', None)])
def test_signatures_verify_like_the_sdks(config, payload, purpose):
    _, seed, keypair = config
    acct = chutes_api.load_account()
    headers = chutes_api.signed_headers(acct, payload=payload, purpose=purpose)
    nonce = headers["X-Chutes-Nonce"]
    tail = hashlib.sha256(payload).hexdigest() if payload else purpose
    message = f"{keypair.ss58_address}:{nonce}:{tail}"
    assert keys.verify(keypair.ss58_address, message.encode(), bytes.fromhex(headers["X-Chutes-Signature"]))
    assert headers["X-Chutes-Hotkey"] == keypair.ss58_address and headers["X-Chutes-UserID"] == "id-1"
    # the SDK's own message for the same inputs
    from tools.runtime.sdk.rules import signing_message

    assert signing_message(keypair.ss58_address, nonce, payload, purpose=purpose) == message
    assert seed not in repr(acct)


def test_base_url_is_the_env_var_then_the_saved_config_then_the_public_api(config, monkeypatch):
    path, _, _ = config
    monkeypatch.delenv("CHUTES_API_URL", raising=False)
    assert chutes_api.api_base_url() == chutes_api.DEFAULT_API_URL
    path.write_text(path.read_text() + "[api]\nbase_url = http://127.0.0.1:2/\n")
    assert chutes_api.api_base_url() == "http://127.0.0.1:2"
    # A saved base_url does not silently win over the variable set for this run.
    monkeypatch.setenv("CHUTES_API_URL", "http://127.0.0.1:1/")
    assert chutes_api.api_base_url() == "http://127.0.0.1:1"
    assert chutes_api.Client(api_key="k").base_url == "http://127.0.0.1:1"


def sdk_api_url(env: dict[str, str]) -> str:
    """The API base the real SDK (and so the `chutes` CLI) uses in this environment."""
    code = "from chutes.config import get_config; print(get_config().generic.api_base_url)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().rstrip("/")


def test_the_chutes_cli_gets_the_env_var_url_over_a_saved_one_through_a_private_copy(config, tmp_path):
    path, seed, _ = config
    path.write_text(path.read_text() + "[api]\nbase_url = http://127.0.0.1:2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTES_")}
    env.update(CHUTES_CONFIG_PATH=str(path), HOME=str(tmp_path))
    assert sdk_api_url({**env, "CHUTES_API_URL": "http://127.0.0.1:1"}) == "http://127.0.0.1:2"  # the SDK's rule
    with chutes_api.cli_env({**env, "CHUTES_API_URL": "http://127.0.0.1:1"}) as cli_env:
        copy = Path(cli_env["CHUTES_CONFIG_PATH"])
        assert copy != path
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
        assert sdk_api_url(cli_env) == "http://127.0.0.1:1"
        assert seed in copy.read_text()  # the same account
    assert not copy.parent.exists()
    assert "base_url = http://127.0.0.1:2" in path.read_text()  # the saved config is left as it was
    for same in ({**env, "CHUTES_API_URL": "http://127.0.0.1:2/"}, env):  # same URL, or no variable: no copy
        with chutes_api.cli_env(same) as cli_env:
            assert cli_env["CHUTES_CONFIG_PATH"] == str(path)


def test_api_key_sources_and_the_file_mode_rule(config, monkeypatch, tmp_path):
    assert chutes_api.load_api_key() is None
    key_file = tmp_path / ".chutes" / "api_key"
    key_file.parent.mkdir()
    key_file.write_text("cpk_file\n")
    key_file.chmod(0o600)
    assert chutes_api.load_api_key() == ("cpk_file", str(key_file))
    key_file.chmod(0o640)
    with pytest.raises(WrapperError, match="readable by other users"):
        chutes_api.load_api_key()
    monkeypatch.setenv("CHUTES_API_KEY", "cpk_env")
    assert chutes_api.load_api_key() == ("cpk_env", "$CHUTES_API_KEY")


def test_missing_or_seedless_config_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUTES_CONFIG_PATH", str(tmp_path / "none.ini"))
    with pytest.raises(WrapperError, match="no Chutes account configured.*--link-hotkey"):
        chutes_api.load_account()
    (tmp_path / "none.ini").write_text("[auth]\nusername = x\n")
    with pytest.raises(WrapperError, match="has no hotkey"):
        chutes_api.load_account()


def test_write_private_is_atomic_mode_600_and_backs_up_with_a_timestamp(tmp_path):
    target = tmp_path / "dir" / "secret"
    assert account.write_private(target, "one\n") is None
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = account.write_private(target, "two\n")
    second = account.write_private(target, "three\n")
    assert first != second and first.read_text() == "one\n" and second.read_text() == "two\n"
    assert first.name.startswith("secret.bak.") and stat.S_IMODE(first.stat().st_mode) == 0o600
    assert target.read_text() == "three\n"
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.startswith("secret")) == []


def test_write_private_leaves_nothing_behind_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "secret"
    target.write_text("old\n")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        account.write_private(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("secret")] == []


def test_seed_from_a_hotkey_file(tmp_path):
    seed = secrets.token_hex(32)
    path = tmp_path / "hk"
    path.write_text('{"secretSeed": "0x%s", "ss58Address": "5X"}' % seed)
    assert account.seed_from_hotkey_file(path) == (seed, "5X", "hk")
    path.write_text('{"encrypted": true}')
    with pytest.raises(WrapperError, match="holds no secretSeed"):
        account.seed_from_hotkey_file(path)


def test_run_docker_reports_a_failed_chute_startup_without_the_traceback():
    from tools.commands.run_docker import startup_error

    lines = [
        "2026-11-30 | INFO | starting service",
        "2026-11-30 | ERROR | chutes.entrypoint.run:_logged_run:2622 - Unexpected error executing _run_chute(): "
        "service exited with status 3 during startup; last output:",
        "asr-server: error: failed to open /models/m.bin",
        "Traceback (most recent call last):",
        '  File "run.py", line 1, in _logged_run',
        "ServiceError: ...",
    ]
    assert startup_error(lines) == (
        "service exited with status 3 during startup; last output:\nasr-server: error: failed to open /models/m.bin"
    )
    # no report from `chutes run`: the container's last lines
    assert startup_error(["a", "b"]) == "a\nb"


def test_a_failed_build_reports_the_setup_scripts_own_error_line():
    text = (
        "STEP 2/10: RUN sh -c ...\n"
        "chutes-wrappers: error: this base image has no Python >= 3.10 that can create a venv\n"
        "Error: building at STEP \"RUN ...\": while running runtime: exit status 1\n"
        "2026-11-30 | ERROR | chutes.image:build:1 - Image build failed, check the logs above\n"
    )
    error = Outcome(["chutes", "build"], 1, text).failure("chutes build")
    assert str(error).startswith("chutes build failed: this base image has no Python >= 3.10")
    plain = Outcome(["chutes", "build"], 1, text.replace("chutes-wrappers: error: ", "")).failure("chutes build")
    assert "Image build failed" in str(plain)
