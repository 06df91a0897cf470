"""Limits that protect the service: request body size, and each API key's request rate.

The body cap is an ASGI middleware, so that an oversized body is refused before it is read whole;
the rate limit is a token bucket in Redis (shared/lua/rate.lua), shared by every API process.
"""

from __future__ import annotations

import math

from redis.exceptions import OutOfMemoryError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import JSONResponse
from shared import keys
from shared.errors import SppError
from shared.models import now_ms
from shared.multiplex import SharedConnection
from shared.policy import ClientPolicy
from shared.scripts import load_script

UPLOAD_PATHS = ("/v1/files",)
"""Bodies that have a limit of their own (batch input files)."""


class RateLimited(SppError):
    def __init__(self, rate: float, burst: int, wait_ms: int) -> None:
        super().__init__(
            f"rate limit of {rate:g} requests per second (bursts of {burst}) exceeded: this client's rate_limit "
            "(default RATE_LIMIT); retry later"
        )
        self.retry_after = max(1, math.ceil(wait_ms / 1000))
        self.limit = {"limit": "rate_limit", "value": rate, "burst": burst}


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answers 413 when a request body exceeds MAX_BODY_BYTES, whether it declares its length or not."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body over the limit of MAX_BODY_BYTES={self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


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
