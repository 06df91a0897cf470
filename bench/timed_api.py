"""`python -m bench.timed_api`: `python -m api` exactly, with a `Server-Timing: app;dur=<ms>` header added.

For the benchmarks only, nothing of it is in the product: it wraps the application that `api/__main__.py`
builds in an ASGI middleware timing each request inside the server, from the moment uvicorn hands the
request to the application (its head parsed; the body may still be arriving) to the moment the
application starts its answer (for a JSON answer, the body is rendered by then). What the header
does not include: parsing the request head and writing the answer to the socket, both in uvicorn.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import api.__main__ as entry
from api.main import create_app as _create_app
from shared.settings import Settings


class ServerTiming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = f"app;dur={1000 * (time.perf_counter() - began):.3f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", header)]}
            await send(message)

        await self.app(scope, receive, timed_send)


def create_app(settings: Settings | None = None) -> ASGIApp:
    return ServerTiming(_create_app(settings))


if __name__ == "__main__":
    vars(entry)["create_app"] = create_app  # the name api/__main__.py calls
    entry.main()
