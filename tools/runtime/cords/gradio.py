"""A Gradio function as a cord: Gradio's own call, run inside the cord for each caller's call.

No sticky session is needed: files are uploaded first (`POST <prefix>/upload`), then `POST
<prefix>/call/<api_name>` with the arguments in order and a fresh `session_hash` answers an
`event_id`, and `GET <prefix>/queue/data?session_hash=...` streams the call's messages
(`process_generating`, `process_completed`, ...). That pair works alike on Gradio 4.x, 5.x and 6.x,
and unlike the second step of the two-step API (`GET <prefix>/call/<api_name>/<event_id>`, which
sends `data: null` with every error up to 6.12) it carries the error's payload: a `gr.Error` is told
from a crash by its `duration`/`title`, and its message is sent whatever `show_error` says (the
exception of a crash only with show_error=True). The answer (README, "Wrapping a Gradio App"):
  - one output that is a file: the file itself, with its content type (fetched from the app);
  - otherwise JSON: the value of a single output, or the list of several, files inlined as
    {"name", "content_type", "size", "base64"};
  - with "stream": true, an SSE stream of the items a generator yields (`data: <json>` each);
  - `gr.Error` 400 with its message as {"detail": ...}; a full queue 503; an app failure 502.

Inputs the API info leaves out (gr.State) are sent as null: Gradio takes a State's value from the
session, never from the call. A ChatInterface's history is a State too: a caller's `history` is put
into the fresh session first (gradio_spec.ChatSpec says how the app takes it).

Caller conventions: named arguments, defaults filled in from the manifest, unknown names a 400;
a file argument as `<name>_base64` (or `<name>` as a data: URL), optional `<name>_filename` and
`<name>_content_type`. How a function is found: tools/discovery/gradio.py.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from loguru import logger

from starlette.requests import Request  # FastAPI hands the request to a handler by this annotation

from tools.runtime.cords.answer import SMALL_BODY, error
from tools.runtime.cords.pool import UpstreamPool
from tools.runtime.cords.request import OFFLOAD_BYTES, decode_file, sniff
from tools.runtime.errors import BadRequest, CallFailed
from tools.runtime.gradio_spec import ChatSpec, GradioFunction, Parameter
from tools.runtime.routes import extension_for
from tools.runtime.sdk.call import Answer, incoming, reply

FILE_DATA = "gradio.FileData"  # Gradio's marker of a file object ({"path", "url", "meta": {"_type"}})
STREAM_KEYS = ("stream", "_stream")  # the caller's "give me the generator's items" flag
HISTORY_KEY = "history"  # a ChatInterface function's history, as the caller holds it
MAX_EVENT_BYTES = 64 << 20  # one SSE event larger than this is an app failure, not a memory sink


# --------------------------------------------------------------------------------------------------
# The call: caller JSON -> arguments


@dataclass
class Upload:
    data: bytes
    content_type: str
    filename: str


@dataclass
class Prepared:
    """One call's arguments: plain values by name, files to upload first, and whether to stream."""

    values: dict[str, Any] = field(default_factory=dict)
    files: dict[str, list[Upload]] = field(default_factory=dict)
    stream: bool = False
    history: list[dict] | None = None  # a ChatInterface's: messages {"role", "content"}


