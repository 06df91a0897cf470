"""Limits that protect the service: request body size and pace, each API key's request rate, and the failed
authentications of each client address.

The body limits are an ASGI middleware, so that an oversized or stalled body is refused before it is read whole;
the rate limit is a token bucket in Redis (shared/lua/rate.lua), shared by every API process; the failed
authentications are counted in Redis too, and an address past its limit is refused by each process from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from redis.exceptions import OutOfMemoryError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.exceptions import SppError
from api.multiplex import SharedConnection
from api.responses import JSONResponse
from shared import keys
from shared.connection import REDIS_ERRORS
from shared.models import now_ms
from shared.policy import ClientPolicy
from shared.scripts import load_script
from shared.settings import Settings

logger = logging.getLogger(__name__)

UPLOAD_PATHS = ("/v1/files",)
"""Bodies that have limits of their own (batch input files): BATCH_MAX_BYTES, and no BODY_READ_TIMEOUT."""


class Throttled(SppError):
    """429 with Retry-After: `retry_after` seconds; `limit` (its name and value) joins the answer's body."""

    retry_after: int
    limit: dict[str, object]


class RateLimited(Throttled):
    def __init__(self, rate: float, burst: int, wait_ms: int) -> None:
        super().__init__(
            f"rate limit of {rate:g} requests per second (bursts of {burst}) exceeded: this client's rate_limit "
            "(default RATE_LIMIT); retry later"
        )
        self.retry_after = max(1, math.ceil(wait_ms / 1000))
        self.limit = {"limit": "rate_limit", "value": rate, "burst": burst}


class AuthThrottled(Throttled):
    def __init__(self, per_minute: int, retry_after: int) -> None:
        super().__init__(
            f"too many failed authentications from this address: {per_minute} a minute (AUTH_FAILURES_PER_MINUTE); "
            "retry later"
        )
        self.retry_after = retry_after
        self.limit = {"limit": "AUTH_FAILURES_PER_MINUTE", "value": per_minute}


_UNCOUNTED: tuple[type[Exception], ...] = (OutOfMemoryError, *REDIS_ERRORS)


