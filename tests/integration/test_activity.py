"""The models' activity streams (finish.lua writes them, the dashboard reads them) with text that is not ASCII:
an error message cut to its first 300 bytes keeps whole characters, and an entry that is not valid UTF-8
(written before that) cannot fail the dashboard."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from api.jobs import ApiJobStore
from shared import keys
from shared.models import JobCreate, JobError
from tests.integration.conftest import RedisServer, Sim, Stack
from tests.unit.conftest import MODEL
from worker.jobs import WorkerJobStore

OWNER = "owner1"


async def failed_activity(
    api_store: ApiJobStore, worker_store: WorkerJobStore, redis_server: RedisServer, job_id: str, message: str
) -> bytes:
    """Run a job to a failure with `message` through start.lua and finish.lua; its activity entry's error, raw."""
    (submitted,) = await api_store.submit(OWNER, [JobCreate(id=job_id, prompt="Bonjour")])
    kid = keys.key_id(OWNER, job_id)
    started = await worker_store.start(kid, submitted.record["arq"], MODEL, "worker-1")
    assert started is not None
    assert await worker_store.finish(kid, MODEL, started.run, JobError(type="backend_rejected", message=message))
    raw = Redis.from_url(redis_server.url)  # no decoding: the bytes finish.lua wrote
    try:
        entries = await raw.xrevrange(keys.activity(MODEL), count=1)
    finally:
        await raw.aclose()
    assert entries[0][1][b"j"] == job_id.encode()
    error: bytes = entries[0][1][b"e"]
    return error


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("a" * 299 + "é" + " et la suite", "a" * 299),  # é (2 bytes) would be cut after its first byte
        ("a" * 298 + "é" + " et la suite", "a" * 298 + "é"),  # ends exactly at 300 bytes: kept
        ("a" * 298 + "€", "a" * 298),  # € (3 bytes) would be cut after its second byte
        ("a" * 299 + "😀", "a" * 299),  # 4 bytes
        ("é" * 150, "é" * 150),  # 300 bytes: not cut
        ("é" * 151, "é" * 150),
        ("court", "court"),
    ],
)
async def test_an_error_message_is_cut_at_300_bytes_on_a_character_boundary(
    api_store: ApiJobStore, worker_store: WorkerJobStore, redis_server: RedisServer, message: str, kept: str
) -> None:
    error = await failed_activity(api_store, worker_store, redis_server, "j1", message)

    assert error.decode("utf-8") == "backend_rejected: " + kept  # strict: valid UTF-8


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    return start_stack([(MODEL, start_sim(MODEL).url)], workers={})


def test_the_dashboard_shows_an_entry_that_is_not_utf8_instead_of_failing(
    stack: Stack, redis_server: RedisServer
) -> None:
    # As finish.lua wrote it before it cut on character boundaries: "é" cut after its first byte.
    bad = b"backend_rejected: " + b"a" * 299 + "é".encode()[:1]
    fact = {b"s": b"failed", b"j": b"old-job", b"a": b"1", b"q": b"5", b"d": b"7", b"e": bad}
    redis_server.client().xadd(keys.activity(MODEL), fact)  # type: ignore[arg-type]

    response = stack.http.get("/dashboard/data")

    assert response.status_code == 200, response.text
    (model,) = response.json()["models"]
    assert model["failed"] >= 1
    failure = next(failure for failure in model["failures"] if failure["job"] == "old-job")
    assert failure["error"] == "backend_rejected: " + "a" * 299 + "\ufffd"
