"""Model servers that fail, as real simulator processes: retried with backoff, or failed with the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.keys import ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RETRY
from stack.processes import free_port
from tests.integration.conftest import RedisServer, Sim, Stack
from tests.integration.faults import FAST, unique

ERRORS, FLAKY, CUT, MIDSTREAM, SILENT, HANG, OK, REPLICAS = (
    f"backend/{name}" for name in ("errors", "flaky", "cut", "midstream", "silent", "hang", "ok", "replicas")
)


@pytest.fixture(scope="module")
def stack(start_sim: Callable[..., Sim], start_stack: Callable[..., Stack]) -> Stack:
    """One worker per model, each model served by a simulator with its own fault."""
    faults: dict[str, dict[str, Any]] = {
        ERRORS: {"error_rate": 1},
        FLAKY: {"error_rate": 0.3, "cut_rate": 0.1, "fault_seed": 7},
        CUT: {"cut_rate": 1},
        MIDSTREAM: {"midstream_error_rate": 1},
        SILENT: {"first_token_delay_ms": 10_000},
        HANG: {"hang_rate": 1},
        OK: {},
    }
    sims = {model: start_sim(model, REPLICAS, ms_per_token=2, **options) for model, options in faults.items()}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    table = [(model, sim.url) for model, sim in sims.items()] + [(REPLICAS, dead), (REPLICAS, sims[OK].url)]
    return start_stack(
        table,
        JOB_MAX_ATTEMPTS=3,
        FIRST_TOKEN_TIMEOUT=0.3,
        REPLICA_MAX_FAILURES=2,
        REPLICA_COOLDOWN=60,
        **FAST,
    )


def run(stack: Stack, model: str, count: int = 1, max_tokens: int = 20) -> list[dict[str, Any]]:
    """Submit `count` jobs at once and wait for their ends."""
    ids = [unique() for _ in range(count)]
    jobs = [{"id": i, "model": model, "prompt": "Bonjour", "params": {"max_tokens": max_tokens}} for i in ids]
    assert stack.http.post("/v1/jobs", json=jobs).status_code == 202
    return [stack.wait_job(job_id, timeout=20) for job_id in ids]


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (ERRORS, "HTTP 500"),
        (CUT, "the connection to the model server failed (ClientPayloadError)"),
        (MIDSTREAM, "the model server failed during the stream"),
        (SILENT, "no first token within FIRST_TOKEN_TIMEOUT=0.3s"),
        (HANG, "no first token within FIRST_TOKEN_TIMEOUT=0.3s"),
    ],
)
def test_a_server_that_keeps_failing_fails_the_job_with_the_reason(stack: Stack, model: str, reason: str) -> None:
    (job,) = run(stack, model)

    assert job["status"] == "failed"
    assert job["attempts"] == 3
    assert job["error"]["type"] == "backend_unavailable"
    assert reason in job["error"]["message"]
    assert job["result"] is None


def test_transient_failures_are_retried_until_they_succeed(stack: Stack) -> None:
    jobs = run(stack, FLAKY, count=20)

    for job in jobs:
        if job["status"] == "failed":  # three faults in a row: rare, but a possible draw
            assert (job["attempts"], job["error"]["type"]) == (3, "backend_unavailable")
        else:
            assert job["status"] == "succeeded"
    succeeded = [job for job in jobs if job["status"] == "succeeded"]
    assert len(succeeded) >= 15
    assert any(job["attempts"] > 1 for job in succeeded), "some jobs were retried"


def test_a_request_the_server_refuses_fails_at_once(stack: Stack) -> None:
    (job,) = run(stack, OK, max_tokens=5000)  # over the simulator's context length (4096)

    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["error"]["type"] == "backend_rejected"
    assert "maximum context length" in job["error"]["message"]


def test_a_dead_replica_is_skipped(stack: Stack) -> None:
    first = [job for _ in range(2) for job in run(stack, REPLICAS)]  # one at a time: two refusals trip it
    assert [job["status"] for job in first] == ["succeeded"] * 2
    assert sum(job["attempts"] for job in first) <= 4

    later = run(stack, REPLICAS, count=20)

    assert [(job["status"], job["attempts"]) for job in later] == [("succeeded", 1)] * 20


def test_ended_jobs_leave_none_of_arqs_keys(stack: Stack, redis_server: RedisServer) -> None:
    """Every job of this module ended (succeeded, retried, failed, refused): the scripts that wrote their ends
    deleted arq's keys of each arq job id, arq's own bookkeeping after a run being skipped (arq_adapter.py).
    A try count left behind would stay for a day."""
    run(stack, FLAKY, count=5)  # ended, some retried, whatever ran before

    left = {prefix: redis_server.client().keys(f"{prefix}*") for prefix in (ARQ_JOB, ARQ_IN_PROGRESS, ARQ_RETRY)}

    assert left == {ARQ_JOB: [], ARQ_IN_PROGRESS: [], ARQ_RETRY: []}
