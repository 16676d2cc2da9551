"""A service that answers `POST /payload {"kind", "size"}` with benchlib's payload from memory.

  python bench/payload_service.py --port 8040

What bench/platform wraps: the answer's cost in the service is nil, so every millisecond a call
through the chute takes over a direct call is the chute's (the node's and the gateway's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import KINDS, payload  # noqa: E402


def app():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def answer(request: Request) -> Response:
        body = await request.json()
        kind, size = body.get("kind"), body.get("size")
        if kind not in KINDS or not isinstance(size, int) or not 0 < size <= 64 << 20:
            return JSONResponse({"detail": f"kind: one of {KINDS}; size: 1 to 64 MiB"}, status_code=422)
        data, content_type = payload(kind, size)
        return Response(data, media_type=content_type)

    return Starlette(routes=[Route("/payload", answer, methods=["POST"])])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
