"""The job function under faults: attempts past the budget or the deadline, and Redis failing mid-run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import orjson
import pytest
from arq import Retry
from redis import exceptions as redis_errors

from shared import keys
from shared.models import JobError, JobResult, now_ms
from shared.settings import Settings
from tests.unit.conftest import (
    MODEL,
    Answer,
    MakeContext,
    Serve,
    reply,
    stream,
    worker_contexts,
)
from worker import generate as generate_module
from worker.context import WorkerContext
from worker.generate import generate
from worker.jobs import Chunk, Started, WorkerJobStore

OWNER = "owner1"
KID = keys.key_id(OWNER, "j1")
TOKENS = ["Il", " fait", " beau", "."]

pytestmark = pytest.mark.usefixtures("clean_env")


def ok() -> Answer:
    lines = [{"choices": [{"index": 0, "text": token, "finish_reason": None}]} for token in TOKENS]
    lines.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    return stream(b"".join(b"data: " + orjson.dumps(line) + b"\n\n" for line in lines) + b"data: [DONE]\n\n")


def unavailable() -> Answer:
    return reply(b'{"error": {"message": "engine crashed"}}', status=500, content_type="application/json")


class FlakyStore(WorkerJobStore):
    """A job store whose calls fail as Redis would: `lost` names the calls that run but lose their reply (a
    reconnect), `refused` the calls that fail before running; each entry fails once."""

    def __init__(self, redis: fakeredis.FakeAsyncRedis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.lost: list[str] = []
        self.refused: list[str] = []

    async def _maybe_fail(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if name in self.refused:
            self.refused.remove(name)
            raise redis_errors.ConnectionError("Connection refused")
        result = await call()
        if name in self.lost:
            self.lost.remove(name)
            raise redis_errors.ConnectionError("Connection closed by server.")
        return result

    async def start(self, kid: str, arq_id: str, model: str, worker_id: str) -> Started | None:
        result: Started | None = await self._maybe_fail(
            "start", lambda: super(FlakyStore, self).start(kid, arq_id, model, worker_id)
        )
        return result

    async def append_many(self, chunks: list[Chunk]) -> list[str | None]:
        added: list[str | None] = await self._maybe_fail("append", lambda: super(FlakyStore, self).append_many(chunks))
        return added

    async def finish(
        self, kid: str, model: str, run: int, outcome: JobResult | JobError, tail: str = "", **written: str
    ) -> bool:
        call = lambda: super(FlakyStore, self).finish(kid, model, run, outcome, tail, **written)  # noqa: E731
        return bool(await self._maybe_fail("finish", call))


@pytest.fixture
async def make_context(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[MakeContext]:
    """A worker context on the in-memory Redis and a mock server, with job j1 submitted."""
    async with worker_contexts(redis, FlakyStore, OWNER, RETRY_BACKOFF=0.01) as build:
        yield build


async def run(spp: WorkerContext) -> None:
    """One arq run of the job: its current arq job id, as the queue entry would give it."""
    arq_id: str = await spp.store.redis.hget(keys.job(KID), "arq")  # type: ignore[misc]
    await generate({"spp": spp, "job_id": arq_id}, KID)


async def record(spp: WorkerContext) -> dict[str, str]:
    fields: dict[str, str] = await spp.store.redis.hgetall(keys.job(KID))  # type: ignore[misc]
    return fields


async def events(spp: WorkerContext) -> list[tuple[str, str]]:
    return [(fields["t"], fields["d"]) for _, fields in await spp.store.redis.xrange(keys.stream(KID))]


async def lose_worker(spp: WorkerContext) -> None:
    """Start the job as a worker that then dies: the sweeper hands it back."""
    arq_id: str = await spp.store.redis.hget(keys.job(KID), "arq")  # type: ignore[misc]
    assert await WorkerJobStore.start(spp.store, KID, arq_id, MODEL, "dead:1") is not None
    await spp.store.redis.zadd(keys.running(MODEL), {KID: 0})
    assert await spp.store.sweep(MODEL) == [KID]


# ---- budget and deadline ----------------------------------------------------------------------------------


async def test_a_job_whose_workers_keep_dying_fails_once_its_attempts_are_spent(
    make_context: MakeContext, serve: Serve
) -> None:
    server = await serve(ok())
    spp = await make_context(server, JOB_MAX_ATTEMPTS=2)
    await lose_worker(spp)
    await lose_worker(spp)

    await run(spp)

    stored = await record(spp)
    assert (stored["status"], stored["attempts"]) == ("failed", "3")
    error = orjson.loads(stored["error"])
    assert error["type"] == "worker_lost"
    assert "JOB_MAX_ATTEMPTS=2" in error["message"]
    assert server.requests == []


async def test_no_new_attempt_past_the_job_deadline(
    make_context: MakeContext, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await serve(ok())
    spp = await make_context(server, JOB_DEADLINE=60)
    await lose_worker(spp)
    later = now_ms() + 61_000
    monkeypatch.setattr(generate_module, "now_ms", lambda: later)

    await run(spp)

    error = orjson.loads((await record(spp))["error"])
    assert error["type"] == "deadline"
    assert "JOB_DEADLINE=60s" in error["message"]
    assert server.requests == []


async def test_a_retry_that_would_start_past_the_deadline_fails_with_the_reason(
    make_context: MakeContext, serve: Serve
) -> None:
    spp = await make_context(await serve(unavailable()), JOB_DEADLINE=0.5, RETRY_BACKOFF=5, JOB_MAX_ATTEMPTS=5)

    await run(spp)

    stored = await record(spp)
    assert (stored["status"], stored["attempts"]) == ("failed", "1")
    error = orjson.loads(stored["error"])
    assert error["type"] == "deadline"
    assert "engine crashed" in error["message"]


async def test_transient_failures_are_retried_until_success(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(unavailable(), unavailable(), ok()), JOB_MAX_ATTEMPTS=3)

    for _ in range(3):
        await run(spp)

    stored = await record(spp)
    assert (stored["status"], stored["attempts"]) == ("succeeded", "3")
    assert [kind for kind, _ in await events(spp)].count("reset") == 0, "no tokens before: nothing to reset"


# ---- Redis failing ----------------------------------------------------------------------------------------


async def test_a_chunk_whose_reply_was_lost_is_written_once(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(ok()))
    assert isinstance(spp.store, FlakyStore)
    spp.store.lost = ["append"]

    await run(spp)

    assert (await record(spp))["status"] == "succeeded"
    assert "".join(data for kind, data in await events(spp) if kind == "token") == "Il fait beau."


async def test_chunks_resent_many_times_by_a_worker_whose_clock_is_behind_redis_are_written_once(
    make_context: MakeContext, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's first chunk is behind the `reset` that Redis stamped when the run started: it goes after it,
    and so do its resends and the chunks that follow."""
    spp = await make_context(await serve(ok()))
    assert isinstance(spp.store, FlakyStore)
    arq_id: str = await spp.store.redis.hget(keys.job(KID), "arq")  # type: ignore[misc]
    dead = await WorkerJobStore.start(spp.store, KID, arq_id, MODEL, "dead:1")
    assert dead is not None
    await WorkerJobStore.append(spp.store, KID, dead.run, "Il pl", "*")
    await spp.store.redis.zadd(keys.running(MODEL), {KID: 0})
    assert await spp.store.sweep(MODEL) == [KID]
    monkeypatch.setattr(generate_module, "now_ms", lambda: 1)
    spp.store.lost = ["append"] * len(TOKENS)

    await run(spp)

    assert (await record(spp))["status"] == "succeeded"
    kinds = await events(spp)
    assert kinds[:2] == [("token", "Il pl"), ("reset", "2")]
    assert kinds[-1] == ("done", "succeeded")
    assert "".join(data for _, data in kinds[2:-1]) == "Il fait beau."
    assert spp.store.lost == []


