"""The bytes each client keeps stored in Redis, against its `max_stored_bytes`: uploaded files, the batches made
from them (an input's bytes, copied into the batch's jobs) and job metadata.

What is stored expires by TTL, with no hook to tell anyone. So a charge is made for a time, the expiry of what it
pays for: the client's charges are a hash of hourly buckets (`keys.stored`), each holding the bytes that expire
within its hour, and the usage is the sum of the buckets whose hour has not ended (shared/lua/stored_buckets.lua).
A charge stops counting by itself, at most an hour after its item expired; whoever deletes an item earlier gives
its bytes back to the same bucket, with the same size and time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from api.exceptions import QuotaExceeded
from shared import keys
from shared.models import now_ms
from shared.policy import ClientPolicy
from shared.scripts import load_script

WHAT = "bytes stored (files, batches and job metadata)"
"""The unit of `max_stored_bytes` in its quota error."""


def over_stored_bytes(
    policy: ClientPolicy, usage: int, requested: int, first_end_ms: int | None, now: int
) -> QuotaExceeded:
    """The error of a charge refused: Retry-After says when the earliest charge stops counting (deleting files
    frees room at once)."""
    retry_after = math.ceil((first_end_ms - now) / 1000) if first_end_ms else None
    limit = policy.max_stored_bytes
    return QuotaExceeded("max_stored_bytes", limit, usage, requested, what=WHAT, retry_after=retry_after)


class Charge(NamedTuple):
    """Bytes charged to a client until a time (ms since the epoch): what `release` takes to give them back."""

    nbytes: int
    expires_at_ms: int


NO_CHARGE = Charge(0, 0)


class StoredBytes:
    """Charges against each client's `max_stored_bytes`, shared by every process through Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = load_script(redis, "stored")

    async def reserve(
        self, owner: str, policy: ClientPolicy, nbytes: int, expires_at_ms: int, *, moving: Charge | None = None
    ) -> Charge:
        """Charge `nbytes` until `expires_at_ms`, and move an earlier charge of the same item (`moving`) there in the
        same step; the item's whole charge afterwards. Raises QuotaExceeded("max_stored_bytes") when the client's
        usage would pass its `max_stored_bytes` (0: unlimited): then nothing is charged nor moved."""
        changes = [expires_at_ms, nbytes]
        if moving is not None and moving.nbytes:
            changes += [moving.expires_at_ms, -moving.nbytes, expires_at_ms, moving.nbytes]
        now = now_ms()
        done, usage, *first_end = await self._script(
            keys=[keys.stored(owner)], args=[now, policy.max_stored_bytes, *changes]
        )
        if not done:
            raise over_stored_bytes(policy, usage, nbytes, first_end[0] if first_end else None, now)
        return Charge(nbytes + (moving.nbytes if moving is not None else 0), expires_at_ms)

    async def move(self, owner: str, charge: Charge, expires_at_ms: int, *, pipe: Pipeline | None = None) -> Charge:
        """Move a charge to another time (never refused); queued in `pipe` when given (a transaction with what the
        move pays for, say). The charge afterwards."""
        args = [now_ms(), 0, charge.expires_at_ms, -charge.nbytes, expires_at_ms, charge.nbytes]
        await self._script(keys=[keys.stored(owner)], args=args, client=pipe)
        return Charge(charge.nbytes, expires_at_ms)

    async def release(self, owner: str, nbytes: int, expires_at_ms: int) -> None:
        """Give back `nbytes` charged until `expires_at_ms` (an item deleted before it expired, or a submission that
        failed after its charge). Giving back more than was charged only empties the bucket."""
        if nbytes:
            await self._script(keys=[keys.stored(owner)], args=[now_ms(), 0, expires_at_ms, -nbytes])

    async def usage(self, owner: str) -> int:
        """The client's stored bytes now (a release of nothing: the script drops the ended buckets as it counts)."""
        _, usage = await self._script(keys=[keys.stored(owner)], args=[now_ms(), 0])
        return int(usage)
