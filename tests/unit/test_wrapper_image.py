"""The wrapper image's Dockerfile text: layer order, the setup script's branches, ENV quoting, build context."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import wrapper_image
from tools.wrapper_image import build_wrapper_image, setup_script

ROOT = Path(__file__).resolve().parents[2]
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


def test_from_is_the_base_image_and_user_root_comes_before_setup(elsewhere):
    image = build_wrapper_image("alice", "svc", "v1", BASE)
    items = instructions(image)
    assert items[0] == ("FROM", BASE)
    assert items[1] == ("USER", "root")
    assert items[2][0] == "RUN" and items[2][1].startswith("set -e;")


def test_auto_setup_has_every_package_manager_branch():
    script = setup_script(chutes_version="0.6.9")
    for markers in MANAGER_MARKERS.values():
        for marker in markers:
            assert marker in script


@pytest.mark.parametrize("distro", ["debian", "alpine", "rhel"])
def test_explicit_distro_emits_only_its_branch(distro):
    script = setup_script(distro=distro, chutes_version="0.6.9")
    for family, markers in MANAGER_MARKERS.items():
        for marker in markers:
            assert (marker in script) == (family == distro), (family, marker)


def test_debian_branch_installs_python_venv_without_recommends_and_cleans_lists():
    script = setup_script(distro="debian", chutes_version="0.6.9")
    assert "--no-install-recommends" in script
    assert "python3 python3-venv python3-pip ca-certificates" in script
    assert "rm -rf /var/lib/apt/lists/*" in script


def test_alpine_branch_brings_musl_build_deps():
    script = setup_script(distro="alpine", chutes_version="0.6.9")
    assert "python3 py3-pip" in script
    for package in ("gcc", "musl-dev", "python3-dev", "libffi-dev", "linux-headers"):
        assert package in script


def test_rhel_branch_prefers_python311_then_python3():
    script = setup_script(distro="rhel", chutes_version="0.6.9")
    assert script.index("python3.11 python3.11-pip") < script.index("python3 python3-pip")


def test_missing_python_and_package_manager_fails_with_a_visible_message():
    script = setup_script(chutes_version="0.6.9")
    assert 'say() { echo "chutes-wrappers: $*" >&2; }' in script
    assert "no Python >= 3.10" in script and "exit 1" in script


def test_python_candidates_start_with_the_explicit_one_then_conda():
    script = setup_script(python="/usr/local/bin/python3.12", chutes_version="0.6.9")
    candidates = script.split("for c in ", 1)[1].split(";", 1)[0].split()
    assert candidates[:3] == ["/usr/local/bin/python3.12", "/opt/conda/bin/python", "python3.13"]
    assert candidates[-2:] == ["python3", "python"]


def test_python_is_never_compiled(elsewhere):
    text = str(build_wrapper_image("alice", "svc", "v1", BASE))
    assert "python.org" not in text and "./configure" not in text and "make " not in text


def test_chutes_is_installed_in_a_venv_at_the_sdk_version(elsewhere):
    from chutes._version import version

    script = setup_script(chutes_version=version)
    assert f"-m venv {wrapper_image.VENV_DIR}" in script
    assert "--system-site-packages" not in script
    assert f'"chutes=={version}"' in script
    text = str(build_wrapper_image("alice", "svc", "v1", BASE))
    assert f'"chutes=={version}"' in text


def test_pip_cert_is_exported_inside_the_run_only(elsewhere):
    image = build_wrapper_image("alice", "svc", "v1", BASE)
    (run,) = [args for kw, args in added(image) if kw == "RUN"]
    assert "export PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in run
    assert "PIP_CERT" not in env_pairs(image)


def test_base_workdir_and_path_are_recorded_before_anything_changes_them(elsewhere):
    script = setup_script(chutes_version="0.6.9")
    record = script.index(wrapper_image.BASE_ENV_FILE)
    assert '"WORKDIR=$(pwd)"' in script[:record] and '"PATH=$PATH"' in script[:record]
    assert record < script.index("pm_install $PKGS")


def test_nothing_is_made_world_writable(elsewhere):
    text = str(build_wrapper_image("alice", "svc", "v1", BASE, extra_packages=["curl"]))
    for bad in ("777", "a+w", "o+w", "+rwx"):
        assert bad not in text


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
    from tools.errors import WrapperError

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
    script = setup_script(packages=["curl", "libsndfile1"], distro="debian", chutes_version="0.6.9")
    assert "PKGS='curl libsndfile1'" in script
    assert "pm_install $PKGS" in script


def test_build_context_is_added_when_cwd_has_tools_and_manifest(module_dir):
    image = build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(module_dir / "deploy_x.py"))
    items = added(image)
    assert ("ADD", "--chown=chutes:chutes tools/*.py /app/tools/") in items
    assert ("ADD", "--chown=chutes:chutes deploy_x.routes.json /app/deploy_x.routes.json") in items
    context = [path for directive in image._directives for path in directive._build_context]
    assert "deploy_x.routes.json" in context and "tools/__init__.py" in context
    assert not any("__pycache__" in path for path in context)


def test_build_context_is_skipped_without_error_elsewhere(elsewhere):
    items = added(build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(ROOT / "deploy_x.py")))
    assert [kw for kw, _ in items].count("ADD") == 0


def test_manifest_is_found_from_the_calling_module_through_the_reexport(module_dir):
    (module_dir / "deploy_x.py").write_text(
        "from tools.chute_wrappers import build_wrapper_image\n"
        f"image = build_wrapper_image('alice', 'svc', 'v1', {BASE!r})\n"
    )
    spec = importlib.util.spec_from_file_location("deploy_x_under_test", module_dir / "deploy_x.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert ("ADD", "--chown=chutes:chutes deploy_x.routes.json /app/deploy_x.routes.json") in added(module.image)


def test_at_most_eight_instructions_are_added(module_dir):
    image = build_wrapper_image(
        "alice", "svc", "v1", BASE, env={"A": "1"}, extra_packages=["curl"], module_file=str(module_dir / "deploy_x.py")
    )
    assert len(added(image)) <= 8


def test_layers_are_ordered_for_the_build_cache(module_dir):
    items = added(build_wrapper_image("alice", "svc", "v1", BASE, module_file=str(module_dir / "deploy_x.py")))
    setup = index_of(items, "RUN")
    env = index_of(items, "ENV")
    adds = [index for index, (kw, _) in enumerate(items) if kw == "ADD"]
    assert setup < env < min(adds)
    assert index_of(items, "WORKDIR") < min(adds)
    assert items[-1] == ("ADD", "--chown=chutes:chutes deploy_x.routes.json /app/deploy_x.routes.json")


@pytest.mark.parametrize("distro", ["auto", "debian", "alpine", "rhel"])
@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_setup_script_is_valid_posix_sh_once_docker_joins_the_lines(distro, shell):
    if not shutil.which(shell):
        pytest.skip(f"{shell} is not installed")
    command = [shell, "sh"] if shell == "busybox" else [shell, "--posix"] if shell == "bash" else [shell]
    joined = setup_script(distro=distro, packages=["curl"], chutes_version="0.6.9").replace("\\\n", "")
    proc = subprocess.run([*command, "-n", "-c", joined], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
