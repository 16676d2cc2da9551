"""Pure parts of discovery around the converter: module settings, engine command lines, env files,
readiness decisions, the live display, and rendering a new module from an image's values."""

from __future__ import annotations

import ast
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tools import containers
from tools.containers import Engine, EngineError, RunSpec, check_extra_args, gpu_args, run_argv, write_env_file
from tools.discover_routes import (
    Answer,
    Bounds,
    Display,
    PortWatch,
    is_probe_noise,
    parse_docker_env,
    read_module,
    resolve_ports,
    url_for_port,
    Config,
)
from tools.runtime.errors import WrapperError
from tools.commands.new import ModuleValues, check_name, render, values_from_image, TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "\"; import os; os.system('touch PWNED') #"


def write_module(tmp_path: Path, body: str, name: str = "deploy_t") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return path


# --------------------------------------------------------------------------------------------------
# Module settings


def test_module_settings_are_read_with_registration_skipped(tmp_path):
    path = write_module(tmp_path, (
        "import os\n"
        "SEEN = os.environ.get('CHUTES_SKIP_ROUTE_REGISTRATION')\n"
        "CHUTE_BASE_IMAGE = 'img:1'\nSERVICE_PORTS = [8020, '8080']\n"
        "CHUTE_ENV = {'A': 'x', 'N': 3}\n"
        "ENTRYPOINT = \"python3 -m app --name 'two words'\"\n"
        "CHUTE_STATIC_ROUTES = [{'path': '/inference', 'method': 'POST', 'port': 8080}]\n"
    ))
    settings = read_module(str(path))
    assert settings.base_image == "img:1"
    assert settings.ports == [8020, 8080]
    assert settings.env == {"A": "x", "N": "3"}
    assert settings.entrypoint == ["python3", "-m", "app", "--name", "two words"]
    assert [r.path for r in settings.static_routes] == ["/inference"]
    assert settings.manifest_path == tmp_path / "deploy_t.routes.json"
    assert "CHUTES_SKIP_ROUTE_REGISTRATION" not in os.environ


def test_a_module_failing_after_its_settings_still_gives_them(tmp_path):
    path = write_module(tmp_path, "CHUTE_BASE_IMAGE = 'i'\nSERVICE_PORTS = [1]\nraise RuntimeError('overrides name unknown routes')\n")
    settings = read_module(str(path))
    assert settings.ports == [1]
    assert "RuntimeError: overrides name unknown routes" in settings.import_problem


@pytest.mark.parametrize(
    "body, message",
    [
        ("SERVICE_PORTS = [8020]\n", "has no CHUTE_BASE_IMAGE"),
        ("CHUTE_BASE_IMAGE = 'i'\n", "has no SERVICE_PORTS"),
        ("CHUTE_BASE_IMAGE = 'i'\nSERVICE_PORTS = [70000]\n", "not a port number"),
        ("CHUTE_BASE_IMAGE = 'i'\nSERVICE_PORTS = [1]\nENTRYPOINT = {'a': 1}\n", "ENTRYPOINT must be"),
        ("CHUTE_BASE_IMAGE = 'i'\nSERVICE_PORTS = [1]\nCHUTE_ENV = {'A': None}\n", "CHUTE_ENV['A']"),
        ("import missing_dependency_xyz\nCHUTE_BASE_IMAGE = 'i'\n", "failed before defining CHUTE_BASE_IMAGE: ModuleNotFoundError"),
        ("CHUTE_BASE_IMAGE = 'i'\nSERVICE_PORTS = [1\n", "line 2"),
        ("CHUTE_BASE_IMAGE = 'i'\nSERVICE_PORTS = [1]\nCHUTE_STATIC_ROUTES = [{'method': 'GET'}]\n", "route 0"),
    ],
)
def test_bad_modules_are_one_line_errors(tmp_path, body, message):
    with pytest.raises(WrapperError) as info:
        read_module(str(write_module(tmp_path, body)))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_module_is_an_error(tmp_path):
    with pytest.raises(WrapperError, match="no deploy module"):
        read_module(str(tmp_path / "deploy_nothing"))


def test_deploy_example_settings_are_readable():
    settings = read_module("deploy_example")
    assert settings.base_image and settings.ports
    assert settings.entrypoint[0] == "python3"


