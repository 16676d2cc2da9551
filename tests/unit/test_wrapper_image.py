"""The wrapper image's Dockerfile text (layer order, ENV quoting, build context) and its setup script,
tools/runtime/image_setup.sh: its branches as text, and its choices run under sh with stand-in commands."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.runtime import image as wrapper_image
from tools.runtime.image import build_wrapper_image, setup_command
from tools.runtime.sdk.image import build_context
from tools.runtime.sdk.rules import installed_version

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_PATH = ROOT / wrapper_image.SETUP_SCRIPT
SCRIPT = SCRIPT_PATH.read_text()
SH = shutil.which("sh") or "/bin/sh"
BASE = "registry.example.com/team/service:1.2"
MANAGER_MARKERS = {
    "debian": ("apt-get install", "dpkg-query"),
    "alpine": ("apk add",),
    "rhel": ("dnf", "microdnf", "yum", "rpm -qa"),
}


def instructions(image) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined as Docker joins them."""
    text = str(image).replace("\\\n", "")
    result = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword, args))
    return result


def added(image) -> list[tuple[str, str]]:
    """The instructions after FROM."""
    return instructions(image)[1:]


def index_of(items: list[tuple[str, str]], keyword: str, startswith: str = "") -> int:
    for index, (kw, args) in enumerate(items):
        if kw == keyword and args.startswith(startswith):
            return index
    raise AssertionError(f"no {keyword} {startswith!r} in {items}")


def docker_words(args: str) -> list[str]:
    """Split ENV arguments as Docker's lexer does for our quoting: inside double quotes a backslash
    escapes `"`, `$` and itself; unescaped `$` (a variable reference) is kept as written."""
    words, word, in_quotes, i = [], "", False, 0
    while i < len(args):
        ch = args[i]
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\\" and in_quotes and i + 1 < len(args) and args[i + 1] in '"$\\':
            i += 1
            word += args[i]
        elif ch == " " and not in_quotes:
            if word:
                words.append(word)
            word = ""
        else:
            word += ch
        i += 1
    assert not in_quotes, f"unbalanced quotes in {args!r}"
    return words + ([word] if word else [])


