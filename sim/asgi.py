"""Responses that notice a client disconnect at once, even while nothing is being written.

Uvicorn silently drops writes to a closed connection, so a disconnect is only visible through
`receive()` returning `http.disconnect`. Work runs in its own task next to a watcher of
`receive()`; when the client goes away the work is cancelled, which aborts the request in the
scheduler and frees its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

Emit = Callable[[bytes], Awaitable[None]]
# Writes the body through `emit`; returns False to leave the response unfinished (a cut connection).
Producer = Callable[[Emit], Coroutine[Any, Any, bool]]


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work`; cancel it and return None as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    return None if task.cancelled() else task.result()


class LiveStream(Response):
    """A streaming response whose producer is cancelled when the client goes away.

    The producer writes straight to `send` (no async generator in between: this is the per-token
    path). When it returns False the app returns without finishing the body, and uvicorn closes
    the connection: the client sees the stream end without its terminating chunk.
    """

    def __init__(self, producer: Producer, media_type: str | None, headers: Mapping[str, str]) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._producer = producer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def emit(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        if await until_disconnect(receive, self._producer(emit)):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class Hang(Response):
    """Never answers: holds the connection open, sending nothing, until the client goes away."""

    def __init__(self, on_disconnect: Callable[[], None]) -> None:
        self.status_code = 200
        self.background = None
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await wait_disconnect(receive)
        self._on_disconnect()
