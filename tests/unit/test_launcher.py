"""The service launcher: real child processes started, logged, failed fast and stopped."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import free_port
from tools.runtime.errors import ServiceError, WrapperError
from tools.runtime.launcher import ServiceLauncher, read_base_env, service_environment, split_command


def test_entrypoint_string_is_split_like_a_shell():
    assert split_command("python3 -m app --name 'two words'") == ["python3", "-m", "app", "--name", "two words"]
    assert split_command(["python3", "app.py", 8020]) == ["python3", "app.py", "8020"]


@pytest.mark.parametrize("bad", ["", "   ", [], "python 'unclosed"])
def test_bad_entrypoints_are_clear_errors(bad):
    with pytest.raises(WrapperError, match="ENTRYPOINT"):
        split_command(bad)


def test_service_environment_restores_base_path_and_drops_chute_venv(monkeypatch):
    monkeypatch.setenv("PATH", "/opt/chutes-wrappers/venv/bin:/usr/bin")
    monkeypatch.setenv("VIRTUAL_ENV", "/opt/chutes-wrappers/venv")
    monkeypatch.setenv("PYTHONPATH", "/app")
    env = service_environment({"EXTRA": "1"}, base={"PATH": "/opt/conda/bin:/usr/bin"})
    assert env["PATH"] == "/opt/conda/bin:/usr/bin"
    assert "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env
    assert env["EXTRA"] == "1"
    env = service_environment(None, base={})
    assert env["PATH"] == "/usr/bin" and "PYTHONPATH" not in env
    monkeypatch.setenv("PYTHONPATH", "/app:/opt/base/lib")
    assert service_environment(None, base={"PYTHONPATH": "/opt/base/lib"})["PYTHONPATH"] == "/opt/base/lib"
    assert "PYTHONPATH" not in service_environment(None, base={"PYTHONPATH": ""})


def test_base_env_file_is_parsed(tmp_path):
    path = tmp_path / "base.env"
    path.write_text("PATH=/a:/b\nWORKDIR=/srv/app\nbroken line\n")
    assert read_base_env(path) == {"PATH": "/a:/b", "WORKDIR": "/srv/app"}
    assert read_base_env(tmp_path / "missing") == {}


# Long enough that a test ending by this timeout fails on its message, never by chance.
PORT_TIMEOUT_S = 600


async def test_service_that_exits_at_startup_fails_fast_with_its_last_output():
    from tools.chute_wrappers import wait_for_services

    launcher = ServiceLauncher([sys.executable, "-c", "import sys; print('model file missing'); sys.exit(3)"])
    await launcher.start()
    with pytest.raises(ServiceError) as info:
        # The exit ends the wait, not the port timeout (whose error names the port instead).
        await wait_for_services([free_port()], timeout=PORT_TIMEOUT_S, launcher=launcher, interval=0.05)
    assert "status 3" in str(info.value) and "model file missing" in str(info.value)
    assert "not accepting connections" not in str(info.value)
    await launcher.stop()


async def test_service_is_started_waited_for_and_stopped_with_its_children(tmp_path):
    from tools.chute_wrappers import wait_for_services

    port = free_port()
    child_pid_file = tmp_path / "child.pid"
    script = (
        "import http.server, subprocess, sys;"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(child_pid_file)!r}, 'w').write(str(p.pid));"
        f"print('listening', flush=True);"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    launcher = ServiceLauncher([sys.executable, "-c", script], cwd=tmp_path, name="svc")
    await launcher.start()
    await wait_for_services([port], timeout=30, launcher=launcher, interval=0.05)
    child = int(child_pid_file.read_text())
    await launcher.stop(timeout=5)
    assert launcher.returncode is not None
    assert "listening" in launcher.last_lines
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        import time

        time.sleep(0.05)
    return True


async def test_missing_command_is_a_service_error():
    launcher = ServiceLauncher(["/nonexistent/serve"])
    with pytest.raises(ServiceError, match="not found"):
        await launcher.start()


def test_sigterm_is_turned_into_ctrl_c_only_when_nothing_handles_it():
    """As PID 1, `chutes run` ignores SIGTERM: we re-send it as SIGINT so shutdown hooks run."""
    import subprocess
    from pathlib import Path

    script = (
        "import asyncio, os, signal, sys\n"
        "from tools.runtime.launcher import _sigterm_like_sigint\n"
        "if sys.argv[1] == 'own': signal.signal(signal.SIGTERM, lambda *a: print('own handler', flush=True))\n"
        "async def main():\n"
        "    _sigterm_like_sigint()\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    await asyncio.sleep(2)\n"
        "    print('still running', flush=True)\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    root = Path(__file__).resolve().parents[2]
    plain = subprocess.run([sys.executable, "-c", script, "plain"], cwd=root, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "interrupted", plain.stderr
    own = subprocess.run([sys.executable, "-c", script, "own"], cwd=root, capture_output=True, text=True, timeout=60)
    assert own.stdout.split() == ["own", "handler", "still", "running"], own.stderr
