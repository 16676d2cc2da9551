"""A Gradio 5 app (5.50, the last 5.x; tests/realservices/gradio5_app.py) with Gradio's defaults:
errors, a generator, a gr.State and a ChatInterface. Discovered, wrapped as README says, smoke-tested,
and every function compared with Gradio's own API, on both paths. Gradio 5 sends `data: null` with
every error on its two-step API whatever show_error says: the chute still answers gr.Error with 400
and its message, and a crash as the app failing."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import requests

from tests.realservices.conftest import HERE, discover, write_module
from tools import deploy_module
from tools.commands.smoke import Limits, calls_for, run_calls, summary_line, table
from tools.cord_table import cords_of
from tools.runtime.routes import read_manifest_file

pytestmark = pytest.mark.realservices

PREFIX = "/gradio_api"


@pytest.fixture(scope="module")
def app(models_python, start_service):
    return start_service("gradio5", [str(models_python), str(HERE / "gradio5_app.py"), "{port}"], ready_path="/config",
                         env={"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}, timeout=120)


@pytest.fixture(scope="module")
def wrapped(app, tmp_path_factory, chute_runner):
    directory = tmp_path_factory.mktemp("gradio5-module")
    proc = discover(app, directory / "deploy_gradio5.routes.json")
    assert proc.returncode == 0, proc.stderr
    module = write_module(directory, "gradio5", app.port)
    return module, chute_runner(module)


def direct(app, api_name: str, data: list, session_hash: str | None = None) -> dict:
    """Gradio's own call in a session (POST .../call, then the session's queue stream): the
    `process_completed` message, with `output.data` or the error payload."""
    session_hash = session_hash or uuid.uuid4().hex[:12]
    joined = requests.post(f"{app.url}{PREFIX}/call/{api_name}", json={"data": data, "session_hash": session_hash},
                           timeout=30)
    joined.raise_for_status()
    with requests.get(f"{app.url}{PREFIX}/queue/data", params={"session_hash": session_hash}, stream=True,
                      timeout=60) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError(f"no result for {api_name}")


def call(runner, name: str, body: dict, **kwargs) -> requests.Response:
    return runner.cord("POST", f"/{name}", body, **kwargs)


def test_discovery_records_states_the_chat_and_readiness(wrapped, app):
    module, _ = wrapped
    manifest = read_manifest_file(module.with_name("deploy_gradio5.routes.json"))
    functions = {route.path: route.gradio for route in manifest.routes}
    assert sorted(functions) == ["/add_note", "/chat", "/shout", "/spell", "/summarize", "/word_stats"]
    assert functions["/summarize"].version == "5.50.0"
    assert functions["/add_note"].hidden_inputs == (1,) and functions["/add_note"].hidden_outputs == (1,)
    assert functions["/chat"].chat.setter and functions["/chat"].chat.format == "messages"
    assert manifest.ready_paths == {app.port: "/config"}


def test_smoke_passes_every_function(wrapped):
    module, runner = wrapped
    loaded = deploy_module.load(module, keep=False)
    results = asyncio.run(run_calls(calls_for(runner.base_url, cords_of(loaded.chute)), Limits(call_timeout=30)))
    print(table(results))
    print(summary_line(results))
    assert [r.outcome for r in results] == ["ok"] * 7, summary_line(results)  # /health and the six functions


def test_gr_error_is_a_400_with_its_message_though_the_two_step_api_sends_none(wrapped, app):
    _, runner = wrapped
    joined = requests.post(f"{app.url}{PREFIX}/call/summarize", json={"data": ["  ", 5]}, timeout=30).json()
    two_step = requests.get(f"{app.url}{PREFIX}/call/summarize/{joined['event_id']}", timeout=30).text
    assert "event: error\ndata: null" in two_step  # Gradio 5: no message there, show_error or not
    payload = direct(app, "summarize", ["  ", 5])["output"]
    assert payload["error"] == "Nothing to summarize: give some text" and payload["title"] == "Empty input"
    answer = call(runner, "summarize", {"text": "  "})
    assert answer.status_code == 400, answer.text
    if runner.name == "gateway":  # a miner's 400 reaches the caller inside the gateway's own message
        assert json.dumps(payload["error"]) in answer.json()["detail"]
    else:
        assert answer.json() == {"detail": payload["error"]}


def test_a_crash_is_the_app_failing(wrapped, app):
    _, runner = wrapped
    assert direct(app, "shout", ["crash please"])["output"] == {"error": None}  # show_error=False: no reason
    answer = call(runner, "shout", {"text": "crash please"})
    if runner.name == "gateway":  # an instance failure: the gateway answers its own 500
        assert answer.status_code == 500
    else:
        assert answer.status_code == 502 and "sent no reason" in answer.json()["detail"]
        assert "show_error=True" in answer.json()["detail"]


@pytest.mark.parametrize("name,body,data", [
    ("summarize", {"text": "one two three four five six seven"}, ["one two three four five six seven", 5]),
    ("summarize", {"text": "one two three", "max_words": 2}, ["one two three", 2]),
    ("word_stats", {"text": "To be or not to be"}, ["To be or not to be"]),
    ("shout", {"text": "quiet"}, ["quiet"]),
])
def test_functions_answer_as_gradio_does(wrapped, app, name, body, data):
    _, runner = wrapped
    answer = call(runner, name, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == direct(app, name, data)["output"]["data"][0]


def test_a_generator_streams_its_items(wrapped, app):
    _, runner = wrapped
    with call(runner, "spell", {"word": "chute", "stream": True}, stream=True) as answer:
        assert answer.status_code == 200
        items = [json.loads(line[5:]) for line in answer.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert items == ["c", "ch", "chu", "chut", "chute"]
    assert call(runner, "spell", {"word": "chute"}).json() == direct(app, "spell", ["chute"])["output"]["data"][0]


def test_a_state_starts_fresh_for_every_call(wrapped, app):
    _, runner = wrapped
    session = uuid.uuid4().hex[:12]
    assert direct(app, "add_note", ["a", None], session)["output"]["data"][0] == "1 notes: a"
    assert direct(app, "add_note", ["b", None], session)["output"]["data"][0] == "2 notes: a; b"
    for _ in range(2):
        answer = call(runner, "add_note", {"note": "b"})
        assert answer.status_code == 200 and answer.json() == "1 notes: b"


def test_a_chat_takes_the_callers_history(wrapped, app):
    """What the app answers a browser session after one turn is what the chute answers a caller who
    sends that turn as `history`."""
    _, runner = wrapped
    session = uuid.uuid4().hex[:12]
    first = direct(app, "chat", ["my name is Ada", None], session)["output"]["data"][0]
    second = direct(app, "chat", ["what is my name?", None], session)["output"]["data"][0]
    assert second == "You said 'what is my name?'; before that 'my name is Ada' (2 messages so far)"
    history = [{"role": "user", "content": "my name is Ada"}, {"role": "assistant", "content": first}]
    answer = call(runner, "chat", {"message": "what is my name?", "history": history})
    assert answer.status_code == 200, answer.text
    assert answer.json() == second
    assert call(runner, "chat", {"message": "hi"}).json() == "You said 'hi' (0 messages so far)"
