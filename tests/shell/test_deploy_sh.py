"""deploy.sh as a user runs it: every flag and error path, the account missing, local builds and
run-docker with a stand-in engine, and the menu in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.terminal import Terminal, tmux_available

pytestmark = pytest.mark.shell

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy.sh"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUTES_", "CHUTE_", "PYTEST_"))}
    env.update(HOME=str(home), NO_COLOR="1")
    env.update(extra)
    return env


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def example_copy(path: Path, manifest: bool = False) -> Path:
    """deploy_example.py under another name; without its manifest its overrides name no route, so they go."""
    text = (ROOT / "deploy_example.py").read_text()
    if manifest:
        shutil.copy(ROOT / "deploy_example.routes.json", path.with_suffix(".routes.json"))
    else:
        text = re.sub(r"CHUTE_ROUTE_OVERRIDES = \{.*?\n\}\n", "CHUTE_ROUTE_OVERRIDES = {}\n", text, flags=re.S)
    path.write_text(text)
    return path


def run(*args: str, env: dict[str, str], cwd: Path | None = None, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEPLOY), *args], env=env, cwd=cwd, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def table_rows() -> list[tuple[str, str, str, str, str]]:
    """ACTIONS as deploy.sh declares it (read from the script, the one source)."""
    text = DEPLOY.read_text()
    block = text[text.index("ACTIONS=(") : text.index("\n)\n", text.index("ACTIONS=("))]
    return [tuple(m.group(1).split("|")) for m in re.finditer(r'^\s+"([^"]*)"$', block, re.M)]


ROWS = table_rows()
MENU = [row for row in ROWS if row[0]]  # the menu's numbered entries, in order
CHOOSE = f"Choose 1-{len(MENU)}, or q:"


def menu_number(flag: str) -> str:
    """The menu's number of an action (the table's order)."""
    return str([row[1] for row in MENU].index(flag) + 1)
VALUE_ACTIONS = [row[1] for row in ROWS if row[2] and not row[2].startswith("[")]


# --- static ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["deploy.sh", "setup.sh", "tools/runtime/image_setup.sh"])
def test_scripts_are_shellcheck_clean(script):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "--severity=style", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_deploy_sh_has_no_eval_and_one_function_per_action():
    text = DEPLOY.read_text()
    assert not re.search(r"^\s*eval\b|\beval ", text, re.M)
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    for _, flag, *_ in ROWS:
        assert re.search(rf"^cmd_{flag[2:].replace('-', '_')}\(\)", text, re.M), f"no cmd_ function for {flag}"


# --- help and the table ---------------------------------------------------------------------------------


def test_help_lists_every_action_and_the_readme_examples(home):
    result = run("--help", env=clean_env(home))
    assert result.returncode == 0 and not result.stderr
    for group, flag, args, label, summary in ROWS:
        if group:
            assert f"{flag} {args}".strip() in result.stdout
            assert summary in result.stdout
    for flag in ("--yes", "--debug", "--local", "--accept-fee", "--public", "--port N", "--gpus X", "--timeout N"):
        assert flag in result.stdout


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["--build", "deploy_example", "--help"]])
def test_help_anywhere_exits_0(home, args):
    result = run(*args, env=clean_env(home))
    assert result.returncode == 0 and result.stdout.startswith("Usage: ./deploy.sh")


def test_menu_entries_are_the_help_entries_in_order(home):
    result = run(env=clean_env(home), input="q\n")
    assert result.returncode == 0
    numbered = re.findall(r"(\d+)\) (.+?)(?:\s{2,}|$)", result.stdout, re.M)
    labels = {int(n): label.strip() for n, label in numbered}
    expected = [row[3] for row in ROWS if row[0]]
    assert [labels[i + 1] for i in range(len(expected))] == expected
    for group in dict.fromkeys(row[0] for row in ROWS if row[0]):
        assert group in result.stdout
    assert "q) Quit" in result.stdout


# --- argument errors: exit 2 with usage ------------------------------------------------------------------


@pytest.mark.parametrize("flag", VALUE_ACTIONS)
def test_action_without_its_value_is_exit_2(home, flag):
    result = run(flag, env=clean_env(home))
    assert result.returncode == 2
    assert f"deploy.sh: error: {flag} needs a value" in result.stderr
    assert "Usage: ./deploy.sh" in result.stderr and f"./deploy.sh {flag} " in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--status", "a", "--frobnicate"], "unknown option '--frobnicate'"),
        (["--list-chutes", "--list-images"], "one action at a time (--list-chutes and --list-images)"),
        (["--build", "deploy_example", "--deploy", "deploy_example"], "one action at a time (--build and --deploy)"),
        (["--run", "deploy_example", "--port"], "--port needs a value"),
        (["--run", "deploy_example", "--port", "x"], "--port needs a number, got 'x'"),
        (["--run-docker", "deploy_example", "--gpus"], "--gpus needs a value"),
        (["--run-docker", "deploy_example", "--timeout", "--yes"], "--timeout needs a value"),
        (["--logs", "x", "--backfill", "many"], "--backfill needs a number, got 'many'"),
        (["--logs", "x", "--instance"], "--instance needs a value"),
        (["--list-chutes", "--local"], "--local does not apply to --list-chutes"),
        (["--deploy", "deploy_example", "--local"], "--local does not apply to --deploy"),
        (["--build", "deploy_example", "--accept-fee"], "--accept-fee does not apply to --build"),
        (["--status", "a", "--port", "1"], "--port does not apply to --status"),
        (["--status", "a", "b"], "unexpected argument 'b' for --status"),
        (["--keep-warm", "300"], "--keep-warm needs SECONDS and then one CHUTE"),
        (["--keep-warm", "soon", "x"], "--keep-warm needs a number of seconds first, got 'soon'"),
        (["--keep-warm", "0", "x"], "--keep-warm needs a number of seconds first, got '0'"),
        (["--local"], "no action given"),
        (["stray"], "no action given"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_and_usage(home, args, message):
    result = run(*args, env=clean_env(home))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[0].startswith(f"deploy.sh: error: {message}")
    assert "Run ./deploy.sh --help" in result.stderr
    assert not result.stdout


def test_options_after_discover_and_new_go_to_their_tool(home):
    result = run("--discover", "deploy_example", "--no-such-discovery-option", env=clean_env(home))
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-discovery-option" in result.stderr
    result = run("--new", "myservice", "--image", "x:1", "--no-such-option", env=clean_env(home))
    assert result.returncode == 2
    assert "--no-such-option" in result.stderr


def test_missing_venv_is_one_line(home):
    result = run("--list-chutes", env=clean_env(home, CHUTES_WRAPPERS_VENV=str(home / "nowhere")))
    assert result.returncode == 1
    assert result.stderr.strip() == f"deploy.sh: error: no Python environment at {home}/nowhere (run ./setup.sh first)"


def test_relative_venv_is_taken_from_the_callers_directory_as_setup_sh_does(home, tmp_path):
    """setup.sh resolves a relative CHUTES_WRAPPERS_VENV against the caller's directory
    (tests/shell/test_setup_sh.py); deploy.sh must find the same venv, although it runs from ROOT."""
    caller = tmp_path / "caller"
    python = caller / "myvenv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    calls = tmp_path / "calls"
    python.write_text(f'#!/bin/sh\necho "$PWD" >> "{calls}"\nexec "{VENV_PYTHON}" "$@"\n')
    python.chmod(0o755)
    result = run("--validate", "deploy_example", env=clean_env(home, CHUTES_WRAPPERS_VENV="myvenv/"), cwd=caller)
    assert result.returncode == 0, result.stderr
    assert set(calls.read_text().splitlines()) == {str(ROOT)}  # our venv's python ran (from ROOT)
    missing = run("--list-chutes", env=clean_env(home, CHUTES_WRAPPERS_VENV="nowhere"), cwd=caller)
    assert missing.stderr.strip() == f"deploy.sh: error: no Python environment at {caller}/nowhere (run ./setup.sh first)"


# --- without an account: every README command says how to get one ---------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--account"],
        ["--list-images"],
        ["--list-chutes"],
        ["--status", "myservice"],
        ["--deploy", "deploy_example", "--accept-fee", "--yes"],
        ["--deploy", "deploy_example", "--public", "--accept-fee", "--yes"],
        ["--build", "deploy_example", "--yes"],
        ["--build", "deploy_example", "--debug", "--yes"],
        ["--delete", "myservice", "--yes"],
        ["--delete-image", "myservice", "--yes"],
        ["--logs", "myservice"],
        ["--warmup", "myservice"],
        ["--keep-warm", "60", "myservice"],
    ],
)
def test_cloud_commands_without_an_account_say_how_to_get_one(home, args):
    result = run(*args, env=clean_env(home), timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no Chutes account configured" in result.stderr or "no Chutes credentials" in result.stderr
    assert "./setup.sh --register" in result.stderr and "./setup.sh --link-hotkey" in result.stderr
    if "--debug" not in args:  # tracebacks only with --debug
        assert "Traceback" not in result.stdout + result.stderr


def test_a_config_without_a_hotkey_is_named(home):
    config = home / "cfg.ini"
    config.write_text("[auth]\nusername = someone\n")
    result = run("--list-chutes", env=clean_env(home, CHUTES_CONFIG_PATH=str(config)))
    assert result.returncode == 1
    assert f"{config} has no hotkey" in result.stderr


# --- validate ---------------------------------------------------------------------------------------------


def test_validate_prints_the_cords_without_starting_anything(home, tmp_path):
    result = run("--validate", "deploy_example", env=clean_env(home), cwd=tmp_path)  # from any directory
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "image:     demo-service:v0.1.0 (wraps chutes-wrappers-demo:latest)" in out
    assert f"manifest:  {ROOT}/deploy_example.routes.json" in out
    assert "POST   /tts_to_audio" in out and "curl -sS" in out
    assert "ok: deploy_example is valid (12 cord(s)); nothing was started" in out


def test_validate_warns_about_response_headers_no_caller_gets_on_chutes(home, tmp_path):
    """Discovery records the headers a spec declares (manifest `response.headers`); on Chutes only an
    answer's media type reaches callers, so --validate says which routes lose which headers."""
    example_copy(tmp_path / "deploy_headers.py")
    (tmp_path / "deploy_headers.routes.json").write_text(json.dumps({"version": 3, "routes": [
        {"path": "/report", "method": "GET", "port": 8020, "request": {"kind": "none"},
         "response": {"kind": "binary", "content_type": "application/pdf",
                      "headers": ["Content-Disposition", "X-Request-Id"]}},
        {"path": "/plain", "method": "GET", "port": 8020, "request": {"kind": "none"}},
    ]}))
    result = run("--validate", "deploy_headers", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stdout
    assert "GET /report answers with header(s) Content-Disposition, X-Request-Id" in warnings[0]
    assert "on Chutes callers get only the media type" in warnings[0]
    assert "(on Chutes without its header(s) Content-Disposition, X-Request-Id" in result.stdout


def test_validate_warns_about_routes_that_act_on_the_service_itself(home, tmp_path):
    """An admin route (SGLang's /flush_cache, an unload) is callable by every caller of a deployed
    chute, and one that stops the service fails the calls after it: --validate names each."""
    example_copy(tmp_path / "deploy_admin.py")
    (tmp_path / "deploy_admin.routes.json").write_text(json.dumps({"version": 3, "routes": [
        {"path": "/flush_cache", "method": "GET", "port": 8020, "request": {"kind": "none"}},
        {"path": "/v2/repository/models/{model_name}/unload", "method": "POST", "port": 8020,
         "request": {"kind": "json"}, "path_params": ["model_name"]},
        {"path": "/starter", "method": "GET", "port": 8020, "request": {"kind": "none"}},
    ]}))
    result = run("--validate", "deploy_admin", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert [w.split()[1:3] for w in warnings] == [["GET", "/flush_cache"],
                                                 ["POST", "/v2/repository/models/{model_name}/unload"]], result.stdout
    assert all("acts on the service itself" in w and "remove it from deploy_admin.routes.json" in w for w in warnings)


@pytest.mark.parametrize(
    "source, message",
    [
        ("import nonexistent_xyz\n", "cannot import deploy_bad.py: ModuleNotFoundError"),
        ("from chutes.chute import Chute\nchute = Chute(username='u', name='bad', image='x')\n",
         "CHUTE_NAME must be a non-empty string"),
        ("CHUTE_NAME='bad'\nCHUTE_TAG='1'\nCHUTE_BASE_IMAGE='x'\nSERVICE_PORTS=[0]\n", "SERVICE_PORTS entry 0 is not a port number 1-65535"),
        ("from tools.chute_wrappers import load_route_manifest\n"
         "load_route_manifest(static_routes=[{'path': '/a', 'port': 'x'}])\n", "CHUTE_STATIC_ROUTES: route 0: key 'port'"),
    ],
)
def test_validate_reports_a_bad_module_in_one_message(home, tmp_path, source, message):
    (tmp_path / "deploy_bad.py").write_text(source)
    result = run("--validate", "deploy_bad.py", env=clean_env(home), cwd=tmp_path)  # a relative path
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, message", [
    ("deploy_" + "a" * 300, "(307 characters) cannot name a file here: File name too long"),
    ("deploy-bad", "'deploy-bad' is not a deploy module name"),
])
def test_a_module_name_no_file_can_have_is_a_usage_error_in_one_line(home, tmp_path, name, message):
    """ENAMETOOLONG was a traceback: a name too long for the file system is a bad argument (exit 2)."""
    result = run("--validate", name, env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_module_path_is_taken_from_the_callers_directory(home, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    example_copy(work / "deploy_copy.py")
    result = run("--validate", "work/deploy_copy.py", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"module:    {work}/deploy_copy.py" in result.stdout
    assert "deploy_copy.routes.json not found" in result.stdout
    example_copy(work / "deploy_other.py", manifest=True)
    result = run("--validate", "deploy_other", env=clean_env(home), cwd=work)  # a bare name found here
    assert result.returncode == 0, result.stderr
    assert f"manifest:  {work}/deploy_other.routes.json" in result.stdout



def test_openapi_writes_the_document_beside_the_module_or_where_output_says(home, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    module = example_copy(work / "deploy_copy.py", manifest=True)
    result = run("--openapi", "work/deploy_copy.py", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = work / "deploy_copy.openapi.json"
    assert result.stdout.startswith(f"wrote {written}: OpenAPI 3.1.0, 12 operation(s)")
    document = json.loads(written.read_text())
    assert document["openapi"] == "3.1.0" and "/proxy" in document["paths"]
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    result = run("--openapi", str(module), "--output", "api.json", env=clean_env(home), cwd=tmp_path)  # relative
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "api.json").read_text()) == document
    printed = run("--openapi", str(module), "--output", "-", env=clean_env(home), cwd=tmp_path)
    assert json.loads(printed.stdout) == document


def test_openapi_that_cannot_write_is_one_line_and_leaves_nothing(home, tmp_path):
    result = run("--openapi", "deploy_example", "--output", "nowhere/api.json", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"deploy.sh --openapi: error: cannot write {tmp_path}/nowhere/api.json: No such file or directory"
    assert list(tmp_path.iterdir()) == [home]
    (tmp_path / "taken").mkdir()
    result = run("--openapi", "deploy_example", "--output", "taken", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 1 and "is a folder" in result.stderr and list((tmp_path / "taken").iterdir()) == []
    result = run("--validate", "deploy_example", "--output", "x.json", env=clean_env(home), cwd=tmp_path)
    assert result.returncode == 2 and "--output does not apply to --validate" in result.stderr


# --- local build and run-docker with a stand-in engine ------------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
# A docker stand-in: records its calls; FAKE_DOCKER_FAIL=build|inspecto|inspect makes that step fail.
log="$FAKE_DOCKER_LOG"
printf '%s\\n' "$*" >> "$log"
case "$1" in
  --version) echo "Docker version 99.0.0, fake"; exit 0 ;;
  version) echo "99.0.0"; exit 0 ;;
  info) echo '{}'; exit 0 ;;
  build)
    printf 'manifest=%s\\n' "$CHUTES_ROUTE_MANIFEST" >> "$log"
    while [ $# -gt 0 ]; do [ "$1" = -f ] && cp "$2" "$log.dockerfile"; shift; done
    [ "$FAKE_DOCKER_FAIL" = build ] && { echo "Step 3/9: RUN pip install: network unreachable" >&2; exit 1; }
    echo "Successfully built 0123456789ab"; exit 0 ;;
  image)
    [ "$FAKE_DOCKER_FAIL" = inspect ] && { echo "Error: No such image" >&2; exit 1; }
    echo '[{"Config": {}}]'; exit 0 ;;
  run)
    case "$*" in
      *--generate-inspecto-hash*)
        [ "$FAKE_DOCKER_FAIL" = inspecto ] && { echo "Segmentation fault (core dumped)" >&2; exit 139; }
        echo "a1b2c3d4e5f6"; exit 0 ;;
    esac
    exit 0 ;;
