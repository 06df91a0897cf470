"""Batches without processes: the line validator, the output lines, the multipart upload and the batch's
states on an in-memory Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import fakeredis
import httpx
import orjson
import pytest

from api.batch_format import LineError, batch_job_id, error_line, output_line, parse_generated_file_id, parse_line
from api.batches import BatchStore
from api.exceptions import BadFileRequest, BatchFinished, FileTooLarge, QueueFull
from api.files import FileStore
from api.openai_shapes import Endpoint
from shared import keys
from shared.batches import BatchStatus, public_batch
from shared.models import JobCreate, JobError, JobResult, Limits, Usage, now_ms
from shared.policy import ClientPolicy
from shared.settings import Settings
from tests.unit.conftest import MODEL, batch_stores, make_settings
from worker.jobs import WorkerJobStore

OWNER = "owner1"
LIMITS = Limits(max_prompt_chars=1000, max_messages=4, max_tokens=100)
CHAT, COMPLETIONS = Endpoint.CHAT, Endpoint.COMPLETIONS

pytestmark = pytest.mark.usefixtures("clean_env")


def chat(custom_id: str = "q-1", **body: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT.value, "body": body}


def raw(line: Any) -> bytes:
    return line if isinstance(line, bytes) else orjson.dumps(line)


# ---- input lines --------------------------------------------------------------------------------------


def test_a_chat_line_becomes_a_job_naming_its_custom_id() -> None:
    line = chat(max_completion_tokens=20, max_tokens=99, temperature=0.1, top_p=0.5, stop="fin", seed=3, user="u")
    custom_id, job = parse_line(raw(line), CHAT, [MODEL], LIMITS)
    assert custom_id == "q-1"
    assert job.id is None
    assert job.model == MODEL
    assert [(m.role, m.content) for m in job.messages or []] == [("user", "Bonjour")]
    assert (job.params.max_tokens, job.params.temperature, job.params.top_p) == (20, 0.1, 0.5)
    assert (job.params.stop, job.params.seed) == (["fin"], 3)
    assert job.metadata == {"custom_id": "q-1"}


def test_a_completions_line_becomes_a_prompt_job() -> None:
    line = {"custom_id": "c", "method": "POST", "url": COMPLETIONS.value, "body": {"model": MODEL, "prompt": "Il"}}
    _, job = parse_line(raw(line), COMPLETIONS, [MODEL], LIMITS)
    assert (job.prompt, job.messages) == ("Il", None)


@pytest.mark.parametrize(
    ("line", "code", "param"),
    [
        (b'{"custom_id": "x",', "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (raw({**chat(), "custom_id": ""}), "invalid_custom_id", "custom_id"),
        (raw({**chat(), "custom_id": 7}), "invalid_custom_id", "custom_id"),
        (raw({**chat(), "method": "GET"}), "invalid_method", "method"),
        (raw({**chat(), "url": COMPLETIONS.value}), "invalid_url", "url"),
        (raw({**chat(), "body": "text"}), "invalid_request", "body"),
        (raw(chat(model="other/model")), "model_not_found", "body.model"),
        (raw(chat(n=2)), "invalid_request", "body.n"),
        (raw(chat(stream=True)), "invalid_request", "body.stream"),
        (raw(chat(messages=[])), "invalid_request", "body.messages"),
        (raw(chat(messages=[{"role": "robot", "content": "x"}])), "invalid_request", "body.messages.0.role"),
        (raw(chat(temperature=3)), "invalid_request", "body.temperature"),
        (raw(chat(max_tokens=101)), "invalid_request", "body"),  # over MAX_TOKENS_LIMIT (LIMITS)
        (raw(chat(messages=[{"role": "user", "content": "x" * 1001}])), "invalid_request", "body"),
    ],
)
def test_a_bad_line_is_named(line: bytes, code: str, param: str | None) -> None:
    with pytest.raises(LineError) as error:
        parse_line(line, CHAT, [MODEL], LIMITS)
    assert (error.value.code, error.value.param) == (code, param)
    assert error.value.entry(4) == {"code": code, "line": 4, "message": error.value.message, "param": param}


# ---- output lines and the batch object ----------------------------------------------------------------

RECORD = {
    "status": "succeeded",
    "model": MODEL,
    "created_at": "1700000000123",
    "metadata": orjson.dumps({"custom_id": "q-1"}).decode(),
    "result": JobResult(
        text="Bonjour.", finish_reason="stop", usage=Usage(prompt_tokens=4, completion_tokens=2)
    ).model_dump_json(),
}


@pytest.mark.parametrize(
    ("endpoint", "kind", "text"),
    [
        (CHAT, "chat.completion", lambda choice: (choice["message"]["role"], choice["message"]["content"])),
        (COMPLETIONS, "text_completion", lambda choice: ("assistant", choice["text"])),
    ],
)
def test_an_output_line_carries_the_completion(
    endpoint: Endpoint, kind: str, text: Callable[[dict[str, Any]], tuple[str, str]]
) -> None:
    line = orjson.loads(output_line(endpoint, "b-000001", RECORD))
    assert line["id"] == "batch_req_b-000001"
    assert line["custom_id"] == "q-1"
    assert line["error"] is None
    response = line["response"]
    assert (response["status_code"], response["request_id"]) == (200, "b-000001")
    body = response["body"]
    assert (body["object"], body["model"], body["created"]) == (kind, MODEL, 1700000000)
    [choice] = body["choices"]
    assert (choice["index"], choice["finish_reason"], text(choice)) == (0, "stop", ("assistant", "Bonjour."))
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


@pytest.mark.parametrize(
    ("status", "batch_status", "code"),
    [
        ("failed", "completed", "backend_rejected"),
        ("cancelled", "cancelled", "batch_cancelled"),
        ("cancelled", "expired", "batch_expired"),
        ("cancelled", "completed", "request_cancelled"),
    ],
)
def test_an_error_line_says_why(status: str, batch_status: str, code: str) -> None:
    error = JobError(type="backend_rejected", message="too long").model_dump_json()
    record = {**RECORD, "status": status, "error": error}
    line = orjson.loads(error_line("b-000002", record, batch_status))
    assert (line["id"], line["custom_id"], line["response"]) == ("batch_req_b-000002", "q-1", None)
    assert line["error"]["code"] == code
    assert line["error"]["message"]


def test_the_batch_object_shows_seconds_counts_and_files_once_ended() -> None:
    record = {
        "id": "batch-" + "0" * 24,
        "endpoint": CHAT.value,
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "in_progress",
        "created_at": "1700000000999",
        "in_progress_at": "1700000001000",
        "expires_at": "1700086400999",
        "total": "10",
        "completed": "6",
        "failed": "1",
        "cancelled": "2",
        "metadata": '{"campaign": "x"}',
    }
    running = public_batch(record)
    assert (running["created_at"], running["in_progress_at"], running["completed_at"]) == (1700000000, 1700000001, None)
    assert running["request_counts"] == {"total": 10, "completed": 6, "failed": 3}
    assert (running["output_file_id"], running["error_file_id"], running["errors"]) == (None, None, None)
    assert running["metadata"] == {"campaign": "x"}
    done = public_batch({**record, "status": "completed", "completed_at": "1700000002000"})
    assert parse_generated_file_id(done["output_file_id"]) == (record["id"], "output")
    assert parse_generated_file_id(done["error_file_id"]) == (record["id"], "errors")
    assert parse_generated_file_id("file-abc") is None


# ---- stores on an in-memory Redis ---------------------------------------------------------------------


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[tuple[FileStore, BatchStore]]:
    async with batch_stores(settings) as both:
        yield both


def form(data: bytes, purpose: str | None = "batch") -> tuple[str, bytes]:
    """A multipart body as the `openai` client (httpx) sends it: content type and bytes."""
    request = httpx.Request(
        "POST", "http://x/v1/files", data={"purpose": purpose} if purpose else {}, files={"file": ("in.jsonl", data)}
    )
    return request.headers["content-type"], request.read()


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def upload(files: FileStore, data: bytes, piece: int = 7) -> str:
    content_type, body = form(data)
    meta = await files.upload(OWNER, content_type, pieces(body, piece))
    return meta["id"]


async def test_an_upload_is_streamed_in_and_out(stores: tuple[FileStore, BatchStore]) -> None:
    files, _ = stores
    data = b'{"a": 1}\n\xff\xfe\n\n{"b": 2}'  # not UTF-8, a blank line, no newline at the end
    file_id = await upload(files, data)
    meta = await files.get(OWNER, file_id)
    assert (meta["filename"], meta["purpose"], meta["bytes"]) == ("in.jsonl", "batch", str(len(data)))
    assert b"".join([chunk async for chunk in files.chunks(OWNER, file_id)]) == data
    assert [line async for line in files.lines(OWNER, file_id)] == [
        (1, b'{"a": 1}'),
        (2, b"\xff\xfe"),
        (3, b""),
        (4, b'{"b": 2}'),
    ]
    assert await files.redis.ttl(keys.file_data(OWNER, file_id)) == files.settings.RESULT_TTL


CUT = form(b"x")


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b"{}", "multipart/form-data"),
        (*form(b"x", purpose="fine-tune"), "purpose"),
        (*form(b"x", purpose=None), "purpose"),
        (*form(b""), "empty"),
        (CUT[0], CUT[1].rpartition(b"\r\n--")[0], "closing boundary"),
    ],
)
async def test_bad_uploads_are_refused(
    stores: tuple[FileStore, BatchStore], content_type: str, body: bytes, message: str
) -> None:
    files, _ = stores
    with pytest.raises(BadFileRequest, match=message):
        await files.upload(OWNER, content_type, pieces(body, 5))
    assert await files.redis.keys("*") == []


async def test_an_upload_over_the_limit_is_refused_as_it_arrives(settings: Settings) -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    files = FileStore(redis, fakeredis.FakeAsyncRedis(server=server), make_settings(BATCH_MAX_BYTES=3 * 2**20))
    content_type, body = form(b"x" * (4 * 2**20))
    with pytest.raises(FileTooLarge, match="BATCH_MAX_BYTES"):
        await files.upload(OWNER, content_type, pieces(body, 2**16))
    # Other fields count too: a form is no way around the limit.
    request = httpx.Request(
        "POST", "http://x", data={"purpose": "batch", "note": "x" * 4 * 2**20}, files={"file": b"{}"}
    )
    with pytest.raises(FileTooLarge):
        await files.upload(OWNER, request.headers["content-type"], pieces(request.read(), 2**16))
    assert await redis.keys("*") == []


async def run_jobs(batches: BatchStore, batch_id: str, count: int, *, fail: int = 0) -> None:
    """Do what a worker does for the batch's first `count` jobs: the first `fail` of them fail."""
    store = WorkerJobStore(batches.redis, batches.settings)
    for index in range(count):
        kid = keys.key_id(OWNER, batch_job_id(batch_id, index))
        record = await batches.store.get(OWNER, batch_job_id(batch_id, index))
        started = await store.start(kid, record["arq"], MODEL, "worker-1")
        assert started is not None
        outcome = (
            JobError(type="backend_rejected", message="no")
            if index < fail
            else JobResult(text=f"answer {index}", finish_reason="stop", usage=Usage(completion_tokens=2))
        )
        assert await store.finish(kid, MODEL, started.run, outcome)