class AuthFailures:
    """AUTH_FAILURES_PER_MINUTE failed authentications an address, over every API process: so that API keys cannot
    be guessed faster, whatever the process asked.

    A failure costs one INCR (and an EXPIRE for the minute's first) of a counter in Redis; a success costs nothing.
    Once the counter passes the limit, this process refuses the address from memory, before its key is checked,
    until the minute ends: a correct key guessed then is refused too. Another process refuses it at its own next
    failure from that address, so that a few guesses more than the limit may be answered in a minute, never many.
    """

    MAX_ADDRESSES = 100_000
    """Addresses refused at once in memory, at most: past it the oldest refusals end early."""

    def __init__(self, shared: SharedConnection, per_minute: int) -> None:
        self._shared = shared
        self.per_minute = per_minute
        self._refused: dict[str, float] = {}
        """Address → the time (Unix seconds) its refusal ends."""

    def check(self, address: str) -> None:
        """Refuse `address` while it is past its limit."""
        until = self._refused.get(address)
        if until is None:
            return
        now = time.time()
        if now >= until:
            del self._refused[address]
            return
        raise AuthThrottled(self.per_minute, max(1, math.ceil(until - now)))

    async def failed(self, address: str) -> None:
        """Count a failed authentication of `address`; past the limit, refuse it until the minute ends."""
        if self.per_minute <= 0:
            return
        minute = int(time.time() // 60)
        key = keys.auth_failures(address, minute)
        try:
            count = int(await self._shared.execute("INCR", key))
            if count == 1:
                await self._shared.execute("EXPIRE", key, 120)
        except _UNCOUNTED as exc:
            # The request is answered 401 all the same: a Redis down is no reason to tell a stranger more.
            logger.warning("failed authentication of %s not counted: %s", address, exc)
            return
        if count > self.per_minute:
            if len(self._refused) >= self.MAX_ADDRESSES:
                del self._refused[next(iter(self._refused))]
            self._refused[address] = (minute + 1) * 60


class _Refused(Exception):
    """Raised into the route's read of a body that a limit stopped."""


STALL_TICK = 0.25
"""Seconds between two looks for body reads past their time: how late a 408 may come."""


class _StalledReads:
    """This process's body reads waiting for bytes, each with the time (the loop's) it must end by, and one task that
    stops those still waiting then, every STALL_TICK seconds while reads are registered.

    A timer per read (`asyncio.timeout`) cost 4.5 µs with uvloop, 3-4 % of a one-job POST, whose body is there at
    once and whose read never waits; an entry in a dict costs 0.55 µs (200,000 reads, best of 3).
    """

    def __init__(self) -> None:
        self._reads: dict[asyncio.Task[Any], float] = {}
        self._stopped: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None

    async def read(self, receive: Receive, until: float) -> Message:
        """`receive()`, or TimeoutError when it is still waiting at `until`."""
        task = asyncio.current_task()
        assert task is not None
        self._reads[task] = until
        if self._watch is None or self._watch.done() or self._watch.get_loop() is not task.get_loop():
            self._watch = asyncio.create_task(self._stop_late(), name="body-deadlines")
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self._stopped:
                raise
            self._stopped.discard(task)
            if task.uncancel() > 0:  # cancelled by someone else too
                raise
            raise TimeoutError from None
        finally:
            del self._reads[task]

    async def _stop_late(self) -> None:
        loop = asyncio.get_running_loop()
        while self._reads:
            await asyncio.sleep(STALL_TICK)
            now = loop.time()
            for task, until in list(self._reads.items()):
                if until <= now and task not in self._stopped:
                    self._stopped.add(task)
                    task.cancel()


class BodyLimits:
    """Request bodies must be small enough and keep coming. Over MAX_BODY_BYTES (file uploads aside): 413, whether
    the body declares its length or not. No byte for BODY_IDLE_TIMEOUT seconds, or a body (file uploads aside) not
    whole BODY_READ_TIMEOUT seconds after the request began: 408, with `Connection: close`, so that a client sending
    a byte now and then (slowloris) holds neither a connection nor what its route holds (an upload slot, say).

    The route's read of the body raises; whatever the route answers then (FastAPI turns the error of a body it parses
    itself into a 400) is replaced by the refusal.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_bytes = settings.MAX_BODY_BYTES
        self.idle_timeout = settings.BODY_IDLE_TIMEOUT
        self.read_timeout = settings.BODY_READ_TIMEOUT
        self._stalls = _StalledReads()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].startswith(UPLOAD_PATHS)
        declared = None if upload else dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._answer(scope, receive, send, 413, self._too_large())
            return
        loop = asyncio.get_running_loop()
        deadline = math.inf if upload else loop.time() + self.read_timeout
        received, complete, started = 0, False, False
        refusal: tuple[int, str] | None = None

        async def limited_receive() -> Message:
            nonlocal received, complete, refusal
            if complete:  # then only a disconnect can come
                return await receive()
            until, setting = loop.time() + self.idle_timeout, "BODY_IDLE_TIMEOUT"
            if deadline < until:
                until, setting = deadline, "BODY_READ_TIMEOUT"
            try:
                message = await self._stalls.read(receive, until)
            except TimeoutError:
                refusal = (408, self._stalled(setting, received))
                logger.info("%s after %d bytes: %s %s", refusal[1], received, scope["method"], scope["path"])
                raise _Refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes and not upload:
                    refusal = (413, self._too_large())
                    raise _Refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refusal is not None:
                return  # answered below instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_Refused):
            await self.app(scope, limited_receive, guarded_send)
        if refusal is not None and not started:
            await self._answer(scope, receive, send, *refusal)

    def _too_large(self) -> str:
        return f"request body over the limit of MAX_BODY_BYTES={self.max_bytes} bytes"

    def _stalled(self, setting: str, received: int) -> str:
        if setting == "BODY_IDLE_TIMEOUT":
            return f"no byte of the request body for BODY_IDLE_TIMEOUT={self.idle_timeout:g} seconds"
        return f"the request body was not whole within BODY_READ_TIMEOUT={self.read_timeout:g} seconds"

    @staticmethod
    async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        # A client that stalls gets the connection closed: what it sends next is not waited for.
        headers = {"Connection": "close"} if status == 408 else None
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


class RateLimiter:
    """Each client's `rate_limit` requests per second, with bursts of `rate_limit_burst` (its policy; by default
    RATE_LIMIT and RATE_LIMIT_BURST)."""

    def __init__(self, shared: SharedConnection) -> None:
        """`shared`: the connection of the API's hot commands, as the check comes before each of them."""
        self._shared = shared
        self._script = load_script(shared.client, "rate")

    async def check(self, owner: str, policy: ClientPolicy) -> None:
        rate, burst = policy.rate_limit, policy.rate_limit_burst
        if rate <= 0:
            return
        try:
            wait = int(await self._shared.evalsha(self._script, [keys.rate(owner)], [now_ms(), rate, burst]))
        except OutOfMemoryError:
            # A full Redis refuses the bucket's write too. Reading jobs and their events must still serve (clients
            # collect their results that way); every write of a request is refused by Redis itself meanwhile.
            return
        if wait:
            raise RateLimited(rate, burst, wait)