def env_pairs(image) -> dict[str, str]:
    """The ENV instruction's pairs, unquoted."""
    (args,) = [args for kw, args in instructions(image) if kw == "ENV"]
    return dict(word.split("=", 1) for word in docker_words(args))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with neither tools/ nor a manifest (how tests and discovery import modules)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A directory laid out like a project: tools/ (symlinked), deploy_x.py and its manifest."""
    (tmp_path / "tools").symlink_to(ROOT / "tools", target_is_directory=True)
    (tmp_path / "deploy_x.py").write_text("# deploy module\n")
    (tmp_path / "deploy_x.routes.json").write_text('{"routes": []}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_script_function(tmp_path, call: str, commands: dict[str, int], **env: str) -> str:
    """Source the setup script (functions only) and run `call` with a PATH holding only stand-ins:
    each command in `commands` is a script exiting with its value, plus the tools the functions use."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, status in commands.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\nexit {status}\n")
        stub.chmod(0o755)
    for tool in ("sed",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(
        [SH, "-c", f'. "$1"; {call}', "sh", str(SCRIPT_PATH)],
        env={"PATH": str(bin_dir), "CW_IMAGE_SETUP_LIB": "1", **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_from_is_the_base_image_and_user_root_comes_before_setup(elsewhere):
    image = build_wrapper_image("alice", "svc", "v1", BASE)
    items = instructions(image)
    assert items[0] == ("FROM", BASE)
    assert items[1] == ("USER", "root")
    assert items[2] == ("ADD", f"tools/runtime/image_setup.sh {wrapper_image.SETUP_SCRIPT_IN_IMAGE}")
    assert items[3][0] == "RUN" and items[3][1].startswith(f"sh {wrapper_image.SETUP_SCRIPT_IN_IMAGE} ")


def test_setup_script_is_added_from_the_project_and_uploaded(module_dir):
    image = build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(module_dir / "deploy_x.py"))
    context = build_context(image)
    assert "tools/runtime/image_setup.sh" in context


def test_setup_script_has_every_package_manager_branch():
    for markers in MANAGER_MARKERS.values():
        for marker in markers:
            assert marker in SCRIPT


@pytest.mark.parametrize("distro", ["auto", "debian", "alpine", "rhel"])
def test_the_run_passes_the_distro_and_the_script_tries_only_its_managers(distro, tmp_path):
    assert f"--distro {distro} " in setup_command(distro=distro, chutes_version="0.6.9")
    everything = {"apt-get": 0, "apk": 0, "dnf": 0, "microdnf": 0, "yum": 0}
    chosen = run_script_function(tmp_path, f'detect_manager {distro}; echo "$PM"', everything)
    assert chosen == {"auto": "apt", "debian": "apt", "alpine": "apk", "rhel": "dnf"}[distro]
    only_apk = run_script_function(tmp_path / "apk", f'detect_manager {distro}; echo "$PM"', {"apk": 0})
    assert only_apk == ("apk" if distro in ("auto", "alpine") else "")


def test_rhel_family_falls_back_to_microdnf_then_yum(tmp_path):
    assert run_script_function(tmp_path, 'detect_manager rhel; echo "$PM"', {"microdnf": 0, "yum": 0}) == "microdnf"
    assert run_script_function(tmp_path / "y", 'detect_manager rhel; echo "$PM"', {"yum": 0}) == "yum"


def test_debian_branch_installs_python_venv_without_recommends_and_cleans_lists():
    assert "--no-install-recommends" in SCRIPT
    assert "python3 python3-venv python3-pip ca-certificates" in SCRIPT
    assert "rm -rf /var/lib/apt/lists/*" in SCRIPT


def test_alpine_branch_brings_musl_build_deps():
    assert "python3 py3-pip" in SCRIPT
    for package in ("gcc", "musl-dev", "python3-dev", "libffi-dev", "linux-headers"):
        assert package in SCRIPT


def test_rhel_branch_prefers_python311_then_python3():
    assert SCRIPT.index("python3.11 python3.11-pip") < SCRIPT.index("python3 python3-pip", SCRIPT.index("python3.11"))


def test_missing_python_and_package_manager_fails_with_a_visible_message():
    assert 'say() { echo "chutes-wrappers: $*" >&2; }' in SCRIPT
    assert "no Python >= 3.10" in SCRIPT and "exit 1" in SCRIPT


def test_the_scripts_error_line_starts_with_the_prefix_the_build_report_reads():
    assert f'echo "{wrapper_image.SETUP_ERROR}$*" >&2' in SCRIPT


def test_python_candidates_start_with_the_explicit_one_then_conda():
    command = setup_command(python="/usr/local/bin/python3.12", chutes_version="0.6.9")
    assert "--python /usr/local/bin/python3.12 " in command
    candidates = SCRIPT.split('PYTHON_CANDIDATES="', 1)[1].split('"', 1)[0].split()
    assert candidates[:2] == ["/opt/conda/bin/python", "python3.13"]
    assert candidates[-2:] == ["python3", "python"]
    assert "for c in $PYTHON $PYTHON_CANDIDATES; do" in SCRIPT


def test_the_first_python_that_is_new_enough_wins_and_the_explicit_one_first(tmp_path):
    # A stand-in "Python" exits 0 for the version check when new enough, 1 when too old.
    pythons = {"python3.12": 1, "python3.11": 0, "python3": 0, "mypython": 0}
    assert run_script_function(tmp_path, 'find_python; echo "$PY"', pythons).endswith("/python3.11")
    chosen = run_script_function(tmp_path / "x", 'PYTHON=mypython; find_python; echo "$PY"', pythons)
    assert chosen.endswith("/mypython")
    assert run_script_function(tmp_path / "none", 'find_python || echo none', {"python3": 1}) == "none"


def test_a_bad_distro_or_a_missing_option_is_one_error_line(tmp_path):
    for args in (["--distro", "gentoo"], []):
        proc = subprocess.run(
            ["sh", str(SCRIPT_PATH), "--chutes-version", "0.6.9", *args], capture_output=True, text=True
        )
        assert proc.returncode == 1
        assert proc.stderr.startswith(wrapper_image.SETUP_ERROR) and proc.stderr.count("\n") == 1, proc.stderr


def test_python_is_never_compiled(elsewhere):
    text = str(build_wrapper_image("alice", "svc", "v1", BASE))
    assert "python.org" not in text and "./configure" not in text and "make " not in text


def test_chutes_is_installed_in_a_venv_at_the_sdk_version(elsewhere):
    version = installed_version()
    command = setup_command(chutes_version=version)
    assert f"--venv {wrapper_image.VENV_DIR} " in command
    assert f"--chutes-version {version} " in command
    assert '"$PY" -m venv "$VENV_DIR"' in SCRIPT
    assert "--system-site-packages" not in SCRIPT
    assert '"chutes==$SDK_VERSION"' in SCRIPT
    text = str(build_wrapper_image("alice", "svc", "v1", BASE))
    assert f"--chutes-version {version} " in text


def test_pip_cert_is_exported_inside_the_run_only(elsewhere):
    image = build_wrapper_image("alice", "svc", "v1", BASE)
    (run,) = [args for kw, args in added(image) if kw == "RUN"]
    assert "--ca-bundle /etc/ssl/certs/ca-certificates.crt" in run
    assert 'export PIP_CERT="$CA_BUNDLE"' in SCRIPT
    assert "PIP_CERT" not in env_pairs(image)


def test_base_workdir_and_path_are_recorded_before_anything_changes_them(elsewhere):
    assert f"--base-env {wrapper_image.BASE_ENV_FILE} " in setup_command(chutes_version="0.6.9")
    main = SCRIPT[SCRIPT.index("main() {") :]
    record = main.index('>"$BASE_ENV_FILE"')
    assert '"WORKDIR=$(pwd)"' in main[:record] and '"PATH=$PATH"' in main[:record]
    assert record < main.index('pm_install "$@"') < main.index("pm_install_python")


def test_nothing_is_made_world_writable(elsewhere):
    text = str(build_wrapper_image("alice", "svc", "v1", BASE, extra_packages=["curl"]))
    for bad in ("777", "a+w", "o+w", "+rwx", "chmod"):
        assert bad not in text and bad not in SCRIPT
    assert "umask 022" in SCRIPT


def test_entrypoint_cleared_and_chute_runs_as_chutes_in_app(elsewhere):
    items = added(build_wrapper_image("alice", "svc", "v1", BASE))
    setup = index_of(items, "RUN")
    assert ("ENTRYPOINT", "[]") in items
    assert index_of(items, "USER", "chutes") > setup
    assert index_of(items, "WORKDIR", "/app") > setup
    assert [kw for kw, _ in items].count("ENTRYPOINT") == 1


def test_env_sets_runtime_paths_and_keeps_the_base_path():
    image = build_wrapper_image("alice", "svc", "v1", BASE)
    env = env_pairs(image)
    assert env["PATH"].startswith(f"{wrapper_image.VENV_DIR}/bin:${{PATH:-")
    assert env["HOME"] == "/home/chutes"
    assert env["XDG_CACHE_HOME"].startswith("/home/chutes/.cache")
    assert env["PIP_CACHE_DIR"].startswith("/home/chutes/.cache")
    assert "/home/chutes/.cache" in env["HF_HOME"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONPATH"].startswith("/app")


def test_chute_env_values_round_trip_through_dockerfile_quoting():
    tricky = 'two words "quoted" $HOME ${X} back\\slash \'single\''
    env = env_pairs(build_wrapper_image("alice", "svc", "v1", BASE, env={"TRICKY": tricky, "NUM": 3, "EMPTY": ""}))
    assert env["TRICKY"] == tricky
    assert env["NUM"] == "3"
    assert env["EMPTY"] == ""


def test_chute_env_key_replaces_a_runtime_default():
    env = env_pairs(build_wrapper_image("alice", "svc", "v1", BASE, env={"HF_HOME": "/models"}))
    assert env["HF_HOME"] == "/models"


def test_one_env_instruction_for_everything():
    items = added(build_wrapper_image("alice", "svc", "v1", BASE, env={"A": "1", "B": "2"}))
    assert [kw for kw, _ in items].count("ENV") == 1


@pytest.mark.parametrize("value", ["line1\nline2", "carriage\rreturn"])
def test_chute_env_value_with_newline_is_rejected_naming_the_key(value):
    with pytest.raises(ValueError, match="MULTI"):
        build_wrapper_image("alice", "svc", "v1", BASE, env={"MULTI": value})


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "A=B", "ÄB"])
def test_invalid_chute_env_key_is_rejected(key):
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        build_wrapper_image("alice", "svc", "v1", BASE, env={key: "x"})


def test_config_errors_are_user_fixable_wrapper_errors():
    from tools.runtime.errors import WrapperError

    with pytest.raises(WrapperError):
        build_wrapper_image("alice", "svc", "v1", BASE, env={"BAD-KEY": "x"})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distro": "gentoo"},
        {"python": "python3; rm -rf /"},
        {"extra_packages": ["curl; reboot"]},
        {"apt_packages": ["$(id)"]},
        {"chutes_version": "1.0 || true"},
    ],
)
def test_arguments_that_would_inject_shell_are_rejected(kwargs):
    with pytest.raises(ValueError):
        build_wrapper_image("alice", "svc", "v1", BASE, **kwargs)


