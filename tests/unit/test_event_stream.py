"""EventStream, the SSE response: it ends at the client's disconnect (closing the stream it follows), and a
stream that ends by itself leaves no cancellation behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.types import Message

from api.streams import EventStream

SCOPE = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET"}


async def test_a_disconnect_ends_the_response_and_closes_its_stream() -> None:
    closed = asyncio.Event()
    sent: list[Message] = []
    gone = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"event: token\n\n"
            await asyncio.Event().wait()  # a job that never ends
            yield b"never"
        finally:
            closed.set()

    async def receive() -> Message:
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("body"):
            gone.set()

    async def request() -> str:
        await EventStream(body())(SCOPE, receive, send)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.01)  # the request task goes on: no cancellation is left pending
        return f"returned, cancelling={task.cancelling()}"

    assert await asyncio.wait_for(request(), 2) == "returned, cancelling=0"
    assert closed.is_set()
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]


async def test_a_stream_that_ends_completes_the_response_and_stops_listening() -> None:
    sent: list[Message] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"event: done\n\n"

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await EventStream(body())(SCOPE, receive, send)
    await asyncio.sleep(0.01)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert not [task for task in asyncio.all_tasks() if "_disconnect" in repr(task.get_coro())]
