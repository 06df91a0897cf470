"""submit.lua on a real redis-server: the commands an array costs, and arrays longer than what Lua's `unpack`
takes at once (8,000 values), which the in-memory Redis of the unit tests does not limit alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from api.exceptions import JobConflict
from api.jobs import ApiJobStore
from shared import keys
from shared.models import JobCreate
from tests.integration.conftest import RedisServer
from tests.unit.conftest import MODEL, make_settings

OWNER = "owner1"


@pytest.fixture
async def api_store(redis_server: RedisServer) -> AsyncIterator[ApiJobStore]:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    await redis.flushdb()
    store = ApiJobStore(redis, make_settings(MAX_QUEUE_DEPTH=100_000))
    yield store
    await store.aclose()
    await redis.aclose()


def jobs(count: int, prompt: str = "Bonjour") -> list[JobCreate]:
    return [JobCreate(id=f"j{index}", prompt=f"{prompt} {index}") for index in range(count)]


async def commands(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()}
    calls.pop("config|resetstat", None)
    return calls


async def test_a_new_array_costs_one_hset_a_job_and_a_few_commands_in_all(api_store: ApiJobStore) -> None:
    await api_store.submit(OWNER, jobs(1, "warm-up"))  # loads the script
    await api_store.redis.config_resetstat()

    submitted = await api_store.submit(OWNER, jobs(100)[1:])

    assert all(item.created for item in submitted)
    # ZCOUNT: the queue's interactive jobs against MAX_QUEUE_DEPTH (batch jobs are counted apart); ZCARD: the client's
    # unfinished jobs against its max_queued_jobs; GET, INCRBY, EXPIRE: its tokens of the day; HGET: the model's
    # virtual clock and the client's finish tag, written back by one HSET, with one for its policy; HINCRBY: the
    # client's sequence numbers; ZADD: the queue, the client's queue on the model, its listing index of queued jobs
    # and its unfinished jobs.
    expected = {
        "evalsha": 1,
        "exists": 1,
        "zcount": 1,
        "zcard": 1,
        "get": 1,
        "incrby": 1,
        "expire": 1,
        "hget": 2,
        "hset": 99 + 2,
        "hincrby": 1,
        "zadd": 4,
        "publish": 1,
    }
    assert await commands(api_store.redis) == expected


async def test_an_array_longer_than_lua_s_unpack_limit_is_stored_and_queued_whole(api_store: ApiJobStore) -> None:
    many = jobs(9_000)

    unlimited = api_store.default_policy.model_copy(update={"max_queued_jobs": 0})
    first = await api_store.submit(OWNER, many, policy=unlimited)
    again = await api_store.submit(OWNER, many, policy=unlimited)

    assert [item.created for item in first] == [True] * 9_000
    assert [item.created for item in again] == [False] * 9_000
    assert [item.record for item in again] == [item.record for item in first]
    assert await api_store.redis.zcard(keys.queue(MODEL)) == 9_000
    changed = [*many[:-1], JobCreate(id="j8999", prompt="Autre texte")]
    with pytest.raises(JobConflict):
        await api_store.submit(OWNER, [JobCreate(id="new", prompt="x"), *changed])
    assert not await api_store.redis.exists(keys.job(keys.key_id(OWNER, "new")))
