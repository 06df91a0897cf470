"""`queued` events (api/queue_events.py): sent after a while, on changes only, rises once confirmed, one frame
shared by the streams of a job, and nothing once the job has left the queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import orjson
import pytest

from api.estimate import Estimator
from api.multiplex import SharedConnection
from api.queue_events import QueueWatch
from shared import keys
from shared.models import now_ms
from tests.unit.conftest import Clock

MODEL = "m"


@pytest.fixture
async def watch(redis: fakeredis.FakeAsyncRedis, clock: Clock) -> AsyncIterator[QueueWatch]:
    """A watch whose polls the test makes itself (its own would come in an hour)."""
    shared = SharedConnection(redis)
    watch = QueueWatch(Estimator(redis, shared), every=3600, first_after=1.0, clock=clock)
    yield watch
    await watch.stop()
    await shared.aclose()


async def add(redis: fakeredis.FakeAsyncRedis, kid: str, score: int, status: str = "queued") -> None:
    await redis.zadd(keys.queue(MODEL), {f"{kid}#a": score})
    await redis.hset(keys.job(kid), mapping={"status": status, "model": MODEL, "arq": f"{kid}#a"})  # type: ignore[misc]
    if status == "running":
        await redis.zadd(keys.running(MODEL), {kid: now_ms() + 60_000})


async def finish(redis: fakeredis.FakeAsyncRedis, kid: str) -> None:
    await redis.zrem(keys.queue(MODEL), f"{kid}#a")
    await redis.zrem(keys.running(MODEL), kid)
    await redis.hset(keys.job(kid), "status", "succeeded")  # type: ignore[misc]


def positions(frames: list[bytes]) -> list[int]:
    found = []
    for frame in frames:
        assert frame.startswith(b"event: queued\ndata: ")
        assert b"\nid:" not in frame, "a queued event must not move Last-Event-ID"
        found.append(orjson.loads(frame.split(b"data: ", 1)[1])["queue_position"])
    return found


async def test_the_position_comes_after_a_while_then_on_each_change(
    redis: fakeredis.FakeAsyncRedis, watch: QueueWatch, clock: Clock
) -> None:
    for score, kid in enumerate(["o:a", "o:b", "o:c"]):
        await add(redis, kid, score)
    frames: list[bytes] = []
    with watch.follow("o:c", MODEL, "o:c#a", frames.append):
        clock.now = 0.5
        await watch.poll(MODEL)
        assert frames == [], "a job that starts at once sends no position"
        clock.now = 1.0
        await watch.poll(MODEL)
        await watch.poll(MODEL)
        assert positions(frames) == [2]
        await finish(redis, "o:a")
        await watch.poll(MODEL)
        assert positions(frames) == [2, 1]
        assert orjson.loads(frames[-1].split(b"data: ", 1)[1])["estimated_start_at"] is None  # nothing measured
    await watch.poll(MODEL)
    assert len(frames) == 2, "nothing once the stream has left"


async def test_a_rise_is_sent_once_two_polls_show_it(
    redis: fakeredis.FakeAsyncRedis, watch: QueueWatch, clock: Clock
) -> None:
    await add(redis, "o:r", 0, "running")
    await add(redis, "o:a", 1)
    frames: list[bytes] = []
    clock.now = 1.0
    with watch.follow("o:a", MODEL, "o:a#a", frames.append):
        clock.now = 2.0
        await watch.poll(MODEL)
        # The running job has finished but its entry is still in the queue: one job ahead, for a moment.
        await redis.zrem(keys.running(MODEL), "o:r")
        await watch.poll(MODEL)
        assert positions(frames) == [0]
        await watch.poll(MODEL)
        assert positions(frames) == [0, 1]


async def test_the_streams_of_a_job_share_its_frame_and_a_started_job_is_dropped(
    redis: fakeredis.FakeAsyncRedis, watch: QueueWatch, clock: Clock
) -> None:
    await add(redis, "o:a", 0)
    await add(redis, "o:b", 1)
    first: list[bytes] = []
    second: list[bytes] = []
    with watch.follow("o:b", MODEL, "o:b#a", first.append), watch.follow("o:b", MODEL, "o:b#a", second.append):
        clock.now = 1.0
        await watch.poll(MODEL)
        assert positions(first) == [1]
        assert second[0] is first[0]
        await redis.hset(keys.job("o:b"), "status", "running")  # type: ignore[misc]
        await watch.poll(MODEL)
        # A retry queued again: no longer followed.
        await redis.hset(keys.job("o:b"), "status", "queued")  # type: ignore[misc]
        await finish(redis, "o:a")
        await watch.poll(MODEL)
        assert (len(first), len(second)) == (1, 1)
