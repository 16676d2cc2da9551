"""How proxy cords shape answers for the platform's gateway: whole UTF-8 lines, binary as base64."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from tools.runtime.sdk.call import _lines


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
