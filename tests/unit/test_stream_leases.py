"""Leases on open event streams (api/leases.py): the cap, giving back, expiry of leases nobody refreshes."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import fakeredis
import pytest

from api.exceptions import QuotaExceeded
from api.leases import StreamLeases
from shared import keys

OWNER = "owner"


@pytest.fixture
async def leases(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[StreamLeases]:
    leases = StreamLeases(redis, lease_seconds=0.5, refresh_seconds=0.05)
    await leases.start()
    yield leases
    await leases.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not true after {within}s"
        await asyncio.sleep(0.01)


async def can_open(leases: StreamLeases, limit: int = 2) -> bool:
    try:
        lease = await leases.acquire(OWNER, limit)
    except QuotaExceeded:
        return False
    lease.release()
    return True


async def test_a_client_opens_up_to_its_limit_then_is_refused_with_its_usage(leases: StreamLeases) -> None:
    held = [await leases.acquire(OWNER, 2), await leases.acquire(OWNER, 2)]
    with pytest.raises(QuotaExceeded) as refused:
        await leases.acquire(OWNER, 2)
    assert (refused.value.limit, refused.value.value, refused.value.usage, refused.value.requested) == (
        "max_streams",
        2,
        2,
        1,
    )
    assert await leases.acquire("someone-else", 2) is not None
    held[0].release()
    held[0].release()  # a second release changes nothing
    await eventually(lambda: can_open(leases), "a released lease given back")
    assert not await can_open(leases, 1), "the other one is still held"


async def test_no_limit_counts_nothing(leases: StreamLeases, redis: fakeredis.FakeAsyncRedis) -> None:
    for _ in range(5):
        await leases.acquire(OWNER, 0)
    assert not await redis.exists(keys.stream_leases(OWNER))


async def test_open_leases_are_refreshed_past_their_lifetime(
    leases: StreamLeases, redis: fakeredis.FakeAsyncRedis
) -> None:
    held = [await leases.acquire(OWNER, 2), await leases.acquire(OWNER, 2)]
    first_expiry = await redis.zscore(keys.stream_leases(OWNER), held[0].id)
    assert first_expiry is not None

    async def extended_past_first_expiry() -> bool:
        expiry = await redis.zscore(keys.stream_leases(OWNER), held[0].id)
        return expiry is not None and expiry > first_expiry + 500 and time.time() * 1000 > first_expiry

    await eventually(extended_past_first_expiry, "the lease refreshed beyond its first lifetime")
    assert not await can_open(leases), "refreshed leases still count"


async def test_the_leases_of_a_process_that_died_expire(leases: StreamLeases, redis: fakeredis.FakeAsyncRedis) -> None:
    dead = StreamLeases(redis, lease_seconds=0.2)  # never started: nothing refreshes its leases
    await dead.acquire(OWNER, 2)
    await dead.acquire(OWNER, 2)
    assert not await can_open(leases)
    await eventually(lambda: can_open(leases), "the leases of a dead process expired")


async def test_a_lease_that_nobody_holds_is_no_longer_refreshed(leases: StreamLeases) -> None:
    kept = await leases.acquire(OWNER, 2)
    await leases.acquire(OWNER, 2)  # its stream never ran its end: the lease is dropped unreleased
    gc.collect()
    await eventually(lambda: can_open(leases), "the forgotten lease expired")
    assert not await can_open(leases, 1), "the one held is still refreshed"
    kept.release()
