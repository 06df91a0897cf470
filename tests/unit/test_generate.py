"""The job function: one attempt from the job record to the stored result, with a mock model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import orjson
import pytest

from api.jobs import ApiJobStore
from shared import keys
from shared.models import now_ms
from shared.settings import Settings
from tests.unit.conftest import (
    MODEL,
    Answer,
    MakeContext,
    Serve,
    forever,
    reply,
    stream,
    worker_contexts,
)
from worker.backends import request_id
from worker.context import WorkerContext
from worker.generate import AttemptLost, TokenWriter, generate
from worker.jobs import Chunk, WorkerJobStore

OWNER = "owner1"
KID = keys.key_id(OWNER, "j1")
TOKENS = ["Il", " fait", " beau", "."]

pytestmark = pytest.mark.usefixtures("clean_env")


def completion_stream(tokens: list[str], *, finish: str | None = "stop", done: bool = True) -> bytes:
    """vLLM's streamed completion of `tokens`, with the usage chunk."""
    lines = []
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        choice = {"index": 0, "text": token, "finish_reason": finish if last else None}
        lines.append(orjson.dumps({"object": "text_completion", "choices": [choice]}))
    if finish is not None:
        usage = {"prompt_tokens": 4, "completion_tokens": len(tokens), "total_tokens": 4 + len(tokens)}
        lines.append(orjson.dumps({"choices": [], "usage": usage}))
    if done:
        lines.append(b"[DONE]")
    return b"".join(b"data: " + line + b"\n\n" for line in lines)


def first_event_end(body: bytes) -> int:
    return body.index(b"\n\n") + 2


def ok(tokens: list[str] = TOKENS) -> Answer:
    return stream(completion_stream(tokens))


def status(code: int, message: str) -> Answer:
    body = orjson.dumps({"error": {"message": message, "type": "Error", "code": code}})
    return reply(body, status=code, content_type="application/json")


