"""Retry-After of a full queue and of `max_queued_jobs` (api/errors.py): the estimated time for enough of the
model's jobs to finish to make room, 1 when unknown."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from api import errors
from api.exceptions import QueueFull, QuotaExceeded, SppError


class FakeEstimator:
    """The model finishes 2 jobs a second, or its rate is unknown."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.asked: list[tuple[str, float]] = []

    async def seconds_until_room(self, model: str, jobs: float) -> int | None:
        self.asked.append((model, jobs))
        return None if self.rate is None else max(1, round(jobs / self.rate))


def refusing(error: SppError, estimator: FakeEstimator) -> httpx.AsyncClient:
    """A client of an app whose one route raises `error`, with `estimator` in the lifespan's state."""
    app = FastAPI()
    errors.install(app)

    @app.post("/v1/jobs")
    async def submit() -> None:
        raise error

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "state": {"estimator": estimator}}, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url="http://test")


def quota(limit: str, model: str | None = "m", retry_after: int | None = None) -> QuotaExceeded:
    return QuotaExceeded(limit, 10, 9, 5, what="things", model=model, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "rate", "retry_after", "asked"),
    [
        (QueueFull("m", "MAX_QUEUE_DEPTH", 100, usage=100, requested=10), 2.0, "5", [("m", 10)]),
        (QueueFull("m", "MAX_QUEUE_DEPTH", 100, usage=100, requested=10), None, "1", [("m", 10)]),
        (quota("max_queued_jobs"), 0.5, "8", [("m", 4)]),
        (quota("max_queued_jobs", model=None), 2.0, "1", []),
        (quota("tokens_per_day", retry_after=3600), 2.0, "3600", []),
        (quota("max_streams"), 2.0, "1", []),
    ],
)
async def test_retry_after_of_refused_submissions(
    error: SppError, rate: float | None, retry_after: str, asked: list[tuple[str, float]]
) -> None:
    estimator = FakeEstimator(rate)
    async with refusing(error, estimator) as client:
        response = await client.post("/v1/jobs")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == retry_after
    assert estimator.asked == asked