async def expire_now(batches: BatchStore, batch_id: str) -> None:
    """Put the batch past its time and run one API process's expiry."""
    await batches.redis.zadd(keys.active_batches(), {keys.key_id(OWNER, batch_id): 1})
    await batches.expire_due()


def before_second_chunk(
    batches: BatchStore, monkeypatch: pytest.MonkeyPatch, action: Callable[[], Awaitable[None]]
) -> list[int]:
    """Run `action` (which may raise) when the batch's second chunk of jobs is about to be stored; the submissions
    asked, counted in the list returned."""
    submit, calls = batches.store.submit, [0]

    async def submit_after(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            await action()
        return await submit(*args, **kwargs)

    monkeypatch.setattr(batches.store, "submit", submit_after)
    return calls


async def create(files: FileStore, batches: BatchStore, lines: list[Any]) -> str:
    file_id = await upload(files, b"\n".join(raw(line) for line in lines), piece=4096)
    record = await batches.create(OWNER, file_id, CHAT, "24h", {"k": "v"})
    assert record["status"] == BatchStatus.VALIDATING
    return record["id"]


async def test_a_batch_is_queued_in_chunks_then_ends_with_its_last_job(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = stores
    monkeypatch.setattr("api.batches.SUBMIT_CHUNK", 4)
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(10)])
    await batches.process(OWNER, batch_id)
    record = await batches.get(OWNER, batch_id)
    assert (record["status"], record["total"]) == ("in_progress", "10")
    assert await batches.redis.zcard(keys.queue(MODEL)) == 10
    await run_jobs(batches, batch_id, 10, fail=2)
    done = public_batch(await batches.get(OWNER, batch_id))
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 10, "completed": 8, "failed": 2}
    assert done["completed_at"] == done["finalizing_at"]
    assert await batches.redis.ttl(keys.batch(OWNER, batch_id)) == batches.settings.RESULT_TTL
    record, kind = await batches.generated(OWNER, done["output_file_id"])
    output = b"".join([chunk async for chunk in batches.generated_lines(OWNER, record, kind)])
    assert [orjson.loads(line)["custom_id"] for line in output.splitlines()] == [f"q-{i}" for i in range(2, 10)]
    record, kind = await batches.generated(OWNER, done["error_file_id"])
    errors = b"".join([chunk async for chunk in batches.generated_lines(OWNER, record, kind)])
    assert [orjson.loads(line)["custom_id"] for line in errors.splitlines()] == ["q-0", "q-1"]


