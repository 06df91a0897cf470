"""Redis clients built from the settings, with the reconnect behaviour every process needs."""

from __future__ import annotations

from redis import exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from shared.settings import Settings

REDIS_ERRORS: tuple[type[Exception], ...] = (exceptions.ConnectionError, exceptions.TimeoutError, OSError)


def redis_client(
    settings: Settings, name: str, *, single_connection: bool = False, max_connections: int = 64, decode: bool = True
) -> Redis:
    """A client that decodes replies to str (bytes if not `decode`) and retries a command a few times on reconnect.

    `name` is the connection's CLIENT SETNAME, so that CLIENT LIST tells the API from the workers.
    """
    client: Redis = Redis.from_url(
        settings.redis_url,
        decode_responses=decode,
        client_name=name,
        single_connection_client=single_connection,
        max_connections=max_connections,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=list(REDIS_ERRORS),
    )
    return client
