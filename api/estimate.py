"""When a queued job should start: its place in its model's queue, and the model's measured throughput.

The model. A model's workers run jobs side by side (continuous batching): a queued job starts when a running one
ends and frees its slot. If the model finishes `rate` jobs a second, the job with `position` jobs ahead of it
starts when `position + 1` more have ended: `now + (position + 1) / rate`, and never before its `not_before` (a
retry waiting out its backoff).

The rate is measured, not configured: the jobs the model finished per second while it was busy, from its activity
stream (one entry per finished job, written by finish.lua: its end as the entry id, `q` and `d` its times queued
and running). The model was busy while one of these jobs was queued or running (the union of their spans, from
creation to end): idle time between bursts is left out, and the workers' own time between two jobs (taking the
next one) is counted in, as a queued job waits on it too. While jobs wait, this is the workers' capacity. The
window is the last `HORIZON_MS` when all the jobs that finished in it were read, or else (a busy model) the time
since the first of the `SAMPLE` most recent ones: the jobs that finished in the window over the time in it during
which one of them was queued or running. Nothing finished within `HORIZON_MS`: no estimate (None).

Each API process reads a model's figures at most once per `CACHE_SECONDS`, shared by every request meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from api.multiplex import SharedConnection
from shared import keys
from shared.models import JobRecord, now_ms
from shared.scripts import load_script

HORIZON_MS = 10 * 60_000
"""Finished jobs older than this are not measured: the model's throughput may have changed since."""
SAMPLE = 500
"""The most recent finished jobs measured, at most: a few tens of kB read once a second per model and API
process."""
CACHE_SECONDS = 1.0
"""How long one API process reuses a model's measured rate."""

Activity = list[tuple[bytes, dict[bytes, bytes]]]
"""Entries of an activity stream as XREVRANGE returns them, undecoded (error messages need not be UTF-8)."""


def throughput(entries: Activity, since: float | None) -> float | None:
    """Jobs finished per second while the model was busy, from activity entries (any order): all the jobs that
    finished since `since` (ms), or when None the most recent ones only, measured from the first end among them.
    None when nothing was busy."""
    spans: list[tuple[float, float]] = []
    for entry_id, fact in entries:
        end = float(entry_id.split(b"-")[0])
        spans.append((end - max(0.0, float(fact.get(b"q", 0)) + float(fact.get(b"d", 0))), end))
    if not spans:
        return None
    spans.sort()
    start = min(end for _, end in spans) if since is None else since
    busy = _covered(spans, start, math.inf)
    return sum(1 for _, end in spans if end > start) * 1000 / busy if busy > 0 else None


def _covered(spans: list[tuple[float, float]], low: float, high: float) -> float:
    """The length of the union of `spans` (sorted by start) within [low, high], in ms."""
    covered, reach = 0.0, low
    for start, end in spans:
        end = min(end, high)
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


class Place(NamedTuple):
    """Where a queued job stands."""

    position: int
    """The jobs of its model that will start before it (0: next)."""
    not_before: int
    """Not taken before this time (ms; 0: no such time): a retry waiting out its backoff."""


def place_of(reply: list[int]) -> Place | None:
    """A reply of position.lua (None: the job is not queued)."""
    return None if reply[0] < 0 else Place(reply[0], reply[1])


def _position_keys(kid: str, model: str) -> list[str]:
    return [keys.job(kid), keys.queue(model), keys.running(model)]


def estimated_start(now: int, position: int, rate: float, not_before: int = 0) -> int:
    """When the job with `position` jobs ahead of it should start (ms), at `rate` jobs a second."""
    return max(now + math.ceil((position + 1) * 1000 / rate), not_before)


def iso_utc(ms: int) -> str:
    """ISO 8601 in UTC to the ms, as the jobs' dates (`created_at`) are written."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Estimator:
    """Queue positions and start estimates of one API process (see the module's docstring)."""

    def __init__(self, redis: Redis, shared: SharedConnection, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self._shared = shared
        """The API's pipelined connection: the position of a polled job costs no more than its read."""
        self._clock = clock
        self._rates: dict[str, tuple[float, asyncio.Future[float | None]]] = {}
        self._position = load_script(redis, "position")

    async def rate(self, model: str) -> float | None:
        """The model's measured jobs per second (None: nothing measured), read at most once per CACHE_SECONDS by
        all callers together; until something is measured, at each call (the first jobs of a model may end within
        the second, and reading an empty stream costs little)."""
        now = self._clock()
        cached = self._rates.get(model)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            measured = cached[1]
            if not measured.done():
                return await asyncio.shield(measured)
            if measured.exception() is None and measured.result() is not None:
                return measured.result()
        measured = asyncio.ensure_future(self._measure(model))
        self._rates[model] = (now, measured)
        return await asyncio.shield(measured)

    async def _measure(self, model: str) -> float | None:
        # Read as bytes: an entry that is not valid UTF-8 (an error message) must not fail the estimate.
        horizon = now_ms() - HORIZON_MS
        entries: Activity = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "XREVRANGE", keys.activity(model), "+", str(horizon), "COUNT", SAMPLE, **{NEVER_DECODE: []}
        )
        return throughput(entries, None if len(entries) == SAMPLE else horizon)

    async def position(self, kid: str, model: str, arq_id: str) -> Place | None:
        """Where job `kid` stands in its model's queue (None: not queued), through the shared connection."""
        reply = await self._shared.evalsha(self._position, _position_keys(kid, model), [arq_id])
        return place_of(reply)

    async def positions(self, jobs: list[tuple[str, str, str]]) -> list[Place | None]:
        """`position` of several jobs, (key id, model, arq job id) each, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for kid, model, arq_id in jobs:
                await self._position(keys=_position_keys(kid, model), args=[arq_id], client=pipe)
            replies: list[list[int]] = await pipe.execute()
        return [place_of(reply) for reply in replies]

    async def queue_fields(self, kid: str, record: JobRecord) -> tuple[int | None, str | None]:
        """`queue_position` and `estimated_start_at` of queued job `kid`, from its record: both None once it has
        left the queue, the estimate None while the model's throughput is unknown. One round trip (two, once a
        second)."""
        rate = await self.rate(record["model"])
        place = await self.position(kid, record["model"], record["arq"])
        if place is None:
            return None, None
        return place.position, self.start_at(place, rate)

    @staticmethod
    def start_at(place: Place, rate: float | None) -> str | None:
        """`estimated_start_at` of a queued job (None: the rate is unknown)."""
        if rate is None:
            return None
        return iso_utc(estimated_start(now_ms(), place.position, rate, place.not_before))

    async def seconds_until_room(self, model: str, jobs: float) -> int | None:
        """Seconds until `jobs` more of the model's jobs have finished, at its measured rate (None: unknown): the
        Retry-After of a submission refused for a full queue."""
        rate = await self.rate(model)
        if rate is None:
            return None
        return max(1, math.ceil(max(1.0, jobs) / rate))