async def test_jobs_that_end_before_the_batch_is_in_progress_still_end_it(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = stores
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(3)])
    queue = batches._queue

    async def queue_then_run(owner: str, batch_id: str, file_id: str, endpoint: Endpoint, policy: ClientPolicy) -> int:
        queued = await queue(owner, batch_id, file_id, endpoint, policy)
        await run_jobs(batches, batch_id, queued)  # every job ends while the batch is still validating
        return queued

    monkeypatch.setattr(batches, "_queue", queue_then_run)
    await batches.process(OWNER, batch_id)
    assert (await batches.get(OWNER, batch_id))["status"] == "completed"


async def test_validation_errors_fail_the_batch_and_queue_nothing(stores: tuple[FileStore, BatchStore]) -> None:
    files, batches = stores
    lines = [chat("a"), chat("a"), *([b"{"] * 150)]
    batch_id = await create(files, batches, lines)
    await batches.process(OWNER, batch_id)
    failed = public_batch(await batches.get(OWNER, batch_id))
    assert failed["status"] == "failed"
    assert failed["request_counts"]["total"] == 0
    errors = failed["errors"]["data"]
    assert len(errors) == 100
    assert (errors[0]["line"], errors[0]["code"]) == (2, "duplicate_custom_id")
    assert errors[-1]["line"] == 101
    assert await batches.redis.zcard(keys.queue(MODEL)) == 0