class WatchedStore(WorkerJobStore):
    """A job store that tells when tokens were appended to a stream: the mock server waits on it to act
    once the worker has handled what it was sent."""

    def __init__(self, redis: fakeredis.FakeAsyncRedis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.appended = asyncio.Event()

    async def append_many(self, chunks: list[Chunk]) -> list[str | None]:
        written = await super().append_many(chunks)
        self.appended.set()
        return written


def first_append(spp: WorkerContext) -> Callable[[], Awaitable[object]]:
    """A server step: wait until the worker appended its first tokens to the job's stream."""
    store = spp.store
    assert isinstance(store, WatchedStore)
    return store.appended.wait


async def arq_of(store: WorkerJobStore, kid: str) -> str:
    """The arq job id the submission of `kid` queued."""
    arq_id: str = await store.redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
    return arq_id


async def job_ctx(spp: WorkerContext) -> dict[str, Any]:
    """arq's context of one job run: the worker's, plus the job's arq id."""
    return {"spp": spp, "job_id": await arq_of(spp.store, KID)}


@pytest.fixture
async def make_context(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[MakeContext]:
    """Builds a worker context on the in-memory Redis and a mock server, with `job j1` submitted."""
    async with worker_contexts(redis, WatchedStore, OWNER, RETRY_BACKOFF=2.0) as build:
        yield build


async def record(spp: WorkerContext) -> dict[str, str]:
    fields: dict[str, str] = await spp.store.redis.hgetall(keys.job(KID))  # type: ignore[misc]
    return fields


async def events(spp: WorkerContext) -> list[tuple[str, str]]:
    entries = await spp.store.redis.xrange(keys.stream(KID))
    return [(fields["t"], fields["d"]) for _, fields in entries]


async def tokens_in_stream(spp: WorkerContext) -> list[str]:
    return [data for event_type, data in await events(spp) if event_type == "token"]


async def running_jobs(spp: WorkerContext) -> list[str]:
    members: list[str] = await spp.store.redis.zrange(keys.running(MODEL), 0, -1)
    return members


# ---- success ------------------------------------------------------------------------------------------------


async def test_success_stores_the_streamed_text_as_result(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(ok()))

    await generate(await job_ctx(spp), KID)

    stored = await record(spp)
    assert stored["status"] == "succeeded"
    assert stored["attempts"] == "1"
    assert orjson.loads(stored["result"]) == {
        "text": "Il fait beau.",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
    }
    assert "".join(await tokens_in_stream(spp)) == "Il fait beau."
    assert (await events(spp))[-1] == ("done", "succeeded")
    assert await running_jobs(spp) == []


async def test_without_coalescing_each_token_is_one_stream_entry(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(ok()), STREAM_FLUSH_MS=0)

    await generate(await job_ctx(spp), KID)

    assert await tokens_in_stream(spp) == TOKENS


async def test_coalescing_sends_the_first_token_at_once_and_the_rest_with_the_result(
    make_context: MakeContext,
    serve: Serve,
) -> None:
    # Windows are slots of one clock: one of ~31 years, so that the job never straddles two.
    spp = await make_context(await serve(ok()), STREAM_FLUSH_MS=10**12)

    await generate(await job_ctx(spp), KID)

    assert await tokens_in_stream(spp) == ["Il", " fait beau."]
    assert orjson.loads((await record(spp))["result"])["text"] == "Il fait beau."


async def test_the_request_id_is_a_uuid_of_the_key_id_and_run(make_context: MakeContext, serve: Serve) -> None:
    server = await serve(ok())
    spp = await make_context(server)

    await generate(await job_ctx(spp), KID)

    assert server.requests[0].path == "/v1/completions"
    sent = server.requests[0].headers["X-Request-Id"]
    assert sent == request_id(KID, 1) == str(uuid.UUID(sent))
    assert request_id(KID, 2) != sent
    assert server.requests[0].json()["prompt"] == "Quel temps ?"


# ---- failures -----------------------------------------------------------------------------------------------


async def test_rejected_request_fails_at_once_without_retry(make_context: MakeContext, serve: Serve) -> None:
    server = await serve(status(400, "This model's maximum context length is 4096 tokens."))
    spp = await make_context(server, JOB_MAX_ATTEMPTS=3)

    await generate(await job_ctx(spp), KID)

    stored = await record(spp)
    assert stored["status"] == "failed"
    assert stored["attempts"] == "1"
    error = orjson.loads(stored["error"])
    assert error["type"] == "backend_rejected"
    assert "maximum context length is 4096 tokens" in error["message"]
    assert len(server.requests) == 1
    assert await events(spp) == [("done", "failed")]
    assert await running_jobs(spp) == []


async def test_unavailable_backend_with_attempts_left_requeues_and_retries(
    make_context: MakeContext, serve: Serve
) -> None:
    spp = await make_context(await serve(status(500, "engine crashed")), JOB_MAX_ATTEMPTS=3, RETRY_BACKOFF=2.0)
    before = now_ms()

    await generate(await job_ctx(spp), KID)

    [(arq_id, score)] = await spp.store.redis.zrange(keys.queue(MODEL), 0, -1, withscores=True)
    assert arq_id == await arq_of(spp.store, KID), "queued again under a fresh arq job id"
    stored = await record(spp)
    assert score == float(stored["place"]), "in its place in the queue"
    assert before + 1000 <= int(stored["not_before"]) <= now_ms() + 2000, "after the backoff"
    assert stored["status"] == "queued"
    assert stored["attempts"] == "1"
    assert "error" not in stored
    assert await running_jobs(spp) == []


async def test_unavailable_backend_on_the_last_attempt_fails(make_context: MakeContext, serve: Serve) -> None:
    server = await serve(status(503, "overloaded"))
    spp = await make_context(server, JOB_MAX_ATTEMPTS=2)

    await generate(await job_ctx(spp), KID)
    await generate(await job_ctx(spp), KID)

    stored = await record(spp)
    assert stored["status"] == "failed"
    assert stored["attempts"] == "2"
    error = orjson.loads(stored["error"])
    assert error["type"] == "backend_unavailable"
    assert "overloaded" in error["message"]
    assert len(server.requests) == 2


@pytest.mark.parametrize("connection_lost", [False, True], ids=["ended-early", "connection-lost"])
async def test_retry_after_a_cut_stream_resets_the_stream_then_succeeds(
    make_context: MakeContext, serve: Serve, connection_lost: bool
) -> None:
    cut = completion_stream(["Il", " pleut"], finish=None, done=False)
    spp = await make_context(await serve(stream(cut, cut=connection_lost), ok()), JOB_MAX_ATTEMPTS=3)

    await generate(await job_ctx(spp), KID)
    await generate(await job_ctx(spp), KID)

    stored = await record(spp)
    assert stored["status"] == "succeeded"
    assert stored["attempts"] == "2"
    assert orjson.loads(stored["result"])["text"] == "Il fait beau."
    entries = await events(spp)
    reset = entries.index(("reset", "2"))
    assert "".join(data for event_type, data in entries[:reset]) == "Il pleut"
    assert "".join(data for event_type, data in entries[reset + 1 :] if event_type == "token") == "Il fait beau."
    assert entries[-1] == ("done", "succeeded")


async def test_timeout_on_the_last_attempt_fails_with_type_timeout(make_context: MakeContext, serve: Serve) -> None:
    spp = await make_context(await serve(stream(forever)), JOB_MAX_ATTEMPTS=1, BACKEND_TIMEOUT=0.01)

    await generate(await job_ctx(spp), KID)

    error = orjson.loads((await record(spp))["error"])
    assert error == {"type": "timeout", "message": "no result within BACKEND_TIMEOUT=0.01s"}


# ---- cancellation -------------------------------------------------------------------------------------------


async def test_job_cancelled_before_start_is_skipped(
    make_context: MakeContext, serve: Serve, api_store: ApiJobStore
) -> None:
    server = await serve(ok())
    spp = await make_context(server)
    await api_store.cancel(OWNER, "j1")

    await generate(await job_ctx(spp), KID)

    assert server.requests == []
    stored = await record(spp)
    assert stored["status"] == "cancelled"
    assert "attempts" not in stored, "no attempt was made"
    assert await events(spp) == [("done", "cancelled")]


async def test_job_cancelled_mid_stream_stops_writing(
    make_context: MakeContext, serve: Serve, api_store: ApiJobStore
) -> None:
    spp: WorkerContext
    body = completion_stream(TOKENS)

    async def after_first_token_cancel() -> None:
        await first_append(spp)()
        await api_store.cancel(OWNER, "j1")

    answer = stream(body[: first_event_end(body)], after_first_token_cancel, body[first_event_end(body) :])
    spp = await make_context(await serve(answer), STREAM_FLUSH_MS=0)

    await generate(await job_ctx(spp), KID)

    stored = await record(spp)
    assert stored["status"] == "cancelled"
    assert "result" not in stored
    assert await events(spp) == [("token", "Il"), ("done", "cancelled")]


async def test_job_cancelled_after_its_last_token_keeps_no_result(
    make_context: MakeContext, serve: Serve, api_store: ApiJobStore
) -> None:
    spp: WorkerContext

    async def after_first_token_cancel() -> None:
        await first_append(spp)()
        await api_store.cancel(OWNER, "j1")

    answer = stream(completion_stream(TOKENS, done=False), after_first_token_cancel, b"data: [DONE]\n\n")
    spp = await make_context(await serve(answer), STREAM_FLUSH_MS=10**12)  # one window: see the coalescing test

    await generate(await job_ctx(spp), KID)

    stored = await record(spp)
    assert stored["status"] == "cancelled"
    assert "result" not in stored
    assert await events(spp) == [("token", "Il"), ("done", "cancelled")]


async def test_token_writer_raises_attempt_lost_once_the_job_is_cancelled(
    make_context: MakeContext, serve: Serve, api_store: ApiJobStore
) -> None:
    spp = await make_context(await serve(ok()), STREAM_FLUSH_MS=0)
    started = await spp.store.start(KID, await arq_of(spp.store, KID), MODEL, spp.worker_id)
    assert started is not None
    writer = TokenWriter(spp, KID, started.attempt)
    await writer.add("Il")
    await api_store.cancel(OWNER, "j1")

    with pytest.raises(AttemptLost):
        await writer.add(" fait")

    assert writer.text == "Il fait"
    assert await tokens_in_stream(spp) == ["Il"]


async def test_token_writer_of_a_superseded_attempt_raises_attempt_lost(
    make_context: MakeContext, serve: Serve
) -> None:
    spp = await make_context(await serve(ok()), STREAM_FLUSH_MS=0)
    first = await spp.store.start(KID, await arq_of(spp.store, KID), MODEL, spp.worker_id)
    assert first is not None
    await spp.store.redis.zadd(keys.running(MODEL), {KID: 0})  # its heartbeat deadline passed
    assert await spp.store.sweep(MODEL) == [KID]
    await spp.store.start(KID, await arq_of(spp.store, KID), MODEL, "other:2")

    with pytest.raises(AttemptLost):
        await TokenWriter(spp, KID, first.attempt).add("late")


async def test_token_writer_buffers_within_the_window(make_context: MakeContext, serve: Serve) -> None:
    # Windows are slots of one clock: one of ~31 years, so that the job never straddles two.
    spp = await make_context(await serve(ok()), STREAM_FLUSH_MS=10**12)
    started = await spp.store.start(KID, await arq_of(spp.store, KID), MODEL, spp.worker_id)
    assert started is not None
    writer = TokenWriter(spp, KID, started.attempt)

    for token in TOKENS:
        await writer.add(token)

    assert await tokens_in_stream(spp) == ["Il"]
    assert writer.take_tail() == " fait beau."
    assert writer.take_tail() == ""
    assert writer.text == "Il fait beau."


async def _start_hanging_generation(
    make_context: MakeContext, serve: Serve, *then: Answer
) -> tuple[WorkerContext, asyncio.Task[None]]:
    """A generation whose model server sent one token and then nothing: the task waits on the stream.

    `then` answers the next requests to the model server.
    """
    body = completion_stream(TOKENS)
    spp = await make_context(await serve(stream(body[: first_event_end(body)], forever), *then), STREAM_FLUSH_MS=0)
    task = asyncio.create_task(generate(await job_ctx(spp), KID))
    await first_append(spp)()
    return spp, task


async def test_shutdown_mid_generation_hands_the_job_back_without_counting_the_attempt(
    make_context: MakeContext,
    serve: Serve,
) -> None:
    spp, task = await _start_hanging_generation(make_context, serve)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stored = await record(spp)
    assert stored["status"] == "queued"
    assert stored["attempts"] == "0"
    assert await running_jobs(spp) == []


async def test_abort_of_a_cancelled_job_does_not_requeue_it(
    make_context: MakeContext, serve: Serve, api_store: ApiJobStore
) -> None:
    spp, task = await _start_hanging_generation(make_context, serve)
    await api_store.cancel(OWNER, "j1")
    spp.aborting.add(KID)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stored = await record(spp)
    assert stored["status"] == "cancelled"
    assert stored["attempts"] == "1"
    assert await events(spp) == [("token", "Il"), ("done", "cancelled")]


async def test_restart_after_shutdown_streams_a_reset_before_the_new_text(
    make_context: MakeContext, serve: Serve
) -> None:
    spp, task = await _start_hanging_generation(make_context, serve, ok())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await generate(await job_ctx(spp), KID)

    assert orjson.loads((await record(spp))["result"])["text"] == "Il fait beau."
    entries = await events(spp)
    assert ("token", "Il") in entries
    resets = [index for index, (event_type, _) in enumerate(entries) if event_type == "reset"]
    assert resets, f"no reset in {entries}"
    assert "".join(data for event_type, data in entries[resets[-1] :] if event_type == "token") == "Il fait beau."
