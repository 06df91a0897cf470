"""A client's caps on uploads, batches and stored bytes, on an in-memory Redis: the hourly accounting of stored bytes
(api/stored.py), upload slots and charges (api/files.py), batch creation (api/batches.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import httpx
import orjson
import pytest

from api.batches import BatchStore
from api.exceptions import QuotaExceeded
from api.files import CHUNK_BYTES, FileStore
from api.openai_shapes import Endpoint
from api.stored import StoredBytes
from shared import keys
from shared.batches import BatchStatus
from shared.models import now_ms
from shared.policy import ClientPolicy, default_policy
from tests.unit.conftest import MODEL, batch_stores, make_settings

OWNER = "owner1"
HOUR = 3_600_000
MIB = 2**20

pytestmark = pytest.mark.usefixtures("clean_env")


def policy(**limits: int) -> ClientPolicy:
    return default_policy(make_settings()).model_copy(update=limits)


@pytest.fixture
async def stored() -> AsyncIterator[StoredBytes]:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield StoredBytes(redis)
    await redis.aclose()


class Clock:
    """`now_ms` of api/stored.py, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = now_ms()
        monkeypatch.setattr("api.stored.now_ms", lambda: self.now)


# ---- the accounting -----------------------------------------------------------------------------------------


async def test_a_charge_counts_until_the_hour_of_its_expiry_ends(
    stored: StoredBytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    await stored.reserve(OWNER, policy(), 100, clock.now + 2 * HOUR)
    await stored.reserve(OWNER, policy(), 30, clock.now + 5 * HOUR)
    assert await stored.usage(OWNER) == 130
    ends = (clock.now + 5 * HOUR) // HOUR * HOUR + HOUR
    expires = await stored.redis.pexpiretime(keys.stored(OWNER))  # type: ignore[misc]
    assert expires == ends, "the hash lives as long as its last bucket"
    clock.now += 3 * HOUR  # the first charge's hour has ended: nothing had to run
    assert await stored.usage(OWNER) == 30
    buckets = await stored.redis.hgetall(keys.stored(OWNER))  # type: ignore[misc]
    assert len(buckets) == 1, "the ended bucket is dropped"
    clock.now += 3 * HOUR
    assert await stored.usage(OWNER) == 0
    assert not await stored.redis.exists(keys.stored(OWNER))


async def test_a_charge_over_the_quota_is_refused_whole_and_a_release_frees_room(
    stored: StoredBytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    capped = policy(max_stored_bytes=1000)
    await stored.reserve(OWNER, capped, 600, clock.now + HOUR)
    with pytest.raises(QuotaExceeded) as refused:
        await stored.reserve(OWNER, capped, 401, clock.now + 3 * HOUR)
    assert refused.value.body() == {"limit": "max_stored_bytes", "value": 1000, "usage": 600, "requested": 401}
    first_end = (clock.now + HOUR) // HOUR * HOUR + HOUR
    assert refused.value.retry_after == -(-(first_end - clock.now) // 1000), "when the earliest charge stops counting"
    assert await stored.usage(OWNER) == 600, "nothing of the refused charge"
    await stored.reserve(OWNER, capped, 400, clock.now + 3 * HOUR)  # exactly the quota
    await stored.release(OWNER, 600, clock.now + HOUR)
    assert await stored.usage(OWNER) == 400
    await stored.reserve(OWNER, policy(max_stored_bytes=0), 10**12, clock.now + HOUR)  # 0: unlimited


async def test_a_moved_charge_is_never_refused_and_keeps_its_bytes(
    stored: StoredBytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    capped = policy(max_stored_bytes=100)
    charge = await stored.reserve(OWNER, capped, 60, clock.now + HOUR)
    charge = await stored.reserve(OWNER, capped, 40, clock.now + 2 * HOUR, moving=charge)
    assert charge == (100, clock.now + 2 * HOUR)
    charge = await stored.move(OWNER, charge, clock.now + 48 * HOUR)
    assert await stored.usage(OWNER) == 100
    clock.now += 3 * HOUR
    assert await stored.usage(OWNER) == 100, "counted until the time it was moved to"
    await stored.release(OWNER, *charge)
    assert await stored.usage(OWNER) == 0


# ---- uploads ------------------------------------------------------------------------------------------------


@pytest.fixture
async def both() -> AsyncIterator[tuple[FileStore, BatchStore]]:
    async with batch_stores(make_settings()) as stores:
        yield stores


def form(data: bytes) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)})
    return request.headers["content-type"], request.read()


async def upload(files: FileStore, data: bytes, capped: ClientPolicy) -> dict[str, str]:
    content_type, body = form(data)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 2**16):
            yield body[start : start + 2**16]

    return await files.upload(OWNER, content_type, pieces(), capped)