@pytest.fixture
async def limited() -> AsyncIterator[tuple[FileStore, BatchStore]]:
    """Stores with room for 3 batch jobs per model (MAX_BATCH_QUEUE_DEPTH=4, 1 job of another batch queued)."""
    async with batch_stores(make_settings(MAX_BATCH_QUEUE_DEPTH=4, MAX_QUEUE_DEPTH=1)) as (files, batches):
        await batches.store.submit("someone-else", [JobCreate(id="other-batch-0", prompt="x")], background=True)
        yield files, batches


async def test_a_batch_over_max_batch_queue_depth_fails_whole(limited: tuple[FileStore, BatchStore]) -> None:
    files, batches = limited
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(4)])

    await batches.process(OWNER, batch_id)

    failed = public_batch(await batches.get(OWNER, batch_id))
    assert failed["status"] == "failed"
    (error,) = failed["errors"]["data"]
    assert (error["code"], error["param"], error["line"]) == ("queue_full", "model", None)
    assert "MAX_BATCH_QUEUE_DEPTH=4" in error["message"]
    assert "holds 1 batch jobs" in error["message"]
    assert await batches.redis.zcard(keys.queue(MODEL)) == 1, "nothing of it queued"
    fits = await create(files, batches, [chat(f"q-{i}") for i in range(3)])
    await batches.process(OWNER, fits)
    assert (await batches.get(OWNER, fits))["status"] == "in_progress"


