"""A Gradio 5 Blocks app as people write them (tests/realservices/test_realsvc_gradio5.py): text
functions that refuse bad input with gr.Error, one that breaks on one input, a generator, a function
with a gr.State, and a chat (gr.ChatInterface, messages). Launched with Gradio's defaults
(show_error=False), on 127.0.0.1 only: `python gradio5_app.py PORT`.
"""

from __future__ import annotations

import sys

import gradio as gr


def summarize(text: str, max_words: float = 5) -> str:
    """The first words of a text."""
    if not text.strip():
        raise gr.Error("Nothing to summarize: give some text", title="Empty input")
    words = text.split()
    return " ".join(words[: int(max_words)]) + (" ..." if len(words) > max_words else "")


def word_stats(text: str) -> dict:
    """Counts of a text, as JSON."""
    words = text.split()
    return {"words": len(words), "chars": len(text), "unique": len({w.lower() for w in words})}


def spell(word: str):
    """A generator: the word, one more letter each time."""
    if len(word) > 40:
        raise gr.Error("A word of at most 40 letters, please")
    for end in range(1, len(word) + 1):
        yield word[:end]


def shout(text: str) -> str:
    """Upper case; breaks (a bug, not a refusal) on one input."""
    if text == "crash please":
        raise RuntimeError("the shouting module broke")
    return text.upper()


def add_note(note: str, notes: list) -> tuple[str, list]:
    """Notes kept in a gr.State for the browser session."""
    notes = (notes or []) + [note]
    return f"{len(notes)} notes: {'; '.join(notes)}", notes


def assistant(message: str, history: list) -> str:
    """A chat that remembers: it names the user's previous message."""
    before = [m["content"] for m in history if m.get("role") == "user"]
    reply = f"You said {message!r}"
    if before:
        reply += f"; before that {before[-1]!r}"
    return reply + f" ({len(history)} messages so far)"


def build() -> gr.Blocks:
    with gr.Blocks(title="notes and chat") as demo:
        text = gr.Textbox(label="text")
        words = gr.Number(value=5, precision=0, label="max words")
        summary = gr.Textbox(label="summary")
        gr.Button("summarize").click(summarize, [text, words], summary, api_name="summarize")
        stats = gr.JSON(label="stats")
        gr.Button("stats").click(word_stats, text, stats, api_name="word_stats")
        spelled = gr.Textbox(label="spelled")
        gr.Button("spell").click(spell, text, spelled, api_name="spell")
        gr.Button("shout").click(shout, text, summary, api_name="shout")
        notes = gr.State([])
        listed = gr.Textbox(label="notes")
        gr.Button("note").click(add_note, [text, notes], [listed, notes], api_name="add_note")
        gr.ChatInterface(assistant, type="messages")
    return demo


if __name__ == "__main__":
    build().queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
