"""stubllm (PyPI): an OpenAI-compatible server answering from fixtures, no model weights. Its FastAPI
spec declares no request bodies and JSON answers; chat completions stream SSE when asked to, and
errors come in OpenAI's shape. Discovered, wrapped, smoke-tested and compared call by call."""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from tests.realservices.conftest import assert_same_answer, chute_document, discover, media, write_module
from tools.runtime.routes import read_manifest_file
from tools import deploy_module
from tools.cord_table import cords_of
from tools.commands.smoke import Limits, calls_for, run_calls, summary_line, table

pytestmark = pytest.mark.realservices

# The service's own configuration, as its users write it: canned answers and error scenarios.
FIXTURES = {
    "fixtures": [
        {"name": "greeting", "match": {"messages": [{"content": {"contains": "hello"}}]},
         "response": {"content": "Hello from stubllm, nice to meet you.", "stream_chunk_delay_ms": 5}},
        {"name": "rate-limited", "match": {"messages": [{"content": {"contains": "please rate limit"}}]},
         "response": {"http_status": 429, "error_message": "Rate limit reached (mock)"}},
        {"name": "bad-request", "match": {"messages": [{"content": {"contains": "invalid please"}}]},
         "response": {"http_status": 400, "error_message": "Invalid value for 'messages' (mock)"}},
        {"name": "overloaded", "match": {"messages": [{"content": {"contains": "overload please"}}]},
         "response": {"http_status": 503, "error_message": "The engine is overloaded (mock)"}},
    ]
}