async def test_a_batch_that_another_one_outran_fails_and_cancels_what_it_queued(
    limited: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = limited
    monkeypatch.setattr("api.batches.SUBMIT_CHUNK", 2)
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(4)])

    async def empty_queues(models: list[str]) -> dict[str, int]:
        return dict.fromkeys(models, 0)  # as read before another batch filled them

    monkeypatch.setattr(batches.store, "batch_depths", empty_queues)
    await batches.process(OWNER, batch_id)

    failed = public_batch(await batches.get(OWNER, batch_id))
    assert failed["status"] == "failed"
    (error,) = failed["errors"]["data"]
    assert error["code"] == "queue_full"
    assert "MAX_BATCH_QUEUE_DEPTH=4" in error["message"]
    statuses = [(await batches.store.get(OWNER, batch_job_id(batch_id, i)))["status"] for i in range(2)]
    assert statuses == ["cancelled", "cancelled"], "the first chunk was queued, then cancelled"
    assert await batches.redis.zcard(keys.queue(MODEL)) == 1


async def test_a_batch_cancelled_while_validating_queues_nothing(stores: tuple[FileStore, BatchStore]) -> None:
    files, batches = stores
    batch_id = await create(files, batches, [chat("a")])
    assert await batches.cancel(OWNER, batch_id) == "cancelling"
    await batches.process(OWNER, batch_id)
    assert (await batches.get(OWNER, batch_id))["status"] == "cancelled"
    assert await batches.redis.zcard(keys.queue(MODEL)) == 0


