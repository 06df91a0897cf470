"""Helpers of the fault tests: job records read straight from Redis, worker ids, and fast recovery settings."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import redis

from shared import keys
from stack.processes import Service
from tests.integration.conftest import Stack

FAST: dict[str, Any] = {
    "WORKER_HEARTBEAT": 0.2,
    "WORKER_IDLE_POLL": 0.2,
    "RETRY_BACKOFF": 0.05,
    "STREAM_FLUSH_MS": 20,
}
"""Small timings: a dead worker's jobs are handed back within 0.6 s (three heartbeats) plus a sweep."""


def unique(prefix: str = "f") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def worker_id(service: Service) -> str:
    """The id a worker process writes in the records of the jobs it runs (worker/runner.py)."""
    return f"{socket.gethostname()}:{service.pid}"


def record(client: redis.Redis, job_id: str) -> dict[str, str]:
    """The job's record in Redis (whatever its owner), with fields the API does not show (`worker`, `run`)."""
    found: list[str] = client.keys(keys.job(f"*:{job_id}"))  # type: ignore[assignment]
    assert len(found) == 1, found
    fields: dict[str, str] = client.hgetall(found[0])  # type: ignore[assignment]
    return fields


def stream(client: redis.Redis, job_id: str) -> list[tuple[str, str]]:
    """The job's token stream in Redis as (type, data) pairs (none before its first token)."""
    found: list[str] = client.keys(keys.stream(f"*:{job_id}"))  # type: ignore[assignment]
    entries = client.xrange(found[0]) if found else []
    return [(fields["t"], fields["d"]) for _, fields in entries]  # type: ignore[union-attr]


def runner_of(stack: Stack, client: redis.Redis, job_id: str, model: str) -> Service:
    """The worker process running the job."""
    running = record(client, job_id)["worker"]
    return next(service for service in stack.workers[model] if worker_id(service) == running)


def tokens_after_last_reset(events: list[tuple[str, str]]) -> str:
    resets = [index for index, (kind, _) in enumerate(events) if kind == "reset"]
    start = resets[-1] + 1 if resets else 0
    return "".join(data for kind, data in events[start:] if kind == "token")
