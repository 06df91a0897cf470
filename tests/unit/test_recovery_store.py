"""The store's recovery scripts on an in-memory Redis: sweeping the jobs of dead workers, handing jobs back
under a fresh arq job id, arq's in-progress lease, and writes that are safe to send twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from api.jobs import ApiJobStore
from shared import keys
from shared.models import JobCreate, JobResult, Usage, now_ms
from shared.settings import Settings
from shared.streams import next_id, stream_id
from tests.unit.conftest import MODEL, StoreFactory, make_settings
from worker.jobs import WorkerJobStore

OWNER = "owner1"
WORKER = "host:1"
RESULT = JobResult(text="Bonjour.", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=2))

pytestmark = pytest.mark.usefixtures("clean_env")


def kid(job_id: str) -> str:
    return keys.key_id(OWNER, job_id)


async def record(redis: Redis, job_id: str) -> dict[str, str]:
    fields: dict[str, str] = await redis.hgetall(keys.job(kid(job_id)))  # type: ignore[misc]
    return fields


async def events(redis: fakeredis.FakeAsyncRedis, job_id: str) -> list[tuple[str, str]]:
    entries = await redis.xrange(keys.stream(kid(job_id)))
    return [(fields["t"], fields["d"]) for _, fields in entries]


async def start(api_store: ApiJobStore, worker_store: WorkerJobStore, job_id: str, worker: str = WORKER) -> int:
    """Submit (unless known) and start job `job_id`; returns its run."""
    if not await api_store.redis.exists(keys.job(kid(job_id))):
        await api_store.submit(OWNER, [JobCreate(id=job_id, prompt="Bonjour")])
    arq_id = (await record(api_store.redis, job_id))["arq"]
    started = await worker_store.start(kid(job_id), arq_id, MODEL, worker)
    assert started is not None
    return started.run


async def expire(redis: fakeredis.FakeAsyncRedis, *job_ids: str) -> None:
    """Make the heartbeat deadline of running jobs pass, as when their worker died."""
    await redis.zadd(keys.running(MODEL), {kid(job_id): now_ms() - 1 for job_id in job_ids}, xx=True)


@pytest.fixture
async def wake(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[PubSub]:
    subscriber = redis.pubsub(ignore_subscribe_messages=True)
    await subscriber.subscribe(keys.wake_channel(MODEL))
    yield subscriber
    await subscriber.aclose()  # type: ignore[no-untyped-call]


async def woken(pubsub: PubSub) -> bool:
    for _ in range(5):
        if await pubsub.get_message(timeout=0.1) is not None:
            return True
    return False


# ---- sweep ------------------------------------------------------------------------------------------------


async def test_sweep_hands_back_a_job_whose_deadline_passed_under_a_fresh_arq_id(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, wake: PubSub
) -> None:
    await start(api_store, worker_store, "j1")
    old = (await record(redis, "j1"))["arq"]
    score = await redis.zscore(keys.queue(MODEL), old)
    for arq_key in (keys.arq_job(old), keys.arq_in_progress(old), keys.arq_retry(old)):
        await redis.set(arq_key, "1")  # as arq leaves them
    await expire(redis, "j1")

    assert await worker_store.sweep(MODEL) == [kid("j1")]

    stored = await record(redis, "j1")
    assert stored["status"] == "queued"
    assert stored["attempts"] == "1", "the lost attempt counts"
    new = stored["arq"]
    assert new != old
    assert new.startswith(kid("j1") + "#")
    assert await redis.zrange(keys.queue(MODEL), 0, -1, withscores=True) == [(new, score)], "it keeps its place"
    assert not await redis.exists(keys.arq_job(new)), "the worker that takes the job writes its definition"
    for gone in (keys.arq_job(old), keys.arq_in_progress(old), keys.arq_retry(old)):
        assert not await redis.exists(gone), gone
    assert await redis.zrange(keys.running(MODEL), 0, -1) == []
    assert await woken(wake)


async def test_a_swept_job_keeps_its_place_even_if_arq_dropped_its_entry(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await start(api_store, worker_store, "j1")
    old = (await record(redis, "j1"))["arq"]
    score = await redis.zscore(keys.queue(MODEL), old)
    await redis.zrem(keys.queue(MODEL), old)  # as arq does when another worker took the old id in vain
    await expire(redis, "j1")

    await worker_store.sweep(MODEL)

    assert await redis.zscore(keys.queue(MODEL), (await record(redis, "j1"))["arq"]) == score


async def test_sweep_leaves_jobs_whose_heartbeat_is_alive(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    live_run = await start(api_store, worker_store, "live")
    await start(api_store, worker_store, "dead")
    await expire(redis, "live", "dead")
    await worker_store.heartbeat(MODEL, WORKER, {kid("live"): live_run})

    assert await worker_store.sweep(MODEL) == [kid("dead")]

    assert (await record(redis, "live"))["status"] == "running"
    assert await redis.zrange(keys.running(MODEL), 0, -1) == [kid("live")]


async def test_two_sweepers_hand_a_job_back_once(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory, settings: Settings
) -> None:
    (api_store, first), (_, second) = make_stores(settings), make_stores(settings)
    await start(api_store, first, "j1")
    await expire(redis, "j1")

    assert await first.sweep(MODEL) == [kid("j1")]
    assert await second.sweep(MODEL) == []
    assert len(await redis.zrange(keys.queue(MODEL), 0, -1)) == 1


async def test_a_swept_run_is_fenced_and_the_next_run_resets_the_stream(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    stale = await start(api_store, worker_store, "j1")
    chunk = next_id(None, now_ms())
    await worker_store.append(kid("j1"), stale, "Il pl", chunk)
    await expire(redis, "j1")
    await worker_store.sweep(MODEL)

    assert await worker_store.append(kid("j1"), stale, "Il pl", chunk) is None, "a resend of the stale run: fenced"
    assert await worker_store.append(kid("j1"), stale, "eut", next_id(chunk, now_ms())) is None
    assert await worker_store.finish(kid("j1"), MODEL, stale, RESULT) is False
    assert await worker_store.heartbeat(MODEL, WORKER, {kid("j1"): stale}) == [kid("j1")]
    await start(api_store, worker_store, "j1", "other:2")
    assert await events(redis, "j1") == [("token", "Il pl"), ("reset", "2")]


async def test_sweep_drops_running_entries_of_jobs_that_are_not_running(
    redis: fakeredis.FakeAsyncRedis, worker_store: WorkerJobStore
) -> None:
    await redis.zadd(keys.running(MODEL), {kid("gone"): 0})

    assert await worker_store.sweep(MODEL) == []

    assert await redis.zrange(keys.running(MODEL), 0, -1) == []


async def test_start_refuses_a_running_job(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    await start(api_store, worker_store, "j1")

    assert await worker_store.start(kid("j1"), (await record(api_store.redis, "j1"))["arq"], MODEL, "other:2") is None


async def test_start_returns_the_creation_time(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    (submitted,) = await api_store.submit(OWNER, [JobCreate(id="j1", prompt="Bonjour")])

    started = await worker_store.start(kid("j1"), submitted.record["arq"], MODEL, WORKER)

    assert started is not None
    assert started.created_at == int(submitted.record["created_at"])


# ---- requeue ----------------------------------------------------------------------------------------------


async def test_requeue_with_a_delay_keeps_the_place_of_a_fresh_arq_job_not_taken_before(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, wake: PubSub
) -> None:
    run = await start(api_store, worker_store, "j1")
    old = (await record(redis, "j1"))["arq"]
    before = now_ms()

    assert await worker_store.requeue(kid("j1"), MODEL, run, refund=False, delay=5.0)

    new = (await record(redis, "j1"))["arq"]
    [(member, score)] = await redis.zrange(keys.queue(MODEL), 0, -1, withscores=True)
    assert member == new != old
    stored = await record(redis, "j1")
    assert score == float(stored["place"]), "ahead of the jobs queued after it"
    assert before + 5000 <= int(stored["not_before"]) <= now_ms() + 5000
    assert not await redis.exists(keys.arq_job(old))
    assert await woken(wake)
    assert await worker_store.take(MODEL, [new], 1, lease_ms=1000, definition_ttl_ms=1000) == [], "not yet"
    await redis.hset(keys.job(kid("j1")), "not_before", str(now_ms() - 1))  # type: ignore[misc]
    assert await worker_store.take(MODEL, [new], 1, lease_ms=1000, definition_ttl_ms=1000) == [(new, score)]


async def test_requeue_on_shutdown_keeps_the_place_and_refunds_the_attempt(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    run = await start(api_store, worker_store, "j1")
    score = await redis.zscore(keys.queue(MODEL), (await record(redis, "j1"))["arq"])

    assert await worker_store.requeue(kid("j1"), MODEL, run, refund=True)

    stored = await record(redis, "j1")
    assert (stored["status"], stored["attempts"]) == ("queued", "0")
    assert await redis.zscore(keys.queue(MODEL), stored["arq"]) == score


async def test_requeue_by_a_stale_run_changes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    run = await start(api_store, worker_store, "j1")
    before = await record(redis, "j1")
    queue = await redis.zrange(keys.queue(MODEL), 0, -1)

    assert await worker_store.requeue(kid("j1"), MODEL, run + 1, refund=False) is False

    assert await record(redis, "j1") == before
    assert await redis.zrange(keys.queue(MODEL), 0, -1) == queue


# ---- heartbeat --------------------------------------------------------------------------------------------


async def test_heartbeat_keeps_arq_in_progress_key_alive(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, worker_store = make_stores(make_settings(WORKER_HEARTBEAT=2.0))
    run = await start(api_store, worker_store, "j1")
    in_progress = keys.arq_in_progress((await record(redis, "j1"))["arq"])
    await redis.set(in_progress, "1", px=100)

    await worker_store.heartbeat(MODEL, WORKER, {kid("j1"): run})

    assert 9_000 < await redis.pttl(in_progress) <= 10_000, "five heartbeats: the sweeper comes first"


# ---- writes sent twice ------------------------------------------------------------------------------------


def test_next_id_follows_the_clock_and_stays_above_the_previous_chunk() -> None:
    assert next_id(None, 1_000) == "1000-0"
    assert next_id("1000-0", 1_005) == "1005-0"
    assert next_id("1000-0", 1_000) == "1000-1", "two chunks in one millisecond"
    assert next_id("1000-3", 990) == "1000-4", "the clock went back"


async def test_a_chunk_sent_twice_under_its_id_is_written_once(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    run = await start(api_store, worker_store, "j1")
    first = next_id(None, now_ms())
    second = next_id(first, now_ms())
    third = next_id(second, now_ms())

    assert await worker_store.append(kid("j1"), run, "Bon", first) == first
    assert await worker_store.append(kid("j1"), run, "Bon", first) == first, "refused by Redis: written already"
    assert await worker_store.append(kid("j1"), run, "jour", second) == second
    assert await worker_store.append(kid("j1"), run, "jour", third) == third, "the same text in the next chunk"

    entries = await redis.xrange(keys.stream(kid("j1")))
    assert [entry_id for entry_id, _ in entries] == [first, second, third]
    assert await events(redis, "j1") == [("token", "Bon"), ("token", "jour"), ("token", "jour")]
    assert "seq" not in await record(redis, "j1"), "nothing written to the record per chunk"


@pytest.mark.parametrize("behind", ["clock", "reset"])
async def test_a_first_chunk_behind_the_runs_reset_goes_after_it_once(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, behind: str
) -> None:
    first = await start(api_store, worker_store, "j1")
    await worker_store.append(kid("j1"), first, "a", next_id(None, now_ms()))
    await worker_store.requeue(kid("j1"), MODEL, first, refund=False)
    second = await start(api_store, worker_store, "j1")
    reset_id = (await redis.xrevrange(keys.stream(kid("j1")), count=1))[0][0]
    # the worker's clock behind Redis's, or on the very id Redis gave the `reset`
    chunk = "1-0" if behind == "clock" else reset_id

    written = await worker_store.append(kid("j1"), second, "b", chunk)
    assert written is not None
    assert stream_id(written) > stream_id(reset_id)
    assert await worker_store.append(kid("j1"), second, "b", chunk) == written, "sent again: written once"
    following = next_id(written, 1)
    assert await worker_store.append(kid("j1"), second, "c", following) == following

    assert await events(redis, "j1") == [("token", "a"), ("reset", "2"), ("token", "b"), ("token", "c")]


async def test_a_finish_sent_twice_is_recorded_once(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    run = await start(api_store, worker_store, "j1")

    assert await worker_store.finish(kid("j1"), MODEL, run, RESULT, tail="x")
    assert await worker_store.finish(kid("j1"), MODEL, run, RESULT, tail="x")

    assert await events(redis, "j1") == [("token", "x"), ("done", "succeeded")]
