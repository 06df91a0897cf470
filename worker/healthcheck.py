"""`python -m worker.healthcheck`: the container health check of a worker.

Exits 0 when a worker process of this host (its worker id is `<hostname>:<pid>`) has beaten in Redis within its
lease (three heartbeats, see `Settings.worker_lease`) for one of the models of LLM_TABLE, else 1 with the reason on
stderr. A fresh heartbeat proves more than a live process: the worker's event loop runs and reaches Redis. It is
the same test the other workers' sweepers apply before handing a worker's jobs back to the queue.

Cheap: one connection, one ZRANGEBYSCORE per model, no job touched. Reads the same settings as the worker.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

from redis.asyncio import Redis

from shared import keys
from shared.connection import REDIS_ERRORS, redis_client
from shared.settings import Settings, settings_or_exit


async def fresh_workers(redis: Redis, settings: Settings, hostname: str, now: float | None = None) -> list[str]:
    """Worker ids of `hostname` whose last heartbeat is within the lease, over every model of LLM_TABLE."""
    now_ms = (time.time() if now is None else now) * 1000
    oldest = now_ms - settings.worker_lease * 1000
    found: list[str] = []
    for model in settings.models:
        members: list[str] = await redis.zrangebyscore(keys.workers(model), oldest, "+inf")
        found += [member for member in members if member.startswith(f"{hostname}:")]
    return found


async def _check(settings: Settings, hostname: str) -> list[str]:
    redis = redis_client(settings, "spp-healthcheck", single_connection=True)
    try:
        return await fresh_workers(redis, settings, hostname)
    finally:
        await redis.aclose()


def main() -> int:
    settings = settings_or_exit()
    hostname = socket.gethostname()
    try:
        found = asyncio.run(_check(settings, hostname))
    except REDIS_ERRORS as exc:
        print(f"unhealthy: Redis unreachable: {exc}", file=sys.stderr)
        return 1
    if not found:
        print(
            f"unhealthy: no worker of host {hostname} beat within {settings.worker_lease:g}s "
            f"(models: {', '.join(settings.models)})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
