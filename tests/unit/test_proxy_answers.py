"""How proxy cords shape answers for the platform's gateway: whole UTF-8 lines, binary as base64, the
gateway's own `stream` decision, JSON only where the gateway re-serialises it faithfully."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.runtime.sdk.call import Answer, _lines, gateway_reads_json, gateway_stream


def cipher(text) -> str:
    """A stand-in for the node's encryption: one line of ASCII, whatever the text holds."""
    return base64.b64encode(text.encode("utf-8") if isinstance(text, str) else text).decode()


async def collect(chunks, text: bool) -> list[str]:
    async def source():
        for chunk in chunks:
            yield chunk

    out = [line async for line in _lines(source(), text, cipher)]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in out)
    # as the gateway does: decrypt each line and decode it as UTF-8, strictly
    return [base64.b64decode(line[:-1]).decode("utf-8") for line in out]


async def test_a_chunk_that_splits_a_utf8_character_is_held_until_the_character_is_whole():
    data = "données → 🎧".encode()
    cut = data.index("🎧".encode()) + 2  # in the middle of the 4-byte emoji
    lines = await collect([data[:cut], data[cut:]], text=True)
    assert "".join(lines) == "données → 🎧"
    assert all("\ufffd" not in line for line in lines)


async def test_binary_answers_become_base64_text_that_decodes_whole():
    data = bytes(range(256)) * 3 + b"\x00\xff"
    lines = await collect([data[:5], data[5:100], data[100:]], text=False)
    assert base64.b64decode("".join(lines)) == data


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=200), st.lists(st.integers(min_value=1, max_value=7), max_size=40))
def test_any_text_in_any_chunking_arrives_whole_and_unchanged(text, sizes):
    import asyncio

    data = text.encode()
    chunks, start = [], 0
    for size in sizes:
        chunks.append(data[start:start + size])
        start += size
    chunks.append(data[start:])
    lines = asyncio.run(collect([c for c in chunks if c], text=True))
    assert "".join(lines) == text


async def test_an_empty_answer_on_a_stream_call_is_one_empty_line():
    """The gateway answers a stream without a first line 500; one empty line is an empty 200."""
    assert await collect([], text=True) == [""]
    assert await collect([b""], text=False) == [""]


# --- the node decides `stream` as the gateway does -----------------------------------------------

STREAM_VALUES = [  # (value in the body, the gateway's decision: Python truthiness)
    (True, True), (False, False), (0, False), (1, True), (-1, True), (2**100, True), (0.0, False),
    (-0.0, False), (0.5, True), ("", False), ("false", True), ("0", True), (None, False), ([], False),
    ([0], True), ({}, False), ({"a": 1}, True),
]


@pytest.mark.parametrize("value, expected", STREAM_VALUES)
def test_a_stream_key_in_the_body_decides_by_truthiness_whatever_the_query_says(value, expected):
    # router.py:460: a body key wins over the query string even when its value is false or null
    assert gateway_stream({"stream": value}, {}) is expected
    assert gateway_stream({"stream": value}, {"stream": "1"}) is expected
    assert gateway_stream({"stream": value, "x": 1}, {"stream": ""}) is expected


@pytest.mark.parametrize("query, expected", [
    ({}, False), ({"stream": ""}, False), ({"stream": "false"}, True), ({"stream": "0"}, True),
    ({"stream": "1"}, True), ({"stream": "true"}, True), ({"other": "1"}, False),
])
def test_without_a_body_key_the_query_strings_value_decides_as_a_string(query, expected):
    assert gateway_stream({}, query) is expected
    assert gateway_stream({"x": 1}, query) is expected


def test_a_body_that_is_no_object_never_streams():
    """The gateway answers such a body itself (500): no cord is called, nothing to decide."""
    assert gateway_stream(["stream"], {"stream": "1"}) is False
    assert gateway_stream(None, {"stream": "1"}) is False


@pytest.mark.parametrize("raw, faithful", [
    (b'{"a": 1}', True), (b"[1, 2.5, null]", True), (b'"text"', True), (b"18446744073709551615", True),
    (b"-9223372036854775808", True), (b'{"id": "123456789012345678901234"}', True),
    (b"18446744073709551616", False),  # orjson reads it as a float: the caller would get 1.8446744073709552e+19
    (b"-9223372036854775809", False), (b'{"n": NaN}', False), (b"[Infinity]", False), (b"1e400", False),
    (b'"\\ud800"', False), (b'"\xff"', False), (b'{"a": 1}\n{"a": 2}\n', False), (b"", False),
])
def test_only_json_the_gateway_re_serialises_faithfully_goes_as_json(raw, faithful):
    assert gateway_reads_json(raw) is faithful


def test_an_error_body_is_utf8_even_with_a_lone_surrogate_in_it():
    """The gateway reads a 400's body as text; it must always be UTF-8 (and still JSON)."""
    answer = Answer.json({"detail": "bad key \ud800_base64"}, 400)
    text = answer.body.decode("utf-8")
    assert json.loads(text) == {"detail": "bad key \ud800_base64"}
