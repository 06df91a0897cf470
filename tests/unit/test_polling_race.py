"""GET /v1/jobs/{id} of a job that starts between the read of its record and the read of its queue position: it
is shown as it is then (running), never `queued` without a position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from api.auth import Caller
from api.routes import jobs
from shared.models import JobRecord, JobStatus
from shared.policy import default_policy
from tests.unit.conftest import make_settings

QUEUED: JobRecord = {
    "id": "j1",
    "model": "m",
    "status": JobStatus.QUEUED.value,
    "arq": "arq:j1",
    "request": '{"prompt": "x"}',
    "hash": "h",
    "created_at": "1700000000000",
    "cost": "10",
    "weight": "1",
    "day": "20231114",
    "rank": "1",
}
ESTIMATE = "2023-11-14T22:13:30.000Z"


@dataclass
class StartingStore:
    """A job's record: queued at the first read, running afterwards."""

    reads: int = 0

    async def get(self, owner: str, job_id: str) -> JobRecord:
        self.reads += 1
        if self.reads == 1:
            return QUEUED
        return {**QUEUED, "status": JobStatus.RUNNING.value, "started_at": "1700000001000", "attempts": "1"}


@dataclass
class Estimator:
    """Says the job is not queued (anymore), or queued with 3 jobs ahead."""

    queued: bool
    asked: list[str] = field(default_factory=list)

    async def queue_fields(self, kid: str, record: JobRecord) -> tuple[int | None, str | None]:
        self.asked.append(kid)
        return (3, ESTIMATE) if self.queued else (None, None)


def client(store: StartingStore, estimator: Estimator) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(jobs.router)
    state: dict[str, Any] = {"store": store, "estimator": estimator}
    caller = Caller(name="c", owner="o", policy=default_policy(make_settings()))

    async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "state": state, "caller": caller}, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url="http://test")


async def test_a_job_that_started_meanwhile_is_shown_running() -> None:
    store, estimator = StartingStore(), Estimator(queued=False)
    async with client(store, estimator) as http:
        job = (await http.get("/v1/jobs/j1")).json()
    assert (job["status"], job["queue_position"], job["estimated_start_at"]) == ("running", None, None)
    assert (store.reads, estimator.asked) == (2, ["o:j1"])


async def test_a_queued_job_is_read_once_with_its_place() -> None:
    store, estimator = StartingStore(), Estimator(queued=True)
    async with client(store, estimator) as http:
        job = (await http.get("/v1/jobs/j1")).json()
    assert (job["status"], job["queue_position"], job["estimated_start_at"]) == (
        "queued",
        3,
        "2023-11-14T22:13:30.000Z",
    )
    assert store.reads == 1
