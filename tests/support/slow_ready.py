"""A service that opens its port long before it can answer, as model servers do while loading.

    python tests/support/slow_ready.py --port P --delay S --log FILE

Listens on 127.0.0.1:P at once. For the first S seconds every request is answered 503 ("loading");
after that GET /ready answers 200 and POST /predict echoes its JSON. Each request is appended to FILE
as `early|ready METHOD PATH`, so a test sees whether anything but the readiness probe came early.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    ready_at = time.monotonic() + args.delay

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            ready = time.monotonic() >= ready_at
            with open(args.log, "a", encoding="utf-8") as log:
                log.write(f"{'ready' if ready else 'early'} {self.command} {self.path}\n")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not ready:
                status, data = 503, b'{"detail": "loading"}'
            elif self.path == "/ready":
                status, data = 200, b'{"ready": true}'
            elif self.path == "/predict":
                status, data = 200, json.dumps({"echo": json.loads(body or b"{}")}).encode()
            else:
                status, data = 404, b'{"detail": "not found"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
