"""`queued` events of the event streams of queued jobs: one poll per model per second for all of them.

Once a second, for each model whose queued jobs some event stream of this API process follows, one pipeline
reads where each of these jobs stands (position.lua) and the model's rate comes from the Estimator's cache. A
stream is sent `event: queued` with `{"queue_position", "estimated_start_at"}` when its job's position changed
since the last one it was sent; the first once it has followed the job for `FIRST_AFTER_SECONDS` (a job that
starts at once sends none). A rise is sent once two polls in a row show it: a job that has just finished leaves
the running set a moment before its entry leaves the queue, which reads as one more job ahead for that moment.
Thousands of streams of a job share its one read and its one encoded frame.

These events have no `id:` line: `Last-Event-ID` names entries of the job's token stream, and a client resumes
after them the same whether or not it saw `queued` events. A job is followed from the moment its stream opens
while it is queued until it leaves the queue (it starts, or is cancelled): a retry queued again later is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from api.estimate import Estimator, Place
from api.streams import sse_event
from shared.connection import REDIS_ERRORS

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often the followed jobs of a model are read: at most one `queued` event a second per stream."""
FIRST_AFTER_SECONDS = 1.0
"""How long a stream follows a queued job before its first `queued` event."""

Send = Callable[[bytes], None]
"""Hands a frame to one event stream (api/streams.py `_Inbox.note`)."""


class _Subscriber:
    __slots__ = ("send", "sent", "since")

    def __init__(self, send: Send, since: float) -> None:
        self.send = send
        self.since = since
        self.sent: int | None = None
        """The position in the last event sent."""


class _Followed:
    """A queued job followed by some streams of this process."""

    __slots__ = ("arq", "polled", "subscribers")

    def __init__(self, arq: str) -> None:
        self.arq = arq
        self.subscribers: set[_Subscriber] = set()
        self.polled: int | None = None
        """Its position at the previous poll."""


class QueueWatch:
    def __init__(
        self,
        estimator: Estimator,
        *,
        every: float = POLL_SECONDS,
        first_after: float = FIRST_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._estimator = estimator
        self._every = every
        self._first_after = first_after
        self._clock = clock
        self._jobs: dict[str, dict[str, _Followed]] = {}
        """Model → key id → the followed job."""
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @contextlib.contextmanager
    def follow(self, kid: str, model: str, arq: str, send: Send) -> Iterator[None]:
        """While in it, `send` gets the `queued` frames of job `kid` (queue entry `arq`) as long as it is queued."""
        jobs = self._jobs.setdefault(model, {})
        followed = jobs.setdefault(kid, _Followed(arq))
        subscriber = _Subscriber(send, self._clock())
        followed.subscribers.add(subscriber)
        if model not in self._tasks:
            self._tasks[model] = asyncio.create_task(self._run(model))
        try:
            yield
        finally:
            followed.subscribers.discard(subscriber)
            if not followed.subscribers and jobs.get(kid) is followed:
                del jobs[kid]

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, model: str) -> None:
        """Poll the model's followed jobs every second, until none is left."""
        try:
            while True:
                await asyncio.sleep(self._every)
                if not self._jobs.get(model):
                    return
                try:
                    await self.poll(model)
                except REDIS_ERRORS as exc:
                    logger.warning("could not read the queue positions of model %s: %s", model, exc)
        finally:
            del self._tasks[model]
            if not self._jobs.get(model):
                self._jobs.pop(model, None)

    async def poll(self, model: str) -> None:
        """Read where the followed jobs of the model stand, and send the streams their news (the model's task
        calls it every `every` seconds)."""
        jobs = self._jobs.get(model, {})
        followed = list(jobs.items())
        places = await self._estimator.positions([(kid, model, job.arq) for kid, job in followed])
        rate = await self._estimator.rate(model) if any(place is not None for place in places) else None
        now = self._clock()
        for (kid, job), place in zip(followed, places, strict=True):
            if place is None:
                if jobs.get(kid) is job:
                    del jobs[kid]
                continue
            self._send(job, place, rate, now)
            job.polled = place.position

    def _send(self, job: _Followed, place: Place, rate: float | None, now: float) -> None:
        frame: bytes | None = None
        for subscriber in job.subscribers:
            if now - subscriber.since < self._first_after or not self._news(subscriber.sent, place.position, job):
                continue
            if frame is None:
                data = {"queue_position": place.position, "estimated_start_at": Estimator.start_at(place, rate)}
                frame = sse_event("queued", data)
            subscriber.sent = place.position
            subscriber.send(frame)

    @staticmethod
    def _news(sent: int | None, position: int, job: _Followed) -> bool:
        """Whether `position` is to be sent to a stream that was last sent `sent`: a change, and for a rise, one
        that the previous poll showed too."""
        if sent is None or position < sent:
            return True
        return position > sent and job.polled is not None and job.polled > sent
