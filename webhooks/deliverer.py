"""The delivery process: events from the stream and from the retries, delivered at least once.

- New events come from `keys.webhook_events()` through the consumer group `webhooks` (XREADGROUP); each process is
  a consumer named `<hostname>:<pid>`. An entry stays pending in the group until its first attempt is recorded:
  delivered, given up or dropped (XACK and XDEL), or failed, in which case its retry is written in the same script
  before it is acknowledged (shared/lua/webhook_outcome.lua).
- Retries wait in `keys.webhook_retries()` (scored by when they are due) with their state in
  `keys.webhook_pending()`. A process takes the due ones under a lease (shared/lua/webhook_take.lua).
- A live process renews what it holds every few seconds (its pending entries' idle time, its retries' leases):
  what a dead process held is taken again by the others (XAUTOCLAIM of entries idle past CLAIM_IDLE, retries whose
  lease ran out). So an event is delivered at least once, and more than once only when a process dies between
  sending it and recording it, or when its answer was lost.
- Each attempt's outcome is written into the record's `webhook_delivery` if the record still exists; an event
  whose record is gone (erased, expired) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis import ResponseError
from redis.asyncio import Redis

from shared import keys
from shared.connection import REDIS_ERRORS, redis_client
from shared.models import now_ms
from shared.scripts import load_script
from shared.settings import Settings
from shared.webhooks import derived_secret, sign
from webhooks.events import Event, iso_ms, payload, webhook_of
from webhooks.guard import Guard, Resolver, system_resolve
from webhooks.lanes import Lanes
from webhooks.metrics import WebhookMetrics
from webhooks.schedule import next_attempt_ms
from webhooks.sender import Attempt, Sender

logger = logging.getLogger(__name__)

GROUP = "webhooks"
"""The consumer group of the delivery processes on the events stream."""
HEARTBEAT = 1.0
"""Seconds between a process's heartbeats (`keys.webhook_consumers`, its health check)."""
RENEW_EVERY = 5.0
"""Seconds between renewals of what a process holds (its entries' idle time, its retries' leases)."""
CLAIM_IDLE = 15.0
"""Seconds an entry of the group may stay unrenewed before another process takes it: its process is dead."""
LEASE = 15.0
"""Seconds a taken retry stays leased to its process unless renewed."""
RETRY_POLL = 0.2
"""Seconds between two looks at the retries that are due."""
PUT_OFF = 1.0
"""Seconds an event of a client whose lane and queue are full is put off (to the retries, not an attempt)."""
FORGET_CONSUMERS_AFTER = 3600.0
"""Seconds after its last heartbeat a consumer without pending entries is removed from the group."""


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        *,
        resolve: Resolver = system_resolve,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.redis: Redis = redis_client(settings, "spp-webhooks", max_connections=32)
        self._reader: Redis = redis_client(settings, "spp-webhooks-reader", single_connection=True)
        self._outcome = load_script(self.redis, "webhook_outcome")
        self._take = load_script(self.redis, "webhook_take")
        self.sender = Sender(Guard(settings.webhook_allowed_hosts, resolve), settings.WEBHOOK_TIMEOUT, 1024)
        self.lanes = Lanes(settings.WEBHOOK_CONCURRENCY, settings.WEBHOOK_CONCURRENCY_PER_CLIENT, self.deliver)
        self.metrics = WebhookMetrics()
        self._rng = random.Random()
        self._stopping = asyncio.Event()
        self._redis_down_since: float | None = None

    # ---- the loops ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until `stop()`; then let the deliveries running end (WEBHOOK_TIMEOUT at most). A loop that fails
        (an error other than Redis being unreachable) ends the run with its exception."""
        await self._until_redis(self._ensure_group)
        await self._until_redis(self._heartbeat)
        logger.info("webhook deliveries started", extra={"consumer": self.name})
        loops = [
            asyncio.create_task(self._read_forever()),
            asyncio.create_task(self._retries_forever()),
            asyncio.create_task(self._keep_forever()),
        ]
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, *loops):
                task.cancel()
            await asyncio.gather(stopping, *loops, return_exceptions=True)
            await self.lanes.drain(self.settings.WEBHOOK_TIMEOUT + 1)
        for task in done - {stopping}:
            task.result()  # a loop that ended by itself failed: the process exits, to be restarted

    def stop(self) -> None:
        self._stopping.set()

    async def aclose(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.zrem(keys.webhook_consumers(), self.name)
        await self.sender.aclose()
        await self._reader.aclose()
        await self.redis.aclose()

    async def _ensure_group(self) -> None:
        """The consumer group, from the stream's start: events written before any process ran are delivered too."""
        try:
            await self.redis.xgroup_create(keys.webhook_events(), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_forever(self) -> None:
        while True:
            if not self.lanes.room:
                self.lanes.freed.clear()
                await self.lanes.freed.wait()
                continue
            replies = await self._guarded(
                self._reader.xreadgroup(
                    GROUP, self.name, {keys.webhook_events(): ">"}, count=self.lanes.room, block=1000
                )
            )
            for _, entries in replies or ():
                for entry_id, fields in entries:
                    await self._take_in_entry(entry_id, fields)

    async def _retries_forever(self) -> None:
        while True:
            if self.lanes.room:
                now = now_ms()
                taken = await self._guarded(
                    self._take(
                        keys=[keys.webhook_retries(), keys.webhook_pending()],
                        args=[now, now + int(LEASE * 1000), min(self.lanes.room, 500)],
                    )
                )
                for msg_id, state in zip(taken[::2], taken[1::2], strict=True) if taken else ():
                    await self._take_in(Event.from_state(msg_id, state))
            await asyncio.sleep(RETRY_POLL)

    async def _keep_forever(self) -> None:
        """Heartbeat; renew what is held; take what dead processes held; forget long-gone consumers."""
        renewed = forgotten = 0.0
        while True:
            await asyncio.sleep(HEARTBEAT)
            await self._guarded(self._heartbeat())
            if time.monotonic() - renewed >= RENEW_EVERY:
                renewed = time.monotonic()
                await self._guarded(self._renew())
                await self._guarded(self._claim_abandoned())
            if time.monotonic() - forgotten >= FORGET_CONSUMERS_AFTER / 60:
                forgotten = time.monotonic()
                await self._guarded(self._forget_consumers())

    async def _guarded(self, call: Any) -> Any:
        """Await a Redis call of a loop; on a Redis error (or a stream deleted under the group) log once, wait a
        second and return None: the loop carries on when Redis is back."""
        try:
            result = await call
        except REDIS_ERRORS as exc:
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                logger.warning("Redis unreachable, retrying: %s", exc)
            await asyncio.sleep(1.0)
            return None
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group()
            return None
        if self._redis_down_since is not None:
            logger.info("Redis reachable again after %.1fs", time.monotonic() - self._redis_down_since)
            self._redis_down_since = None
        return result

    async def _until_redis(self, call: Callable[[], Awaitable[None]]) -> None:
        """`call()` retried every second until Redis answers."""
        while True:
            try:
                await call()
                return
            except REDIS_ERRORS as exc:
                logger.warning("Redis unreachable, retrying: %s", exc)
                await asyncio.sleep(1.0)

    async def _heartbeat(self) -> None:
        await self.redis.zadd(keys.webhook_consumers(), {self.name: now_ms()})

    async def _renew(self) -> None:
        held = list(self.lanes.held.values())
        entries: list[str | bytes | int | memoryview[int]] = [event.entry for event in held if event.entry is not None]
        retries = {event.msg_id: now_ms() + int(LEASE * 1000) for event in held if event.entry is None}
        async with self.redis.pipeline(transaction=False) as pipe:
            if entries:
                pipe.xclaim(keys.webhook_events(), GROUP, self.name, 0, entries, justid=True)
            if retries:
                # XX: not an event recorded meanwhile (delivered); GT: not earlier than its recorded next attempt.
                pipe.zadd(keys.webhook_retries(), retries, xx=True, gt=True)
            await pipe.execute()

    async def _claim_abandoned(self) -> None:
        """Entries of the group no live process renewed for CLAIM_IDLE: their process died."""
        if not self.lanes.room:
            return
        reply = await self.redis.xautoclaim(
            keys.webhook_events(), GROUP, self.name, int(CLAIM_IDLE * 1000), "0-0", count=self.lanes.room
        )
        claimed, deleted = reply[1], reply[2] if len(reply) > 2 else []
        if deleted:
            await self.redis.xack(keys.webhook_events(), GROUP, *deleted)
        for entry_id, fields in claimed:
            logger.info("webhook event taken over from a dead consumer", extra={"webhook_id": f"msg_{entry_id}"})
            await self._take_in_entry(entry_id, fields)

    async def _forget_consumers(self) -> None:
        stale = now_ms() - int(FORGET_CONSUMERS_AFTER * 1000)
        for consumer in await self.redis.xinfo_consumers(keys.webhook_events(), GROUP):
            name = consumer["name"]
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] > FORGET_CONSUMERS_AFTER * 1000:
                await self.redis.xgroup_delconsumer(keys.webhook_events(), GROUP, name)
        await self.redis.zremrangebyscore(keys.webhook_consumers(), "-inf", stale)

    # ---- taking events in --------------------------------------------------------------------------------------

    async def _take_in_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            event = Event.from_entry(entry_id, fields)
        except ValueError as exc:
            logger.error("%s: dropped", exc)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(keys.webhook_events(), GROUP, entry_id)
                pipe.xdel(keys.webhook_events(), entry_id)
                pipe.hincrby(keys.webhook_stats(), "dropped", 1)
                await self._guarded(pipe.execute())
            return
        await self._take_in(event)

    async def _take_in(self, event: Event) -> None:
        """Start or queue the event; one of a client whose lane and queue are full is put off (not an attempt)."""
        if not self.lanes.offer(event):
            await self._record(event, None, now_ms() + int(PUT_OFF * 1000), [])

    # ---- one delivery ------------------------------------------------------------------------------------------

    async def deliver(self, event: Event) -> None:
        """One attempt at the event, and its outcome recorded."""
        self.metrics.in_flight.inc()
        try:
            await self._attempt(event)
        finally:
            self.metrics.in_flight.dec()

    async def _attempt(self, event: Event) -> None:
        record, secret = await self._load(event)
        spec = webhook_of(record) if record else None
        if spec is None or event.event not in spec.get("events", [event.event]):
            self.metrics.dropped.inc()
            await self._record(event, None, None, ["dropped"])
            logger.info(
                "webhook event dropped: %s",
                "its record is gone" if not record else "its webhook does not ask for it",
                extra={"webhook_id": event.msg_id, "type": event.type},
            )
            return
        body = payload(event, record)
        secret = secret or derived_secret(self.settings.webhook_secret_key, event.owner)
        timestamp = int(time.time())
        headers = {
            "webhook-id": event.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, event.msg_id, timestamp, body),
        }
        began = time.monotonic()
        attempt = await self.sender.post(spec["url"], headers, body)
        self.metrics.attempt_seconds.observe(time.monotonic() - began)
        await self._outcome_of(event, attempt)

    async def _load(self, event: Event) -> tuple[dict[str, str], str | None]:
        """The event's record ({} when gone) and its client's stored secret (None: derive it)."""
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hgetall(event.record_key)
                    pipe.hget(keys.client(event.owner), "webhook_secret")
                    record, secret = await pipe.execute()
                return record, secret
            except REDIS_ERRORS as exc:
                logger.warning("Redis unreachable, retrying: %s", exc)
                await asyncio.sleep(1.0)

    async def _outcome_of(self, event: Event, attempt: Attempt) -> None:
        now = now_ms()
        event.attempts += 1
        event.first_attempt = event.first_attempt or now
        due: int | None = None
        counters: list[str]
        if attempt.delivered:
            status, counters = "delivered", ["delivered"]
            self.metrics.delivered.labels(event.type).inc()
            self.metrics.latency.observe(max(0.0, (now - event.at) / 1000))
        else:
            self.metrics.failed_attempts.labels(_reason(attempt)).inc()
            if not attempt.final:
                due = next_attempt_ms(
                    event.attempts,
                    event.first_attempt,
                    now,
                    self.settings.webhook_retry_delays,
                    self.settings.WEBHOOK_RETRY_HOURS,
                    attempt.retry_after,
                    self._rng,
                )
            status, counters = ("pending", ["failed_attempts"]) if due else ("failed", ["failed_attempts", "given_up"])
            if due is None:
                self.metrics.given_up.inc()
        delivery = {
            "status": status,
            "attempts": event.attempts,
            "last_attempt_at": iso_ms(now),
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
            "delivered_at": iso_ms(now) if attempt.delivered else None,
            "next_attempt_at": iso_ms(due) if due else None,
        }
        await self._record(event, delivery, due, counters)
        level = logging.INFO if attempt.delivered or due else logging.WARNING
        logger.log(
            level,
            "webhook %s",
            {"delivered": "delivered", "pending": "attempt failed, retried later", "failed": "given up"}[status],
            extra={
                "webhook_id": event.msg_id,
                "type": event.type,
                "attempt": event.attempts,
                "status_code": attempt.status_code,
                "error": attempt.error,
            },
        )

    async def _record(
        self, event: Event, delivery: dict[str, Any] | None, due: int | None, counters: list[str]
    ) -> None:
        """The event's outcome (shared/lua/webhook_outcome.lua), retried while Redis is unreachable (for a minute:
        past it the event stays pending, and is sent again)."""
        args = [
            event.msg_id,
            orjson.dumps(delivery).decode() if delivery is not None else "",
            str(due) if due is not None else "",
            event.state() if due is not None else "",
            event.entry or "",
            GROUP,
            *counters,
        ]
        script_keys = [
            event.record_key,
            keys.webhook_retries(),
            keys.webhook_pending(),
            keys.webhook_events(),
            keys.webhook_stats(),
        ]
        deadline = time.monotonic() + 60
        while True:
            try:
                await self._outcome(keys=script_keys, args=args)
                return
            except REDIS_ERRORS as exc:
                if time.monotonic() > deadline:
                    logger.error("webhook outcome not recorded: %s", exc, extra={"webhook_id": event.msg_id})
                    return
                await asyncio.sleep(0.5)


def _reason(attempt: Attempt) -> str:
    """The label of a failed attempt: `3xx`, `4xx`, `5xx`, or the error's kind (`timeout`, `refused`, ...)."""
    if attempt.status_code is not None:
        return f"{attempt.status_code // 100}xx"
    return (attempt.error or "error").split(":")[0]
