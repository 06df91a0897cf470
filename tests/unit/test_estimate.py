"""The start estimate of queued jobs (api/estimate.py): the measured rate, positions, the estimate itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import fakeredis
import pytest

from api.estimate import CACHE_SECONDS, Activity, Estimator, Place, estimated_start, iso_utc, throughput
from api.multiplex import SharedConnection
from shared import keys
from shared.models import JobRecord, now_ms
from tests.unit.conftest import Clock

MODEL = "m"

Job = tuple[int, int, int]
"""A finished job: (end ms, run ms, queued ms)."""


def runs(*jobs: Job) -> Activity:
    """Activity entries of the jobs, newest first as XREVRANGE gives them."""
    return [
        (f"{end}-0".encode(), {b"s": b"succeeded", b"q": str(queued).encode(), b"d": str(run).encode()})
        for end, run, queued in reversed(jobs)
    ]


def saturated(slots: int, run_ms: int, rounds: int, start: int = 0, gap_ms: int = 0) -> list[Job]:
    """`slots` jobs of `run_ms` at a time, all queued at `start`, in rounds `gap_ms` apart (the workers' time to
    take the next ones)."""
    period = run_ms + gap_ms
    return [(start + r * period + run_ms, run_ms, r * period) for r in range(rounds) for _ in range(slots)]


def test_the_rate_of_saturated_slots_is_slots_over_the_time_each_job_takes() -> None:
    assert throughput(runs(*saturated(4, 1000, 3)), 0) == pytest.approx(4.0)
    assert throughput(runs(*saturated(8, 250, 5)), 0) == pytest.approx(32.0)
    # The time between two jobs of a slot counts: queued jobs wait on it too.
    assert throughput(runs(*saturated(4, 800, 5, gap_ms=200)), 0) == pytest.approx(20 / 4.8)


def test_idle_time_between_bursts_does_not_dilute_the_rate() -> None:
    bursts = saturated(4, 1000, 3) + saturated(4, 1000, 3, start=62_000)
    assert throughput(runs(*bursts), 0) == pytest.approx(4.0)


def test_jobs_ending_out_of_order_and_overlapping_are_counted_once() -> None:
    # Two slots, jobs of 1 s and 3 s side by side: 5 jobs over 6 s of work.
    jobs = [(1000, 1000, 0), (3000, 3000, 0), (2000, 1000, 0), (3000, 1000, 1000), (6000, 3000, 0)]
    assert throughput(runs(*jobs), 0) == pytest.approx(5 / 6)
    # Only the most recent ones: the 4 that ended after the first, over the 5 s since.
    assert throughput(runs(*jobs), None) == pytest.approx(4 / 5)


def test_the_most_recent_jobs_of_a_busy_model_are_measured_from_the_first_end() -> None:
    # 64 slots of 10 s, a job ending every 156.25 ms: 6.4 jobs a second; the last 200 ran beside older ones.
    jobs = [(round(100_000 + index * 156.25), 10_000, 5000) for index in range(200)]
    assert throughput(runs(*jobs), None) == pytest.approx(6.4, rel=0.01)
    since_long_ago = throughput(runs(*jobs), 0)
    assert since_long_ago is not None
    assert since_long_ago < 5, "taken as all the jobs since, they would look idle a third of the time"


def test_one_finished_job_gives_one_over_its_time_queued_and_running() -> None:
    assert throughput(runs((10_000, 1500, 500)), 0) == pytest.approx(0.5)


def test_nothing_measured_gives_none() -> None:
    assert throughput([], 0) is None
    assert throughput(runs((10_000, 0, 0)), 0) is None


def test_a_job_starts_when_position_plus_one_jobs_have_ended_and_not_before_its_backoff() -> None:
    assert estimated_start(1000, 0, 2.0) == 1500
    assert estimated_start(1000, 9, 2.0) == 6000
    assert estimated_start(1000, 9, 2.0, not_before=9000) == 9000
    assert estimated_start(1000, 9, 2.0, not_before=2000) == 6000


def test_the_estimate_is_written_as_the_jobs_dates_are() -> None:
    assert iso_utc(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


@pytest.fixture
async def estimator(redis: fakeredis.FakeAsyncRedis, clock: Clock) -> AsyncIterator[Estimator]:
    shared = SharedConnection(redis)
    yield Estimator(redis, shared, clock=clock)
    await shared.aclose()


async def queue(redis: fakeredis.FakeAsyncRedis, *jobs: tuple[str, str], running: int = 0) -> None:
    """Queue entries (lower score first) and records of jobs given as (key id, status); the first `running` of
    them are also in the running set, as a running job's entry stays in the queue."""
    for score, (kid, status) in enumerate(jobs):
        await redis.zadd(keys.queue(MODEL), {f"{kid}#a": score})
        await redis.hset(keys.job(kid), mapping={"status": status, "model": MODEL, "arq": f"{kid}#a"})  # type: ignore[misc]
        if score < running:
            await redis.zadd(keys.running(MODEL), {kid: now_ms() + 60_000})


