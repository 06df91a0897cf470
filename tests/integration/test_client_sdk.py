"""The `albert_spp` client against real processes (redis-server, API, workers, simulator): submit one and many
(arrays split, 429s waited out), wait, stream (resumed, reset by a retry), list, count, cancel, retry, erase."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from albert_spp import (
    AsyncClient,
    AuthenticationError,
    Client,
    Conflict,
    Deleted,
    InvalidRequest,
    Job,
    JobRequest,
    JobStatus,
    NotFound,
    Reset,
    Token,
)
from tests.integration.conftest import Sim, Stack
from tests.integration.faults import FAST

MODEL = "sdk/fast"
SLOW = "sdk/slow"
IDLE = "sdk/idle"
"""No worker: its jobs stay queued."""
KEY = "sdk-test-key"
MAX_QUEUED = 8
"""The client's max_queued_jobs: `submit_many` of more meets 429s, which it waits out."""


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    fast = start_sim(MODEL, ms_per_token=2)
    slow = start_sim(SLOW, IDLE, ms_per_token=15)
    return start_stack(
        [(MODEL, fast.url), (SLOW, slow.url), (IDLE, slow.url)],
        workers={MODEL: 1, SLOW: 1},
        headers={"Authorization": f"Bearer {KEY}"},
        CLIENT_MAX_QUEUED_JOBS=MAX_QUEUED,
        **FAST,
    )


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, KEY, timeout=10) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def text_of(pieces: list[str | Reset]) -> str:
    """The text of the last attempt: what follows the last Reset."""
    text = ""
    for piece in pieces:
        text = "" if isinstance(piece, Reset) else text + piece
    return text


def test_submit_one_and_wait(client: Client) -> None:
    job = client.submit("Ma carte grise n'a pas été reçue", model=MODEL, params={"max_tokens": 12}, metadata={"n": 1})
    assert job.status is JobStatus.QUEUED
    done = client.wait(job.id, timeout=20)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result is not None
    assert done.result.usage.completion_tokens == 12
    assert done.text
    assert done.metadata == {"n": 1}
    assert client.get(job.id) == done


def test_submit_many_splits_waits_out_429s_and_waits_all(client: Client) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    client.max_jobs_per_request = 5
    client._sleep = sleep
    suite = unique("many")
    jobs: list[JobRequest] = [
        {"id": f"{suite}-{n:02d}", "model": MODEL, "prompt": f"Question {n}", "params": {"max_tokens": 40}}
        for n in range(20)
    ]
    submitted = client.submit_many(jobs, max_wait=60)
    assert [job.id for job in submitted] == [job["id"] for job in jobs]
    assert sleeps, f"20 jobs, at most {MAX_QUEUED} queued at once: some arrays were refused and sent again"
    assert all(pause >= 1 for pause in sleeps), "the server's Retry-After"

    progress = io.StringIO()
    done = client.wait_all([job.id for job in submitted], timeout=60, progress=progress)
    assert [job.id for job in done] == [job.id for job in submitted]
    assert {job.status for job in done} == {JobStatus.SUCCEEDED}
    assert "20 done, 0 failed / 20" in progress.getvalue().splitlines()[-1]


def test_stream_follows_the_tokens_then_resumes_after_an_event(client: Client) -> None:
    job = client.submit("Bonjour", model=MODEL, params={"max_tokens": 60})
    pieces = list(client.stream(job.id))
    final = client.wait(job.id, timeout=20)
    assert text_of(pieces) == final.text

    seen: list[Token] = []
    for event in client.events(job.id):
        if isinstance(event, Token):
            seen.append(event)
        if len(seen) == 2:
            break
    rest = list(client.stream(job.id, last_event_id=seen[-1].id))
    assert "".join(token.text for token in seen) + text_of(rest) == final.text


