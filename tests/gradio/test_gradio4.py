"""Gradio 4 (routes without the /gradio_api prefix): discovery and every kind of function, the cord's
call against the real app answering what the app's two-step API answers directly. The chute in
front is the same as for Gradio 6 (test_gradio_calls.py); here the call is made in-process."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import aiohttp
import pytest

from tests.gradio.conftest import Direct
from tests.gradio.test_gradio_calls import png
from tools.discover_routes import Config, Display, discover
from tools.runtime.cords.gradio import call_function
from tools.runtime.sdk.call import reply

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def functions(gradio4_app, tmp_path_factory):
    out = tmp_path_factory.mktemp("g4") / "m.json"
    with open("/dev/null", "w") as quiet:
        result = discover(Config(base_url=gradio4_app.url, output=str(out), live=False), Display(quiet, live=False))
    assert result.outcomes[gradio4_app.port].kind == "gradio"
    return {route.path: route.gradio for route in result.manifest.routes}


@pytest.fixture(scope="module")
def direct4(gradio4_app) -> Direct:
    return Direct(gradio4_app.url, prefix="")


async def call(app, function, body):
    async with aiohttp.ClientSession() as session:
        answer = await reply(None, await call_function(session, app.port, function, body, 30))  # plain HTTP
        if hasattr(answer, "body_iterator"):
            return answer, b"".join([chunk async for chunk in answer.body_iterator])
        return answer, answer.body


def test_discovery_without_prefix(functions):
    assert len(functions) == 12
    repeat = functions["/repeat"]
    assert repeat.api_prefix == "" and repeat.version.startswith("4.")
    assert repeat.parameters[1].has_default and repeat.parameters[1].default == 2
    assert functions["/count"].generator and functions["/invert"].single_file_output
    assert functions["/file_info"].file_parameters == ("path",)


async def test_text_default_and_json(gradio4_app, functions, direct4):
    _, body = await call(gradio4_app, functions["/greet"], {"name": "Ada"})
    assert json.loads(body) == direct4.result("greet", ["Ada"])[0]
    _, body = await call(gradio4_app, functions["/repeat"], {"text": "ab"})
    assert json.loads(body) == direct4.result("repeat", ["ab", 2])[0] == "ab ab"
    _, body = await call(gradio4_app, functions["/stats"], {"text": "a bb"})
    assert json.loads(body) == direct4.result("stats", ["a bb"])[0]


async def test_files_in_and_out(gradio4_app, functions, direct4):
    image = png()
    answer, body = await call(gradio4_app, functions["/invert"], {"image_base64": base64.b64encode(image).decode()})
    expected, expected_type = direct4.file(direct4.result("invert", [direct4.upload(image, "image.png", "image/png")])[0])
    assert (body, answer.media_type or answer.headers["content-type"]) == (expected, expected_type)
    data = b"notes" * 10
    _, body = await call(gradio4_app, functions["/file_info"], {"path_base64": base64.b64encode(data).decode(),
                                                               "path_filename": "n.txt"})
    assert json.loads(body) == direct4.result("file_info", [direct4.upload(data, "n.txt", "text/plain")])[0]
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
    _, body = await call(gradio4_app, functions["/make_file"], {"text": "Q"})
    assert body == direct4.file(direct4.result("make_file", ["Q"])[0])[0] == b"report for Q\n"
    _, body = await call(gradio4_app, functions["/caption"], {"image_base64": base64.b64encode(image).decode()})
    size, gray = json.loads(body)
    expected = direct4.result("caption", [direct4.upload(image, "image.png", "image/png")])
    assert size == expected[0] and base64.b64decode(gray["base64"]) == direct4.file(expected[1])[0]


async def test_generator(gradio4_app, functions, direct4):
    _, body = await call(gradio4_app, functions["/count"], {"n": 3})
    assert json.loads(body) == direct4.result("count", [3])[0]
    answer, body = await call(gradio4_app, functions["/count"], {"n": 3, "stream": True})
    items = [json.loads(line[5:]) for line in body.decode().split("\n") if line.startswith("data:")]
    assert items == [value[0] for kind, value in direct4.events("count", [3]) if kind == "generating"]


async def test_gr_error_is_a_400_with_its_message_and_a_crash_a_502(gradio4_app, functions, direct4):
    """Gradio 4's two-step API sends `error` with no data, for gr.Error as for a crash; the queue
    stream the cord reads has the payload: gr.Error's message (Gradio 4 sends it as repr(), undone)."""
    assert direct4.events("fail", ["x"])[-1] == ("error", None)
    answer, body = await call(gradio4_app, functions["/fail"], {"text": "x"})
    assert answer.status_code == 400 and json.loads(body) == {"detail": "cannot process 'x'"}
    answer, body = await call(gradio4_app, functions["/crash"], {"text": "x"})
    assert answer.status_code == 502 and json.loads(body)["detail"] == "the app failed: unexpected input 'x'"


async def test_a_state_input_and_a_chat_interface_with_history(gradio4_app, functions, direct4):
    remember = functions["/remember"]
    assert remember.hidden_inputs == (1,) and remember.hidden_outputs == (1,)
    _, body = await call(gradio4_app, remember, {"text": "a"})
    assert json.loads(body) == "2 notes: seed, a"
    chat = functions["/chat"]
    assert chat.chat is not None and chat.chat.setter is None and chat.chat.submit  # 4.x: the UI's chain replayed
    session = f"direct-chat-{uuid.uuid4().hex[:8]}"
    first = direct4.in_session("chat", ["my name is Ada", None], session)[0]
    second = direct4.in_session("chat", ["what is my name?", None], session)[0]
    assert second.startswith("'what is my name?' after 2 turns: user: my name is Ada | assistant: ")
    history = [{"role": "user", "content": "my name is Ada"}, {"role": "assistant", "content": first}]
    answer, body = await call(gradio4_app, chat, {"message": "what is my name?", "history": history})
    assert answer.status_code == 200 and json.loads(body) == second
    _, body = await call(gradio4_app, chat, {"message": "hi"})
    assert json.loads(body) == "'hi' after 0 turns: "
