"""`deploy.sh --run` keeps Chutes credentials away from the wrapped service and the dev-mode chute."""

from __future__ import annotations

import json
import textwrap

import pytest
import requests

from tests.conftest import free_port
from tests.integration.test_run_local import run_dev  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

# The service writes the environment it was given, then serves; the module writes the chute's
# environment when `chutes run --dev` imports it (the CLI itself imports it without REMOTE).
MODULE = textwrap.dedent(
    """
    import json, os, sys
    from chutes.chute import Chute
    from tools.chute_wrappers import add_health_cord, parse_service_ports

    SERVICE_PORTS = parse_service_ports(os.environ["SECRETS_TEST_PORT"])
    HOST_COMMAND = [sys.executable, "-c",
                    "import json, os, http.server, sys; "
                    "open('service-env.json', 'w').write(json.dumps(dict(os.environ))); "
                    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()",
                    str(SERVICE_PORTS[0])]
    CHUTE_ENV = {"MODULE_SETTING": "kept"}
    if os.environ.get("CHUTES_EXECUTION_CONTEXT") == "REMOTE":
        with open("chute-env.json", "w") as out:
            json.dump(dict(os.environ), out)
    chute = Chute(username="test", name="secretstest", image="unused")
    add_health_cord(chute, SERVICE_PORTS)
    """
)

SECRETS = {
    "CHUTES_API_KEY": "cpk_test_secret_value_1234",
    "CHUTES_HOTKEY_SEED": "ab" * 32,
    "CHUTES_ACCESS_TOKEN": "token-value-5678",
}


@pytest.mark.parametrize("extra", [[], ["--dev"]], ids=["platform", "dev"])
def test_run_passes_no_chutes_secret_to_the_service_or_the_chute(run_dev, tmp_path, extra):  # noqa: F811
    (tmp_path / "deploy_secretstest.py").write_text(MODULE)
    service_port = free_port()
    env = dict(SECRETS, SECRETS_TEST_PORT=str(service_port), HF_TOKEN="hf_not_a_chutes_secret",
               CHUTES_USERNAME="someone")
    run = run_dev("deploy_secretstest", *extra, env=env)
    try:
        run.wait_for("ready: streaming logs", timeout=120)
        assert requests.get(run.url("/health"), timeout=30).status_code == 200
        service_env = json.loads((tmp_path / "service-env.json").read_text())
        chute_env = json.loads((tmp_path / "chute-env.json").read_text())
    finally:
        # Ctrl-C stops the service and the chute; the fixture's SIGKILL of --run would orphan them
        assert run.proc.poll() is not None or run.interrupt() == 130
    for name, seen in (("service", service_env), ("chute", chute_env)):
        leaked = sorted(set(SECRETS) & set(seen))
        assert not leaked, f"the {name} got {leaked}"
        assert not any(value in json.dumps(seen) for value in SECRETS.values()), name
        # what is not a Chutes credential still goes through: the service may need its own tokens
        assert seen["HF_TOKEN"] == "hf_not_a_chutes_secret" and seen["CHUTES_USERNAME"] == "someone"
    assert service_env["MODULE_SETTING"] == "kept"


def test_the_secret_name_rule():
    from tools.runtime.constants import is_chutes_secret, without_chutes_secrets

    for name in ("CHUTES_API_KEY", "CHUTES_HOTKEY_SEED", "chutes_api_token", "CHUTES_LAUNCH_JWT", "CHUTES_PASSWORD",
                 "CHUTES_LOCAL_PLATFORM_KEY"):
        assert is_chutes_secret(name), name
    for name in ("CHUTES_PORTS", "CHUTES_EXECUTION_CONTEXT", "CHUTES_API_URL", "CHUTES_CONFIG_PATH",
                 "CHUTES_USERNAME", "HF_TOKEN", "OPENAI_API_KEY", "PATH"):
        assert not is_chutes_secret(name), name
    assert without_chutes_secrets({"CHUTES_API_KEY": "x", "PATH": "/bin"}) == {"PATH": "/bin"}


def test_a_service_the_chute_starts_gets_no_chutes_secret(monkeypatch):
    """In the image the chute starts the service (tools.runtime.launcher): the node's credentials stay with it."""
    from tools.runtime.launcher import service_environment

    monkeypatch.setenv("CHUTES_API_KEY", "cpk_test_secret_value_1234")
    monkeypatch.setenv("CHUTES_LOCAL_PLATFORM_KEY", "ab" * 32)
    monkeypatch.setenv("HF_TOKEN", "hf_kept")
    env = service_environment({"MODULE_SETTING": "kept"}, base={})
    assert "CHUTES_API_KEY" not in env and "CHUTES_LOCAL_PLATFORM_KEY" not in env
    assert env["HF_TOKEN"] == "hf_kept" and env["MODULE_SETTING"] == "kept"
