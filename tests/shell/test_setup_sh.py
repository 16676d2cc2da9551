"""setup.sh driven as a user would: flags, Python detection, the venv stamp, registration, backups."""

from __future__ import annotations

import os
import pty
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.shell

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "setup.sh"
STAMP = ".chutes-wrappers-stamp"
SECRET = "deadbeef" * 8


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("CI", "CHUTES_CONFIG_PATH", "CHUTES_WRAPPERS_VENV", "SETUP_SH_SOURCE_ONLY", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update(HOME=str(home), NO_COLOR="1")
    env.update(extra)
    return env


def run_setup(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 900):
    return subprocess.run(
        [str(SETUP), *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def write_fake_config(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"[auth]\nusername = someone\nhotkey_seed = {SECRET}\n"
    path.write_text(text)
    path.chmod(0o600)
    return text


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def pip_cache_dir() -> str | None:
    """The real user's pip cache, so runs with a temporary HOME still reuse downloaded wheels."""
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    result = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def site_packages_state(venv: Path) -> tuple[str, dict[str, int]]:
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    (site,) = venv.glob("lib/python3.*/site-packages")
    return freeze, {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(site)}


def make_fake_venv(venv: Path) -> None:
    """A venv stand-in that setup.sh accepts as up to date: bin/python runs this interpreter, the stamp
    is computed by setup.sh's own key function, and bin/chutes records how it was called (and, with
    FAKE_CHUTES_WRITES, writes a config there the way the real `chutes register` does)."""
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    write_exe(venv / "bin" / "python", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    write_exe(
        venv / "bin" / "chutes",
        '#!/bin/sh\nprintf "%s\\n" "$*" >> "$FAKE_CHUTES_CALLS"\n'
        # Like the real CLI: writes the config with the default umask.
        'if [ -n "$FAKE_CHUTES_WRITES" ]; then mkdir -p "${FAKE_CHUTES_WRITES%/*}"; '
        '(umask 022; echo "hotkey_seed = x" > "$FAKE_CHUTES_WRITES"); fi\n',
    )
    key = subprocess.run(
        ["bash", "-c", 'source ./setup.sh && requirement_key "$1" runtime requirements.txt', "_", str(venv / "bin" / "python")],
        cwd=ROOT,
        env={**os.environ, "SETUP_SH_SOURCE_ONLY": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (venv / STAMP).write_text(f"runtime {key}\n")


def run_interactive(args: list[str], env: dict[str, str], answer: bytes) -> subprocess.CompletedProcess:
    """Run setup.sh with a terminal on stdin (so it may ask) and type `answer`."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(SETUP), *args], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
        )
        os.close(slave)
        slave = -1
        os.write(master, answer)
        out, err = proc.communicate(timeout=120)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One real install (network or pip cache) shared by the tests that need real packages."""
    base = tmp_path_factory.mktemp("setup-real")
    home = base / "home"
    home.mkdir()
    write_fake_config(home / ".chutes" / "config.ini")
    extra = {"PIP_CACHE_DIR": cache} if (cache := pip_cache_dir()) else {}
    env = base_env(home, **extra)
    venv = base / "venv"
    first = run_setup("--yes", "--venv", str(venv), env=env)
    return venv, env, first


# --- static checks -----------------------------------------------------------------------------


def test_setup_sh_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "-x", "setup.sh"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_setup_sh_is_executable_bash_with_strict_mode():
    text = SETUP.read_text()
    assert os.access(SETUP, os.X_OK)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert text.rstrip().endswith('main "$@"')
    assert "eval " not in text


# --- argument errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown option: --bogus"),
        (["--venv"], "--venv needs a value"),
        (["--python"], "--python needs a value"),
        (["--venv", "--dev"], "--venv needs a value"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_and_usage(tmp_path, args, message):
    result = run_setup(*args, env=base_env(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}")
    assert "Usage: ./setup.sh" in result.stderr


def test_help_prints_usage_and_exits_0(tmp_path):
    result = run_setup("--help", env=base_env(tmp_path))
    assert result.returncode == 0
    assert "Usage: ./setup.sh" in result.stdout
    for flag in ("--dev", "--yes", "--venv PATH", "--python PATH", "--register", "CHUTES_WRAPPERS_VENV"):
        assert flag in result.stdout


# --- Python detection ----------------------------------------------------------------------------

FAKE_PY38 = """#!/bin/sh
case "$1" in
  --version) echo "Python 3.8.0" ;;
  -c) echo "3.8.0" ;;
  *) echo "fake python 3.8 cannot do: $*" >&2; exit 1 ;;
esac
"""


def test_python_flag_pointing_nowhere_exits_1_and_creates_nothing(tmp_path):
    venv = tmp_path / "venv"
    result = run_setup("--yes", "--python", "/nonexistent/python3", "--venv", str(venv), env=base_env(tmp_path))
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "/nonexistent/python3" in line and "3.10+" in line and "--python PATH" in line
    assert not venv.exists()


def test_python_flag_with_too_old_python_exits_1_and_creates_nothing(tmp_path):
    fake = tmp_path / "python3.8"
    write_exe(fake, FAKE_PY38)
    venv = tmp_path / "venv"
    result = run_setup("--yes", "--python", str(fake), "--venv", str(venv), env=base_env(tmp_path))
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "3.8.0" in line and "3.10+" in line and "--python PATH" in line
    assert not venv.exists()


def test_no_python_310_on_path_exits_1_with_one_line_and_creates_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "python3", FAKE_PY38)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["/bin/bash", str(SETUP), "--yes", "--venv", str(venv)],
        env=base_env(tmp_path, PATH=str(bin_dir)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "no Python 3.10+ found" in line and "python3 is 3.8.0" in line and "--python PATH" in line
    assert not venv.exists()


# --- venv handling without network ------------------------------------------------------------


def test_directory_that_is_not_a_venv_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "notavenv"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = run_setup("--yes", "--venv", str(target), env=base_env(tmp_path))
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "not a virtualenv" in line
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_broken_venv_is_recreated_and_failed_pip_writes_no_stamp(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /gone\n")
    (venv / "bin" / "python").symlink_to("/gone/python3")
    (venv / STAMP).write_text("runtime stale\n")
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    # No index and an empty find-links dir: pip must fail, quickly and offline.
    env = base_env(tmp_path, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty))
    result = run_setup("--yes", "--venv", str(venv), env=env)
    assert "recreating it" in result.stderr
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "pass"]).returncode == 0
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: pip install -r requirements.txt failed (exit 1); see pip's output above, fix it and re-run ./setup.sh"
    ]
    assert not (venv / STAMP).exists()
    assert "Summary" not in result.stdout

    # Now healthy, but a stamp that no longer matches must not survive another failed install.
    (venv / STAMP).write_text("runtime stale\n")
    again = run_setup("--yes", "--venv", str(venv), env=env)
    assert again.returncode == 1
    assert "recreating" not in again.stderr
    assert not (venv / STAMP).exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_relative_venv_path_is_taken_from_the_callers_directory(tmp_path, how):
    name = f"venv-relative-test-{os.getpid()}-{how}"
    make_fake_venv(tmp_path / name)
    # Offline pip: if the path were resolved against the repo instead, the run fails fast.
    env = base_env(
        tmp_path / "home", FAKE_CHUTES_CALLS=str(tmp_path / "calls"), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path)
    )
    if how == "env":
        env["CHUTES_WRAPPERS_VENV"] = name
        args = ["--yes"]
    else:
        args = ["--yes", "--venv", name]
    try:
        result = run_setup(*args, env=env, cwd=tmp_path)
        assert not (ROOT / name).exists()
    finally:
        shutil.rmtree(ROOT / name, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert "pip not run" in result.stdout
    assert f"({tmp_path}/{name}/bin/python)" in result.stdout
    assert f"source {name}/bin/activate" in result.stdout
    assert f"{ROOT}/deploy.sh --run deploy_example" in result.stdout


# --- registration --------------------------------------------------------------------------------


def test_interactive_run_without_config_offers_registration_and_no_runs_nothing(tmp_path):
    make_fake_venv(tmp_path / "venv")
    calls = tmp_path / "calls"
    env = base_env(tmp_path / "home", FAKE_CHUTES_CALLS=str(calls))
    result = run_interactive(["--venv", str(tmp_path / "venv")], env, b"n\n")
    assert result.returncode == 0, result.stderr
    assert "Register a Chutes account now (chutes register)? [y/N]" in result.stdout
    assert not calls.exists()
    assert "Chutes config  not present" in result.stdout


def test_interactive_yes_runs_chutes_register_and_makes_the_new_config_private(tmp_path):
    make_fake_venv(tmp_path / "venv")
    calls = tmp_path / "calls"
    config = tmp_path / "home" / ".chutes" / "config.ini"
    env = base_env(tmp_path / "home", FAKE_CHUTES_CALLS=str(calls), FAKE_CHUTES_WRITES=str(config))
    result = run_interactive(["--venv", str(tmp_path / "venv")], env, b"y\n")
    assert result.returncode == 0, result.stderr
    assert calls.read_text() == "register\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert list(config.parent.glob("*.bak.*")) == []
    assert "Chutes config  present" in result.stdout


@pytest.mark.parametrize("extra", [["--yes"], []], ids=["yes-flag", "ci-env"])
def test_non_interactive_runs_never_offer_registration(tmp_path, extra):
    make_fake_venv(tmp_path / "venv")
    calls = tmp_path / "calls"
    env = base_env(tmp_path / "home", FAKE_CHUTES_CALLS=str(calls))
    if not extra:
        env["CI"] = "true"
    result = run_interactive([*extra, "--venv", str(tmp_path / "venv")], env, b"y\n")
    assert result.returncode == 0, result.stderr
    assert "Register a Chutes account" not in result.stdout
    assert not calls.exists()


def test_existing_config_at_chutes_config_path_suppresses_the_offer(tmp_path):
    make_fake_venv(tmp_path / "venv")
    config = tmp_path / "elsewhere" / "chutes.ini"
    write_fake_config(config)
    calls = tmp_path / "calls"
    env = base_env(tmp_path / "home", FAKE_CHUTES_CALLS=str(calls), CHUTES_CONFIG_PATH=str(config))
    result = run_interactive(["--venv", str(tmp_path / "venv")], env, b"y\n")
    assert result.returncode == 0, result.stderr
    assert "Register a Chutes account" not in result.stdout
    assert f"Chutes config  present ({config})" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert not calls.exists()


def test_register_flag_backs_up_existing_config_before_running_chutes_register(tmp_path):
    make_fake_venv(tmp_path / "venv")
    config = tmp_path / "home" / ".chutes" / "config.ini"
    original = write_fake_config(config)
    calls = tmp_path / "calls"
    env = base_env(tmp_path / "home", FAKE_CHUTES_CALLS=str(calls))
    result = run_setup("--yes", "--register", "--venv", str(tmp_path / "venv"), env=env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text() == "register\n"
    (backup,) = config.parent.glob("config.ini.bak.*")
    assert backup.read_text() == original
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert f"Backed up the existing Chutes config to {backup}" in result.stdout
    assert SECRET not in result.stdout + result.stderr


# --- backup_config -------------------------------------------------------------------------------


def call_backup_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", 'source "$1" && backup_config "$2"', "_", str(SETUP), str(path)],
        env={**os.environ, "SETUP_SH_SOURCE_ONLY": "1"},
        capture_output=True,
        text=True,
    )


def test_backup_config_copies_with_mode_600_and_leaves_original_untouched(tmp_path):
    config = tmp_path / "config.ini"
    original = write_fake_config(config)
    config.chmod(0o644)
    before = config.stat()
    result = call_backup_config(config)
    assert result.returncode == 0, result.stderr
    backup = Path(result.stdout.strip())
    assert backup.parent == tmp_path
    assert backup.name.startswith("config.ini.bak.")
    assert len(backup.name.removeprefix("config.ini.bak.")) == len("YYYYmmdd-HHMMSS")
    assert backup.read_text() == original
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    after = config.stat()
    assert config.read_text() == original
    assert (after.st_mode, after.st_mtime_ns, after.st_ino) == (before.st_mode, before.st_mtime_ns, before.st_ino)
    assert SECRET not in result.stdout + result.stderr


def test_backup_config_never_overwrites_an_earlier_backup(tmp_path):
    config = tmp_path / "config.ini"
    write_fake_config(config)
    first = Path(call_backup_config(config).stdout.strip())
    first.write_text("earlier backup\n")
    second = Path(call_backup_config(config).stdout.strip())
    assert first != second
    assert first.read_text() == "earlier backup\n"
    assert len(list(tmp_path.glob("config.ini.bak.*"))) == 2


def test_backup_config_of_missing_file_fails_with_one_line(tmp_path):
    result = call_backup_config(tmp_path / "missing.ini")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "is not a file" in line
    assert list(tmp_path.iterdir()) == []


# --- the real install (network or pip cache) -----------------------------------------------------


def test_fresh_install_then_second_run_changes_nothing(installed):
    venv, env, first = installed
    assert first.returncode == 0, first.stdout + first.stderr
    imports = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import chutes, aiohttp, requests, loguru"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stderr
    assert (venv / STAMP).is_file()
    for label in ("Python ", "docker ", "podman ", "nvidia-smi ", "Chutes config  present"):
        assert f"  {label}" in first.stdout
    assert f"({venv}/bin/python)" in first.stdout
    assert "bin/activate" in first.stdout and "deploy.sh --run deploy_example" in first.stdout

    before = site_packages_state(venv)
    stamp_before = (venv / STAMP).read_text()
    second = run_setup("--yes", "--venv", str(venv), env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Dependencies up to date (runtime); pip not run" in second.stdout
    assert "Installing dependencies" not in second.stdout
    assert second.stderr == ""
    assert site_packages_state(venv) == before
    assert (venv / STAMP).read_text() == stamp_before
    for result in (first, second):
        assert SECRET not in result.stdout + result.stderr


def test_dev_flag_after_plain_install_adds_test_deps_and_plain_run_stays_satisfied(installed):
    venv, env, first = installed
    assert first.returncode == 0, first.stdout + first.stderr
    dev = run_setup("--yes", "--dev", "--venv", str(venv), env=env)
    assert dev.returncode == 0, dev.stdout + dev.stderr
    assert "Installing dependencies (runtime + dev)" in dev.stdout
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import pytest, pytest_asyncio, hypothesis"])
    assert check.returncode == 0
    again = run_setup("--yes", "--venv", str(venv), env=env)
    assert again.returncode == 0
    assert "pip not run" in again.stdout
    again_dev = run_setup("--yes", "--dev", "--venv", str(venv), env=env)
    assert "Dependencies up to date (runtime + dev); pip not run" in again_dev.stdout