def test_ports_default_to_the_url_port_then_the_module():
    assert resolve_ports(Config(base_url="http://127.0.0.1:8123"), None) == [8123]
    assert resolve_ports(Config(base_url="http://127.0.0.1:8123", ports=[9, 9, 10]), None) == [9, 10]
    assert resolve_ports(Config(base_url="https://h"), None) == [443]
    assert url_for_port("http://127.0.0.1:1/x/", 55) == "http://127.0.0.1:55/x"
    with pytest.raises(WrapperError):
        url_for_port("ftp://h", 1)


def test_docker_env_takes_bare_names_from_the_environment():
    assert parse_docker_env(["A=1=2", "B"], {"B": "secret"}) == {"A": "1=2", "B": "secret"}
    with pytest.raises(WrapperError, match="not set"):
        parse_docker_env(["C"], {})
    with pytest.raises(WrapperError, match="not a valid variable name"):
        parse_docker_env(["1X=2"], {})


# --------------------------------------------------------------------------------------------------
# Engine command lines


PODMAN = Engine(("podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"), "podman")
DOCKER = Engine(("docker",), "docker")


def test_run_command_publishes_on_loopback_labels_and_keeps_env_values_off_the_command_line(tmp_path):
    spec = RunSpec(
        image="img:1", name="chutes-discovery-x-1", labels={"chutes-wrappers": "discovery"},
        ports={8020: 41000}, env={"HF_TOKEN": "hunter2"}, entrypoint=["python3", "/srv/app.py", "--port", "8020"],
    )
    argv = run_argv(PODMAN, spec, tmp_path / "env")
    assert argv[:4] == ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
    assert "--pull=never" in argv and "-d" in argv
    assert argv[argv.index("-p") + 1] == "127.0.0.1:41000:8020"
    assert argv[argv.index("--label") + 1] == "chutes-wrappers=discovery"
    assert argv[argv.index("--entrypoint") + 1] == "python3"
    assert argv[argv.index("img:1"):] == ["img:1", "/srv/app.py", "--port", "8020"]
    assert not any("hunter2" in arg for arg in argv)
    assert argv[argv.index("--env-file") + 1] == str(tmp_path / "env")


def test_without_entrypoint_the_image_decides():
    argv = run_argv(DOCKER, RunSpec(image="img", name="n"), None)
    assert "--entrypoint" not in argv and argv[-1] == "img"


def test_gpu_flags_only_when_asked_and_in_each_engines_dialect():
    assert gpu_args(DOCKER, "none") == []
    assert gpu_args(DOCKER, "all") == ["--gpus", "all"]
    assert gpu_args(DOCKER, "device=0,1") == ["--gpus", "device=0,1"]
    assert gpu_args(PODMAN, "all") == ["--device", "nvidia.com/gpu=all"]
    assert gpu_args(PODMAN, "0,1") == ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    assert gpu_args(PODMAN, "2") == ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    with pytest.raises(EngineError):
        gpu_args(PODMAN, "lots")


@pytest.mark.parametrize("extra", [["-p", "8000:8000"], ["--publish=0.0.0.0:1:1"], ["-P"], ["-p9000:9000"]])
def test_extra_args_cannot_publish_beyond_loopback(extra):
    with pytest.raises(WrapperError, match="127.0.0.1"):
        check_extra_args(extra)


def test_extra_args_may_publish_on_loopback():
    check_extra_args(["-p", "127.0.0.1:9000:9000", "--shm-size", "2g"])


def test_env_file_is_private_and_removed(tmp_path):
    path = write_env_file({"A": "1", "TOKEN": "x y'\"$HOME"})
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == "A=1\nTOKEN=x y'\"$HOME\n"
    finally:
        containers.remove_env_file(path)
    assert not path.parent.exists()
    with pytest.raises(WrapperError, match="several lines"):
        write_env_file({"A": "1\n2"})


def test_secret_looking_values_are_redacted_from_echoed_logs():
    values = containers.secret_values({"HF_TOKEN": "abcd1234", "MODEL": "large", "API_KEY": "zz"})
    assert values == ["abcd1234"]


# The engine's absence and a daemon that does not answer are found with the real binaries.


