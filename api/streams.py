"""One shared reader per API process follows the token streams of every SSE subscriber.

The reader blocks in a single XREAD over all followed streams on its own connection; a new
stream interrupts it with CLIENT UNBLOCK. Each subscriber replays the history itself (XRANGE),
then takes live batches from its inbox, skipping ids it has already sent: no gap, no repeat.
A live batch is shared by all the subscribers of its stream, and so are its SSE frames: encoded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.connection import REDIS_ERRORS
from shared.streams import EventType, StreamEvent, parse_entries, stream_id

logger = logging.getLogger(__name__)

_PAGE = 1000
_ONCE_SECONDS = 5.0

T = TypeVar("T")


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Of every event stream: nothing caches it, and a proxy (nginx) passes each event on at once."""

SSE_DONE = b"data: [DONE]\n\n"
"""The last event of an OpenAI-compatible stream."""


def sse_data(data: Any) -> bytes:
    """A Server-Sent Event of data alone, as OpenAI's streams send them (a chunk, or an error's body mid-stream)."""
    return b"data: %s\n\n" % orjson.dumps(data)


def sse_frame(event: str, event_id: str, data: Any) -> bytes:
    """One Server-Sent Event: its type, its id (a stream id: `Last-Event-ID` resumes after it) and JSON data."""
    return b"event: %s\nid: %s\ndata: %s\n\n" % (event.encode(), event_id.encode(), orjson.dumps(data))


def sse_event(event: str, data: Any) -> bytes:
    """A Server-Sent Event without an id: news about the job that is no entry of its stream (e.g. `queued`), so
    that the client's `Last-Event-ID` stays that of the last entry it got."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


Watch = Callable[[Callable[[bytes], None]], AbstractContextManager[None]]
"""Given the function that hands a subscriber a frame of its own, a context in which other news of the job
(api/queue_events.py) is sent to it."""


class EventStream(StreamingResponse):
    """A `text/event-stream` response that stops at the client's disconnect like Starlette's StreamingResponse,
    but watches for it with one asyncio task and a callback instead of an anyio task group: ~5 µs per
    response instead of ~100, paid by a thousand subscribers together when their jobs end."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterable[bytes],
        status_code: int = 200,  # FastAPI reads the default status of a `response_class` here, for OpenAPI
        headers: Mapping[str, str] | None = None,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content, status_code, headers)
        self._on_close = on_close
        """Called once the response has ended, however it ended (e.g. to give back the stream's lease)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        watching, left = True, False

        def on_disconnect(listener: asyncio.Future[None]) -> None:
            nonlocal left
            if watching and not listener.cancelled() and listener.exception() is None:
                left = True
                streaming.cancel()

        listener = asyncio.ensure_future(_disconnect(receive))
        listener.add_done_callback(on_disconnect)
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not left:
                raise
            streaming.uncancel()  # the client went away: the response ends here, the request task goes on
        finally:
            watching = False
            listener.cancel()
            if self._on_close is not None:
                self._on_close()


async def _disconnect(receive: Receive) -> None:
    """Returns once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Batch:
    """Events of one stream taken together (by one XREAD, or a replay), up to and including `done`."""

    __slots__ = ("_frames", "done", "events", "first", "last")

    def __init__(self, events: list[StreamEvent]) -> None:
        for index, event in enumerate(events):
            if event.type is EventType.DONE:  # nothing follows it
                events = events[: index + 1]
                break
        self.events = events
        self.first = stream_id(events[0].id)
        self.last = stream_id(events[-1].id)
        self.done = events[-1] if events[-1].type is EventType.DONE else None
        self._frames: bytes | None = None

    @property
    def frames(self) -> bytes:
        """The SSE frames of the `token` and `reset` events, made by the first subscriber that needs them."""
        if self._frames is None:
            frames = []
            for event in self.events:
                if event.type is EventType.TOKEN:
                    frames.append(sse_frame("token", event.id, {"text": event.data}))
                elif event.type is EventType.RESET:
                    frames.append(sse_frame("reset", event.id, {"attempt": int(event.data)}))
            self._frames = b"".join(frames)
        return self._frames