def test_extra_packages_go_through_the_package_manager():
    command = setup_command(packages=["curl", "libsndfile1"], distro="debian", chutes_version="0.6.9")
    assert command.endswith("-- curl libsndfile1")
    main = SCRIPT[SCRIPT.index("main() {") :]
    assert 'pm_install "$@"' in main


def test_build_context_is_added_when_cwd_has_tools_and_manifest(module_dir):
    image = build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(module_dir / "deploy_x.py"))
    items = added(image)
    # the deploy modules' API into /app/tools/, the runtime package whole (an ADD of a directory keeps its tree)
    assert ("ADD", "--chown=chutes:chutes tools/__init__.py tools/chute_wrappers.py /app/tools/") in items
    assert ("ADD", "--chown=chutes:chutes tools/runtime /app/tools/runtime/") in items
    assert ("ADD", "--chown=chutes:chutes deploy_x.routes.json /app/deploy_x.routes.json") in items
    context = build_context(image)
    assert "deploy_x.routes.json" in context and "tools/__init__.py" in context
    # what a remote build uploads for the runtime package: its Python files, no caches
    assert set(wrapper_image.RUNTIME_FILES) <= set(context)
    assert not any("__pycache__" in path for path in context)


def test_only_the_runtime_files_of_tools_go_into_the_image(module_dir):
    image = build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(module_dir / "deploy_x.py"))
    context = set(build_context(image))
    assert {"tools/chute_wrappers.py", "tools/runtime/launcher.py", "tools/runtime/cords/request.py"} <= context
    for cli_or_demo in ("tools/commands/run.py", "tools/discover_routes.py", "tools/demo_service.py", "tools/chutes_cli.py"):
        assert cli_or_demo not in context
        assert cli_or_demo not in str(image)
    assert "*" not in str(image)