async def test_positions_count_the_queued_jobs_ahead(redis: fakeredis.FakeAsyncRedis, estimator: Estimator) -> None:
    await queue(redis, ("o:r1", "running"), ("o:r2", "running"), ("o:a", "queued"), ("o:b", "queued"), running=2)
    await redis.hset(keys.job("o:b"), "not_before", "123456")  # type: ignore[misc]
    assert await estimator.position("o:a", MODEL, "o:a#a") == Place(0, 0)
    assert await estimator.positions([("o:b", MODEL, "o:b#a"), ("o:r1", MODEL, "o:r1#a"), ("o:x", MODEL, "o:x#a")]) == [
        Place(1, 123456),
        None,  # running: not queued
        None,  # unknown
    ]


async def test_a_job_replaced_under_another_arq_id_has_no_position(
    redis: fakeredis.FakeAsyncRedis, estimator: Estimator
) -> None:
    await queue(redis, ("o:a", "queued"))
    assert await estimator.position("o:a", MODEL, "o:a#old") is None


async def test_queue_fields_estimate_from_the_measured_rate(
    redis: fakeredis.FakeAsyncRedis, estimator: Estimator, clock: Clock
) -> None:
    await queue(redis, ("o:a", "queued"), ("o:b", "queued"))
    record: JobRecord = await redis.hgetall(keys.job("o:b"))  # type: ignore[misc]
    assert await estimator.queue_fields("o:b", record) == (1, None)  # nothing finished yet: no estimate
    now = now_ms()
    for end, run, queued in saturated(2, 1000, 3, start=now - 60_000):
        await redis.xadd(keys.activity(MODEL), {"s": "succeeded", "q": queued, "d": run}, id=f"{end}-*")
    clock.now += CACHE_SECONDS
    position, start = await estimator.queue_fields("o:b", record)
    assert position == 1
    assert start is not None
    # 2 jobs a second: the second in the queue starts once 2 more have ended, in a second.
    estimated = datetime.fromisoformat(start).timestamp() * 1000
    assert now + 900 <= estimated <= now_ms() + 1000


async def test_the_rate_is_read_at_most_once_per_cache_period(
    redis: fakeredis.FakeAsyncRedis, estimator: Estimator, clock: Clock
) -> None:
    now = now_ms()
    await redis.xadd(keys.activity(MODEL), {"s": "succeeded", "d": 2000}, id=f"{now - 10_000}-*")
    assert await estimator.rate(MODEL) == pytest.approx(0.5)
    for end, run, queued in saturated(4, 1000, 2, start=now - 5000):
        await redis.xadd(keys.activity(MODEL), {"s": "succeeded", "q": queued, "d": run}, id=f"{end}-*")
    assert await estimator.rate(MODEL) == pytest.approx(0.5)  # cached
    clock.now += CACHE_SECONDS
    assert await estimator.rate(MODEL) == pytest.approx(9 / 4)  # 9 jobs over 4 s of runs


async def test_old_activity_is_not_measured(redis: fakeredis.FakeAsyncRedis, estimator: Estimator) -> None:
    await redis.xadd(keys.activity(MODEL), {"s": "succeeded", "d": 2000}, id=f"{now_ms() - 3_600_000}-*")
    assert await estimator.rate(MODEL) is None


async def test_seconds_until_room_at_the_measured_rate(
    redis: fakeredis.FakeAsyncRedis, estimator: Estimator, clock: Clock
) -> None:
    assert await estimator.seconds_until_room(MODEL, 10) is None
    now = now_ms()
    for end, run, queued in saturated(2, 1000, 3, start=now - 10_000):
        await redis.xadd(keys.activity(MODEL), {"s": "succeeded", "q": queued, "d": run}, id=f"{end}-*")
    clock.now += CACHE_SECONDS
    assert await estimator.seconds_until_room(MODEL, 10) == 5
    assert await estimator.seconds_until_room(MODEL, 0) == 1  # at least one must end