def _path_with(tmp_path: Path, *tools: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if not real:
            pytest.skip(f"{tool} is not installed")
        (bin_dir / tool).symlink_to(real)
    return str(bin_dir)


def test_no_engine_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path))
    with pytest.raises(EngineError, match="no container engine found"):
        containers.detect_engine({})


def test_docker_without_daemon_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, "docker"))
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    monkeypatch.setenv("DOCKER_HOST", env["DOCKER_HOST"])
    with pytest.raises(EngineError, match="daemon does not answer"):
        containers.detect_engine({})


def test_engine_env_naming_a_missing_command_is_an_error():
    with pytest.raises(EngineError, match="not installed"):
        containers.detect_engine({"CHUTES_CONTAINER_ENGINE": "no-such-engine --flag"})


# --------------------------------------------------------------------------------------------------
# Readiness decisions


BOUNDS = Bounds(startup_delay=10, probe_timeout=20, no_spec_grace=2)
PATHS = ["/openapi.json", "/docs.json"]


def watch_with(*answers: Answer, at: float = 0.0) -> PortWatch:
    watch = PortWatch(8020, "http://127.0.0.1:8020", PATHS, started=0.0)
    for path, answer in zip(PATHS, answers):
        watch.answers[path] = answer
    return watch


def test_a_spec_decides_the_port_at_once():
    watch = watch_with(Answer("loading", "HTTP 503"), Answer("spec", "HTTP 200", {"paths": {}}))
    assert watch.evaluate(0.1, BOUNDS).kind == "spec"


def test_all_404_is_no_spec_only_after_the_grace_period():
    watch = watch_with(Answer("absent", "HTTP 404"), Answer("absent", "HTTP 404"))
    assert watch.evaluate(1.0, BOUNDS) is None
    assert watch.evaluate(2.5, BOUNDS) is None
    assert watch.evaluate(3.1, BOUNDS).kind == "no_spec"


def test_a_loading_path_keeps_the_port_waiting_until_the_probe_timeout():
    watch = watch_with(Answer("loading", "HTTP 503"), Answer("absent", "HTTP 404"))
    assert watch.evaluate(1.0, BOUNDS) is None
    assert watch.evaluate(15.0, BOUNDS) is None
    outcome = watch.evaluate(21.5, BOUNDS)
    assert outcome.kind == "no_spec" and "503" in outcome.detail


def test_silence_ends_at_the_startup_bound():
    watch = watch_with(Answer("no_answer", "connection refused"), Answer("no_answer", "connection refused"))
    assert watch.evaluate(9.0, BOUNDS) is None
    assert watch.evaluate(10.0, BOUNDS).kind == "never_answered"


def test_invalid_document_is_decided_once_every_path_answered():
    watch = watch_with(Answer("invalid", "bad JSON"))
    assert watch.evaluate(0.1, BOUNDS) is None
    watch.answers["/docs.json"] = Answer("absent", "HTTP 404")
    assert watch.evaluate(0.2, BOUNDS).kind == "invalid"


def test_live_display_redraws_one_line_per_port_with_the_last_log_line():
    out = io.StringIO()
    display = Display(out, live=True)
    watches = [watch_with(Answer("no_answer", "connection refused")), PortWatch(8080, "http://x:1", PATHS, 0.0)]
    display.container_log("loading model weights 40%")
    display.container_log('INFO: 10.0.0.1 - "GET /openapi.json HTTP/1.1" 503')
    display.update(watches, 1.0, BOUNDS, 0.0)
    display.update(watches, 1.5, BOUNDS, 0.0)
    text = out.getvalue()
    assert "\x1b[2F\x1b[J" in text
    last = text.split("\x1b[J")[-1].splitlines()
    assert len(last) == 2
    assert last[0].startswith("port 8020: starting (connection refused) |   1.5s elapsed,   8.5s left")
    assert last[0].endswith("loading model weights 40%")


def test_probe_access_log_lines_are_noise():
    assert is_probe_noise('127.0.0.1 - "GET /openapi.json HTTP/1.1" 404')
    assert not is_probe_noise('127.0.0.1 - "POST /tts HTTP/1.1" 200')


# --------------------------------------------------------------------------------------------------
# A new module from an image