def test_build_context_is_skipped_without_error_elsewhere(elsewhere):
    image = build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(ROOT / "deploy_x.py"))
    # Only the setup script's ADD (so the Dockerfile stays whole); no file to upload from here.
    setup_add = f"tools/runtime/image_setup.sh {wrapper_image.SETUP_SCRIPT_IN_IMAGE}"
    assert [args for kw, args in added(image) if kw == "ADD"] == [setup_add]
    assert build_context(image) == []


def test_manifest_is_found_from_the_calling_module_through_the_reexport(module_dir):
    (module_dir / "deploy_x.py").write_text(
        "from tools.chute_wrappers import build_wrapper_image\n"
        f"image = build_wrapper_image('alice', 'svc', 'v1', {BASE!r})\n"
    )
    spec = importlib.util.spec_from_file_location("deploy_x_under_test", module_dir / "deploy_x.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert ("ADD", "--chown=chutes:chutes deploy_x.routes.json /app/deploy_x.routes.json") in added(module.image)


# USER root, ADD + RUN of the setup script, ENV, ENTRYPOINT, USER, WORKDIR, one ADD per directory of
# runtime files (tools/, tools/runtime/sdk/), ADD manifest: 10.
MAX_INSTRUCTIONS = 10


def test_at_most_ten_instructions_are_added(module_dir):
    image = build_wrapper_image(
        "alice", "svc", "v1", BASE, env={"A": "1"}, extra_packages=["curl"], module_file=str(module_dir / "deploy_x.py")
    )
    assert len(added(image)) <= MAX_INSTRUCTIONS


def test_layers_are_ordered_for_the_build_cache(module_dir):
    items = added(build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(module_dir / "deploy_x.py")))
    setup = index_of(items, "RUN")
    env = index_of(items, "ENV")
    assert index_of(items, "ADD", "tools/runtime/image_setup.sh") == setup - 1
    adds = [index for index, (kw, args) in enumerate(items) if kw == "ADD" and index > setup]
    assert setup < env < min(adds)
    assert index_of(items, "WORKDIR") < min(adds)
    assert items[-1] == ("ADD", "--chown=chutes:chutes deploy_x.routes.json /app/deploy_x.routes.json")


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_setup_script_is_valid_posix_sh(shell):
    if not shutil.which(shell):
        pytest.skip(f"{shell} is not installed")
    command = [shell, "sh"] if shell == "busybox" else [shell, "--posix"] if shell == "bash" else [shell]
    proc = subprocess.run([*command, "-n", str(SCRIPT_PATH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_run_line_is_one_command_once_docker_joins_the_lines(tmp_path):
    joined = setup_command(distro="debian", packages=["curl"], chutes_version="0.6.9").replace("\\\n", "")
    # Run it with `sh` replaced by a stand-in printing its arguments: the script path, then the options.
    (tmp_path / "sh").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (tmp_path / "sh").chmod(0o755)
    proc = subprocess.run([shutil.which("bash"), "-c", joined], env={"PATH": str(tmp_path)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.splitlines()
    assert words[0] == wrapper_image.SETUP_SCRIPT_IN_IMAGE and words[-2:] == ["--", "curl"]
    assert words[words.index("--distro") + 1] == "debian"
