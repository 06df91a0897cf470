"""A client's open event streams, counted across every API process against its `max_streams`.

Each open stream holds a lease: a member of the client's sorted set (`keys.stream_leases`) scored by when it
expires, taken by lease.lua within the limit. The API process serving the stream refreshes all its leases every
`REFRESH_SECONDS` in one pipeline, and removes a lease when its stream ends (removals of streams ending together
also go in one pipeline). A process that dies leaves its leases to expire within `LEASE_SECONDS`; so does a
lease whose stream never ran its end (its response never started): leases are held weakly, and one nobody
holds any more is no longer refreshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref

from redis.asyncio import Redis

from api.exceptions import QuotaExceeded
from shared import keys
from shared.connection import REDIS_ERRORS
from shared.models import now_ms
from shared.scripts import load_script

logger = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
"""How long a lease lasts unless refreshed: how long the streams of an API process that died still count."""
REFRESH_SECONDS = 10.0
"""How often an API process extends the leases of its open streams."""


class Lease:
    """One open event stream of a client; `release()` when it ends (again: nothing more)."""

    __slots__ = ("__weakref__", "_leases", "id", "key")

    def __init__(self, leases: StreamLeases | None, key: str, lease_id: str) -> None:
        self._leases = leases
        self.key = key
        self.id = lease_id

    def release(self) -> None:
        if self._leases is not None:
            self._leases.release(self)
            self._leases = None


UNLIMITED = Lease(None, "", "")
"""The lease of a client without a limit (`max_streams` 0): nothing is counted."""


class StreamLeases:
    def __init__(
        self, redis: Redis, *, lease_seconds: float = LEASE_SECONDS, refresh_seconds: float = REFRESH_SECONDS
    ) -> None:
        self._redis = redis
        self._lease_ms = int(lease_seconds * 1000)
        self._refresh_seconds = refresh_seconds
        self._take = load_script(redis, "lease")
        self._open: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._released: list[tuple[str, str]] = []
        """(key, lease id) of the streams ended since the last write."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop refreshing, and give back the leases still open: a restarted API does not wait for them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for lease in list(self._open):
            lease.release()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._write(refresh=False)

    async def acquire(self, owner: str, limit: int) -> Lease:
        """A lease on one more open stream of the client, whose `max_streams` is `limit` (0: unlimited).

        Raises QuotaExceeded("max_streams") when the client already holds `limit` open streams."""
        if limit <= 0:
            return UNLIMITED
        key, lease_id = keys.stream_leases(owner), f"{random.getrandbits(64):016x}"
        now = now_ms()
        open_streams = await self._take(keys=[key], args=[now, now + self._lease_ms, limit, lease_id])
        if open_streams:
            raise QuotaExceeded("max_streams", limit, open_streams, 1, what="open event streams")
        lease = Lease(self, key, lease_id)
        self._open.add(lease)
        return lease

    def release(self, lease: Lease) -> None:
        """Remove `lease` soon (with the other streams ending meanwhile, in one pipeline)."""
        self._open.discard(lease)
        self._released.append((lease.key, lease.id))
        self._wake.set()

    async def _run(self) -> None:
        next_refresh = time.monotonic() + self._refresh_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_refresh - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            refresh = time.monotonic() >= next_refresh
            if refresh:
                next_refresh = time.monotonic() + self._refresh_seconds
            try:
                await self._write(refresh=refresh)
            except REDIS_ERRORS as exc:
                logger.warning("could not write the leases of open event streams (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _write(self, *, refresh: bool) -> None:
        """Remove the released leases, and with `refresh` extend the open ones; one round trip."""
        released, self._released = self._released, []
        opened = list(self._open) if refresh else []
        if not released and not opened:
            return
        expiry = now_ms() + self._lease_ms
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, lease_id in released:
                    pipe.zrem(key, lease_id)
                for lease in opened:
                    pipe.zadd(lease.key, {lease.id: expiry}, xx=True)
                for key in {lease.key for lease in opened}:
                    pipe.pexpireat(key, expiry)
                await pipe.execute()
        except BaseException:
            self._released = released + self._released  # removed at the next write
            raise