def prepare(function: GradioFunction, payload: Any) -> Prepared:
    """The caller's named arguments checked against the function: BadRequest for what is wrong."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        names = ", ".join(p.name for p in function.parameters) or "no arguments"
        raise BadRequest(f"expected a JSON object of named arguments ({names})")
    body = dict(payload)
    names = {p.name for p in function.parameters}
    out = Prepared()
    for key in STREAM_KEYS:
        if key in body and key not in names:
            flag = body.pop(key)
            if not isinstance(flag, bool):
                raise BadRequest(f"{key}: expected true or false")
            out.stream = out.stream or flag
    if function.chat is not None and HISTORY_KEY not in names and HISTORY_KEY in body:
        out.history = _history(body.pop(HISTORY_KEY))
    for param in function.parameters:
        if param.is_file:
            uploads = _file_argument(param, body)
            if uploads is not None:
                out.files[param.name] = uploads
            elif not param.has_default:
                raise BadRequest(f"missing file argument {param.name!r}: send {param.name}_base64 (base64) "
                                 f"or {param.name} (a data: URL)")
            else:
                out.values[param.name] = param.default
            continue
        if param.name in body:
            out.values[param.name] = body.pop(param.name)
        elif param.has_default:
            out.values[param.name] = param.default
        else:
            raise BadRequest(f"missing argument {param.name!r} ({param.type})")
    if body:
        unknown = ", ".join(repr(key) for key in sorted(body))
        takes = ", ".join(p.name for p in function.parameters) or "no arguments"
        raise BadRequest(f"unknown argument(s) {unknown}: /{function.api_name} takes {takes}")
    return out


def _history(raw: Any) -> list[dict]:
    """A caller's chat history as messages: [{"role", "content"}, ...] (OpenAI's shape), or pairs
    [[user, assistant], ...] (Gradio's tuples); BadRequest for anything else."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest(f"{HISTORY_KEY}: expected a list of {{\"role\", \"content\"}} messages")
    messages = []
    for index, item in enumerate(raw):
        if isinstance(item, Mapping) and item.get("role") in ("user", "assistant", "system") and "content" in item:
            messages.append({"role": item["role"], "content": item["content"]})
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            messages += [{"role": role, "content": text} for role, text in zip(("user", "assistant"), item)
                         if text is not None]
        else:
            raise BadRequest(f"{HISTORY_KEY}[{index}]: expected {{\"role\": \"user\" | \"assistant\", \"content\": ...}} "
                             "or a [user, assistant] pair")
    return messages


def app_history(chat: ChatSpec, messages: list[dict]) -> list:
    """Messages as the app's Chatbot holds them: pairs for "tuples", content parts on 6.x."""
    if chat.format == "tuples":
        pairs: list[list] = []
        for message in messages:
            if message["role"] == "user":
                pairs.append([message["content"], None])
            elif message["role"] == "assistant":
                if pairs and pairs[-1][1] is None:
                    pairs[-1][1] = message["content"]
                else:
                    pairs.append([None, message["content"]])
        return pairs
    if chat.parts:
        return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]
                 if isinstance(m["content"], str) else m["content"]} for m in messages]
    return [dict(m) for m in messages]


def _file_argument(param: Parameter, body: dict) -> list[Upload] | None:
    name = param.name
    filename = body.pop(f"{name}_filename", None)
    content_type = body.pop(f"{name}_content_type", None)
    if f"{name}_base64" in body:
        raw, key = body.pop(f"{name}_base64"), f"{name}_base64"
        body.pop(name, None)
    elif name in body:
        raw, key = body.pop(name), name
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(item, str) and item.startswith("data:") for item in items):
            raise BadRequest(f"{name}: a file argument is a data: URL here, or base64 in {name}_base64")
    else:
        return None
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    if param.type == "file" and len(items) != 1:
        raise BadRequest(f"{key}: one file expected, got {len(items)}")
    uploads = []
    for index, item in enumerate(items):
        data, url_type = decode_file(key, item)
        ctype = str(content_type or url_type or sniff(data))
        stem = name if len(items) == 1 else f"{name}_{index}"
        uploads.append(Upload(data, ctype, str(filename or stem + (extension_for(ctype) or ".bin"))))
    return uploads


# --------------------------------------------------------------------------------------------------
# The call: two steps against the app


@dataclass
class App:
    """Where one call goes: the app's port and API prefix, and the session and timeout to use."""

    session: aiohttp.ClientSession
    port: int
    prefix: str
    timeout: float

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout, sock_connect=5.0)


# The pool's session does not decompress (the proxy passes bodies through): ask for plain bodies.
_PLAIN = {"Accept-Encoding": "identity"}


async def _upload(app: App, uploads: list[Upload]) -> list[dict]:
    form = aiohttp.FormData()
    for upload in uploads:
        form.add_field("files", upload.data, filename=upload.filename, content_type=upload.content_type)
    async with app.session.post(app.url("/upload"), data=form, headers=_PLAIN, timeout=app.client_timeout()) as answer:
        text = (await answer.read()).decode("utf-8", "replace")
        if answer.status == 413:  # the caller's file is too big: a caller's mistake is a 400 (proxy.py)
            raise CallFailed(400, f"the app refused the upload: {text[:300]}")
        if answer.status != 200:
            raise CallFailed(502, f"the app's upload answered {answer.status}", upstream_body=text[:2000])
    try:
        paths = json.loads(text)
    except ValueError:
        paths = None
    if not isinstance(paths, list) or len(paths) != len(uploads):
        raise CallFailed(502, "the app's upload answered no file paths", upstream_body=text[:2000])
    return [
        {"path": path, "orig_name": upload.filename, "size": len(upload.data), "mime_type": upload.content_type,
         "meta": {"_type": FILE_DATA}}
        for path, upload in zip(paths, uploads)
    ]


