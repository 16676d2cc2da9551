"""A real Gradio app with one function of every kind the chute must carry (tests/gradio).

Run with the Gradio test venv's Python: `python app.py PORT`. Listens on 127.0.0.1 only; writes its
files under GRADIO_TEMP_DIR (the test sets it to a temporary directory).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import tempfile
import time

import gradio as gr
from PIL import Image, ImageOps


def greet(name: str) -> str:
    """A text function."""
    return f"Hello, {name}!"


def repeat(text: str, times: float = 2) -> str:
    """A function with a default argument (the component's initial value)."""
    return " ".join([text] * int(times))


def stats(text: str) -> dict:
    """A function answering JSON."""
    words = text.split()
    return {"words": len(words), "chars": len(text), "longest": max(words, key=len) if words else None}


def invert(image: Image.Image) -> Image.Image:
    """An image in, an image out."""
    return ImageOps.invert(image.convert("RGB"))


def count(n: float):
    """A generator: one item per step."""
    for i in range(1, int(n) + 1):
        time.sleep(0.05)
        yield f"step {i} of {int(n)}"


def file_info(path: str) -> dict:
    """A file upload: the server-side file's name, size and digest."""
    with open(path, "rb") as handle:
        data = handle.read()
    return {"name": os.path.basename(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def make_file(text: str) -> str:
    """A file download: a text file the app writes."""
    fd, path = tempfile.mkstemp(prefix="report-", suffix=".txt", dir=os.environ.get("GRADIO_TEMP_DIR"))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"report for {text}\n")
    return path


def fail(text: str) -> str:
    """Always refuses, as a Gradio app refuses bad input."""
    raise gr.Error(f"cannot process {text!r}")


def crash(text: str) -> str:
    """Fails as a bug does: an exception that is not gr.Error."""
    raise ValueError(f"unexpected input {text!r}")


def caption(image: Image.Image) -> tuple[str, Image.Image]:
    """Several outputs, one of them a file."""
    return f"{image.width}x{image.height}", image.convert("L")


def remember(text: str, notes: list) -> tuple[str, list]:
    """A function with a gr.State input and output (which Gradio's API info leaves out)."""
    notes = (notes or []) + [text]
    return f"{len(notes)} notes: {', '.join(notes)}", notes


def plain(history: list) -> list[tuple[str, str]]:
    """(role, text) of every turn, whatever the version hands a ChatInterface: [user, bot] pairs
    (4.x tuples), {"role", "content"} messages, content as parts [{"type": "text", "text"}] (6.x)."""
    turns = []
    for item in history or []:
        if isinstance(item, (list, tuple)):
            turns += [(role, text) for role, text in zip(("user", "assistant"), item) if text is not None]
            continue
        content = item.get("content")
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        turns.append((item.get("role"), content))
    return turns


def chat(message: str, history: list) -> str:
    """A ChatInterface function: the reply names the message and the turns it was given."""
    turns = plain(history)
    return f"{message!r} after {len(turns)} turns: " + " | ".join(f"{role}: {text}" for role, text in turns)


def build() -> gr.Blocks:
    with gr.Blocks(title="chutes-wrappers test app") as demo:
        name = gr.Textbox(label="name")
        greeting = gr.Textbox(label="greeting")
        gr.Button("greet").click(greet, name, greeting, api_name="greet")

        text = gr.Textbox(label="text")
        times = gr.Number(value=2, precision=0, label="times")
        repeated = gr.Textbox(label="repeated")
        gr.Button("repeat").click(repeat, [text, times], repeated, api_name="repeat")

        summary = gr.JSON(label="summary")
        gr.Button("stats").click(stats, text, summary, api_name="stats")

        image_in = gr.Image(type="pil", label="image")
        image_out = gr.Image(type="pil", format="png", label="inverted")
        gr.Button("invert").click(invert, image_in, image_out, api_name="invert")

        steps = gr.Number(value=3, precision=0, label="n")
        progress = gr.Textbox(label="progress")
        gr.Button("count").click(count, steps, progress, api_name="count")

        upload = gr.File(type="filepath", label="file")
        info = gr.JSON(label="info")
        gr.Button("file_info").click(file_info, upload, info, api_name="file_info")

        download = gr.File(label="report")
        gr.Button("make_file").click(make_file, text, download, api_name="make_file")

        refused = gr.Textbox(label="refused")
        gr.Button("fail").click(fail, text, refused, api_name="fail")

        gr.Button("crash").click(crash, text, refused, api_name="crash")

        size = gr.Textbox(label="size")
        gray = gr.Image(type="pil", format="png", label="gray")
        gr.Button("caption").click(caption, image_in, [size, gray], api_name="caption")

        notes = gr.State(value=["seed"])
        noted = gr.Textbox(label="noted")
        gr.Button("remember").click(remember, [text, notes], [noted, notes], api_name="remember")

        # its API function is `chat` (4.x, 5.x: "chat"; 6.x: the function's name)
        kwargs = {"type": "messages"} if "type" in inspect.signature(gr.ChatInterface.__init__).parameters else {}
        gr.ChatInterface(chat, **kwargs)
    return demo


if __name__ == "__main__":
    port = int(sys.argv[1])
    build().queue(default_concurrency_limit=4).launch(
        server_name="127.0.0.1", server_port=port, share=False, show_error=True, quiet=True,
    )