esac
exit 0
"""


@pytest.fixture
def fake_docker(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    log.touch()
    return bin_dir, log


def docker_env(home, fake_docker, **extra):
    bin_dir, log = fake_docker
    return clean_env(home, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_DOCKER_LOG=str(log), **extra)


def test_local_build_yes_needs_no_keyboard_passes_the_manifest_and_checks_the_runtime(home, fake_docker):
    result = run("--build", "deploy_example", "--local", "--yes", env=docker_env(home, fake_docker), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    log = fake_docker[1].read_text()
    assert f"manifest={ROOT}/deploy_example.routes.json" in log
    assert re.search(r"^build --platform=linux/amd64 -t demo-service:v0\.1\.0 \. -f ", log, re.M)
    assert "run --rm --pull=never --entrypoint chutes demo-service:v0.1.0 run does_not_exist:chute " \
           "--generate-inspecto-hash" in log
    dockerfile = Path(str(fake_docker[1]) + ".dockerfile").read_text()
    assert "ADD deploy_example.py /app/deploy_example.py" in dockerfile
    assert f"route manifest: {ROOT}/deploy_example.routes.json" in result.stdout
    assert "ok: demo-service:v0.1.0 starts the chute runtime" in result.stdout


def test_local_build_failure_is_exit_1(home, fake_docker):
    env = docker_env(home, fake_docker, FAKE_DOCKER_FAIL="build")
    result = run("--build", "deploy_example", "--local", "--yes", env=env, timeout=240)
    assert result.returncode == 1
    assert "deploy.sh --build: error: the local build failed" in result.stderr
    assert "generate-inspecto-hash" not in fake_docker[1].read_text()


def test_image_that_cannot_start_the_runtime_is_exit_1(home, fake_docker):
    env = docker_env(home, fake_docker, FAKE_DOCKER_FAIL="inspecto")
    result = run("--build", "deploy_example", "--local", "--yes", env=env, timeout=240)
    assert result.returncode == 1
    assert "the chute runtime crashes in demo-service:v0.1.0 (segfault in chutes-inspecto.so)" in result.stderr


def test_local_build_without_a_manifest_says_so_when_unattended(home, fake_docker, tmp_path):
    module = example_copy(tmp_path / "deploy_nomanifest.py")
    result = run("--build", str(module), "--local", "--yes", env=docker_env(home, fake_docker), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No route manifest (deploy_nomanifest.routes.json): building with CHUTE_STATIC_ROUTES only." in result.stdout
    assert "manifest=\n" in fake_docker[1].read_text()


def test_local_build_with_no_engine_is_one_line(home, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("bash", "dirname", "basename", "cat", "env"):
        os.symlink(shutil.which(tool), bare / tool)
    result = run("--build", "deploy_example", "--local", "--yes", env=clean_env(home, PATH=str(bare)))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "deploy.sh --build: error: no container engine found (install docker or podman")


def test_run_docker_with_a_missing_image_says_to_build_it(home, fake_docker):
    env = docker_env(home, fake_docker, FAKE_DOCKER_FAIL="inspect")
    result = run("--run-docker", "deploy_example", env=env)
    assert result.returncode == 1
    assert ("image 'demo-service:v0.1.0' is not present in docker (build it first: "
            "./deploy.sh --build deploy_example --local)") in result.stderr


def test_run_docker_with_an_engine_that_is_not_installed(home):
    result = run("--run-docker", "deploy_example", env=clean_env(home, CHUTES_CONTAINER_ENGINE="no-such-engine --x"))
    assert result.returncode == 1
    assert "CHUTES_CONTAINER_ENGINE names 'no-such-engine', which is not installed" in result.stderr


def test_run_docker_port_taken_is_one_line(home, fake_docker):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        result = run("--run-docker", "deploy_example", "--port", str(port), env=docker_env(home, fake_docker))
    assert result.returncode == 1
    assert f"port {port} (chute port (--port)) is already in use on 127.0.0.1" in result.stderr


@pytest.mark.container
def test_run_docker_with_real_podman_and_a_missing_image(home):
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    engine = "podman --cgroup-manager=cgroupfs --runtime runc"
    result = run("--run-docker", "deploy_example", "--image", "localhost/cw-no-such-image:never",
                 env=clean_env(home, CHUTES_CONTAINER_ENGINE=engine))
    assert result.returncode == 1
    assert "image 'localhost/cw-no-such-image:never' is not present in podman" in result.stderr


def test_cleanup_reports_for_both_kinds_of_container(home, fake_docker):
    result = run("--cleanup", env=docker_env(home, fake_docker))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no run-docker containers left over" in result.stdout
    assert "label=chutes-wrappers=discovery" in fake_docker[1].read_text()


# --- the menu, in a real terminal ---------------------------------------------------------------------------


@pytest.fixture
def terminal():
    if not tmux_available():
        pytest.skip("tmux is not installed (apt-get install tmux)")
    opened: list[Terminal] = []

    def open_terminal(command, env, cwd) -> Terminal:
        term = Terminal(f"cwshell{os.getpid()}x{len(opened)}", command, env, cwd)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def test_menu_validate_picks_a_module_goes_back_and_quits(home, tmp_path, terminal):
    term = terminal([str(DEPLOY)], clean_env(home, TERM="xterm"), tmp_path)  # not the script's directory
    term.wait_for(CHOOSE)
    term.type(menu_number("--validate"))
    screen = term.wait_for("Module to validate (number or name; b back, q quit):")
    number = re.search(r"(\d+)\) deploy_example", screen).group(1)
    term.type(number)
    term.wait_for("ok: deploy_example is valid")
    term.wait_for(CHOOSE, count=2)
    term.type(menu_number("--validate"))
    term.wait_for("Module to validate", count=2)
    term.type("b")  # back: no error, the menu again
    screen = term.wait_for(CHOOSE, count=3)
    assert "failed" not in screen
    term.type("q")
    deadline = __import__("time").monotonic() + 10
    while not term.dead():
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.1)


def test_menu_action_that_fails_returns_to_the_menu(home, tmp_path, terminal):
    term = terminal([str(DEPLOY)], clean_env(home, TERM="xterm"), tmp_path)
    term.wait_for(CHOOSE)
    term.type(menu_number("--validate"))
    term.wait_for("Module to validate")
    term.type("deploy_nope")  # a typed name that does not exist
    term.wait_for("no deploy module deploy_nope.py")
    screen = term.wait_for("--validate failed (exit 1); back to the menu")
    term.wait_for(CHOOSE, count=2)
    term.type(menu_number("--list-chutes"))  # no account here
    term.wait_for("no Chutes account configured")
    term.wait_for("--list-chutes failed (exit 1); back to the menu")
    term.wait_for(CHOOSE, count=3)
    term.type("42")
    term.wait_for("no menu entry '42'")
    term.type("q")
    assert "Traceback" not in term.screen()


def test_menu_build_offers_discovery_when_there_is_no_manifest(home, tmp_path, terminal, fake_docker):
    module = example_copy(tmp_path / "deploy_fresh.py")
    term = terminal([str(DEPLOY), "--build", str(module), "--local"], docker_env(home, fake_docker, TERM="xterm"),
                    tmp_path)
    term.wait_for("No route manifest (deploy_fresh.routes.json). Discover the routes first? [Y/n]")
    term.type("n")
    term.wait_for("ok: demo-service:v0.1.0 starts the chute runtime", timeout=120)


def test_menu_quits_on_end_of_input(home):
    result = run(env=clean_env(home), input="")
    assert result.returncode == 0
    assert CHOOSE in result.stdout


def test_menu_run_dev_mode_and_ctrl_c_returns_to_the_menu(home, tmp_path, terminal):
    import socket

    from tests.conftest import free_port, port_open

    if port_open(8000) or port_open(8001):
        pytest.skip("the menu runs the chute on the default port 8000, which is taken here")
    service_port = free_port()
    term = terminal([str(DEPLOY)], clean_env(home, TERM="xterm", CHUTE_PORTS=str(service_port)), tmp_path)
    term.wait_for(CHOOSE)
    term.type(menu_number("--run"))
    screen = term.wait_for("Module to run in dev mode")
    term.type(re.search(r"(\d+)\) deploy_example", screen).group(1))
    term.wait_for("ready: streaming logs", timeout=120)
    assert port_open(8000) and port_open(service_port)
    term.send("C-c")
    term.wait_for("--run: interrupted; back to the menu", timeout=60)
    term.wait_for(CHOOSE, count=2)
    assert not port_open(8000) and not port_open(service_port)
    term.type("q")
