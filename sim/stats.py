"""Counters the simulator keeps for /sim/stats and /metrics."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

RECENT_LIMIT = 200


class Stats:
    """Cumulative counters (zeroed by /sim/reset) plus the live running/waiting gauges per model.

    The gauges are owned by the scheduler but kept here so that one object answers every read.
    """

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.aborted = 0
        self.completed = 0
        self.by_model: Counter[str] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.by_model_endpoint: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[str] = Counter()
        self.successes: Counter[tuple[str, str]] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_LIMIT)

    def record_request(self, endpoint: str, model: str, request_id: str, body: Any) -> None:
        """Count a generation request as received, before validation or faults."""
        self.requests += 1
        self.by_model[model] += 1
        self.by_endpoint[endpoint] += 1
        self.by_model_endpoint[model, endpoint] += 1
        entry = dict(body) if isinstance(body, dict) else {"body": body}
        entry["endpoint"] = endpoint
        entry["request_id"] = request_id
        self.recent.append(entry)

    def record_success(self, model: str, finish_reason: str) -> None:
        self.completed += 1
        self.successes[model, finish_reason] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "running": sum(self.running.values()),
            "waiting": sum(self.waiting.values()),
            "aborted": self.aborted,
            "completed": self.completed,
            "by_model": dict(self.by_model),
            "by_endpoint": dict(self.by_endpoint),
            "faults": dict(self.faults),
            "recent": list(self.recent),
        }
