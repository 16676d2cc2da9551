"""Discovery with a real engine (podman per CONTAINERS.md) and a real image holding the demo service:
the manifest's kinds, secrets kept off command lines, every exit path removing the container
(errors, SIGINT, SIGTERM; SIGKILL leftovers by --cleanup), and new modules made from an image."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import requests

from tests.container import engine as engine_mod

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
EXPECTED = json.loads((ROOT / "deploy_example.routes.json").read_text())
ENGINE_CMD = "podman " + " ".join(engine_mod.PODMAN_GLOBAL_FLAGS)
DEMO = "python3 /srv/demo/demo_service.py --host 0.0.0.0"
HOSTILE = "\"; import os; os.system('touch PWNED') #"

_reason = engine_mod.skip_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def podman():
    with engine_mod.podman_engine() as podman:
        yield podman


@pytest.fixture(scope="module")
def base_image(podman) -> str:
    return engine_mod.debian_python_base(podman)


@pytest.fixture
def env(podman) -> dict[str, str]:
    return dict(podman.env, CHUTES_CONTAINER_ENGINE=ENGINE_CMD)


def make_module(directory: Path, image: str, entrypoint, ports=(8020,), env=None, name=None, prelude="") -> Path:
    name = name or f"deploy_c{uuid.uuid4().hex[:8]}"
    path = directory / f"{name}.py"
    path.write_text(prelude + textwrap.dedent(f"""
        CHUTE_NAME = {name!r}
        CHUTE_BASE_IMAGE = {image!r}
        SERVICE_PORTS = {list(ports)!r}
        CHUTE_ENV = {dict(env or {})!r}
        ENTRYPOINT = {entrypoint!r}
    """))
    return path


def discovery(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "tools.discover_routes", "--plain", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def containers_of(podman, module: str) -> list[str]:
    out = podman("ps", "-a", "-q", "--filter", f"label=chutes-wrappers.module={module}").stdout
    return out.split()


def env_dirs_of(pid: int) -> list[Path]:
    return list(Path("/tmp").glob(f"chutes-wrappers-env-{pid}-*"))


def assert_one_line_error(proc, fragment: str) -> None:
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("discover_routes: error: ") and fragment in last, proc.stderr
    assert sum("error:" in line for line in proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr


def assert_kinds(manifest: dict) -> None:
    found = {(r["method"], r["path"]): r for r in manifest["routes"]}
    for entry in EXPECTED["routes"]:
        route = found[(entry["method"], entry["path"])]
        for key in ("request", "response", "stream", "query_params", "path_params"):
            assert route[key] == entry[key], (entry["path"], key)


# --------------------------------------------------------------------------------------------------


def test_demo_image_discovery_writes_the_hand_written_kinds_and_leaves_nothing(podman, base_image, env, tmp_path):
    out = tmp_path / "example.routes.json"
    proc = discovery(env, "--chute-file", "deploy_example", "--image", base_image, "--free-host-ports",
                     "--startup-delay", "60", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(out.read_text())
    assert_kinds(manifest)
    assert {r["port"] for r in manifest["routes"] if r["path"] != "/v1/echo"} == {8020}
    assert containers_of(podman, "deploy_example") == []


def test_env_values_stay_off_command_lines_and_logs_but_reach_the_service(podman, base_image, env, tmp_path):
    secret, passed = "hf_" + uuid.uuid4().hex, "key_" + uuid.uuid4().hex
    module = make_module(tmp_path, base_image, f"{DEMO} --port 8020 --spec-delay 4",
                         env={"HF_TOKEN": secret, "DEMO_GREETING": "greetings from CHUTE_ENV"})
    proc = subprocess.Popen(
        [PYTHON, "-m", "tools.discover_routes", "--plain", "--chute-file", str(module), "--free-host-ports",
         "--docker-env", "API_KEY", "-o", str(tmp_path / "m.json")],
        cwd=ROOT, env=dict(env, API_KEY=passed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    try:
        while not any("spec not ready" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        host_port = re.search(r"127\.0\.0\.1:(\d+)->8020", "".join(lines)).group(1)
        greeting = requests.get(f"http://127.0.0.1:{host_port}/v1/text", timeout=10).text
        assert greeting.strip() == "greetings from CHUTE_ENV"
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes()
            except OSError:
                continue
            assert secret.encode() not in text and passed.encode() not in text, cmdline
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + stderr + stdout
    assert proc.returncode == 0, output
    assert secret not in output and passed not in output
    assert "HF_TOKEN" in output  # names are shown, values never
    assert env_dirs_of(proc.pid) == []
    assert containers_of(podman, module.stem) == []


IMPORTED = "deploy module imported"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", ["early", "starting", "waiting"])
def test_killing_discovery_at_any_moment_leaves_no_container(podman, base_image, env, tmp_path, signum, moment):
    # "early": the module says it has been imported; engine checks and container creation follow.
    prelude = f"import sys\nprint({IMPORTED!r}, file=sys.stderr, flush=True)\n"
    module = make_module(tmp_path, base_image, f"{DEMO} --port 8020 --spec-delay 120", env={"A": "b"}, prelude=prelude)
    proc = subprocess.Popen(
        [PYTHON, "-m", "tools.discover_routes", "--plain", "--chute-file", str(module), "--free-host-ports"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    marker = {"early": IMPORTED, "starting": "starting ", "waiting": "spec not ready"}[moment]
    seen = ""
    while marker not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signum)
    code = proc.wait(60)
    assert code in (128 + signum, -signum, 1, 130), code
    assert containers_of(podman, module.stem) == []
    assert env_dirs_of(proc.pid) == []
    assert not (tmp_path / f"{module.stem}.routes.json").exists()


def test_sigkill_leftovers_are_removed_by_cleanup(podman, base_image, env, tmp_path):
    module = make_module(tmp_path, base_image, f"{DEMO} --port 8020 --spec-delay 120")
    proc = subprocess.Popen(
        [PYTHON, "-m", "tools.discover_routes", "--plain", "--chute-file", str(module), "--free-host-ports"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    seen = ""
    while "spec not ready" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.kill()
    proc.wait(30)
    assert len(containers_of(podman, module.stem)) == 1
    cleanup = subprocess.run([PYTHON, "-m", "tools.discover_routes", "--cleanup"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert cleanup.returncode == 0, cleanup.stderr
    assert f"(module {module.stem})" in cleanup.stderr
    assert containers_of(podman, module.stem) == []


def test_container_that_exits_while_waiting_stops_discovery_with_its_last_log_lines(podman, base_image, env, tmp_path):
    module = make_module(tmp_path, base_image, ["sh", "-c", "echo 'loading weights'; echo 'model file missing' >&2; exit 3"])
    # The exit ends the wait, not the 120 s startup bound (whose error says "after 120s" instead).
    proc = discovery(env, "--chute-file", str(module), "--free-host-ports")
    assert_one_line_error(proc, "exited with status 3")
    assert "after 120s" not in proc.stderr
    assert "model file missing" in proc.stderr and "loading weights" in proc.stderr
    assert containers_of(podman, module.stem) == []


def test_image_not_present_locally_is_an_error(podman, env, tmp_path):
    module = make_module(tmp_path, "localhost/cw-no-such-image:1", None)
    assert_one_line_error(discovery(env, "--chute-file", str(module)), "is not present locally")
    assert containers_of(podman, module.stem) == []


def test_host_port_already_taken_is_an_error(podman, base_image, env, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        module = make_module(tmp_path, base_image, None, ports=(port,))
        proc = discovery(env, "--chute-file", str(module))
    assert_one_line_error(proc, f"host port {port} is already in use")
    assert containers_of(podman, module.stem) == []


def test_engine_that_does_not_answer_is_an_error(tmp_path):
    module = make_module(tmp_path, "x:1", None)
    env = dict(os.environ, CHUTES_CONTAINER_ENGINE="docker", DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    proc = subprocess.run(
        [PYTHON, "-m", "tools.discover_routes", "--chute-file", str(module)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    if "podman" in subprocess.run(["docker", "--version"], capture_output=True, text=True).stdout.lower():
        pytest.skip("`docker` here is a podman shim")
    assert_one_line_error(proc, "does not answer")


def test_no_spec_in_the_container_is_an_error_and_removes_it(podman, base_image, env, tmp_path):
    module = make_module(tmp_path, base_image, f"{DEMO} --port 8020 --no-spec")
    proc = discovery(env, "--chute-file", str(module), "--free-host-ports")
    assert_one_line_error(proc, "no OpenAPI spec on any port")
    assert not (tmp_path / f"{module.stem}.routes.json").exists()
    assert containers_of(podman, module.stem) == []


def test_two_ports_in_one_container_report_the_one_without_spec(podman, base_image, env, tmp_path):
    command = ["sh", "-c", f"{DEMO} --port 8021 --no-spec & exec {DEMO} --port 8020 --spec-delay 1"]
    module = make_module(tmp_path, base_image, command, ports=(8020, 8021))
    proc = discovery(env, "--chute-file", str(module), "--free-host-ports")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / f"{module.stem}.routes.json").read_text())
    assert {r["port"] for r in manifest["routes"]} == {8020}
    assert "port 8021: answers HTTP but serves no OpenAPI document" in proc.stderr
    assert containers_of(podman, module.stem) == []


# --------------------------------------------------------------------------------------------------
# New modules from an image


@pytest.fixture(scope="module")
def hostile_image(podman, base_image, tmp_path_factory):
    context = tmp_path_factory.mktemp("hostile")
    escaped = HOSTILE.replace("\\", "\\\\").replace('"', '\\"')
    (context / "Containerfile").write_text(
        f"FROM {base_image}\n"
        f'ENV EVIL="{escaped}"\n'
        'LABEL org.opencontainers.image.description="demo \\"quoted\\" service"\n'
    )
    tag = f"localhost/cw-test-hostile:{uuid.uuid4().hex[:8]}"
    podman("build", "--pull=never", "-t", tag, str(context), timeout=300)
    yield tag
    podman.remove_image(tag)


def new_module(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "tools.commands.new", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_new_module_from_a_hostile_image_is_safe_and_discovers_routes(podman, hostile_image, env, tmp_path,
                                                                     monkeypatch):
    from tools.containers import Engine, inspect_image

    engine = Engine(tuple(ENGINE_CMD.split()), "podman")
    monkeypatch.setenv("CONTAINERS_CONF", env["CONTAINERS_CONF"])
    assert inspect_image(engine, hostile_image).env["EVIL"] == HOSTILE  # the image really carries it

    proc = new_module(env, "evil-svc", "--image", hostile_image, "--dir", str(tmp_path), "--yes", "--free-host-ports",
                      "--startup-delay", "60")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "deploy_evil_svc.py").is_file()
    assert_kinds(json.loads((tmp_path / "deploy_evil_svc.routes.json").read_text()))
    check = subprocess.run(
        [PYTHON, "-c", "import deploy_evil_svc as m; print(m.CHUTE_ENV['EVIL']); print(m.ENTRYPOINT); print(m.CHUTE_TAGLINE)"],
        cwd=tmp_path, env=dict(env, CHUTES_SKIP_ROUTE_REGISTRATION="1", PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr
    evil, entrypoint, tagline = check.stdout.splitlines()
    assert evil == HOSTILE
    assert "/srv/demo/demo_service.py" in entrypoint
    assert tagline == 'demo "quoted" service'
    assert not (tmp_path / "PWNED").exists() and not (ROOT / "PWNED").exists()

    again = new_module(env, "evil-svc", "--image", hostile_image, "--dir", str(tmp_path), "--no-discover")
    assert again.returncode == 1 and "already exists" in again.stderr.splitlines()[-1]
    assert containers_of(podman, "deploy_evil_svc") == []


def test_new_module_refuses_bad_names_and_missing_images(env, tmp_path):
    bad = new_module(env, "evil'svc", "--image", "x", "--dir", str(tmp_path), "--no-discover")
    assert bad.returncode == 1 and "not a usable chute name" in bad.stderr.splitlines()[-1]
    missing = new_module(env, "svc", "--image", "localhost/cw-no-such-image:1", "--dir", str(tmp_path), "--no-discover")
    assert missing.returncode == 1 and "not present locally" in missing.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