async def _arguments(app: App, function: GradioFunction, prepared: Prepared) -> list[Any]:
    data = []
    for param in function.parameters:
        if param.name in prepared.files:
            files = await _upload(app, prepared.files[param.name])
            data.append(files if param.type == "files" else files[0])
        else:
            data.append(prepared.values.get(param.name))
    return data


def with_hidden(function: GradioFunction, values: list[Any]) -> list[Any]:
    """The call's data in the app's own input order: null where an input is hidden (a gr.State)."""
    hidden = set(function.hidden_inputs)
    given = iter(values)
    return [None if index in hidden else next(given, None) for index in range(len(values) + len(hidden))]


async def _post_call(app: App, api_name: str, data: list[Any], session_hash: str) -> str:
    """Step one: the call joins the app's queue in `session_hash`; answers its event id."""
    url = app.url(f"/call/{quote(api_name, safe='')}")
    body = {"data": data, "session_hash": session_hash}
    async with app.session.post(url, json=body, headers=_PLAIN, timeout=app.client_timeout()) as answer:
        text = (await answer.read()).decode("utf-8", "replace")
        status = answer.status
    detail = _detail(text)
    if status == 200:
        try:
            event_id = json.loads(text)["event_id"]
        except (ValueError, KeyError, TypeError):
            raise CallFailed(502, "the app answered no event_id", upstream_body=text[:2000]) from None
        return str(event_id)
    if status == 503:
        raise CallFailed(503, f"the app is busy: {detail or 'its queue is full'}")
    if status == 404:
        raise CallFailed(502, f"the app has no function /{api_name} (any more): rediscover its routes")
    if status in (400, 422):
        raise CallFailed(400, detail or f"the app refused the arguments ({status})")
    raise CallFailed(502, f"the app failed: its call answered {status}", upstream_status=status,
                     upstream_body=text[:2000])