def test_cancel_then_erase_and_errors(client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    job = client.submit("Jamais", model=IDLE)
    cancelled = client.cancel(job.id)
    assert isinstance(cancelled, Job)
    assert cancelled.status is JobStatus.CANCELLED
    assert client.delete(job.id) == Deleted(id=job.id, deleted=True)
    with pytest.raises(NotFound):
        client.get(job.id)

    queued = client.submit("Jamais non plus", model=IDLE)
    assert client.delete(queued.id) == Deleted(id=queued.id, deleted=True)  # cancelled, then erased
    with pytest.raises(NotFound):
        client.get(queued.id)

    with pytest.raises(NotFound, match="unknown"):
        client.submit("x", model="sdk/unknown")
    with pytest.raises(InvalidRequest) as caught:
        client.submit("x", messages=[{"role": "user", "content": "y"}])
    assert "exactly one" in str(caught.value)
    monkeypatch.delenv("ALBERT_SPP_API_KEY", raising=False)
    with Client(stack.url) as anonymous, pytest.raises(AuthenticationError):
        anonymous.get(job.id)


def test_retry_of_a_cancelled_job_streams_a_reset_then_the_new_attempt(client: Client) -> None:
    job = client.submit("Une longue réponse", model=SLOW, params={"max_tokens": 150})
    for event in client.events(job.id):
        if isinstance(event, Token):
            break  # it runs
    assert client.cancel(job.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    retried = client.retry(job.id)
    assert (retried.id, retried.status, retried.attempts) == (job.id, JobStatus.QUEUED, 0)
    with pytest.raises(Conflict):
        client.retry(job.id)
    pieces = list(client.stream(job.id))
    assert isinstance(pieces[0], Reset)
    assert text_of(pieces) == client.wait(job.id, timeout=30).text


def test_list_pages_stats_and_erasure_by_metadata(client: Client) -> None:
    suite = unique("suite")
    requests: list[JobRequest] = [
        {"model": MODEL, "prompt": f"Q{n}", "params": {"max_tokens": 3}, "metadata": {"suite": suite}} for n in range(5)
    ]
    jobs = client.submit_many(requests)
    client.wait_all([job.id for job in jobs], timeout=30, progress=False)

    page = client.list(metadata={"suite": suite}, limit=2)
    assert page.has_more
    assert len(page.data) <= 2
    found = [job.id for job in client.iter_jobs(metadata={"suite": suite}, page_size=2)]
    assert sorted(found) == sorted(job.id for job in jobs)
    assert found == [job.id for job in reversed(jobs)], "newest first"
    assert list(client.iter_jobs(metadata={"suite": suite}, status=["failed", "cancelled"])) == []
    assert len(list(client.iter_jobs(metadata={"suite": suite}, status="succeeded", model=MODEL))) == 5

    stats = client.stats(metadata={"suite": suite})
    assert (stats.total, stats.counts.succeeded, stats.models) == (5, 5, None)
    overall = client.stats()
    assert overall.models is not None
    assert overall.models[MODEL].succeeded >= 5

    assert client.delete_where(metadata={"suite": suite}) == 5
    assert client.list(metadata={"suite": suite}).data == []
    assert client.stats(metadata={"suite": suite}).total == 0
    with pytest.raises(NotFound):
        client.get(jobs[0].id)


async def test_the_async_client(stack: Stack) -> None:
    async with AsyncClient(stack.url, KEY, timeout=10) as client:
        jobs = await client.submit_many(["Un", "Deux", "Trois"])
        pieces = [piece async for piece in client.stream(jobs[0].id)]
        done = await client.wait_all([job.id for job in jobs], timeout=30, progress=False)
        assert text_of(pieces) == done[0].text
        assert {job.status for job in done} == {JobStatus.SUCCEEDED}
        assert [job.id async for job in client.iter_jobs(page_size=2)][:3] == [job.id for job in reversed(jobs)]
        assert (await client.stats()).total >= 3
        assert await client.delete(jobs[0].id) == Deleted(id=jobs[0].id, deleted=True)
