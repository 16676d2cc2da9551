"""Port options outside 1-65535 (the derived logging port included): one line and exit 2, from
deploy.sh and from each tool run directly, before anything starts."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.shell.test_deploy_sh import DEPLOY, ROOT, VENV_PYTHON, clean_env

pytestmark = pytest.mark.shell

BAD_PORTS = [
    (["--run", "deploy_example", "--port", "99999"], "--port needs a port number (1-65535), got '99999'"),
    (["--run", "deploy_example", "--port", "70000"], "--port needs a port number (1-65535), got '70000'"),
    (["--run", "deploy_example", "--port", "0"], "--port needs a port number (1-65535), got '0'"),
    (["--run", "deploy_example", "--port", "65536"], "--port needs a port number (1-65535), got '65536'"),
    # more digits than Bash's 64-bit arithmetic holds must not wrap around into the range
    (["--run", "deploy_example", "--port", "18446744073709559000"], "--port needs a port number"),
    (["--run", "deploy_example", "--logging-port", "99999"], "--logging-port needs a port number (1-65535), got '99999'"),
    (["--run", "deploy_example", "--port", "65535"], "--port 65535: the chute's logging port would be 65536"),
    (["--smoke", "deploy_example", "--port", "99999"], "--port needs a port number (1-65535), got '99999'"),
    (["--smoke", "deploy_example", "--port", "65535"], "--port 65535: the chute's logging port would be 65536"),
    (["--run-docker", "deploy_example", "--port", "99999"], "--port needs a port number (1-65535), got '99999'"),
    (["--run-docker", "deploy_example", "--port", "65535"], "--port 65535: the chute's logging port would be 65536"),
    # --discover's options go to its tool, which checks them with the same rule
    (["--discover", "deploy_example", "--port", "70000"], "argument --port: 70000 is outside 1-65535"),
]


@pytest.mark.parametrize("args, message", BAD_PORTS, ids=[" ".join(a[0::2][:1] + a[2:]) for a, _ in BAD_PORTS])
def test_deploy_sh_port_outside_the_range_is_one_line_and_exit_2(tmp_path, args, message):
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([str(DEPLOY), *args], env=clean_env(home), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.match(r"(deploy\.sh|discover_routes): error: ", errors[0]), result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    assert not result.stdout  # nothing started


def test_deploy_sh_accepts_the_highest_port_with_its_own_logging_port(tmp_path):
    """65535 is a port; with --logging-port given, nothing is derived. The run then fails for its own
    reason (no venv here), which proves the arguments passed."""
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, CHUTES_WRAPPERS_VENV=str(tmp_path / "no-venv"))
    result = subprocess.run([str(DEPLOY), "--run", "deploy_example", "--port", "65535", "--logging-port", "65534"],
                            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 1 and "no Python environment" in result.stderr, result.stderr


DERIVED = "--logging-port 65536 is outside 1-65535 (the logging port is --port + 1)"
TOOL_CASES = [
    ("commands.run", ["--port", "99999"], "argument --port: 99999 is outside 1-65535"),
    ("commands.run", ["--port", "0"], "argument --port: 0 is outside 1-65535"),
    ("commands.run", ["--port", "x"], "argument --port: 'x' is not a port number (1-65535)"),
    ("commands.run", ["--logging-port", "70000"], "argument --logging-port: 70000 is outside 1-65535"),
    ("commands.run", ["--port", "65535"], DERIVED),
    ("commands.smoke", ["--port", "99999"], "argument --port: 99999 is outside 1-65535"),
    ("commands.smoke", ["--port", "65535"], DERIVED),
    ("commands.run_docker", ["--port", "99999"], "argument --port: 99999 is outside 1-65535"),
    ("commands.run_docker", ["--port", "65535"], DERIVED),
    ("discover_routes", ["--port", "99999"], "argument --port: 99999 is outside 1-65535"),
    ("commands.new", ["--image", "x:1", "--port", "0"], "argument --port: 0 is outside 1-65535"),
]


@pytest.mark.parametrize("tool, args, message", TOOL_CASES)
def test_each_tool_rejects_a_port_outside_the_range_with_exit_2(tool, args, message):
    result = subprocess.run([str(VENV_PYTHON), "-m", f"tools.{tool}", "deploy_example", *args], cwd=ROOT,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in result.stderr
    assert "starting" not in result.stdout


def test_port_argument_is_one_shared_argparse_type():
    import argparse

    from tools.runtime.constants import port_argument

    assert port_argument("1") == 1 and port_argument("65535") == 65535
    for bad in ("0", "65536", "-1", "8000.0", "", "1e3"):
        with pytest.raises(argparse.ArgumentTypeError):
            port_argument(bad)
