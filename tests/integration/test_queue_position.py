"""Queue position and start estimate of queued jobs (GET and `queued` events), the cap on a client's open event
streams across API processes, and the Retry-After of a full queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import Sim, Stack, sse_fields, wait_for

MODEL = "queue/model"
IDLE = "queue/no-worker"
MAX_STREAMS = 3
MAX_QUEUE_DEPTH = 14
JOB = {"model": MODEL, "prompt": "Ma demande de logement", "params": {"max_tokens": 20}}
"""About 0.4 s of generation on the simulator below: with 2 slots, some 5 jobs a second."""


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(MODEL, IDLE, prefill_ms=20, ms_per_token=20)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim) -> Stack:
    stack = start_stack(
        [(MODEL, sim.url), (IDLE, sim.url)],
        workers={MODEL: 1},
        WORKER_MAX_JOBS=2,
        CLIENT_MAX_STREAMS=MAX_STREAMS,
        MAX_QUEUE_DEPTH=MAX_QUEUE_DEPTH,
        STREAM_FLUSH_MS=20,
    )
    # Something measured: the model's throughput is known from its finished jobs.
    warm = stack.http.post("/v1/jobs", json=[JOB] * 4).json()
    for job in warm:
        assert stack.wait_job(job["id"])["status"] == "succeeded"
    return stack


def submit(stack: Stack, count: int) -> list[dict[str, Any]]:
    response = stack.http.post("/v1/jobs", json=[{**JOB, "id": f"q-{uuid.uuid4().hex[:12]}"} for _ in range(count)])
    assert response.status_code == 202, response.text
    jobs: list[dict[str, Any]] = response.json()
    return jobs


def wait_drained(stack: Stack) -> None:
    def empty() -> bool:
        model = next(m for m in stack.http.get("/v1/models").json()["data"] if m["id"] == MODEL)
        return bool(model["queued"] == model["running"] == 0)

    wait_for(empty, 30, "the model's queue drained")


def seconds_from_now(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() - time.time()


def test_a_queued_job_shows_its_position_and_estimate_moving_as_jobs_ahead_finish(stack: Stack) -> None:
    wait_drained(stack)
    jobs = submit(stack, 10)
    last = jobs[-1]["id"]
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + 30
    while True:
        job = stack.http.get(f"/v1/jobs/{last}").json()
        if job["status"] != "queued":
            break
        assert time.monotonic() < deadline, "the job did not start within 30 s"
        assert job["estimated_start_at"] is not None, job
        seen.append((job["queue_position"], job["estimated_start_at"]))
        time.sleep(0.05)
    assert job["queue_position"] is None
    assert job["estimated_start_at"] is None
    positions = [position for position, _ in seen]
    assert positions[0] >= 6, "9 jobs ahead, at most 2 of them running"
    # Down as jobs ahead start; a job that has just finished leaves the running set a moment before the queue.
    assert all(position <= min(positions[:index]) + 2 for index, position in enumerate(positions) if index), seen
    assert positions[-1] <= 2
    assert len(set(positions)) >= 4, "the position moves as jobs ahead finish"
    # Some 5 jobs a second: 6 ahead or more start within a few seconds, not at once and not in a minute.
    first_wait = datetime.fromisoformat(seen[0][1]) - datetime.fromisoformat(jobs[-1]["created_at"])
    assert first_wait.total_seconds() > 0.5
    assert seconds_from_now(seen[0][1]) < 10
    # The estimates of a steady queue do not run away as the position drops.
    starts = [datetime.fromisoformat(estimate).timestamp() for _, estimate in seen]
    assert max(starts) - min(starts) < 3, seen
    stack.wait_job(last)


def test_a_job_that_is_not_queued_has_no_position(stack: Stack) -> None:
    job = stack.wait_job(submit(stack, 1)[0]["id"])
    assert (job["status"], job["queue_position"], job["estimated_start_at"]) == ("succeeded", None, None)


def test_a_job_of_a_model_that_never_ran_has_a_position_but_no_estimate(stack: Stack) -> None:
    ids = [stack.http.post("/v1/jobs", json={"model": IDLE, "prompt": "Personne"}).json()["id"] for _ in range(2)]
    try:
        job = stack.http.get(f"/v1/jobs/{ids[1]}").json()
        assert (job["queue_position"], job["estimated_start_at"]) == (1, None)
    finally:
        for job_id in ids:
            stack.http.delete(f"/v1/jobs/{job_id}")


def test_the_event_stream_of_a_queued_job_sends_its_position_as_it_moves(stack: Stack) -> None:
    wait_drained(stack)
    jobs = submit(stack, 12)
    events = sse_fields(stack.http, jobs[-1]["id"])
    kinds = [event["event"] for event in events]
    queued = [orjson.loads(event["data"]) for event in events if event["event"] == "queued"]
    assert len(queued) >= 2, kinds
    assert kinds[: len(queued)] == ["queued"] * len(queued), "positions come before the first token"
    assert kinds[-1] == "done"
    assert all("id" not in event for event in events if event["event"] == "queued")
    assert all("id" in event for event in events if event["event"] != "queued")
    positions = [data["queue_position"] for data in queued]
    assert positions == sorted(set(positions), reverse=True), "one event per change, each nearer the head"
    assert all(data["estimated_start_at"] is not None for data in queued)
    # A resumption after the last token sees only `done`: the queued events did not move the ids.
    last_token = [event["id"] for event in events if event["event"] == "token"][-1]
    with stack.http.stream(
        "GET", f"/v1/jobs/{jobs[-1]['id']}/events", headers={"Last-Event-ID": last_token}
    ) as response:
        assert b"event: done" in response.read()


@pytest.fixture
def second_api(start_stack: Callable[..., Stack], stack: Stack, sim: Sim) -> Stack:
    """Another API process on the same Redis, with no worker of its own."""
    return start_stack(
        [(MODEL, sim.url), (IDLE, sim.url)], workers={}, CLIENT_MAX_STREAMS=MAX_STREAMS, MAX_QUEUE_DEPTH=50
    )


@pytest.fixture
def idle_job(stack: Stack) -> Iterator[str]:
    """A job that stays queued (its model has no worker): its streams stay open."""
    job_id = stack.http.post("/v1/jobs", json={"model": IDLE, "prompt": "Personne"}).json()["id"]
    yield job_id
    stack.http.delete(f"/v1/jobs/{job_id}")


def test_open_event_streams_are_capped_per_client_across_api_processes(
    stack: Stack, second_api: Stack, idle_job: str
) -> None:
    with ExitStack() as held:
        for api in (stack, stack, second_api):
            response = held.enter_context(api.http.stream("GET", f"/v1/jobs/{idle_job}/events"))
            assert response.status_code == 200
        for api in (stack, second_api):
            refused = api.http.get(f"/v1/jobs/{idle_job}/events")
            assert refused.status_code == 429
            body = refused.json()
            assert (body["limit"], body["value"], body["usage"], body["requested"]) == ("max_streams", 3, 3, 1)
            assert "max_streams" in body["detail"]
        streamed = second_api.http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}], "stream": True},
        )
        assert streamed.status_code == 429
        assert "max_streams" in streamed.json()["error"]["message"]
    # Closed streams give their leases back (soon: removals are batched).
    wait_for(lambda: stream_status(second_api, idle_job) == 200, 5, "the leases of closed streams given back")


def stream_status(api: Stack, job_id: str) -> int:
    with api.http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        return response.status_code


def test_the_other_clients_are_not_capped_by_one_client_streams(stack: Stack, idle_job: str) -> None:
    other = httpx.Client(base_url=stack.url, headers={"Authorization": "Bearer another-key"})
    with ExitStack() as held:
        for _ in range(MAX_STREAMS):
            held.enter_context(stack.http.stream("GET", f"/v1/jobs/{idle_job}/events"))
        own = other.post("/v1/jobs", json={"model": IDLE, "prompt": "Autre"}).json()["id"]
        with other.stream("GET", f"/v1/jobs/{own}/events") as response:
            assert response.status_code == 200
        other.delete(f"/v1/jobs/{own}")
    other.close()


def test_a_full_queue_answers_a_retry_after_from_the_measured_rate(stack: Stack) -> None:
    wait_drained(stack)
    submit(stack, MAX_QUEUE_DEPTH)
    refused = stack.http.post("/v1/jobs", json=[JOB] * 12)
    assert refused.status_code == 429
    assert refused.json()["limit"] == "MAX_QUEUE_DEPTH"
    # 12 jobs must end before there is room, at some 5 a second: a few seconds, more than the default 1.
    assert 2 <= int(refused.headers["Retry-After"]) <= 10, refused.headers["Retry-After"]
    wait_drained(stack)
