"""A plain Starlette app whose /raise route raises, served by real uvicorn (h11, uvicorn's HTTP/1.1
implementation when httptools is not installed): Starlette answers 500, then uvicorn closes the
connection without having said `Connection: close`, as it does for any app that raises.

    python -m uvicorn tests.support.raising_app:app --http h11 --port PORT
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def raise_(request: Request):
    await request.body()
    raise RuntimeError("the app's own bug")


async def echo(request: Request):
    return JSONResponse({"echo": await request.json()})


app = Starlette(routes=[Route("/raise", raise_, methods=["POST"]),
                        Route("/echo", echo, methods=["POST", "PATCH"])])