async def test_an_upload_is_refused_as_soon_as_it_would_pass_the_quota_and_leaves_nothing(
    both: tuple[FileStore, BatchStore],
) -> None:
    files, _ = both
    capped = policy(max_stored_bytes=3 * MIB)
    kept = await upload(files, b"x" * (2 * MIB), capped)
    assert await files.stored.usage(OWNER) == 2 * MIB
    content_type, body = form(b"y" * (8 * MIB))
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        for start in range(0, len(body), 2**16):
            read += 2**16
            yield body[start : start + 2**16]

    with pytest.raises(QuotaExceeded) as refused:
        await files.upload(OWNER, content_type, counted(), capped)
    assert refused.value.limit == "max_stored_bytes"
    assert refused.value.usage == 2 * MIB
    assert read <= 2 * CHUNK_BYTES, "refused at its first chunk over the quota, not once stored"
    assert await files.stored.usage(OWNER) == 2 * MIB
    assert await files.redis.keys(keys.file_upload("*", "*")) == []
    await files.delete(OWNER, kept["id"])
    assert await files.stored.usage(OWNER) == 0, "a deleted file gives its bytes back"
    await upload(files, b"z" * (2 * MIB), capped)


async def test_a_file_is_charged_until_it_expires(both: tuple[FileStore, BatchStore]) -> None:
    files, _ = both
    meta = await upload(files, b"abc\n" * 1000, policy())
    stored = await files.redis.hgetall(keys.stored(OWNER))  # type: ignore[misc]
    assert stored == {str(int(meta["expires_at"]) // HOUR): "4000"}, "one bucket, the file's: the upload's moved there"


async def test_uploads_beyond_max_uploads_are_refused_before_their_body_is_read(
    both: tuple[FileStore, BatchStore],
) -> None:
    files, _ = both
    capped = policy(max_uploads=1)
    content_type, body = form(b"x")
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        reading.set()
        yield body[:10]
        await release.wait()
        yield body[10:]

    running = asyncio.create_task(files.upload(OWNER, content_type, slow(), capped))
    await reading.wait()
    assert await files.redis.zcard(keys.uploads(OWNER)) == 1
    read = False

    async def never() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield body

    with pytest.raises(QuotaExceeded) as refused:
        await files.upload(OWNER, content_type, never(), capped)
    assert refused.value.body() == {"limit": "max_uploads", "value": 1, "usage": 1, "requested": 1}
    assert not read
    release.set()
    await running
    assert await files.redis.zcard(keys.uploads(OWNER)) == 0, "the slot is given back"
    await upload(files, b"y", capped)


async def test_the_slot_of_a_dead_process_comes_back_when_its_lease_ends(both: tuple[FileStore, BatchStore]) -> None:
    files, _ = both
    await files.redis.zadd(keys.uploads(OWNER), {"dead-process-upload": now_ms() - 1})
    await upload(files, b"x", policy(max_uploads=1))


# ---- batches ------------------------------------------------------------------------------------------------


def lines(count: int) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}]}
    return b"\n".join(
        orjson.dumps({"custom_id": f"q-{i}", "method": "POST", "url": Endpoint.CHAT.value, "body": body})
        for i in range(count)
    )


