"""append.lua on a real redis-server: the commands a token chunk costs, and the refusal of a chunk sent twice
(Redis's own error, which the in-memory Redis of the unit tests only imitates)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import keys
from shared.models import JobCreate, now_ms
from shared.store import JobStore
from shared.streams import next_id, stream_id
from tests.integration.conftest import RedisServer
from tests.unit.conftest import MODEL, make_settings

OWNER = "owner1"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[JobStore]:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    await redis.flushdb()
    store = JobStore(redis, make_settings())
    yield store
    await store.aclose()
    await redis.aclose()


async def start(store: JobStore, job_id: str) -> tuple[str, int]:
    """Submit and start job `job_id`; returns its key id and run."""
    await store.submit(OWNER, [JobCreate(id=job_id, prompt="Bonjour")])
    kid = keys.key_id(OWNER, job_id)
    arq_id: str = await store.redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
    started = await store.start(kid, arq_id, MODEL, "host:1")
    assert started is not None
    return kid, started.run


async def tokens(store: JobStore, kid: str) -> list[tuple[str, str]]:
    return [(fields["t"], fields["d"]) for _, fields in await store.redis.xrange(keys.stream(kid))]


async def test_a_chunk_costs_one_read_and_one_xadd(store: JobStore) -> None:
    kid, run = await start(store, "j1")
    last = await store.append(kid, run, "Il", next_id(None, now_ms()))  # loads the script
    await store.redis.config_resetstat()

    for text in (" fait", " beau", ".", "."):
        last = await store.append(kid, run, text, next_id(last, now_ms()))
        assert last is not None

    stats = await store.redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): fields["calls"] for name, fields in stats.items()}
    calls.pop("config|resetstat")
    assert calls == {"evalsha": 4, "hmget": 4, "xadd": 4}
    assert "".join(text for _, text in await tokens(store, kid)) == "Il fait beau.."


async def test_a_chunk_sent_twice_is_refused_by_redis_and_written_once(store: JobStore) -> None:
    kid, run = await start(store, "j2")
    first = next_id(None, now_ms())

    assert await store.append(kid, run, "Bon", first) == first
    assert await store.append(kid, run, "Bon", first) == first
    assert await store.append(kid, run, "jour", next_id(first, now_ms())) is not None

    assert await tokens(store, kid) == [("token", "Bon"), ("token", "jour")]


async def test_a_chunk_behind_the_runs_reset_goes_after_it_once(store: JobStore) -> None:
    kid, first = await start(store, "j3")
    await store.append(kid, first, "a", next_id(None, now_ms()))
    assert await store.requeue(kid, MODEL, first, refund=False)
    arq_id: str = await store.redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
    started = await store.start(kid, arq_id, MODEL, "host:1")
    assert started is not None
    reset_id = (await store.redis.xrevrange(keys.stream(kid), count=1))[0][0]

    written = await store.append(kid, started.run, "b", "1-0")
    assert written is not None
    assert stream_id(written) > stream_id(reset_id)
    assert await store.append(kid, started.run, "b", "1-0") == written

    assert await tokens(store, kid) == [("token", "a"), ("reset", "2"), ("token", "b")]


async def test_an_error_other_than_the_refusal_reaches_the_caller(store: JobStore) -> None:
    kid, run = await start(store, "j4")
    await store.redis.set(keys.stream(kid), "not a stream")

    with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
        await store.append(kid, run, "x", next_id(None, now_ms()))
