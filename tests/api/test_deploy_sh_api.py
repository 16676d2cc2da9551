"""deploy.sh's cloud actions with the real `chutes` CLI (and our API client) against a local Chutes API."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
import uuid

import pytest

from tests.api.conftest import DEPLOY
from tests.conftest import ROOT

pytestmark = pytest.mark.api

EXAMPLE_IMAGE = ("demo-service", "v0.1.0")


def example_image_id(username: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{username}/{EXAMPLE_IMAGE[0]}:{EXAMPLE_IMAGE[1]}".lower()))


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- account ---------------------------------------------------------------------------------------


def test_account_shows_user_hotkey_and_balance_signed_with_the_hotkey(account):
    result = account.run("--account")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "testuser" in out and account.state.hotkey in out
    assert "$12.50" in out and "remote builds need a balance of at least $50" in out
    assert "API key:" in out and "not set" in out
    assert ("GET", "/users/me", "hotkey") in account.state.requests


def test_account_reports_where_the_api_key_comes_from_without_showing_it(account):
    account.write_api_key()
    result = account.run("--account")
    assert result.returncode == 0
    assert f"set (from {account.home}/.chutes/api_key)" in result.stdout


def test_account_with_a_rejected_hotkey_is_one_line_exit_1(account):
    account.state.hotkey = "5SomeoneElse"  # the API knows another hotkey
    result = account.run("--account")
    account.state.auth_failures.clear()
    assert result.returncode == 1
    assert last_line(result.stderr).startswith("deploy.sh --account: error: GET /users/me: HTTP 401")
    assert "Traceback" not in result.stderr


# --- listing and status (the real chutes CLI) --------------------------------------------------------


def test_list_chutes_and_images_run_the_real_cli(account):
    account.state.add_chute("myservice", hot=True)
    account.state.add_image("myservice", "v1")
    chutes = account.run("--list-chutes")
    images = account.run("--list-images")
    assert chutes.returncode == 0 and images.returncode == 0, chutes.stderr + images.stderr
    assert "myservice" in chutes.stdout and "Found 1 matching chutes" in chutes.stdout
    assert "myservice" in images.stdout and "v1" in images.stdout
    assert ("GET", "/chutes/", "hotkey") in account.state.requests
    assert ("GET", "/images/", "hotkey") in account.state.requests


def test_list_failure_that_the_cli_exits_0_on_is_exit_1(account):
    account.state.fail["GET /chutes/"] = (500, "database is down")
    result = account.run("--list-chutes")
    assert result.returncode == 1
    assert "deploy.sh --list-chutes: error: listing chutes failed" in result.stderr
    assert "database is down" in result.stderr


def test_status_prints_the_chute_and_an_unknown_chute_is_exit_1(account):
    chute = account.state.add_chute("myservice", hot=True, instances=1)
    ok = account.run("--status", "myservice")
    assert ok.returncode == 0, ok.stderr
    assert chute["chute_id"] in ok.stdout
    missing = account.run("--status", "nope")
    assert missing.returncode == 1
    assert "getting the status of 'nope' failed" in missing.stderr and "Chute not found" in missing.stderr


def test_cli_cannot_reach_the_api_is_one_line(account):
    env = dict(account.env, CHUTES_API_URL="http://127.0.0.1:9")
    result = account.run("--list-images", env=env)
    assert result.returncode == 1
    assert "listing images failed" in result.stderr and "Cannot connect" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# --- deploy ------------------------------------------------------------------------------------------


def test_deploy_accept_fee_yes_needs_no_keyboard_and_reports_the_apis_answer(account):
    account.state.add_image(*EXAMPLE_IMAGE, image_id=example_image_id("testuser"))
    result = account.run("--deploy", "deploy_example", "--accept-fee", "--yes", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"deployed chute demo-service \(id [0-9a-f-]{36}, version 1\.0\.0\)", result.stdout)
    (request,) = account.state.deployed
    assert request["name"] == "demo-service" and request["filename"] == "deploy_example.py"
    paths = {cord["public_api_path"] for cord in request["cords"]}
    assert {"/tts_to_audio", "/inference", "/v1/echo", "/health"} <= paths  # the manifest was loaded
    assert ("POST", "/chutes/", "hotkey") in account.state.requests


def test_deploy_refused_by_the_api_is_exit_1_and_never_says_deployed(account):
    account.state.add_image(*EXAMPLE_IMAGE, image_id=example_image_id("testuser"))
    result = account.run("--deploy", "deploy_example", "--yes", timeout=180)  # no --accept-fee
    assert result.returncode == 1
    assert "deploying deploy_example failed: A deployment fee of $1.50 applies" in result.stderr
    assert "deployed chute" not in result.stdout
    assert not account.state.deployed


def test_deploy_before_the_image_is_built_is_exit_1(account):
    result = account.run("--deploy", "deploy_example", "--accept-fee", "--yes", timeout=180)
    assert result.returncode == 1
    assert "is not available to be used (yet)" in result.stderr


def test_deploy_without_yes_and_without_a_terminal_asks_for_yes(account):
    result = account.run("--deploy", "deploy_example", "--accept-fee")
    assert result.returncode == 1
    assert "run it in a terminal, or add --yes" in result.stderr
    assert not account.state.requests


# --- remote build --------------------------------------------------------------------------------------


def test_remote_build_yes_uploads_the_context_and_reports_the_image(account):
    result = account.run("--build", "deploy_example", "--yes", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image uploaded for a remote build (image id" in result.stdout
    (upload,) = account.state.uploads
    assert upload["name"] == "demo-service" and upload["tag"] == "v0.1.0" and upload["username"] == "testuser"
    assert upload["context_bytes"] > 0
    assert "build complete" in result.stdout  # --wait streamed the build log


def test_remote_build_of_an_existing_image_is_exit_1(account):
    account.state.add_image(*EXAMPLE_IMAGE, image_id=example_image_id("testuser"))
    result = account.run("--build", "deploy_example", "--yes", timeout=240)
    assert result.returncode == 1
    assert "the remote build failed: Image with name=demo-service and tag=v0.1.0 already exists!" in result.stderr


# --- delete ---------------------------------------------------------------------------------------------


def test_delete_yes_deletes_by_name(account):
    chute = account.state.add_chute("myservice")
    result = account.run("--delete", "myservice", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"deleted chute {chute['chute_id']}" in result.stdout
    assert not account.state.chutes
    assert ("DELETE", f"/chutes/{chute['chute_id']}", "hotkey") in account.state.requests


def test_delete_of_an_unknown_chute_deletes_nothing(account):
    account.state.add_chute("myservice")
    result = account.run("--delete", "0000-mistyped", "--yes")
    assert result.returncode == 1
    assert "no chute named or with id '0000-mistyped'" in result.stderr
    assert len(account.state.chutes) == 1
    assert not [r for r in account.state.requests if r[0] == "DELETE"]


def test_delete_refused_by_the_api_is_exit_1_and_never_says_deleted(account):
    chute = account.state.add_chute("myservice")
    account.state.fail["DELETE /chutes/"] = (403, "this chute has running jobs")
    result = account.run("--delete", chute["chute_id"], "--yes")
    assert result.returncode == 1
    assert f"chute {chute['chute_id']} was not deleted" in result.stderr and "running jobs" in result.stderr
    assert "deleted chute" not in result.stdout


def test_delete_confirmation_typed_wrong_deletes_nothing(account):
    account.state.add_chute("myservice")
    result = account.run("--delete", "myservice", input="myservce\n")
    # not a terminal and no --yes: refused before asking
    assert result.returncode == 1 and "add --yes" in result.stderr
    assert len(account.state.chutes) == 1


def test_delete_image_yes(account):
    image = account.state.add_image("myservice", "v1")
    result = account.run("--delete-image", "myservice", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"deleted image {image['image_id']}" in result.stdout
    assert not account.state.images


# --- warmup, keep-warm, logs -----------------------------------------------------------------------------


def test_warmup_waits_until_the_chute_is_hot(account):
    account.state.add_chute("myservice")
    account.state.hot_after = 2
    result = account.run("--warmup", "myservice", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "warming up myservice: cold, 0 instance(s)" in result.stdout
    assert "myservice is hot" in result.stdout


def test_warmup_of_an_unknown_chute_is_exit_1(account):
    result = account.run("--warmup", "nope")
    assert result.returncode == 1
    assert "no chute named or with id 'nope'" in result.stderr


def test_keep_warm_warms_every_interval_until_ctrl_c(account):
    account.state.add_chute("myservice")
    proc = subprocess.Popen([str(DEPLOY), "--keep-warm", "1", "myservice"], env=account.env, cwd=account.home,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while account.state.warmups.get(next(iter(account.state.chutes)), 0) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "keeping myservice warm: a warmup every 1s" in out
    assert re.search(r"\[\d\d:\d\d:\d\d\] myservice: cold, 0 instance\(s\)", out)
    assert re.search(r"\[\d\d:\d\d:\d\d\] myservice: hot, 1 instance\(s\)", out)
    assert re.search(r"stopped keeping myservice warm after [3-9] warmup\(s\), 0 failed", out)


def test_logs_stream_with_the_api_key_from_its_file(account):
    account.write_api_key()
    account.state.add_chute("myservice", hot=True, instances=2)
    result = account.run("--logs", "myservice")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("instance log line")]
    assert lines == [f"instance log line {i}" for i in range(5)]
    assert "(last 100 lines, then live; API key)" in result.stdout
    assert any(r[1].endswith("/logs") and r[2] == "api-key" for r in account.state.requests)


def test_logs_without_an_api_key_are_signed_with_the_hotkey(account):
    account.state.add_chute("myservice", hot=True, instances=1)
    result = account.run("--logs", "myservice", "--backfill", "10")
    assert result.returncode == 0, result.stderr
    assert "instance log line 4" in result.stdout and "(last 10 lines, then live; hotkey)" in result.stdout
    assert any(r[1].endswith("/logs") and r[2] == "hotkey" for r in account.state.requests)


def test_logs_of_a_cold_chute_say_how_to_start_it(account):
    account.state.add_chute("myservice")
    result = account.run("--logs", "myservice")
    assert result.returncode == 1
    assert "myservice has no running instance" in result.stderr and "--warmup myservice" in result.stderr


def test_api_key_file_readable_by_others_is_refused(account):
    account.write_api_key(mode=0o644)
    account.state.add_chute("myservice", hot=True, instances=1)
    result = account.run("--logs", "myservice")
    assert result.returncode == 1
    assert "is readable by other users (mode 644)" in result.stderr and "chmod 600" in result.stderr


def test_api_key_from_the_environment(account):
    account.state.add_chute("myservice", hot=True, instances=1)
    env = dict(account.env, CHUTES_API_KEY=account.api_key)
    result = account.run("--logs", "myservice", env=env)
    assert result.returncode == 0, result.stderr
    assert "API key)" in result.stdout


# --- secrets: set-api-key, link-hotkey ----------------------------------------------------------------


def test_set_api_key_checks_it_and_writes_it_private_with_a_backup(account):
    first = account.run("--set-api-key", input=account.api_key + "\n")
    assert first.returncode == 0, first.stderr
    path = account.home / ".chutes" / "api_key"
    assert path.read_text() == account.api_key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "the API accepts this key (user testuser)" in first.stdout
    second = account.run("--set-api-key", input=account.api_key + "\n")
    assert second.returncode == 0
    (backup,) = list(path.parent.glob("api_key.bak.*"))
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_set_api_key_rejected_by_the_api_saves_nothing(account):
    result = account.run("--set-api-key", input="cpk_wrong_key_value\n")
    account.state.auth_failures.clear()
    assert result.returncode == 1
    assert "the API did not accept this key" in result.stderr and "nothing saved" in result.stderr
    assert not (account.home / ".chutes" / "api_key").exists()


def link_env(account, config):
    return dict(account.env, CHUTES_CONFIG_PATH=str(config))


def test_link_hotkey_in_deploy_sh_writes_the_config_from_the_api(account):
    config = account.home / ".chutes" / "linked.ini"
    result = account.run("--link-hotkey", input=account.seed + "\n", env=link_env(account, config))
    assert result.returncode == 0, result.stderr
    assert f"linked Chutes account testuser (user id {account.state.user_id}) with hotkey {account.state.hotkey}" in result.stdout
    text = config.read_text()
    assert f"hotkey_seed = {account.seed}" in text and "username = testuser" in text
    assert f"address = {account.state.payment_address}" in text and f"base_url = {account.api.url}" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_link_hotkey_backs_up_an_existing_config(account):
    before = account.config.read_text()
    result = account.run("--link-hotkey", input=account.seed + "\n")
    assert result.returncode == 0, result.stderr
    (backup,) = list(account.config.parent.glob("config.ini.bak.*"))
    assert backup.read_text() == before and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert "the previous config is in" in result.stdout


def test_link_hotkey_unknown_to_the_api_changes_nothing(account):
    config = account.home / ".chutes" / "linked.ini"
    other = "ab" * 32
    result = account.run("--link-hotkey", input=other + "\n", env=link_env(account, config))
    account.state.auth_failures.clear()
    assert result.returncode == 1
    assert "no Chutes account uses hotkey" in result.stderr and "nothing changed" in result.stderr
    assert other not in result.stdout + result.stderr
    assert not config.exists()


def test_link_hotkey_from_a_wallet_hotkey_file(account, tmp_path):
    import json

    config = account.home / ".chutes" / "linked.ini"
    hotkey_file = tmp_path / "wallets" / "main" / "hotkeys" / "hk1"
    hotkey_file.parent.mkdir(parents=True)
    hotkey_file.write_text(json.dumps({"secretSeed": "0x" + account.seed, "ss58Address": account.state.hotkey}))
    python = ROOT / ".venv" / "bin" / "python"
    result = subprocess.run([str(python), "-m", "tools.commands.account", "link", "--hotkey-file", str(hotkey_file)],
                            cwd=ROOT, env=link_env(account, config), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "hotkey_name = hk1" in config.read_text()
    account.assert_no_secret(result.stdout + result.stderr)


def test_setup_sh_link_hotkey_links_an_existing_account(account, tmp_path):
    """setup.sh --link-hotkey with a venv stand-in that runs this interpreter (no pip)."""
    from tests.shell.test_setup_sh import make_fake_venv

    venv = tmp_path / "venv"
    make_fake_venv(venv)
    config = account.home / ".chutes" / "linked.ini"
    result = subprocess.run([str(ROOT / "setup.sh"), "--link-hotkey", "--venv", str(venv)], input=account.seed + "\n",
                            env=link_env(account, config), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "linked Chutes account testuser" in result.stdout
    assert f"Chutes config  present ({config})" in result.stdout
    account.assert_no_secret(result.stdout + result.stderr)


def test_warmup_that_stays_cold_times_out_with_exit_1(account):
    account.state.add_chute("myservice")
    account.state.hot_after = 1000
    result = account.run("--warmup", "myservice", "--timeout", "1")
    assert result.returncode == 1
    assert "myservice is not hot after 1s (cold, 0 instance(s))" in result.stderr
    assert "--status myservice" in result.stderr


def test_public_deploy_without_the_permission_is_refused_by_the_real_cli(account):
    account.state.add_image(*EXAMPLE_IMAGE, image_id=example_image_id("testuser"))["public"] = True
    result = account.run("--deploy", "deploy_example", "--public", "--accept-fee", "--yes", timeout=180)
    assert result.returncode == 1
    assert "Public chutes are no longer possible without special permissions" in result.stderr
    assert ("GET", "/users/me", "hotkey") in account.state.requests  # the CLI asked the API
    assert not account.state.deployed