def test_names_with_quotes_or_capitals_are_refused():
    for name in ["x'y", 'a"b', "Bad", "has space", "", "-x"]:
        with pytest.raises(WrapperError, match="not a usable chute name"):
            check_name(name)
    assert check_name("my-svc_2") == "my-svc_2"


def hostile_values() -> ModuleValues:
    config = containers.ImageConfig(
        ref="localhost/evil:1",
        exposed_ports=(8020, 9000),
        env={"PATH": "/usr/bin", "EVIL": HOSTILE, "MULTI": "a\nimport os", "OK": "1"},
        entrypoint=("sh", "-c"),
        cmd=(HOSTILE,),
        labels={"org.opencontainers.image.description": '"""\nimport os\nos.system("touch PWNED")'},
    )
    return values_from_image("evil-svc", config)


def test_image_values_become_literals_never_code():
    values = hostile_values()
    text = render(values, TEMPLATE.read_text())
    tree = ast.parse(text)
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
        and node.targets[0].id != "USERNAME"
    }
    assert assigned["CHUTE_ENV"] == {"EVIL": HOSTILE, "OK": "1"}
    assert values.dropped_env == ["MULTI"]
    assert assigned["ENTRYPOINT"] == ["sh", "-c", HOSTILE]
    assert assigned["SERVICE_PORTS"] == [8020, 9000]
    assert assigned["CHUTE_NAME"] == "evil-svc"
    assert "\n" not in assigned["CHUTE_TAGLINE"]
    assert text.count("os.system") == 3  # inside the env, entrypoint and tagline literals only
    assert "register_passthrough_routes(" in text and "chutes-wrappers demo" not in text


def test_rendered_module_imports_without_running_image_values(tmp_path):
    path = tmp_path / "deploy_evil_svc.py"
    path.write_text(render(hostile_values(), TEMPLATE.read_text()))
    env = dict(os.environ, CHUTES_SKIP_ROUTE_REGISTRATION="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", "import deploy_evil_svc as m; print(m.CHUTE_ENV['EVIL'])"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == HOSTILE
    assert not (tmp_path / "PWNED").exists()


def test_image_without_ports_needs_a_port():
    config = containers.ImageConfig(ref="x")
    with pytest.raises(WrapperError, match="exposes no ports"):
        values_from_image("x", config)
    assert values_from_image("x", config, [7860]).ports == [7860]


# --------------------------------------------------------------------------------------------------
# Writing the manifest


def test_a_failed_manifest_write_leaves_no_temp_file(tmp_path):
    from tools.runtime.routes import Manifest, write_manifest

    target = tmp_path / "deploy_x.routes.json"
    target.mkdir()
    (target / "keep").write_text("occupied")
    with pytest.raises(OSError):
        write_manifest(Manifest(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy_x.routes.json"]


def test_unwritable_output_is_refused_before_anything_starts(tmp_path):
    from tools.discover_routes import resolve_output

    with pytest.raises(WrapperError, match="is a directory"):
        resolve_output(Config(output=str(tmp_path)), None)
    with pytest.raises(WrapperError, match="does not exist"):
        resolve_output(Config(output=str(tmp_path / "a" / "b.json")), None)
    assert resolve_output(Config(output="-"), None) is None


def test_a_port_is_never_judged_silent_before_it_was_probed():
    watch = PortWatch(8020, "http://127.0.0.1:8020", PATHS, started=0.0)
    assert watch.evaluate(60.0, BOUNDS) is None


def test_summary_shows_the_public_path_of_static_routes_too():
    from tools.discover_routes import Outcome, Result, summary
    from tools.runtime.routes import Manifest, Route

    manifest = Manifest(routes=[
        Route("/inference", "POST", 8080, request_kind="multipart", file_fields=("file",), source="static"),
        Route("/tts_to_audio/", "POST", 8020, public_path="/tts_to_audio", response_kind="binary", content_type="audio/wav"),
        Route("/v1/models/{model_id}", "GET", 8020, path_params=("model_id",)),
    ])
    text = summary(Result(manifest, None, {8020: Outcome("spec", "", url="http://127.0.0.1:8020/openapi.json")}))
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("  ")}
    assert rows["/inference"].split()[2] == "/inference"
    assert rows["/tts_to_audio/"].split()[2] == "/tts_to_audio"
    assert "(path parameters)" in rows["/v1/models/{model_id}"]