async def test_tokens_wait_for_redis_and_the_result_still_lands(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(ok()))
    assert isinstance(spp.store, FlakyStore)
    spp.store.refused = ["append", "finish"]

    await run(spp)

    stored = await record(spp)
    assert stored["status"] == "succeeded"
    assert orjson.loads(stored["result"])["text"] == "Il fait beau."
    assert "".join(data for kind, data in await events(spp) if kind == "token") == "Il fait beau."


async def test_a_finish_whose_reply_was_lost_is_not_recorded_twice(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(ok()))
    assert isinstance(spp.store, FlakyStore)
    spp.store.lost = ["finish"]

    await run(spp)

    assert (await record(spp))["status"] == "succeeded"
    assert [kind for kind, _ in await events(spp)].count("done") == 1


async def test_a_job_that_cannot_start_stays_queued_for_arq(
    make_context: MakeContext, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generate_module, "REDIS_PATIENCE", 0.2)
    spp = await make_context(await serve(ok()))
    assert isinstance(spp.store, FlakyStore)
    spp.store.refused = ["start"] * 100

    with pytest.raises(Retry):
        await run(spp)

    assert (await record(spp))["status"] == "queued"


async def test_a_run_that_loses_redis_for_good_is_left_to_the_sweeper(
    make_context: MakeContext, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generate_module, "REDIS_PATIENCE", 0.2)
    spp = await make_context(await serve(ok()))
    assert isinstance(spp.store, FlakyStore)
    spp.store.refused = ["finish"] * 100

    await run(spp)

    assert (await record(spp))["status"] == "running"
    assert spp.runs == {}, "no longer heartbeated: the sweeper hands it back"
    await spp.store.redis.zadd(keys.running(MODEL), {KID: 0})
    assert await spp.store.sweep(MODEL) == [KID]
