"""The API's shared stream reader on a real redis-server: subscribers of one stream share its frames and the
read of its `done` event; history, live events and keep-alives come without gap or repeat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

import api.streams
from api.streams import StreamHub
from shared.streams import StreamEvent
from tests.integration.conftest import RedisServer

STREAM = "spp:stream:owner1:job-1"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def hub(redis_server: RedisServer, redis: Redis) -> AsyncIterator[StreamHub]:
    reader = Redis.from_url(redis_server.url, decode_responses=True, single_connection_client=True)
    hub = StreamHub(reader, redis)
    await hub.start()
    yield hub
    await hub.stop()


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def test_subscribers_of_a_stream_share_its_frames_and_done_read(
    hub: StreamHub, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await redis.xadd(STREAM, {"t": "token", "d": "Bon"})
    encoded: list[str] = []
    frame = api.streams.sse_frame

    def counting_frame(event: str, event_id: str, data: object) -> bytes:
        encoded.append(event_id)
        return frame(event, event_id, data)

    monkeypatch.setattr(api.streams, "sse_frame", counting_frame)
    done_reads = 0

    async def done_frame(event: StreamEvent) -> bytes:
        nonlocal done_reads
        done_reads += 1
        return frame("done", event.id, {"status": "succeeded"})

    async def subscriber() -> bytes:
        chunks = []
        async with contextlib.aclosing(hub.follow_frames(STREAM, done_frame)) as frames:
            async for chunk in frames:
                chunks.append(chunk)
        return b"".join(chunks)

    subscribers = [asyncio.ensure_future(subscriber()) for _ in range(5)]
    await until(lambda: len(hub._subscribers.get(STREAM, ())) == 5, "5 subscribers")
    ids = [await redis.xadd(STREAM, {"t": "token", "d": text}) for text in ("jour", " Madame")]
    ids.append(await redis.xadd(STREAM, {"t": "reset", "d": "2"}))
    done = await redis.xadd(STREAM, {"t": "done", "d": "succeeded"})
    received = await asyncio.wait_for(asyncio.gather(*subscribers), 5)

    assert all(stream == received[0] for stream in received)
    assert received[0].count(b"event: token") == 3
    assert received[0].count(b"event: reset") == 1
    assert received[0].endswith(b'event: done\nid: %s\ndata: {"status":"succeeded"}\n\n' % done.encode())
    assert received[0].count(b"event: done") == 1
    assert done_reads == 1  # one read of the finished job for the five subscribers
    live = [event_id for event_id in encoded if event_id in ids]
    assert sorted(live) == sorted(ids)  # each live event encoded once, not once per subscriber
    assert hub._subscribers == {}


async def test_late_subscriber_resumes_after_its_last_event_without_gap_or_repeat(hub: StreamHub, redis: Redis) -> None:
    first = await redis.xadd(STREAM, {"t": "token", "d": "a"})
    await redis.xadd(STREAM, {"t": "token", "d": "b"})
    events: list[StreamEvent] = []

    async def follow() -> None:
        async with contextlib.aclosing(hub.follow(STREAM, after=first)) as stream:
            async for event in stream:
                assert event is not None
                events.append(event)

    following = asyncio.ensure_future(follow())
    await until(lambda: STREAM in hub._subscribers, "subscribed")
    await redis.xadd(STREAM, {"t": "token", "d": "c"})
    await redis.xadd(STREAM, {"t": "done", "d": "succeeded"})
    await asyncio.wait_for(following, 5)
    assert [(event.type, event.data) for event in events] == [("token", "b"), ("token", "c"), ("done", "succeeded")]


async def test_keep_alive_while_nothing_comes(hub: StreamHub, redis: Redis) -> None:
    await redis.xadd(STREAM, {"t": "token", "d": "a"})

    async def done_frame(event: StreamEvent) -> bytes:
        return b""

    async with contextlib.aclosing(hub.follow_frames(STREAM, done_frame, keepalive=0.05)) as frames:
        assert b"event: token" in await anext(frames)
        assert await asyncio.wait_for(anext(frames), 2) == b""  # still alive
        await redis.xadd(STREAM, {"t": "token", "d": "b"})
        chunk = await asyncio.wait_for(anext(frames), 2)
        while not chunk:
            chunk = await asyncio.wait_for(anext(frames), 2)
        assert b'data: {"text":"b"}' in chunk
    assert hub._subscribers == {}
