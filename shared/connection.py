"""Redis clients built from the settings, with the reconnect behaviour every process needs.

With REDIS_SENTINELS set, clients find the master through Redis Sentinel and follow a failover.
"""

from __future__ import annotations

from typing import Any

from redis import exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from shared.settings import Settings

POOL_WAIT_SECONDS = 10.0
"""How long a command waits for a free connection of its pool before failing."""

REDIS_ERRORS: tuple[type[Exception], ...] = (exceptions.ConnectionError, exceptions.TimeoutError, OSError)


def redis_client(
    settings: Settings, name: str, *, single_connection: bool = False, max_connections: int = 64, decode: bool = True
) -> Redis:
    """A client that decodes replies to str (bytes if not `decode`) and retries a command a few times on reconnect.

    `name` is the connection's CLIENT SETNAME, so that CLIENT LIST tells the API from the workers.
    """
    options: dict[str, Any] = {
        "decode_responses": decode,
        "client_name": name,
        "max_connections": max_connections,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        "retry_on_error": list(REDIS_ERRORS),
    }
    if settings.sentinels:
        sentinel = Sentinel(settings.sentinels, socket_connect_timeout=2.0)  # type: ignore[no-untyped-call]
        client: Redis = sentinel.master_for(
            settings.REDIS_SENTINEL_MASTER, password=settings.REDIS_PASSWORD, db=settings.REDIS_DB, **options
        )
        # A dedicated connection of that pool: the stream reader blocks on it.
        return client.client() if single_connection else client
    if single_connection:
        single: Redis = Redis.from_url(settings.redis_url, single_connection_client=True, **options)
        return single
    # A blocking pool: past `max_connections` requests wait for a connection instead of failing with
    # "Too many connections" (which the API would answer 503).
    pool = BlockingConnectionPool.from_url(settings.redis_url, timeout=POOL_WAIT_SECONDS, **options)
    pooled: Redis = Redis.from_pool(pool)
    return pooled
