"""The delivery process's lanes (webhooks/lanes.py) and what it records (shared/lua/webhook_outcome.lua,
webhook_take.lua), on an in-memory Redis: one client's stuck receiver holds only its own lane; an outcome never
recreates an erased record; a retry is written before its stream entry is acknowledged."""

from __future__ import annotations

import asyncio

import fakeredis
import orjson

from shared import keys
from shared.scripts import load_script
from webhooks.events import Event, payload
from webhooks.lanes import HELD_PER_SLOT, WAITING_PER_SLOT, Lanes


def event(owner: str, number: int) -> Event:
    return Event(msg_id=f"msg_{owner}-{number}", event="succeeded", at=1, job=f"{owner}:j{number}")


async def test_a_stuck_client_fills_its_own_lane_only() -> None:
    stuck = asyncio.Event()
    started: list[str] = []

    async def deliver(item: Event) -> None:
        started.append(item.msg_id)
        if item.owner == "a":
            await stuck.wait()

    lanes = Lanes(total=8, per_client=2, deliver=deliver)
    held_by_a = 2 + lanes.waiting_per_client
    assert held_by_a <= HELD_PER_SLOT * 8 // 4
    assert Lanes(256, 16, deliver).waiting_per_client == WAITING_PER_SLOT * 16 - 16
    accepted = [lanes.offer(event("a", number)) for number in range(held_by_a + 5)]
    assert accepted.count(False) == 5, "beyond its lane and its queue, a's events are refused (put off)"
    assert lanes.room == HELD_PER_SLOT * 8 - held_by_a
    for number in range(3):
        assert lanes.offer(event("b", number))
    for _ in range(5):
        await asyncio.sleep(0)
    assert [item for item in started if item.startswith("msg_b")] == ["msg_b-0", "msg_b-1", "msg_b-2"]
    assert sum(item.startswith("msg_a") for item in started) == 2
    stuck.set()
    await lanes.drain(5)


async def test_waiting_clients_are_served_in_turn() -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def deliver(item: Event) -> None:
        order.append(item.owner)
        await release.wait()

    lanes = Lanes(total=1, per_client=1, deliver=deliver)
    for owner in ("a", "a", "a", "b", "b", "c"):
        lanes.offer(event(owner, len(order) + len(lanes.held)))
    await asyncio.sleep(0)
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert order[:4] == ["a", "a", "b", "c"]
    await lanes.drain(5)


async def test_an_event_held_already_is_not_started_twice() -> None:
    calls: list[str] = []

    async def deliver(item: Event) -> None:
        calls.append(item.msg_id)
        await asyncio.sleep(0.01)

    lanes = Lanes(total=4, per_client=4, deliver=deliver)
    assert lanes.offer(event("a", 1))
    assert lanes.offer(event("a", 1))
    await lanes.drain(5)
    assert calls == ["msg_a-1"]


def test_an_event_survives_the_retries_as_it_was() -> None:
    original = Event(msg_id="msg_1-0", event="cancelled", at=5, batch="spp:batch:own:b1", attempts=2, first_attempt=7)
    again = Event.from_state(original.msg_id, original.state())
    assert (again.batch, again.event, again.at, again.attempts, again.first_attempt) == (
        "spp:batch:own:b1",
        "cancelled",
        5,
        2,
        7,
    )
    assert again.owner == "own"
    assert again.type == "batch.cancelled"
    job = Event.from_entry("1-0", {"k": "own:j1", "e": "succeeded", "t": "9"})
    assert (job.owner, job.record_key, job.type, job.entry) == ("own", keys.job("own:j1"), "job.succeeded", "1-0")


def test_the_payload_of_a_job() -> None:
    record = {
        "id": "j1",
        "model": "m",
        "status": "succeeded",
        "attempts": "1",
        "created_at": "1000",
        "finished_at": "2000",
        "webhook": orjson.dumps({"url": "https://hooks.example/", "events": ["succeeded"]}).decode(),
        "webhook_delivery": orjson.dumps({"status": "pending"}).decode(),
    }
    body = orjson.loads(payload(Event(msg_id="m", event="succeeded", at=2000, job="own:j1"), record))
    assert body["type"] == "job.succeeded"
    assert body["timestamp"] == "1970-01-01T00:00:02.000Z"
    assert body["data"]["id"] == "j1"
    assert body["data"]["webhook"] == {"url": "https://hooks.example/", "events": ["succeeded"]}


async def test_an_outcome_never_recreates_an_erased_record_and_writes_the_retry_first() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    outcome, take = load_script(redis, "webhook_outcome"), load_script(redis, "webhook_take")
    stream, retries, pending = keys.webhook_events(), keys.webhook_retries(), keys.webhook_pending()
    await redis.xgroup_create(stream, "webhooks", id="0", mkstream=True)
    entry = await redis.xadd(stream, {"k": "own:gone", "e": "succeeded", "t": "1"})
    await redis.xreadgroup("webhooks", "me", {stream: ">"})
    script_keys = [keys.job("own:gone"), retries, pending, stream, keys.webhook_stats()]
    state = Event.from_entry(entry, {"k": "own:gone", "e": "succeeded", "t": "1"}).state()
    found = await outcome(
        keys=script_keys,
        args=[f"msg_{entry}", '{"status":"pending"}', 500, state, entry, "webhooks", "failed_attempts"],
    )
    assert found == 0
    assert not await redis.exists(keys.job("own:gone")), "HSET would have made a record of its own"
    assert await redis.zscore(retries, f"msg_{entry}") == 500
    assert await redis.xlen(stream) == 0
    assert (await redis.xpending(stream, "webhooks"))["pending"] == 0
    assert await redis.hget(keys.webhook_stats(), "failed_attempts") == "1"  # type: ignore[misc]
    taken = await take(keys=[retries, pending], args=[1000, 16000, 10])
    assert taken == [f"msg_{entry}", state]
    assert await redis.zscore(retries, f"msg_{entry}") == 16000, "leased to the process that took it"
    await outcome(keys=script_keys, args=[f"msg_{entry}", "", "", "", "", "webhooks", "dropped"])
    assert await redis.zcard(retries) == 0
    assert await redis.hlen(pending) == 0  # type: ignore[misc]
    await redis.aclose()