async def create(batches: BatchStore, file_id: str, capped: ClientPolicy) -> dict[str, str]:
    return await batches.create(OWNER, file_id, Endpoint.CHAT, "24h", None, capped)


async def stored_batches(batches: BatchStore) -> dict[str, Any]:
    redis = batches.redis
    return {
        "records": sorted(await redis.keys(keys.batch(OWNER, "*"))),
        "index": await redis.zrange(keys.batches(OWNER), 0, -1),
        "expiring": await redis.zrange(keys.active_batches(), 0, -1),
        "unfinished": await redis.zrange(keys.client_batches(OWNER), 0, -1),
    }


async def test_max_active_batches_is_atomic_with_creation_and_an_ended_batch_frees_its_place(
    both: tuple[FileStore, BatchStore],
) -> None:
    files, batches = both
    capped = policy(max_active_batches=2)
    file_id = (await upload(files, lines(2), capped))["id"]
    first = await create(batches, file_id, capped)
    outcomes = await asyncio.gather(*(create(batches, file_id, capped) for _ in range(3)), return_exceptions=True)
    assert sum(isinstance(outcome, dict) for outcome in outcomes) == 1, "two concurrent creates cannot both pass"
    before = await stored_batches(batches)
    with pytest.raises(QuotaExceeded) as refused:
        await create(batches, file_id, capped)
    assert refused.value.body() == {"limit": "max_active_batches", "value": 2, "usage": 2, "requested": 1}
    assert await stored_batches(batches) == before, "nothing of the refused batch is stored"
    assert await batches.cancel(OWNER, first["id"]) == BatchStatus.CANCELLING
    await batches.process(OWNER, first["id"], capped)  # cancelled while validating: ends, nothing queued
    assert (await batches.get(OWNER, first["id"]))["status"] == BatchStatus.CANCELLED
    await create(batches, file_id, capped)


async def test_a_batch_is_charged_its_input_while_it_lives(
    both: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = both
    data = lines(3)
    capped = policy(max_stored_bytes=3 * len(data))
    file_id = (await upload(files, data, capped))["id"]
    queued = await create(batches, file_id, capped)
    failing = await create(batches, file_id, capped)
    assert await files.stored.usage(OWNER) == 3 * len(data)
    with pytest.raises(QuotaExceeded) as refused:
        await create(batches, file_id, capped)
    assert (refused.value.limit, refused.value.usage, refused.value.requested) == (
        "max_stored_bytes",
        3 * len(data),
        len(data),
    )
    await batches.process(OWNER, queued["id"], capped)
    assert (await batches.get(OWNER, queued["id"]))["status"] == BatchStatus.IN_PROGRESS
    await files.delete(OWNER, file_id)  # the batch queued from it keeps its charge
    await batches.process(OWNER, failing["id"], capped)  # its input is gone: failed, nothing queued
    assert (await batches.get(OWNER, failing["id"]))["status"] == BatchStatus.FAILED
    assert await files.stored.usage(OWNER) == len(data)
    assert await batches.cancel(OWNER, queued["id"]) == BatchStatus.CANCELLING
    await batches.cancel_jobs(OWNER, queued["id"])
    ended = await batches.get(OWNER, queued["id"])
    assert ended["status"] == BatchStatus.CANCELLED
    # Its jobs' records live RESULT_TTL more: so does its charge, from now on rather than from its window's end.
    charged_until = int(ended["charged_until"])
    assert abs(charged_until - (now_ms() + batches.settings.RESULT_TTL * 1000)) < 60_000
    buckets = await batches.redis.hgetall(keys.stored(OWNER))  # type: ignore[misc]
    assert buckets == {str(charged_until // HOUR): str(len(data))}
    assert await batches.redis.zcard(keys.client_batches(OWNER)) == 0
