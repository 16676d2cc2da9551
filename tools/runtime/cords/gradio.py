"""A Gradio function as a cord: Gradio's two-step call, run inside the cord for each caller's call.

No sticky session is needed: files are uploaded first (`POST <prefix>/upload`), then `POST
<prefix>/call/<api_name>` with the arguments in order answers an `event_id`, and `GET
<prefix>/call/<api_name>/<event_id>` streams SSE events (`generating`, `complete`, `error`,
`heartbeat`). The answer (README, "Wrapping a Gradio App"):
  - one output that is a file: the file itself, with its content type (fetched from the app);
  - otherwise JSON: the value of a single output, or the list of several, files inlined as
    {"name", "content_type", "size", "base64"};
  - with "stream": true, an SSE stream of the items a generator yields (`data: <json>` each);
  - `gr.Error` 400 with its message as {"detail": ...}; a full queue 503; an app failure 502.

Caller conventions: named arguments, defaults filled in from the manifest, unknown names a 400;
a file argument as `<name>_base64` (or `<name>` as a data: URL), optional `<name>_filename` and
`<name>_content_type`. How a function is found: tools/discovery/gradio.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

import aiohttp
from loguru import logger

from starlette.requests import Request  # FastAPI hands the request to a handler by this annotation

from tools.runtime.cords.answer import SMALL_BODY, error
from tools.runtime.cords.pool import UpstreamPool
from tools.runtime.cords.request import OFFLOAD_BYTES, decode_file, sniff
from tools.runtime.errors import BadRequest, CallFailed
from tools.runtime.gradio_spec import GradioFunction, Parameter
from tools.runtime.routes import extension_for
from tools.runtime.sdk.call import Answer, incoming, reply

FILE_DATA = "gradio.FileData"  # Gradio's marker of a file object ({"path", "url", "meta": {"_type"}})
STREAM_KEYS = ("stream", "_stream")  # the caller's "give me the generator's items" flag
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


async def _join(app: App, function: GradioFunction, data: list[Any]) -> str:
    """Step one: the call joins the app's queue; answers its event id."""
    url = app.url(f"/call/{quote(function.api_name, safe='')}")
    async with app.session.post(url, json={"data": data}, headers=_PLAIN, timeout=app.client_timeout()) as answer:
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
        raise CallFailed(502, f"the app has no function /{function.api_name} (any more): rediscover its routes")
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


async def _events(app: App, function: GradioFunction, event_id: str) -> AsyncIterator[tuple[str, Any]]:
    """Step two: (event, data) of the call's SSE stream, heartbeats left out."""
    url = app.url(f"/call/{quote(function.api_name, safe='')}/{quote(event_id, safe='')}")
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
                event, data = _parse_event(block)
                if event and event != "heartbeat":
                    yield event, data
            if len(buffer) > MAX_EVENT_BYTES:
                raise CallFailed(502, f"the app sent an event larger than {MAX_EVENT_BYTES >> 20} MB")


def _parse_event(block: bytes) -> tuple[str | None, Any]:
    event, lines = None, []
    for line in block.decode("utf-8", "replace").split("\n"):
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))
    text = "\n".join(lines)
    try:
        return event, json.loads(text) if text else None
    except ValueError:
        return event, text


def _error_event(function: GradioFunction, data: Any) -> CallFailed:
    """An `error` event: gr.Error (its title and message are sent) is the caller's 400; anything
    else is the app failing (a message only with show_error=True; Gradio 4.x sends none)."""
    if isinstance(data, Mapping):
        message = data.get("error")
        if message and "title" in data:
            return CallFailed(400, str(message))
        if message:
            return CallFailed(502, f"the app failed: {message}")
    elif isinstance(data, str) and data:
        return CallFailed(502, f"the app failed: {data}")
    return CallFailed(502, f"the app failed while running /{function.api_name} and sent no reason (Gradio sends "
                           "it with show_error=True; versions before 5 never do, not even for gr.Error)")


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
        if event == "error":
            raise _error_event(function, data)
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
        data = await _arguments(app, function, prepared)
        event_id = await _join(app, function, data)
        events = _events(app, function, event_id)
        if prepared.stream:
            try:
                return await _stream_answer(app, function, events)
            except BaseException:
                await events.aclose()
                raise
        result = None
        try:
            async for event, value in events:
                if event == "error":
                    raise _error_event(function, value)
                if event == "complete":
                    result = value
                    break
        finally:
            await events.aclose()
        if result is None:
            raise CallFailed(502, f"the app closed {label}'s result stream without a result")
        if function.single_file_output and isinstance(result, list) and len(result) == 1 and _is_file(result[0]):
            return await _file_answer(app, result[0])
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
