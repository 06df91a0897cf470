"""append.lua on a real redis-server: the commands a token chunk costs, the refusal of a chunk sent twice
(Redis's own error, which the in-memory Redis of the unit tests only imitates), and the chunks of several jobs
written in one call by the worker's ChunkWriter."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as redis_errors

from api.jobs import ApiJobStore
from shared import keys
from shared.models import JobCreate, now_ms
from shared.streams import next_id, stream_id
from tests.unit.conftest import MODEL
from worker.chunks import ChunkWriter
from worker.jobs import Chunk, WorkerJobStore

OWNER = "owner1"


async def start(api_store: ApiJobStore, worker_store: WorkerJobStore, job_id: str) -> tuple[str, int]:
    """Submit and start job `job_id`; returns its key id and run."""
    await api_store.submit(OWNER, [JobCreate(id=job_id, prompt="Bonjour")])
    kid = keys.key_id(OWNER, job_id)
    arq_id: str = await api_store.redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
    started = await worker_store.start(kid, arq_id, MODEL, "host:1")
    assert started is not None
    return kid, started.run


async def tokens(api_store: ApiJobStore, kid: str) -> list[tuple[str, str]]:
    return [(fields["t"], fields["d"]) for _, fields in await api_store.redis.xrange(keys.stream(kid))]


async def test_a_chunk_costs_one_read_and_one_xadd(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    kid, run = await start(api_store, worker_store, "j1")
    last = await worker_store.append(kid, run, "Il", next_id(None, now_ms()))  # loads the script
    await api_store.redis.config_resetstat()

    for text in (" fait", " beau", ".", "."):
        last = await worker_store.append(kid, run, text, next_id(last, now_ms()))
        assert last is not None

    stats = await api_store.redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): fields["calls"] for name, fields in stats.items()}
    calls.pop("config|resetstat")
    assert calls == {"evalsha": 4, "hmget": 4, "xadd": 4}
    assert "".join(text for _, text in await tokens(api_store, kid)) == "Il fait beau.."


async def test_a_chunk_sent_twice_is_refused_by_redis_and_written_once(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    kid, run = await start(api_store, worker_store, "j2")
    first = next_id(None, now_ms())

    assert await worker_store.append(kid, run, "Bon", first) == first
    assert await worker_store.append(kid, run, "Bon", first) == first
    assert await worker_store.append(kid, run, "jour", next_id(first, now_ms())) is not None

    assert await tokens(api_store, kid) == [("token", "Bon"), ("token", "jour")]


async def test_a_chunk_behind_the_runs_reset_goes_after_it_once(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    kid, first = await start(api_store, worker_store, "j3")
    await worker_store.append(kid, first, "a", next_id(None, now_ms()))
    assert await worker_store.requeue(kid, MODEL, first, refund=False)
    arq_id: str = await api_store.redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
    started = await worker_store.start(kid, arq_id, MODEL, "host:1")
    assert started is not None
    reset_id = (await api_store.redis.xrevrange(keys.stream(kid), count=1))[0][0]

    written = await worker_store.append(kid, started.run, "b", "1-0")
    assert written is not None
    assert stream_id(written) > stream_id(reset_id)
    assert await worker_store.append(kid, started.run, "b", "1-0") == written

    assert await tokens(api_store, kid) == [("token", "a"), ("reset", "2"), ("token", "b")]


async def test_an_error_other_than_the_refusal_reaches_the_caller(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    kid, run = await start(api_store, worker_store, "j4")
    await api_store.redis.set(keys.stream(kid), "not a stream")

    with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
        await worker_store.append(kid, run, "x", next_id(None, now_ms()))


async def test_the_chunks_of_one_turn_go_in_one_call_each_with_its_own_result(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    started = [await start(api_store, worker_store, f"k{index}") for index in range(3)]
    (kid0, run0), (kid1, run1), (kid2, run2) = started
    await api_store.cancel(OWNER, "k1")  # its run no longer owns it
    first = next_id(None, now_ms())
    assert await worker_store.append(kid2, run2, "déjà", first) == first  # loads the script; sent again below
    await api_store.redis.config_resetstat()
    writer = ChunkWriter(worker_store)

    written = await asyncio.gather(
        writer.append(Chunk(kid0, run0, "Bonjour", next_id(None, now_ms()))),
        writer.append(Chunk(kid1, run1, "perdu", next_id(None, now_ms()))),
        writer.append(Chunk(kid2, run2, "déjà", first)),
    )

    assert written[0] is not None
    assert written[1] is None
    assert written[2] == first
    stats = await api_store.redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert await tokens(api_store, kid0) == [("token", "Bonjour")]
    assert await tokens(api_store, kid2) == [("token", "déjà")]


async def test_a_failed_call_fails_every_chunk_of_its_turn(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    (kid0, run0), (kid1, run1) = [await start(api_store, worker_store, f"m{index}") for index in range(2)]
    await api_store.redis.set(keys.stream(kid1), "not a stream")
    writer = ChunkWriter(worker_store)

    results = await asyncio.gather(
        writer.append(Chunk(kid0, run0, "a", next_id(None, now_ms()))),
        writer.append(Chunk(kid1, run1, "b", next_id(None, now_ms()))),
        return_exceptions=True,
    )

    assert all(isinstance(result, redis_errors.ResponseError) for result in results)