async def test_cancel_cancels_the_unfinished_jobs_and_ends_the_batch(stores: tuple[FileStore, BatchStore]) -> None:
    files, batches = stores
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(5)])
    await batches.process(OWNER, batch_id)
    await run_jobs(batches, batch_id, 2)
    assert await batches.cancel(OWNER, batch_id) == "cancelling"
    await batches.cancel_jobs(OWNER, batch_id)
    cancelled = public_batch(await batches.get(OWNER, batch_id))
    assert cancelled["status"] == "cancelled"
    assert cancelled["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
    statuses = [(await batches.store.get(OWNER, batch_job_id(batch_id, index)))["status"] for index in range(5)]
    assert statuses == ["succeeded"] * 2 + ["cancelled"] * 3


async def test_an_ended_batch_cannot_be_cancelled(stores: tuple[FileStore, BatchStore]) -> None:
    files, batches = stores
    batch_id = await create(files, batches, [chat("a")])
    await batches.process(OWNER, batch_id)
    await run_jobs(batches, batch_id, 1)
    with pytest.raises(BatchFinished, match="completed"):
        await batches.cancel(OWNER, batch_id)


async def test_expiry_is_done_once_for_batches_past_their_time(stores: tuple[FileStore, BatchStore]) -> None:
    files, batches = stores
    other_process = BatchStore(batches.store, files)
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(4)])
    later_id = await create(files, batches, [chat("later")])
    await batches.process(OWNER, batch_id)
    await batches.process(OWNER, later_id)
    await run_jobs(batches, batch_id, 1)
    await batches.redis.zadd(keys.active_batches(), {keys.key_id(OWNER, batch_id): 1})
    await other_process.expire_due()
    await batches.expire_due()
    expired = public_batch(await batches.get(OWNER, batch_id))
    assert expired["status"] == "expired"
    assert expired["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert (await batches.get(OWNER, later_id))["status"] == "in_progress"
    assert await batches.redis.zrange(keys.active_batches(), 0, -1) == [keys.key_id(OWNER, later_id)]


async def test_an_expiring_batch_is_finalizing_until_its_work_left_is_cancelled(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its counts are final once it is `expired`; a process that dies midway leaves it to another one."""
    files, batches = stores
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(4)])
    await batches.process(OWNER, batch_id)
    await run_jobs(batches, batch_id, 1)
    member = keys.key_id(OWNER, batch_id)
    await batches.redis.zadd(keys.active_batches(), {member: 1})
    dying = BatchStore(batches.store, files)

    async def die(owner: str, batch_id: str, total: int | None = None) -> int:
        raise ConnectionError("the process died")

    monkeypatch.setattr(dying, "cancel_jobs", die)
    with pytest.raises(ConnectionError):
        await dying.expire_due()
    finalizing = public_batch(await batches.get(OWNER, batch_id))
    assert finalizing["status"] == "finalizing"
    assert finalizing["finalizing_at"] is not None
    assert (finalizing["expired_at"], finalizing["output_file_id"]) == (None, None)
    await batches.expire_due()
    assert (await batches.get(OWNER, batch_id))["status"] == "finalizing", "claimed by the dead process for a while"
    leased_until = await batches.redis.zscore(keys.active_batches(), member)
    assert leased_until is not None
    assert leased_until > now_ms()
    await batches.redis.zadd(keys.active_batches(), {member: 1})  # its lease ended
    await batches.expire_due()
    expired = public_batch(await batches.get(OWNER, batch_id))
    assert expired["status"] == "expired"
    assert expired["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert expired["expired_at"] is not None
    assert expired["output_file_id"] is not None
    assert await batches.redis.zcard(keys.active_batches()) == 0


async def test_a_batch_that_expires_while_it_is_queued_takes_no_more_jobs_and_ends_with_those_it_has(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = stores
    monkeypatch.setattr("api.batches.SUBMIT_CHUNK", 2)
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(5)])
    calls = before_second_chunk(batches, monkeypatch, lambda: expire_now(batches, batch_id))
    await batches.process(OWNER, batch_id)
    assert calls == [2], "the second chunk was refused"
    expired = public_batch(await batches.get(OWNER, batch_id))
    assert expired["status"] == "expired"
    assert expired["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert await batches.redis.zcard(keys.queue(MODEL)) == 0
    assert not await batches.redis.exists(keys.job(keys.key_id(OWNER, batch_job_id(batch_id, 2))))


@pytest.mark.parametrize(("operation", "ends"), [("cancel", "cancelled"), ("expire", "expired")])
async def test_a_batch_cancelled_or_expired_then_outrun_while_queued_ends_with_what_it_queued(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch, operation: str, ends: str
) -> None:
    files, batches = stores
    monkeypatch.setattr("api.batches.SUBMIT_CHUNK", 2)
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(4)])

    async def outrun() -> None:
        await batches._move(OWNER, batch_id, operation)  # just after another batch took the room
        raise QueueFull(MODEL, "MAX_BATCH_QUEUE_DEPTH", 4, 4, 2)

    before_second_chunk(batches, monkeypatch, outrun)
    await batches.process(OWNER, batch_id)
    ended = public_batch(await batches.get(OWNER, batch_id))
    assert ended["status"] == ends
    assert ended["request_counts"] == {"total": 2, "completed": 0, "failed": 2}, "the first chunk, cancelled"
    assert await batches.redis.zcard(keys.queue(MODEL)) == 0


async def test_a_batch_whose_queueing_died_midway_expires_with_the_jobs_it_has(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = stores
    monkeypatch.setattr("api.batches.SUBMIT_CHUNK", 2)
    batch_id = await create(files, batches, [chat(f"q-{i}") for i in range(5)])

    async def die() -> None:
        raise asyncio.CancelledError  # the API process is killed

    before_second_chunk(batches, monkeypatch, die)
    with pytest.raises(asyncio.CancelledError):
        await batches.process(OWNER, batch_id)
    stuck = await batches.get(OWNER, batch_id)
    assert (stuck["status"], stuck["total"]) == ("validating", "5")
    await expire_now(batches, batch_id)
    expired = public_batch(await batches.get(OWNER, batch_id))
    assert expired["status"] == "expired"
    assert expired["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    assert await batches.redis.zcard(keys.queue(MODEL)) == 0


async def test_listing_pages_newest_first_and_drops_expired_batches(stores: tuple[FileStore, BatchStore]) -> None:
    files, batches = stores
    ids = [await create(files, batches, [chat("a")]) for _ in range(5)]
    await batches.redis.delete(keys.batch(OWNER, ids[3]))  # expired
    page, more = await batches.page(OWNER, None, 2)
    assert ([record["id"] for record in page], more) == ([ids[4], ids[2]], True)
    page, more = await batches.page(OWNER, ids[2], 2)
    assert ([record["id"] for record in page], more) == ([ids[1], ids[0]], False)
    assert await batches.page(OWNER, "batch-unknown", 2) == ([], False)
    assert ids[3] not in await batches.redis.zrange(keys.batches(OWNER), 0, -1)
