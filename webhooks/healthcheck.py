"""`python -m webhooks.healthcheck`: the container health check of the delivery process.

Exits 0 when a delivery process of this host (its consumer name is `<hostname>:<pid>`) has beaten in Redis within
the last few seconds (`keys.webhook_consumers`), else 1 with the reason on stderr: its event loop runs and reaches
Redis.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from shared import keys
from shared.connection import REDIS_ERRORS, redis_client
from shared.models import now_ms
from shared.settings import Settings, settings_or_exit
from webhooks.deliverer import HEARTBEAT

FRESH = 5 * HEARTBEAT
"""Seconds within which the last heartbeat must be."""


async def fresh_consumers(settings: Settings, hostname: str) -> list[str]:
    redis = redis_client(settings, "spp-healthcheck", single_connection=True)
    try:
        members: list[str] = await redis.zrangebyscore(keys.webhook_consumers(), now_ms() - FRESH * 1000, "+inf")
    finally:
        await redis.aclose()
    return [member for member in members if member.startswith(f"{hostname}:")]


def main() -> int:
    settings = settings_or_exit()
    hostname = socket.gethostname()
    try:
        found = asyncio.run(fresh_consumers(settings, hostname))
    except REDIS_ERRORS as exc:
        print(f"unhealthy: Redis unreachable: {exc}", file=sys.stderr)
        return 1
    if not found:
        print(f"unhealthy: no webhook delivery process of host {hostname} beat within {FRESH:g}s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
