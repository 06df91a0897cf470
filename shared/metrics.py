"""Every Prometheus metric of albert-spp, for the API (`/metrics`) and the workers (WORKER_METRICS_PORT).

Each process has its own registry, so that an API does not export workers' metrics and vice versa.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.asyncio import Redis

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics", "WorkerMetrics"]

REDIS_MEMORY_EVERY = 5.0
"""Seconds between two reads of Redis's memory figures by one API process. INFO memory is one cheap command, but
each open dashboard polls it every few seconds and each Prometheus scrapes it, per API process; the figures move
slowly, and a few seconds' lag changes nothing to what an operator does with them."""

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spp_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "spp_http_request_duration_seconds",
            "Time to answer (to the first byte of a stream).",
            ["route"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.submitted = Counter("spp_jobs_submitted", "Jobs accepted, per model.", ["model"], registry=self.registry)
        self.queued = Gauge("spp_queue_depth", "Jobs waiting, per model.", ["model"], registry=self.registry)
        self.running = Gauge("spp_jobs_running", "Jobs running, per model.", ["model"], registry=self.registry)
        self.workers = Gauge("spp_workers_live", "Live workers, per model.", ["model"], registry=self.registry)
        self.redis_used_memory = Gauge(
            "spp_redis_used_memory_bytes",
            "Memory Redis uses (INFO memory: used_memory), read at most every few seconds.",
            registry=self.registry,
        )
        self.redis_maxmemory = Gauge(
            "spp_redis_maxmemory_bytes",
            "Redis's maxmemory (0: no limit); past it Redis refuses writes and the API answers 503.",
            registry=self.registry,
        )
        self._redis_memory: dict[str, int] = {"used_memory": 0, "maxmemory": 0}
        self._redis_memory_at = float("-inf")

    async def redis_memory(self, redis: Redis) -> dict[str, int]:
        """Redis's `used_memory` and `maxmemory` (0: no limit) in bytes, read by INFO memory at most every
        REDIS_MEMORY_EVERY seconds; the gauges are set from them."""
        if time.monotonic() - self._redis_memory_at >= REDIS_MEMORY_EVERY:
            info = await redis.info("memory")
            self._redis_memory = {"used_memory": int(info["used_memory"]), "maxmemory": int(info["maxmemory"])}
            self._redis_memory_at = time.monotonic()
            self.redis_used_memory.set(self._redis_memory["used_memory"])
            self.redis_maxmemory.set(self._redis_memory["maxmemory"])
        return dict(self._redis_memory)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.started = Counter("spp_jobs_started", "Attempts started.", labels, registry=self.registry)
        self.succeeded = Counter("spp_jobs_succeeded", "Jobs succeeded.", labels, registry=self.registry)
        self.failed = Counter(
            "spp_jobs_failed", "Jobs failed, by error type.", [*labels, "type"], registry=self.registry
        )
        self.retried = Counter(
            "spp_jobs_retried", "Attempts retried after a transient failure.", labels, registry=self.registry
        )
        self.backend_errors = Counter(
            "spp_backend_errors", "Model server errors, by kind.", [*labels, "kind"], registry=self.registry
        )
        self.queue_seconds = Histogram(
            "spp_job_queue_seconds",
            "Time from submission to the attempt's start.",
            labels,
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.first_token_seconds = Histogram(
            "spp_time_to_first_token_seconds",
            "Time from the request to the model server to its first token.",
            labels,
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "spp_generation_seconds",
            "Duration of a successful generation.",
            labels,
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "spp_generation_tokens_per_second",
            "Completion tokens per second of a successful generation.",
            labels,
            buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=self.registry,
        )
        self.running = Gauge(
            "spp_worker_jobs_running", "Generations this worker runs now.", labels, registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