class _Inbox:
    """The batches the reader hands one subscriber, and frames of its own (`notes`).

    A list and a future: an asyncio.Queue read under `wait_for` (for keep-alives) makes a task per wait.
    """

    __slots__ = ("_waiter", "batches", "notes")

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.notes: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self._waiter is not None:
            _wake(self._waiter)

    def note(self, frame: bytes) -> None:
        """A frame for this subscriber only, sent before the next batches (or alone: `take` returns [])."""
        self.notes.append(frame)
        if self._waiter is not None:
            _wake(self._waiter)

    def take_notes(self) -> bytes:
        if not self.notes:
            return b""
        notes, self.notes = self.notes, []
        return b"".join(notes)

    async def take(self, keepalive: float) -> list[Batch]:
        """The batches that came, waiting up to `keepalive` seconds for one; [] when none came."""
        if not self.batches:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(keepalive, _wake, self._waiter)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        batches, self.batches = self.batches, []
        return batches


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class StreamHub:
    def __init__(self, reader: Redis, redis: Redis, *, block_ms: int = 10_000) -> None:
        self._reader = reader  # a single-connection client, used only by the reading task
        self._redis = redis
        self._block_ms = block_ms
        self._subscribers: dict[str, set[_Inbox]] = {}
        self._positions: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        self._reading = False
        self._unblocking = False
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._once: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.aclose()

    async def once(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """`load()` once for every caller asking for `key` within a few seconds: the finished job that all
        subscribers of a stream need at its `done` event is read from Redis once, not once each."""
        task = self._once.get(key)
        if task is None:
            task = self._once[key] = asyncio.ensure_future(load())
            asyncio.get_running_loop().call_later(_ONCE_SECONDS, self._once.pop, key, None)
        result: T = await asyncio.shield(task)
        return result

    async def follow(
        self, key: str, after: str = "0-0", keepalive: float = 15.0
    ) -> AsyncGenerator[StreamEvent | None, None]:
        """Events of stream `key` after id `after`, up to and including `done`; None means "still alive"."""
        async with contextlib.aclosing(self._follow(key, after, keepalive)) as stream:
            async for batches in stream:
                if not batches:
                    yield None
                for batch in batches:
                    for event in batch.events:
                        yield event

    async def follow_frames(
        self,
        key: str,
        done_frame: Callable[[StreamEvent], Awaitable[bytes]],
        after: str = "0-0",
        keepalive: float = 15.0,
        watch: Watch | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The events of `follow` as SSE frames, whatever came at once in one piece (one socket write);
        b"" means "still alive". The frames of a live batch are made once for all the subscribers of the
        stream, and `done_frame(event)` (the finished job's frame: a Redis read) runs once for all of them.
        Within `watch`, the frames it sends come in between, each before the events that follow it."""
        inbox = _Inbox()
        watching = watch(inbox.note) if watch is not None else contextlib.nullcontext()
        with watching:
            async with contextlib.aclosing(self._follow(key, after, keepalive, inbox)) as stream:
                async for batches in stream:
                    frames = inbox.take_notes() + b"".join([batch.frames for batch in batches])
                    done = batches[-1].done if batches else None
                    if done is not None:
                        frames += await self.once(f"{key}:{done.id}", functools.partial(done_frame, done))
                    yield frames

    async def _follow(
        self, key: str, after: str, keepalive: float, inbox: _Inbox | None = None
    ) -> AsyncGenerator[list[Batch], None]:
        """The batches of stream `key` after id `after`, up to the one with `done`; [] means "still alive" (or
        that only notes came)."""
        inbox = _Inbox() if inbox is None else inbox
        last, last_id = stream_id(after), after

        def fresh(batches: list[Batch]) -> list[Batch]:
            """The events after `last`, up to `done`: no repeat across replay and live."""
            nonlocal last, last_id
            kept = []
            for batch in batches:
                if batch.first <= last:
                    events = [event for event in batch.events if stream_id(event.id) > last]
                    if not events:
                        continue
                    batch = Batch(events)
                kept.append(batch)
                last, last_id = batch.last, batch.events[-1].id
                if batch.done is not None:
                    break
            return kept

        def ended(batches: list[Batch]) -> bool:
            return bool(batches) and batches[-1].done is not None

        try:
            batches = fresh(await self._history(key, after, "+"))
            if batches:
                yield batches
            if ended(batches):
                return
            position = self._subscribe(key, inbox, last_id)
            if stream_id(position) > last:
                # The reader is already past our replay: fill the gap from history.
                batches = fresh(await self._history(key, last_id, position))
                if batches:
                    yield batches
                if ended(batches):
                    return
            while True:
                taken = await inbox.take(keepalive)
                if not taken:
                    yield []
                    continue
                batches = fresh(taken)
                if batches:
                    yield batches
                if ended(batches):
                    return
        finally:
            self._unsubscribe(key, inbox)

    async def _history(self, key: str, after: str, until: str) -> list[Batch]:
        events: list[StreamEvent] = []
        while True:
            entries = await self._redis.xrange(key, min=f"({after}", max=until, count=_PAGE)
            events += parse_entries(entries)
            if len(entries) < _PAGE:
                return [Batch(events)] if events else []
            after = entries[-1][0]

    def _subscribe(self, key: str, inbox: _Inbox, after: str) -> str:
        self._subscribers.setdefault(key, set()).add(inbox)
        if key not in self._positions:
            self._positions[key] = after
            self._changed.set()
            self._interrupt()
        return self._positions[key]

    def _unsubscribe(self, key: str, inbox: _Inbox) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            return
        subscribers.discard(inbox)
        if not subscribers:
            del self._subscribers[key]
            self._positions.pop(key, None)

    def _interrupt(self) -> None:
        """Make the blocked XREAD return so that it includes the new stream."""
        if self._reading and not self._unblocking and self._reader_id is not None:
            self._unblocking = True
            asyncio.get_running_loop().create_task(self._unblock(self._reader_id, self._generation))

    async def _unblock(self, reader_id: int, generation: int) -> None:
        """CLIENT UNBLOCK, repeated while the XREAD has not reached the server yet."""
        try:
            while self._reading and self._generation == generation:
                if await self._redis.client_unblock(reader_id):
                    return
                await asyncio.sleep(0.002)
        except REDIS_ERRORS as exc:
            logger.warning("could not interrupt the stream reader: %s", exc)

    async def _run(self) -> None:
        while True:
            if not self._positions:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                if self._reader_id is None:
                    self._reader_id = await self._reader.client_id()
                self._reading, self._unblocking = True, False
                self._generation += 1
                streams: dict[Any, Any] = dict(self._positions)
                reply: Any = await self._reader.xread(streams, count=_PAGE, block=self._block_ms)
            except REDIS_ERRORS as exc:
                logger.warning("stream reader lost Redis (%s); retrying", exc)
                self._reader_id = None
                await asyncio.sleep(0.5)
                continue
            finally:
                self._reading = False
            for key, entries in reply or ():
                if key not in self._positions or not entries:
                    continue
                self._positions[key] = entries[-1][0]
                batch = Batch(parse_entries(entries))
                for inbox in self._subscribers.get(key, ()):
                    inbox.put(batch)
