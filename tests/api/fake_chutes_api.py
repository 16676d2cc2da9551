"""A local stand-in for the Chutes API (the endpoints deploy.sh and the `chutes` CLI use), on loopback.

It speaks the real wire format and checks every request's authentication as the real API does:
either a hotkey signature (X-Chutes-Hotkey/-Nonce/-Signature over `hotkey:nonce:sha256(body)` or
`hotkey:nonce:purpose`, verified with the sr25519 public key) or `Authorization: Bearer <api key>`.
A request that fails the check gets 401 and is recorded in `auth_failures`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tools.runtime.sdk import keys

# Which purpose the SDK signs each kind of bodiless request with (chutes/crud.py, entrypoint/*).
PURPOSES = {"users": "me", "chutes": "chutes", "images": "images", "instances": "logs"}


@dataclass
class State:
    hotkey: str
    username: str = "testuser"
    user_id: str = "9b1c7d64-0000-4000-8000-000000000001"
    balance: float = 12.5
    payment_address: str = "5PaymentAddressForTests"
    api_key: str | None = None
    chutes: dict[str, dict] = field(default_factory=dict)
    images: dict[str, dict] = field(default_factory=dict)
    require_fee: bool = True
    hot_after: int = 2  # quick warmups before a chute turns hot
    warmups: dict[str, int] = field(default_factory=dict)
    log_lines: int = 5
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # "METHOD /path-prefix" -> (status, detail)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, auth kind)
    auth_failures: list[str] = field(default_factory=list)
    deployed: list[dict] = field(default_factory=list)
    uploads: list[dict] = field(default_factory=list)

    def add_chute(self, name: str, hot: bool = False, instances: int = 0, chute_id: str | None = None) -> dict:
        chute_id = chute_id or str(uuid.uuid4())
        chute = {
            "chute_id": chute_id,
            "name": name,
            "hot": hot,
            "slug": f"{self.username}-{name}",
            "created_at": "2025-01-01T00:00:00Z",
            "cord_ref_id": f"ref-{chute_id}",
            "node_selector": {"gpu_count": 1},
            "instances": [
                {"instance_id": str(uuid.uuid4()), "active": i == 0, "verified": i == 0, "region": "test",
                 "last_verified_at": None}
                for i in range(instances)
            ],
        }
        self.chutes[chute_id] = chute
        return chute

    def add_image(self, name: str, tag: str, image_id: str | None = None, status: str = "built and pushed") -> dict:
        image_id = image_id or str(uuid.uuid4())
        image = {"image_id": image_id, "name": name, "tag": tag, "status": status,
                 "created_at": "2025-01-01T00:00:00Z", "public": False}
        self.images[image_id] = image
        return image

    def find(self, kind: str, ref: str) -> dict | None:
        table = self.chutes if kind == "chutes" else self.images
        if ref in table:
            return table[ref]
        return next((item for item in table.values() if item["name"] == ref), None)


class Handler(BaseHTTPRequestHandler):
    server: "FakeChutesAPI"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if content_type == "application/json"
                                                     else str(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authenticate(self, purpose: str, body: bytes) -> str | None:
        """The auth kind ('hotkey' or 'api-key'), or None after answering 401."""
        state = self.server.state
        hotkey = self.headers.get("X-Chutes-Hotkey")
        signature = self.headers.get("X-Chutes-Signature")
        nonce = self.headers.get("X-Chutes-Nonce")
        if hotkey and signature:
            problem = None
            if not nonce or not nonce.isdigit() or abs(time.time() - int(nonce)) > 540:
                problem = "Invalid nonce!"
            elif hotkey != state.hotkey:
                problem = f"Could not find user with hotkey: {hotkey}"
            else:
                tail = hashlib.sha256(body).hexdigest() if body else purpose
                message = f"{hotkey}:{nonce}:{tail}"
                try:
                    ok = keys.verifier(hotkey).verify(message.encode(), bytes.fromhex(signature))
                except ValueError:
                    ok = False
                if not ok:
                    problem = f"Invalid request signature for hotkey {hotkey}. Message: {message}"
            if problem:
                state.auth_failures.append(f"{self.command} {self.path}: {problem}")
                self._send(401, {"detail": problem})
                return None
            return "hotkey"
        authorization = self.headers.get("Authorization") or ""
        token = authorization.split(" ")[-1]
        if token and state.api_key and token == state.api_key:
            return "api-key"
        state.auth_failures.append(f"{self.command} {self.path}: no valid credentials")
        self._send(401, {"detail": "Can't find a user with that api key in our db :("})
        return None

    def _route(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body()
        if parts == ["ping"]:
            return self._send(200, {"message": "pong"})
        purpose = PURPOSES.get(parts[0] if parts else "", "")
        kind = self._authenticate(purpose, body)
        if kind is None:
            return
        state.requests.append((self.command, url.path, kind))
        for key, (status, detail) in state.fail.items():
            method, _, prefix = key.partition(" ")
            if method == self.command and url.path.startswith(prefix):
                return self._send(status, {"detail": detail})
        handler = getattr(self, f"_{self.command.lower()}_{parts[0] if parts else 'root'}", None)
        if handler is None:
            return self._send(404, {"detail": "Not Found"})
        return handler(parts[1:], query, body)

    do_GET = do_POST = do_DELETE = _route

    # -- endpoints -------------------------------------------------------------------------------

    def _get_users(self, rest, query, body):
        state = self.server.state
        if rest != ["me"]:
            return self._send(404, {"detail": "Not Found"})
        return self._send(200, {
            "username": state.username, "user_id": state.user_id, "created_at": "2025-01-01T00:00:00Z",
            "hotkey": state.hotkey, "coldkey": "5Coldkey", "payment_address": state.payment_address,
            "developer_payment_address": "5Dev", "balance": state.balance, "bonus_used": False,
            "permissions_bitmask": 0, "permissions": [],
        })

    def _list(self, kind: str, query: dict) -> None:
        table = self.server.state.chutes if kind == "chutes" else self.server.state.images
        items = list(table.values())
        if query.get("name"):
            items = [i for i in items if query["name"] in i["name"]]
        limit, page = int(query.get("limit", 25)), int(query.get("page", 0))
        shown = items[page * limit:(page + 1) * limit]
        answer = {"total": len(items), "page": page, "limit": limit, "items": shown}
        if kind == "chutes":
            answer["cord_refs"] = {i["cord_ref_id"]: [] for i in shown}
        return self._send(200, answer)

    def _get_chutes(self, rest, query, body):
        state = self.server.state
        if not rest:
            return self._list("chutes", query)
        if rest[0] == "warmup" and len(rest) == 2:
            chute = state.find("chutes", rest[1])
            if chute is None:
                return self._send(404, {"detail": "Chute not found"})
            count = state.warmups[chute["chute_id"]] = state.warmups.get(chute["chute_id"], 0) + 1
            if count >= state.hot_after:
                chute["hot"] = True
                if not chute["instances"]:
                    chute["instances"].append({"instance_id": str(uuid.uuid4()), "active": True, "verified": True,
                                               "region": "test", "last_verified_at": None})
            return self._send(200, {"status": "hot" if chute["hot"] else "cold",
                                    "instance_count": len(chute["instances"]), "instances": chute["instances"]})
        chute = state.find("chutes", rest[0])
        if chute is None:
            return self._send(404, {"detail": "Chute not found"})
        return self._send(200, chute)

    def _delete_chutes(self, rest, query, body):
        state = self.server.state
        chute = state.find("chutes", rest[0]) if rest else None
        if chute is None:
            return self._send(404, {"detail": "Chute not found, or does not belong to you"})
        del state.chutes[chute["chute_id"]]
        return self._send(200, {"chute_id": chute["chute_id"], "deleted": True})

    def _post_chutes(self, rest, query, body):
        state = self.server.state
        try:
            request = json.loads(body)
        except json.JSONDecodeError:
            return self._send(400, {"detail": "bad JSON"})
        if state.require_fee and query.get("accept_fee") != "true":
            return self._send(402, {"detail": "A deployment fee of $1.50 applies: confirm it with --accept-fee"})
        image = state.find("images", request.get("image", ""))
        if image is None:
            return self._send(404, {"detail": "Image not found"})
        state.deployed.append(request)
        chute = state.add_chute(request["name"])
        return self._send(200, {"chute_id": chute["chute_id"], "name": chute["name"], "version": "1.0.0"})

    def _get_images(self, rest, query, body):
        state = self.server.state
        if not rest:
            return self._list("images", query)
        image = state.find("images", rest[0])
        if image is None:
            return self._send(404, {"detail": "Image not found"})
        if len(rest) == 2 and rest[1] == "logs":
            return self._send(200, f"build log of {image['name']}:{image['tag']}\nbuild complete\n", "text/plain")
        return self._send(200, image)

    def _post_images(self, rest, query, body):
        state = self.server.state
        content_type = self.headers.get("Content-Type", "")
        fields = {}
        if "multipart/form-data" in content_type:
            import email.parser
            import email.policy

            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name in ("username", "name", "tag"):
                    fields[name] = part.get_content().strip()
                elif name == "build_context":
                    fields["context_bytes"] = len(part.get_payload(decode=True) or b"")
        if not fields.get("name"):
            return self._send(400, {"detail": "no image name in the form"})
        image_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{fields['username']}/{fields['name']}:{fields['tag']}".lower()))
        state.uploads.append(fields)
        state.add_image(fields["name"], fields["tag"], image_id=image_id, status="building")
        return self._send(202, {"image_id": image_id})

    def _delete_images(self, rest, query, body):
        state = self.server.state
        image = state.find("images", rest[0]) if rest else None
        if image is None:
            return self._send(404, {"detail": "Image not found"})
        del state.images[image["image_id"]]
        return self._send(200, {"image_id": image["image_id"], "deleted": True})

    def _get_instances(self, rest, query, body):
        state = self.server.state
        if len(rest) != 2 or rest[1] != "logs":
            return self._send(404, {"detail": "Not Found"})
        known = {i["instance_id"] for c in state.chutes.values() for i in c["instances"]}
        if rest[0] not in known:
            return self._send(404, {"detail": "Instance not found"})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        for index in range(state.log_lines):
            chunk(b"data: " + json.dumps({"log": f"instance log line {index}"}).encode() + b"\n\n")
            chunk(b": keep-alive\n\n")
            time.sleep(0.02)
        chunk(b"data: " + json.dumps({"log": "."}).encode() + b"\n\n")  # a keep-alive dot, not shown
        chunk(b"")


class FakeChutesAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: State):
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "FakeChutesAPI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