def chat(text: str, **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(scope="module")
def llm(realsvc_python, start_service, tmp_path_factory):
    work = tmp_path_factory.mktemp("stubllm")
    (work / "fixtures.json").write_text(json.dumps(FIXTURES))
    stubllm = realsvc_python.parent / "stubllm"
    return start_service("stubllm", [str(stubllm), "serve", "--host", "127.0.0.1", "--port", "{port}",
                                     "--fixture-file", "fixtures.json", "--log-level", "warning"],
                         cwd=work, ready_path="/health")


@pytest.fixture(scope="module")
def wrapped(llm, tmp_path_factory, chute_runner):
    directory = tmp_path_factory.mktemp("stubllm-module")
    proc = discover(llm, directory / "deploy_llm.routes.json")
    assert proc.returncode == 0, proc.stderr
    module = write_module(directory, "llm", llm.port)
    return proc.stderr, module, chute_runner(module)


def test_discovery_reads_bodies_no_spec_declares(wrapped):
    stderr, module, _ = wrapped
    assert "spec at /openapi.json" in stderr
    routes = {(r.method, r.path): r for r in read_manifest_file(module.with_name("deploy_llm.routes.json")).routes}
    chat_route = routes[("POST", "/v1/chat/completions")]
    assert chat_route.request_kind == "undeclared"
    assert routes[("GET", "/v1/models")].request_kind == "none"


def test_smoke_passes_every_cord(wrapped):
    _, module, runner = wrapped
    loaded = deploy_module.load(module, keep=False)
    calls = calls_for(runner.base_url, cords_of(loaded.chute), loaded.get("CHUTE_ROUTE_OVERRIDES"))
    results = asyncio.run(run_calls(calls, Limits(call_timeout=20)))
    print(table(results))
    print(summary_line(results))
    by_label = {r.call.label: r for r in results}
    for label in ("/v1/chat/completions", "/v1/embeddings", "/v1/models", "/health"):
        assert by_label[label].ok, (label, by_label[label].status, by_label[label].problem)
    assert [r.call.key for r in results if r.outcome in ("failed", "timeout")] == [], summary_line(results)


def completion(body: dict) -> dict:
    """A chat completion without what differs per call (id, created)."""
    return {key: value for key, value in body.items() if key not in ("id", "created")}


def test_chat_completion(llm, wrapped):
    runner = wrapped[2]
    direct = llm.call("POST", "/v1/chat/completions", chat("hello there"))
    through = runner.cord("POST", "/v1/chat/completions", chat("hello there"))
    assert_same_answer(direct, through, completion)
    assert through.json()["choices"][0]["message"]["content"] == "Hello from stubllm, nice to meet you."


def sse_text(response) -> tuple[str, bool]:
    """The streamed completion's text, and whether the stream ended with [DONE]."""
    parts, done = [], False
    for line in response.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            continue
        delta = json.loads(data)["choices"][0]["delta"]
        parts.append(delta.get("content") or "")
    return "".join(parts), done


def test_chat_completion_streams_server_sent_events(llm, wrapped):
    runner = wrapped[2]
    body = chat("hello stream", stream=True)
    import requests

    with requests.post(llm.url + "/v1/chat/completions", json=body, stream=True, timeout=30) as direct:
        direct_text, direct_done = sse_text(direct)
        direct_type = media(direct)
    with runner.cord("POST", "/v1/chat/completions", body, stream=True) as through:
        assert through.status_code == 200
        assert media(through) == direct_type == "text/event-stream"
        through_text, through_done = sse_text(through)
    assert (through_text, through_done) == (direct_text, direct_done) == ("Hello from stubllm, nice to meet you.", True)


@pytest.mark.parametrize("text", ["invalid please", "please rate limit"])
def test_client_errors_keep_openais_error_shape(llm, wrapped, text):
    """OpenAI clients read `error`: the chute keeps the service's error object at the top of its
    answer. On Chutes the gateway passes a 400 with the chute's body as text inside `detail` (the
    object is still there, one json.loads away), and answers a 429 with its own body."""
    runner = wrapped[2]
    direct = llm.call("POST", "/v1/chat/completions", chat(text))
    through = runner.cord("POST", "/v1/chat/completions", chat(text))
    assert direct.status_code in (400, 429)
    assert_same_answer(direct, through)
    if runner.name == "dev":
        assert set(through.json()["error"]) >= {"message", "type", "code"}
    elif direct.status_code == 400:
        inner = json.loads(through.json()["detail"].removeprefix("Invalid request: Invalid request: "))
        assert inner["error"] == direct.json()["error"] and inner["upstream_status"] == 400
    else:
        assert through.status_code == 429  # rate limiting, never an instance failure; the message is the gateway's


def test_server_errors_keep_openais_error_shape(llm, wrapped):
    """The service's 5xx: the chute answers 502 with the service's error object at the top (what an
    OpenAI client reads), which on Chutes is an instance failure: the gateway retries elsewhere and
    otherwise answers 500 with its own body."""
    runner = wrapped[2]
    direct = llm.call("POST", "/v1/chat/completions", chat("overload please"))
    through = runner.cord("POST", "/v1/chat/completions", chat("overload please"))
    assert direct.status_code == 503
    assert_same_answer(direct, through)
    if runner.name == "dev":
        assert through.status_code == 502
        assert through.json()["error"]["message"] == "The engine is overloaded (mock)"
    else:
        assert through.status_code == 500 and through.json() == {"detail": "No infrastructure available to serve request"}


def test_models_and_embeddings(llm, wrapped):
    runner = wrapped[2]
    drop_created = lambda body: [{k: v for k, v in m.items() if k != "created"} for m in body["data"]]  # noqa: E731
    assert_same_answer(llm.call("GET", "/v1/models"), runner.cord("GET", "/v1/models"), drop_created)
    body = {"model": "text-embedding-ada-002", "input": ["a", "b"]}
    assert_same_answer(llm.call("POST", "/v1/embeddings", body), runner.cord("POST", "/v1/embeddings", body))


def test_gemini_route_with_a_parameter_inside_a_segment_through_the_catch_all(llm, wrapped):
    """`/v1beta/models/{model_id}:generateContent`: the parameter is part of a segment. Fails until
    the catch-all's templates match parameters inside a segment (tools/runtime/cords/catch_all.py Template.of)."""
    runner = wrapped[2]
    body = {"contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]}
    path = "/v1beta/models/gemini-pro:generateContent"
    direct = llm.call("POST", path, body)
    through = runner.templated("POST", path, body)
    assert_same_answer(direct, through)


def test_the_chutes_api_document_is_valid_and_a_client_generated_from_it_calls_stubllm(llm, wrapped,
                                                                                       tmp_path_factory):
    """The chute's API document, read by a real validator and a real client generator
    (openapi-python-client); the generated client calls stubllm through the chute."""
    from tests.support.client_generator import generate_client

    _, module, runner = wrapped
    document = chute_document(module, runner)  # validated there
    assert {"/v1/chat/completions", "/v1/models", "/v1/embeddings"} <= set(document["paths"])
    client_package, _ = generate_client(document, tmp_path_factory.mktemp("llm-client"), f"llm_client_{runner.name}")
    AuthenticatedClient = client_package.AuthenticatedClient
    get_v1_models, post_v1_chat_completions = (importlib.import_module(f"{client_package.__name__}.api.default.{name}")
                                               for name in ("get_v1_models", "post_v1_chat_completions"))
    PostV1ChatCompletionsBody = importlib.import_module(f"{client_package.__name__}.models").PostV1ChatCompletionsBody

    with AuthenticatedClient(base_url=runner.base_url, token="cpk_local_test", timeout=60,
                             raise_on_unexpected_status=True) as client:
        answer = post_v1_chat_completions.sync(client=client, body=PostV1ChatCompletionsBody.from_dict(chat("hello")))
        assert completion(answer) == completion(llm.call("POST", "/v1/chat/completions", chat("hello")).json())
        assert answer["choices"][0]["message"]["content"] == "Hello from stubllm, nice to meet you."
        ids = [model["id"] for model in llm.call("GET", "/v1/models").json()["data"]]  # each stamped with the time
        assert [model["id"] for model in get_v1_models.sync(client=client)["data"]] == ids
