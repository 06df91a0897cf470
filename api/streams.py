"""One shared reader per API process follows the token streams of every SSE subscriber.

The reader blocks in a single XREAD over all followed streams on its own connection; a new
stream interrupts it with CLIENT UNBLOCK. Each subscriber replays the history itself (XRANGE),
then takes live entries from its queue, skipping ids it has already sent: no gap, no repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from shared.connection import REDIS_ERRORS
from shared.streams import EventType, StreamEvent, parse_entries, stream_id

logger = logging.getLogger(__name__)

_PAGE = 1000
_ONCE_SECONDS = 5.0

T = TypeVar("T")


class StreamHub:
    def __init__(self, reader: Redis, redis: Redis, *, block_ms: int = 10_000) -> None:
        self._reader = reader  # a single-connection client, used only by the reading task
        self._redis = redis
        self._block_ms = block_ms
        self._subscribers: dict[str, set[asyncio.Queue[list[StreamEvent]]]] = {}
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
        async with contextlib.aclosing(self.follow_batches(key, after, keepalive)) as batches:
            async for batch in batches:
                if not batch:
                    yield None
                for event in batch:
                    yield event

    async def follow_batches(
        self, key: str, after: str = "0-0", keepalive: float = 15.0
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """The events of `follow`, in the batches they come in (so that a subscriber writes each batch at
        once); an empty batch means "still alive"."""
        queue: asyncio.Queue[list[StreamEvent]] = asyncio.Queue()
        last = after

        def fresh(events: list[StreamEvent]) -> list[StreamEvent]:
            """The events after `last`, up to and including `done`: no repeat across replay and live."""
            nonlocal last
            batch = []
            for event in events:
                if stream_id(event.id) <= stream_id(last):
                    continue
                batch.append(event)
                last = event.id
                if event.type is EventType.DONE:
                    break
            return batch

        def ended(batch: list[StreamEvent]) -> bool:
            return bool(batch) and batch[-1].type is EventType.DONE

        try:
            batch = fresh(await self._history(key, last, "+"))
            if batch:
                yield batch
            if ended(batch):
                return
            position = self._subscribe(key, queue, last)
            if stream_id(position) > stream_id(last):
                # The reader is already past our replay: fill the gap from history.
                batch = fresh(await self._history(key, last, position))
                if batch:
                    yield batch
                if ended(batch):
                    return
            while True:
                try:
                    events = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    yield []
                    continue
                while not queue.empty():  # whatever else already came goes out in the same write
                    events = events + queue.get_nowait()
                batch = fresh(events)
                if batch:
                    yield batch
                if ended(batch):
                    return
        finally:
            self._unsubscribe(key, queue)

    async def _history(self, key: str, after: str, until: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while True:
            entries = await self._redis.xrange(key, min=f"({after}", max=until, count=_PAGE)
            events += parse_entries(entries)
            if len(entries) < _PAGE:
                return events
            after = entries[-1][0]

    def _subscribe(self, key: str, queue: asyncio.Queue[list[StreamEvent]], after: str) -> str:
        self._subscribers.setdefault(key, set()).add(queue)
        if key not in self._positions:
            self._positions[key] = after
            self._changed.set()
            self._interrupt()
        return self._positions[key]

    def _unsubscribe(self, key: str, queue: asyncio.Queue[list[StreamEvent]]) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            return
        subscribers.discard(queue)
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
                events = parse_entries(entries)
                for queue in self._subscribers.get(key, ()):
                    queue.put_nowait(events)
