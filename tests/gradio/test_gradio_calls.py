"""Every kind of Gradio function called through the chute answers what the app answers directly
through Gradio's two-step HTTP API (tests/gradio/conftest.py `Direct`)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest
import requests

pytestmark = pytest.mark.integration


def png(width: int = 4, height: int = 3) -> bytes:
    """A small real PNG with distinct pixels (no Pillow here: written by hand)."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + b"".join(bytes((x * 40 % 256, y * 60 % 256, 200)) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call(chute_url: str, name: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{chute_url}/{name}", json=body, timeout=60, **kwargs)


@pytest.fixture
def via_gateway(request, chute_url) -> bool:
    """The chute is reached through the platform's gateway (tests/gradio/conftest.py `chute_url`)."""
    return request.node.callspec.params["chute_url"] == "platform"


def test_text_function(chute_url, direct):
    answer = call(chute_url, "greet", {"name": "Ada"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == direct.result("greet", ["Ada"])[0] == "Hello, Ada!"


def test_default_argument_is_filled_in(chute_url, direct):
    answer = call(chute_url, "repeat", {"text": "ab"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == direct.result("repeat", ["ab", 2])[0] == "ab ab"
    assert call(chute_url, "repeat", {"text": "ab", "times": 3}).json() == direct.result("repeat", ["ab", 3])[0]


def test_json_answer(chute_url, direct):
    answer = call(chute_url, "stats", {"text": "to be or not"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    assert answer.json() == direct.result("stats", ["to be or not"])[0] == {"words": 4, "chars": 12, "longest": "not"}


def test_image_in_image_out_is_the_file_itself(chute_url, direct):
    image = png()
    answer = call(chute_url, "invert", {"image_base64": b64(image)})
    assert answer.status_code == 200, answer.text
    expected, expected_type = direct.file(direct.result("invert", [direct.upload(image, "image.png", "image/png")])[0])
    assert answer.headers["content-type"] == expected_type == "image/png"
    assert answer.content == expected
    # inverted for real: the first pixel (0, 0, 200) became (255, 255, 55)
    import zlib

    raw = zlib.decompress(answer.content[answer.content.index(b"IDAT") + 4:])
    assert raw[1:4] == bytes((255, 255, 55))


def test_image_as_data_url(chute_url):
    url = "data:image/png;base64," + b64(png())
    answer = call(chute_url, "invert", {"image": url})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"


def test_generator_final_value_without_stream(chute_url, direct):
    answer = call(chute_url, "count", {"n": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json() == direct.result("count", [3])[0] == "step 3 of 3"


def test_generator_streams_its_items(chute_url, direct):
    items = []
    with call(chute_url, "count", {"n": 4, "stream": True}, stream=True) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines(decode_unicode=True):
            assert not line.startswith("event: error"), line
            if line.startswith("data:"):
                items.append(json.loads(line[5:]))
    expected = [value[0] for kind, value in direct.events("count", [4]) if kind == "generating"]
    assert items == expected == [f"step {i} of 4" for i in range(1, 5)]


def test_file_upload(chute_url, direct):
    data = b"some notes\n" * 100
    answer = call(chute_url, "file_info", {"path_base64": b64(data), "path_filename": "notes.txt"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == direct.result("file_info", [direct.upload(data, "notes.txt", "text/plain")])[0]
    assert answer.json() == {"name": "notes.txt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    as_url = call(chute_url, "file_info", {"path": "data:text/plain;base64," + b64(data)})
    assert as_url.status_code == 200 and as_url.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_file_download(chute_url, direct, via_gateway):
    answer = call(chute_url, "make_file", {"text": "Q3"})
    assert answer.status_code == 200, answer.text
    expected, expected_type = direct.file(direct.result("make_file", ["Q3"])[0])
    assert answer.content == expected == b"report for Q3\n"
    assert answer.headers["content-type"] == expected_type
    if not via_gateway:  # the gateway passes on the content type only
        assert "report-" in answer.headers["content-disposition"]


def test_several_outputs_inline_their_files(chute_url, direct):
    image = png(5, 2)
    answer = call(chute_url, "caption", {"image_base64": b64(image)})
    assert answer.status_code == 200, answer.text
    size, gray = answer.json()
    expected = direct.result("caption", [direct.upload(image, "image.png", "image/png")])
    assert size == expected[0] == "5x2"
    data, content_type = direct.file(expected[1])
    assert base64.b64decode(gray["base64"]) == data and gray["content_type"] == content_type == "image/png"
    assert gray["size"] == len(data) and gray["name"].endswith(".png")


def test_gr_error_is_a_400_with_its_message(chute_url, direct, via_gateway):
    answer = call(chute_url, "fail", {"text": "this"})
    assert answer.status_code == 400
    kind, value = direct.events("fail", ["this"])[-1]
    assert kind == "error"
    assert value["error"] == "cannot process 'this'"
    if via_gateway:  # a miner's 400 reaches the caller inside the gateway's own message
        assert json.dumps(value["error"]) in answer.json()["detail"]
    else:
        assert answer.json() == {"detail": value["error"]}


def test_a_state_input_is_filled_by_the_app_from_a_fresh_session(chute_url, direct):
    """gr.State is left out of the API info; the call sends null there and the app uses its initial
    value (a fresh session per call, so one caller's notes never reach another)."""
    session = f"direct-remember-{uuid.uuid4().hex[:8]}"
    assert direct.in_session("remember", ["a", None], session)[0] == "2 notes: seed, a"
    assert direct.in_session("remember", ["b", None], session)[0] == "3 notes: seed, a, b"  # the app's session keeps it
    for _ in range(2):  # the chute's calls do not
        answer = call(chute_url, "remember", {"text": "a"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == "2 notes: seed, a"


def test_a_chat_interface_answers_with_the_callers_history(chute_url, direct):
    """The history a caller holds is what the app's own session would hold after those turns."""
    session = f"direct-chat-{uuid.uuid4().hex[:8]}"
    first = direct.in_session("chat", ["my name is Ada", None], session)[0]
    second = direct.in_session("chat", ["what is my name?", None], session)[0]
    history = [{"role": "user", "content": "my name is Ada"}, {"role": "assistant", "content": first}]
    answer = call(chute_url, "chat", {"message": "what is my name?", "history": history})
    assert answer.status_code == 200, answer.text
    assert answer.json() == second == f"'what is my name?' after 2 turns: user: my name is Ada | assistant: {first}"
    alone = call(chute_url, "chat", {"message": "hi"})
    assert alone.status_code == 200 and alone.json() == "'hi' after 0 turns: "
    as_pairs = call(chute_url, "chat", {"message": "what is my name?", "history": [["my name is Ada", first]]})
    assert as_pairs.json() == second
    bad = call(chute_url, "chat", {"message": "x", "history": [{"who": "me"}]})
    assert bad.status_code == 400 and "history[0]" in bad.text


def test_unknown_argument_is_a_400_naming_it(chute_url):
    answer = call(chute_url, "repeat", {"text": "ab", "bogus": 1})
    assert answer.status_code == 400
    assert "'bogus'" in answer.json()["detail"] and "text, times" in answer.json()["detail"]


def test_missing_argument_and_bad_file_are_400(chute_url):
    missing = call(chute_url, "greet", {})
    assert missing.status_code == 400 and "'name'" in missing.json()["detail"]
    bad = call(chute_url, "invert", {"image_base64": "not base64!"})
    assert bad.status_code == 400 and "image_base64" in bad.json()["detail"]
    not_url = call(chute_url, "invert", {"image": "/etc/passwd"})
    assert not_url.status_code == 400 and "data: URL" in not_url.json()["detail"]


def test_an_app_failure_is_a_502_with_the_apps_reason(chute_url, direct, via_gateway):
    answer = call(chute_url, "crash", {"text": "x"})
    kind, value = direct.events("crash", ["x"])[-1]
    assert kind == "error" and "title" not in value  # not a gr.Error: the app itself broke
    if via_gateway:  # an instance failure: the gateway answers its own 500
        assert answer.status_code == 500
        return
    assert answer.status_code == 502
    assert answer.json()["detail"] == f"the app failed: {value['error']}" == "the app failed: unexpected input 'x'"


async def test_an_app_that_is_not_answering_is_a_503(gradio_module):
    """The cord's call against a port nobody listens on (the app stopped or still starting)."""
    import aiohttp

    from tests.conftest import free_port
    from tools.runtime.routes import read_manifest_file
    from tools.runtime.cords.gradio import call_function

    greet = next(r.gradio for r in read_manifest_file(gradio_module / "deploy_gradioapp.routes.json").routes
                 if r.path == "/greet")
    async with aiohttp.ClientSession() as session:
        answer = await call_function(session, free_port(), greet, {"name": "x"}, 10)
    assert answer.status == 503 and dict(answer.headers)["Retry-After"]
    assert "not answering" in json.loads(answer.body)["detail"]


def cipher(data) -> str:
    """A stand-in for the platform's cipher: like it, one line of ASCII for any bytes or text."""
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def decipher(text) -> str:
    return base64.b64decode(text).decode()


async def test_on_a_node_answers_are_the_envelopes_the_gateway_decodes(gradio_module, gradio_app):
    """On a node (the SDK's encryption set): JSON as {"json": enc}, a file as a Response envelope with
    its media type, a generator's items as one encrypted UTF-8 text per line."""
    import aiohttp

    from tools.runtime.cords.gradio import call_function
    from tools.runtime.routes import read_manifest_file
    from tools.runtime.sdk.call import Call, reply

    whole, lines_call = Call(None, [], encrypt=cipher), Call(None, [], encrypt=cipher, stream=True)
    fns = {r.path: r.gradio for r in read_manifest_file(gradio_module / "deploy_gradioapp.routes.json").routes}
    async with aiohttp.ClientSession() as session:
        answer = await reply(whole, await call_function(session, gradio_app.port, fns["/greet"], {"name": "Ada"}, 30))
        greeting = json.loads(answer.body)  # the envelope, rendered as the gateway reads it
        assert json.loads(decipher(greeting["json"])) == "Hello, Ada!"
        answer = await reply(whole, await call_function(session, gradio_app.port, fns["/make_file"], {"text": "Q4"}, 30))
        report = json.loads(answer.body)
        assert decipher(report["body"]) == "report for Q4\n" and report["media_type"].startswith("text/plain")
        streamed = await reply(lines_call, await call_function(session, gradio_app.port, fns["/count"],
                                                               {"n": 2, "stream": True}, 30))
        lines = [line async for line in streamed.body_iterator]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    text = "".join(decipher(line[:-1].decode()) for line in lines)
    assert text == 'data: "step 1 of 2"\n\ndata: "step 2 of 2"\n\n'
