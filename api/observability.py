"""Prometheus metrics of the API: a middleware counting requests by route template and status; and the report
of Redis's memory limit at start."""

from __future__ import annotations

import logging
import time

from redis import exceptions
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import ApiMetrics

logger = logging.getLogger(__name__)


async def report_redis_memory(redis: Redis) -> None:
    """Log Redis's maxmemory and policy, as found (a Redis the operator configured is not changed); warn when the
    policy evicts keys: past maxmemory Redis would then drop jobs, results or queues instead of refusing writes."""
    try:
        info = await redis.info("memory")
    except (exceptions.RedisError, OSError) as exc:  # Redis away, or INFO refused: the API starts all the same
        logger.warning("Redis memory limit unknown (INFO memory failed: %s)", exc)
        return
    maxmemory, policy = int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", "unknown"))
    limit = f"maxmemory {info.get('maxmemory_human', maxmemory)}" if maxmemory else "no maxmemory"
    if maxmemory and policy.startswith(("allkeys-", "volatile-")):
        logger.warning(
            "Redis: %s with maxmemory-policy %s, which evicts keys: jobs, results or queues could vanish when it is "
            "full; set maxmemory-policy noeviction (then the API answers 503 when Redis is full)",
            limit,
            policy,
        )
    else:
        logger.info("Redis: %s, maxmemory-policy %s (used %s)", limit, policy, info.get("used_memory_human", "?"))


class RequestMetrics:
    """Counts every HTTP request by method, route template (not the raw path: ids would explode the
    label space) and status, and times it to the start of its response."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.request_seconds.labels(_route(scope)).observe(time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path: str = getattr(route, "path", None) or "unmatched"
    return path