def _detail(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(doc, Mapping) and isinstance(doc.get("detail"), str):
        return doc["detail"]
    return text.strip()[:500]


# Messages of the queue stream that say nothing about the result.
_QUIET = ("heartbeat", "estimation", "process_starts", "log", "progress")


async def _events(app: App, session_hash: str, event_id: str) -> AsyncIterator[tuple[str, Any]]:
    """Step two: the call's messages from the session's queue stream, as (kind, data): "generating"
    (an item: the full value), "complete" (the result), "error" (the error payload), "unexpected"
    (Gradio's own failure message). Ends after the result."""
    url = app.url("/queue/data?" + urlencode({"session_hash": session_hash}))
    async with app.session.get(url, headers={**_PLAIN, "Accept": "text/event-stream"},
                               timeout=app.client_timeout()) as answer:
        if answer.status != 200:
            body = (await answer.content.read(4096)).decode("utf-8", "replace")
            raise CallFailed(502, f"the app's result stream answered {answer.status}", upstream_body=body)
        buffer = b""
        async for chunk in answer.content.iter_any():
            buffer += chunk.replace(b"\r\n", b"\n")
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                message = _parse_message(block)
                kind = message.get("msg")
                if kind in _QUIET or message.get("event_id") not in (None, event_id):
                    continue
                output = message.get("output") if isinstance(message.get("output"), Mapping) else {}
                if kind == "process_generating" and message.get("success", True):
                    yield "generating", output.get("data")
                elif kind == "process_completed":
                    yield ("complete", output.get("data")) if message.get("success") else ("error", message.get("output"))
                    return
                elif kind == "unexpected_error":
                    yield "unexpected", message.get("message")
                    return
                elif kind == "close_stream":
                    return
            if len(buffer) > MAX_EVENT_BYTES:
                raise CallFailed(502, f"the app sent an event larger than {MAX_EVENT_BYTES >> 20} MB")


def _parse_message(block: bytes) -> dict:
    lines = [line[5:].lstrip(" ") for line in block.decode("utf-8", "replace").split("\n") if line.startswith("data:")]
    try:
        message = json.loads("\n".join(lines)) if lines else {}
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _failure(function: GradioFunction, kind: str, payload: Any) -> CallFailed:
    """A failed call as the caller's answer. A gr.Error (its payload carries `duration`, and `title`
    from 5.3 on) is the app refusing the input: 400 with its message, which Gradio sends whatever
    show_error says. Anything else is the app failing: 502, with the exception's message where the
    app sends it (show_error=True). Never a 5xx for what may be a gr.Error."""
    if kind == "unexpected":
        return CallFailed(502, f"the app failed: {payload or 'Gradio reported an unexpected error'}")
    if not isinstance(payload, Mapping):
        return CallFailed(400, "the app raised an error")
    message = payload.get("error")
    if "duration" in payload or "title" in payload:
        return CallFailed(400, _gr_error_message(payload) or "the app raised an error")
    if message:
        return CallFailed(502, f"the app failed: {message}")
    return CallFailed(502, f"the app failed while running /{function.api_name} and sent no reason (Gradio sends "
                           "an exception's message with show_error=True in launch())")


def _gr_error_message(payload: Mapping) -> str | None:
    """A gr.Error's message. Before 5.3 Gradio sent str(gr.Error), which is repr(message): undone."""
    message = payload.get("error")
    if not isinstance(message, str):
        return None
    if "title" not in payload and len(message) >= 2 and message[0] == message[-1] and message[0] in "'\"":
        try:
            value = ast.literal_eval(message)
        except (ValueError, SyntaxError):
            return message
        return value if isinstance(value, str) else message
    return message


async def _step(app: App, api_name: str, data: list[Any], session_hash: str, what: str) -> Any:
    """One preparatory call in the session (a ChatInterface's history going in): its result, or a
    400 naming what the app refused."""
    event_id = await _post_call(app, api_name, data, session_hash)
    events = _events(app, session_hash, event_id)
    try:
        async for kind, value in events:
            if kind == "complete":
                return value
            if kind in ("error", "unexpected"):
                failure = _failure(GradioFunction(api_name=api_name), kind, value)
                raise CallFailed(400, f"the app refused the {what}: {failure.detail}")
    finally:
        await events.aclose()
    raise CallFailed(502, f"the app closed its result stream while taking the {what}")


# --------------------------------------------------------------------------------------------------
# The answer: outputs -> what the caller gets


def _is_file(value: Any) -> bool:
    return isinstance(value, Mapping) and (
        (value.get("meta") or {}).get("_type") == FILE_DATA if isinstance(value.get("meta"), Mapping)
        else ("path" in value and "url" in value and "orig_name" in value)
    )


def _file_path(app: App, value: Mapping) -> str | None:
    """The app-relative URL of a file output: its own `url` when it points at the app's file route,
    else one built from its server path. Never another host: only the app's port is fetched."""
    url = value.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.path.startswith(f"{app.prefix}/file="):
            return parts.path + (f"?{parts.query}" if parts.query else "")
    path = value.get("path")
    if isinstance(path, str) and path:
        return f"{app.prefix}/file={quote(path, safe='/')}"
    return None


async def _open_file(app: App, value: Mapping) -> aiohttp.ClientResponse:
    path = _file_path(app, value)
    if path is None:
        raise CallFailed(502, "the app answered a file with neither a path nor a URL on the app")
    answer = await app.session.get(f"http://127.0.0.1:{app.port}{path}", headers=_PLAIN,
                                   timeout=app.client_timeout())
    if answer.status != 200:
        answer.release()
        raise CallFailed(502, f"the app's file {path} answered {answer.status}")
    return answer


def _content_type(answer: aiohttp.ClientResponse, value: Mapping, data: bytes = b"") -> str:
    header = answer.headers.get("Content-Type")
    if header:
        return header
    return value.get("mime_type") or (sniff(data) if data else "application/octet-stream")


async def _inline(app: App, value: Any) -> Any:
    """The value with every file replaced by {"name", "content_type", "size", "base64"}."""
    if _is_file(value):
        answer = await _open_file(app, value)
        try:
            data = await answer.read()
        finally:
            answer.release()
        return {"name": value.get("orig_name") or str(value.get("path", "")).rsplit("/", 1)[-1],
                "content_type": _content_type(answer, value, data).split(";", 1)[0], "size": len(data),
                "base64": base64.b64encode(data).decode()}
    if isinstance(value, list):
        return [await _inline(app, item) for item in value]
    if isinstance(value, dict):
        return {key: await _inline(app, item) for key, item in value.items()}
    return value


async def _shaped(app: App, function: GradioFunction, data: Any) -> Any:
    """JSON of one result: the single output's value, or the list of several, files inlined."""
    if not isinstance(data, list):
        data = [data]
    if function.hidden_outputs:  # a gr.State output: the session's, never the caller's
        data = [value for index, value in enumerate(data) if index not in function.hidden_outputs]
    shaped = await _inline(app, data)
    return shaped[0] if len(function.outputs) <= 1 and len(shaped) == 1 else shaped


async def _file_answer(app: App, value: Mapping) -> Answer:
    answer = await _open_file(app, value)
    name = value.get("orig_name") or str(value.get("path", "")).rsplit("/", 1)[-1] or "file"
    headers = [("content-disposition", f"inline; filename*=UTF-8''{quote(str(name), safe='')}")]
    length = answer.content_length
    if length is not None and length > SMALL_BODY:
        media_type = _content_type(answer, value)
        return Answer(200, media_type, [("content-type", media_type), *headers], chunks=_chunks(answer), length=length,
                      text=False)
    try:
        data = await answer.read()
    finally:
        answer.release()
    media_type = _content_type(answer, value, data)
    return Answer(200, media_type, [("content-type", media_type), *headers], body=data, text=False)


async def _chunks(answer: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.content.iter_any():
            yield chunk
    finally:
        answer.release()


def _sse(item: Any, event: str | None = None) -> bytes:
    return ((f"event: {event}\n" if event else "") + f"data: {json.dumps(item)}\n\n").encode()


async def _stream_answer(app: App, function: GradioFunction, events: AsyncIterator[tuple[str, Any]]) -> Answer:
    """An SSE stream of the generator's items; a call that fails before its first item is an error
    answer with its status, one that fails later ends the stream with an `error` event."""
    first = await _next_item(function, events)
    if first is None:
        raise CallFailed(502, f"the app closed /{function.api_name}'s result stream without a result")

    async def items() -> AsyncIterator[bytes]:
        step, seen = first, False
        try:
            while step is not None:
                kind, data = step
                if kind == "complete" and seen:
                    return  # Gradio repeats the generator's last item as the result
                seen = seen or kind == "generating"
                yield _sse(await _shaped(app, function, data))
                step = await _next_item(function, events)
        except CallFailed as exc:
            yield _sse({"detail": exc.detail, "status": exc.status}, "error")
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            yield _sse({"detail": f"the app broke off /{function.api_name}: {type(exc).__name__}", "status": 502}, "error")
        finally:
            await events.aclose()

    media_type = "text/event-stream"
    return Answer(200, media_type, [("content-type", media_type), ("cache-control", "no-cache")],
                  chunks=items(), sse=True)


async def _next_item(function: GradioFunction, events: AsyncIterator[tuple[str, Any]]) -> tuple[str, Any] | None:
    async for event, data in events:
        if event in ("error", "unexpected"):
            raise _failure(function, event, data)
        if event in ("generating", "complete"):
            return event, data
    return None


async def call_function(
    session: aiohttp.ClientSession, port: int, function: GradioFunction, payload: Any,
    timeout: float, *, prepared: Prepared | None = None,
) -> Answer:
    """One call of `function` on the app at 127.0.0.1:`port`, answered as the module docstring says.

    Never raises to the caller: every failure is an error answer {"detail": ...} with its status.
    """
    app = App(session, port, function.api_prefix, timeout)
    label = f"/{function.api_name} on port {port}"
    try:
        prepared = prepared or prepare(function, payload)
        values = await _arguments(app, function, prepared)
        session_hash = secrets.token_hex(8)  # a session of its own: no State of another caller's
        api_name, data, reshape = function.api_name, with_hidden(function, values), None
        if prepared.history and function.chat is not None:
            api_name, data, reshape = await _history_into_session(app, function, function.chat, prepared.history,
                                                                  values, session_hash, data)
        event_id = await _post_call(app, api_name, data, session_hash)
        events = _events(app, session_hash, event_id)
        if reshape is not None:
            events = _reshaped(events, reshape)
        if prepared.stream:
            try:
                return await _stream_answer(app, function, events)
            except BaseException:
                await events.aclose()
                raise
        result = None
        try:
            async for event, value in events:
                if event in ("error", "unexpected"):
                    raise _failure(function, event, value)
                if event == "complete":
                    result = value
                    break
        finally:
            await events.aclose()
        if result is None:
            raise CallFailed(502, f"the app closed {label}'s result stream without a result")
        visible = [v for i, v in enumerate(result) if i not in function.hidden_outputs] \
            if isinstance(result, list) else result
        if function.single_file_output and isinstance(visible, list) and len(visible) == 1 and _is_file(visible[0]):
            return await _file_answer(app, visible[0])
        return Answer.json(await _shaped(app, function, result))
    except BadRequest as exc:
        return error(400, str(exc))
    except CallFailed as exc:
        if exc.status >= 500:
            logger.warning(f"gradio {label}: {exc.detail}")
        return error(exc.status, exc.detail, **exc.extra)
    except asyncio.TimeoutError:
        return error(504, f"the app did not finish {label} within {timeout:g}s")
    except (aiohttp.ClientConnectionError, OSError) as exc:
        logger.warning(f"gradio {label}: {type(exc).__name__}: {exc}")
        return error(503, f"the app on port {port} is not answering (still starting, or stopped)")


async def _history_into_session(
    app: App, function: GradioFunction, chat: ChatSpec, history: list[dict], values: list[Any], session_hash: str,
    data: list[Any],
) -> tuple[str, list[Any], Callable[[Any], Any] | None]:
    """Put a caller's chat history into the fresh session; returns what to call then (api name,
    data) and how to turn its results into the function's own (None: they are the function's)."""
    held = app_history(chat, history)
    if chat.setter:  # 5.x (later), 6.x: copy it into the function's history State, then call as usual
        await _step(app, chat.setter, [held], session_hash, "history")
        return function.api_name, data, None
    if not (chat.save and chat.submit):
        raise BadRequest(f"/{function.api_name} takes no history on this Gradio version: send the message alone")
    # 4.x, 5.0: the message into the saved-input State, then the Chatbot's step with the history
    # and that message: it answers the Chatbot's new value, whose last message is the reply.
    message = values[0] if values else None
    await _step(app, chat.save, [message] + [None] * (chat.save_inputs - 1), session_hash, "message")
    user = [message, None] if chat.format == "tuples" else {"role": "user", "content": message}
    extra = iter(values[1:])
    submit = [None if role == "state" else held + [user] if role == "chatbot" else next(extra, None)
              for role in chat.submit_inputs]

    def reply(value: Any) -> Any:
        chatbot = value[0] if isinstance(value, list) and value else None  # the step's first output: the Chatbot
        last = chatbot[-1] if isinstance(chatbot, list) and chatbot else None
        if chat.format == "tuples":
            text = last[1] if isinstance(last, (list, tuple)) and len(last) == 2 else None
        else:
            text = last.get("content") if isinstance(last, Mapping) and last.get("role") == "assistant" else None
        return [text]

    return chat.submit, submit, reply


async def _reshaped(events: AsyncIterator[tuple[str, Any]], reshape: Callable[[Any], Any]) -> AsyncIterator[tuple[str, Any]]:
    try:
        async for kind, value in events:
            yield (kind, reshape(value)) if kind in ("generating", "complete") else (kind, value)
    finally:
        await events.aclose()


def gradio_handler(pool: UpstreamPool, port: int, function: GradioFunction, timeout: float):
    """The ASGI handler of one Gradio function's cord (the shape of handler.proxy_handler)."""

    async def handle(request: Request):
        call = None
        try:
            call = await incoming(request)
            if int(request.headers.get("content-length") or 0) > OFFLOAD_BYTES:
                # decoding megabytes of base64 would hold up every other call of the chute meanwhile
                prepared = await asyncio.to_thread(prepare, function, call.payload)
            else:
                prepared = prepare(function, call.payload)
        except BadRequest as exc:
            return await reply(call, error(400, str(exc)))
        return await reply(call, await call_function(pool.session(), port, function, call.payload, timeout,
                                                     prepared=prepared))

    return handle
