"""The job store's Lua scripts on an in-memory Redis: submit, start, append, finish, requeue, cancel, heartbeat."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Required, get_origin, get_type_hints

import fakeredis
import orjson
import pytest
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from api.exceptions import JobConflict, JobFinished, JobNotFound, QueueFull
from api.jobs import ApiJobStore, BatchClosed, utc_day
from api.multiplex import SharedConnection
from shared import keys
from shared.models import (
    ErrorType,
    Job,
    JobCreate,
    JobError,
    JobRecord,
    JobResult,
    JobStatus,
    Usage,
    now_ms,
    public_job,
)
from shared.store import BATCH_BAND, INTERACTIVE_BAND, REAP_GRACE
from tests.unit.conftest import MODEL, StoreFactory, make_settings
from worker.jobs import WorkerJobStore

OWNER = "owner1"
WORKER = "host:1"
BOOKKEEPING = [
    keys.client(OWNER),
    keys.client_jobs(OWNER),
    keys.client_queue(MODEL, OWNER),
    keys.stored(OWNER),
    keys.virtual_finish(MODEL),
    keys.index(OWNER, keys.model_scope(MODEL), "queued"),
]
"""What a submission writes besides records and queues, its daily token count aside: the client's policy, its
unfinished jobs and its queue on the model, its stored bytes (metadata), its fair-share tag, its index of queued
jobs."""

pytestmark = pytest.mark.usefixtures("clean_env")


def job(job_id: str | None, prompt: str = "Bonjour", **fields: Any) -> JobCreate:
    return JobCreate.model_validate({"id": job_id, "prompt": prompt, **fields})


def kid(job_id: str, owner: str = OWNER) -> str:
    return keys.key_id(owner, job_id)


async def record(redis: fakeredis.FakeAsyncRedis, key_id: str) -> JobRecord:
    fields: JobRecord = await redis.hgetall(keys.job(key_id))  # type: ignore[misc]
    return fields


async def events(redis: fakeredis.FakeAsyncRedis, key_id: str) -> list[tuple[str, str]]:
    """The job's stream as (type, data) pairs."""
    entries = await redis.xrange(keys.stream(key_id))
    return [(fields["t"], fields["d"]) for _, fields in entries]


async def queued(redis: fakeredis.FakeAsyncRedis, model: str = MODEL) -> list[str]:
    """The key ids of the queue's arq jobs (an arq job id is `<key id>#<submission>`)."""
    members: list[str] = await redis.zrange(keys.queue(model), 0, -1)
    return [member.partition("#")[0] for member in members]


async def running(redis: fakeredis.FakeAsyncRedis, model: str = MODEL) -> list[str]:
    members: list[str] = await redis.zrange(keys.running(model), 0, -1)
    return members


async def next_message(pubsub: PubSub) -> dict[str, Any] | None:
    """The next published message (subscription confirmations are skipped), or None."""
    for _ in range(5):
        message: dict[str, Any] | None = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            return message
    return None


async def arq_of(api_store: ApiJobStore, key_id: str) -> str:
    """The arq job id the submission of `key_id` queued."""
    arq_id: str = await api_store.redis.hget(keys.job(key_id), "arq")  # type: ignore[misc]
    return arq_id


async def submit_and_start(api_store: ApiJobStore, worker_store: WorkerJobStore, job_id: str = "j1") -> int:
    await api_store.submit(OWNER, [job(job_id)])
    started = await worker_store.start(kid(job_id), await arq_of(api_store, kid(job_id)), MODEL, WORKER)
    assert started is not None
    return started.attempt


RESULT = JobResult(text="Bonjour.", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=2))


@pytest.fixture
async def pubsub(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[PubSub]:
    subscriber = redis.pubsub()
    yield subscriber
    await subscriber.aclose()  # type: ignore[no-untyped-call]


@pytest.fixture
async def commands(
    redis: fakeredis.FakeAsyncRedis,
    api_store: ApiJobStore,
    worker_store: WorkerJobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> list[str]:
    """The names of the Redis commands sent from now on, by the client or the API store's shared connection (the
    scripts are loaded beforehand)."""
    for script in [*vars(api_store).values(), *vars(worker_store).values()]:
        if isinstance(script, AsyncScript):
            await redis.script_load(script.script)
    sent: list[str] = []
    execute = redis.execute_command

    async def spy(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return await execute(*args, **options)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(redis, "execute_command", spy)
    shared_call = SharedConnection._call

    async def shared_spy(self: SharedConnection, args: tuple[Any, ...], packed: bytes | None) -> Any:
        sent.append(str(args[0]).upper())
        return await shared_call(self, args, packed)

    monkeypatch.setattr(SharedConnection, "_call", shared_spy)
    return sent


# ---- submit -----------------------------------------------------------------------------------------------


async def test_submit_stores_the_record_and_the_queue_entry_not_arq_s_definition(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    (submitted,) = await api_store.submit(OWNER, [job("j1", metadata={"team": "a"}, params={"max_tokens": 7})])

    assert submitted.created
    stored = await record(redis, kid("j1"))
    assert stored == submitted.record
    assert stored["id"] == "j1"
    assert stored["model"] == MODEL
    assert stored["status"] == "queued"
    assert "attempts" not in stored, "0 until a worker starts it"
    assert orjson.loads(stored["metadata"]) == {"team": "a"}
    assert orjson.loads(stored["request"]) == {
        "model": MODEL,
        "prompt": "Bonjour",
        "max_tokens": 7,
        "temperature": 0.7,
        "top_p": 1.0,
    }
    assert not await redis.exists(keys.arq_job(await arq_of(api_store, kid("j1")))), "the worker writes it"
    score = await redis.zscore(keys.queue(MODEL), await arq_of(api_store, kid("j1")))
    assert score == INTERACTIVE_BAND, "the first job of the model starts at virtual time 0"
    assert stored["cost"] == str(2 + 7), "its prompt's tokens (a token for 4 characters) and max_tokens"


@pytest.mark.parametrize("background", [False, True], ids=["interactive", "background"])
async def test_take_writes_arq_s_definition_naming_the_job(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, background: bool
) -> None:
    (submitted,) = await api_store.submit(OWNER, [job("j1")], background=background)
    arq_id = submitted.record["arq"]
    before = now_ms()

    taken = await worker_store.take(MODEL, [arq_id], 4, lease_ms=5000, definition_ttl_ms=60_000)

    assert taken == [(arq_id, BATCH_BAND if background else INTERACTIVE_BAND)]
    definition = orjson.loads(await redis.get(keys.arq_job(arq_id)))
    assert definition.pop("et") >= before
    assert definition == {"t": None, "f": "generate", "a": [kid("j1")], "k": {}}
    assert await redis.exists(keys.arq_in_progress(arq_id))
    again = await worker_store.take(MODEL, [arq_id], 4, lease_ms=5000, definition_ttl_ms=60_000)
    assert again == [], "in progress: no other worker takes it"


async def test_submit_uses_the_default_max_tokens_and_a_generated_id(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, _ = make_stores(make_settings(DEFAULT_MAX_TOKENS=33))

    submitted, other = await api_store.submit(OWNER, [job(None), job(None)])

    job_id = submitted.record["id"]
    assert str(uuid.UUID(job_id)) == job_id
    assert (uuid.UUID(job_id).version, uuid.UUID(job_id).variant) == (4, uuid.RFC_4122)
    assert other.record["id"] != job_id
    assert orjson.loads((await record(redis, kid(job_id)))["request"])["max_tokens"] == 33


async def test_submit_many_jobs_in_one_script_call(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, commands: list[str]
) -> None:
    ids = [f"j{n}" for n in range(5)]

    submitted = await api_store.submit(OWNER, [job(job_id, prompt=f"question {job_id}") for job_id in ids])

    assert commands == ["EVALSHA"]
    assert [item.created for item in submitted] == [True] * 5
    assert [item.record["id"] for item in submitted] == ids
    assert sorted(await queued(redis)) == sorted(kid(job_id) for job_id in ids)
    for job_id in ids:
        assert await record(redis, kid(job_id)) == submitted[ids.index(job_id)].record


async def test_submit_wakes_the_workers_of_the_model(api_store: ApiJobStore, pubsub: PubSub) -> None:
    await pubsub.subscribe(keys.wake_channel(MODEL))

    await api_store.submit(OWNER, [job("j1"), job("j2")])

    message = await next_message(pubsub)
    assert message is not None
    assert message["data"] == "1"


async def test_identical_resubmission_returns_the_existing_record_and_queues_nothing(
    redis: fakeredis.FakeAsyncRedis,
    api_store: ApiJobStore,
    worker_store: WorkerJobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await api_store.submit(OWNER, [job("j1", metadata={"a": 1})])
    await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)
    before = await record(redis, kid("j1"))
    score = await redis.zscore(keys.queue(MODEL), await arq_of(api_store, kid("j1")))
    later = now_ms() + 60_000
    monkeypatch.setattr("api.jobs.now_ms", lambda: later)

    (again,) = await api_store.submit(OWNER, [job("j1", metadata={"a": 1})])

    assert not again.created
    assert again.record == before
    assert again.record["status"] == "running"
    assert await record(redis, kid("j1")) == before
    assert await redis.zscore(keys.queue(MODEL), await arq_of(api_store, kid("j1"))) == score
    assert await queued(redis) == [kid("j1")]


async def test_resubmission_in_a_batch_creates_only_the_new_jobs(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    await api_store.submit(OWNER, [job("old")])

    submitted = await api_store.submit(OWNER, [job("new"), job("old")])

    assert [(item.record["id"], item.created) for item in submitted] == [("new", True), ("old", False)]
    assert sorted(await queued(redis)) == [kid("new"), kid("old")]


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({"prompt": "Bonsoir"}, id="prompt"),
        pytest.param({"params": {"temperature": 0.1}}, id="params"),
        pytest.param({"metadata": {"a": 2}}, id="metadata"),
    ],
)
async def test_different_body_under_the_same_id_conflicts_and_stores_nothing_of_the_batch(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, changed: dict[str, Any]
) -> None:
    await api_store.submit(OWNER, [job("j1", metadata={"a": 1})])
    before = await record(redis, kid("j1"))
    conflicting = JobCreate.model_validate({"id": "j1", "prompt": "Bonjour", "metadata": {"a": 1}} | changed)

    with pytest.raises(JobConflict) as info:
        await api_store.submit(OWNER, [job("fresh-1"), conflicting, job("fresh-2")])

    assert info.value.job_id == "j1"
    assert await record(redis, kid("j1")) == before
    assert sorted(await redis.keys("*")) == sorted(
        [
            keys.job(kid("j1")),
            keys.queue(MODEL),
            *BOOKKEEPING,
            keys.tokens(OWNER, utc_day(now_ms())),
            keys.index(OWNER, keys.metadata_scope("a", 1), "queued"),
        ],
        key=str,
    ), "nothing of the refused submission"


async def test_full_queue_refuses_the_whole_batch(redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=3))
    await api_store.submit(OWNER, [job("j1"), job("j2")])

    with pytest.raises(QueueFull) as info:
        await api_store.submit(OWNER, [job("j3"), job("j4")])

    assert info.value.model == MODEL
    assert sorted(await queued(redis)) == [kid("j1"), kid("j2")]
    assert not await redis.exists(keys.job(kid("j3")))
    assert not await redis.keys(keys.arq_job(kid("j3")) + "*")


async def test_full_queue_still_accepts_up_to_the_limit_and_identical_resubmissions(
    redis: fakeredis.FakeAsyncRedis,
    make_stores: StoreFactory,
) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=2))
    await api_store.submit(OWNER, [job("j1"), job("j2")])

    submitted = await api_store.submit(OWNER, [job("j1"), job("j2")])

    assert [item.created for item in submitted] == [False, False]


async def test_queue_depth_is_counted_per_model(redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=1, LLM_TABLE='[["a", "http://a"], ["b", "http://b"]]'))

    submitted = await api_store.submit(OWNER, [job("j1", model="a"), job("j2", model="b")])

    assert [item.created for item in submitted] == [True, True]
    with pytest.raises(QueueFull) as info:
        await api_store.submit(OWNER, [job("j3", model="b")])
    assert info.value.model == "b"


async def test_unlimited_queue_when_max_queue_depth_is_zero(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=0))

    submitted = await api_store.submit(OWNER, [job(f"j{n}") for n in range(50)])

    assert len(submitted) == 50
    assert len(await queued(redis)) == 50


async def test_same_job_id_under_two_owners_are_two_jobs(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    (alice,) = await api_store.submit("alice", [job("same", prompt="A")])
    (bob,) = await api_store.submit("bob", [job("same", prompt="B")])

    assert alice.created
    assert bob.created
    assert orjson.loads((await api_store.get("alice", "same"))["request"])["prompt"] == "A"
    assert orjson.loads((await api_store.get("bob", "same"))["request"])["prompt"] == "B"
    await api_store.cancel("alice", "same")
    assert (await api_store.get("bob", "same"))["status"] == "queued"
    with pytest.raises(JobNotFound):
        await api_store.get("carol", "same")


async def test_get_unknown_job_raises_not_found(api_store: ApiJobStore) -> None:
    with pytest.raises(JobNotFound) as info:
        await api_store.get(OWNER, "nope")

    assert info.value.job_id == "nope"


# ---- start, append ----------------------------------------------------------------------------------------


async def test_start_marks_the_job_running_with_attempt_one(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit(OWNER, [job("j1", params={"max_tokens": 9, "stop": "."})])

    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)

    assert started is not None
    assert started.attempt == 1
    assert started.request.prompt == "Bonjour"
    assert started.request.max_tokens == 9
    assert started.request.stop == ["."]
    stored = await record(redis, kid("j1"))
    assert stored["status"] == "running"
    assert stored["attempts"] == "1"
    assert stored["worker"] == WORKER
    assert int(stored["started_at"]) >= int(stored["created_at"])
    assert await running(redis) == [kid("j1")]
    assert await events(redis, kid("j1")) == []


async def test_start_of_an_unknown_job_returns_none(worker_store: WorkerJobStore) -> None:
    assert await worker_store.start(kid("nope"), kid("nope") + "#1", MODEL, WORKER) is None


async def test_start_of_a_replaced_submission_returns_none(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit(OWNER, [job("j1")])
    stale = await arq_of(api_store, kid("j1"))
    await api_store.submit(OWNER, [job("j1", prompt="Autre texte")], replace=True)

    assert await worker_store.start(kid("j1"), stale, MODEL, WORKER) is None
    assert await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER) is not None


async def test_start_after_requeue_emits_a_reset_with_the_new_attempt(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)
    await worker_store.append(kid("j1"), attempt, "partial", "*")
    assert await worker_store.requeue(kid("j1"), MODEL, attempt, refund=False)

    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)

    assert started is not None
    assert started.attempt == 2
    assert await events(redis, kid("j1")) == [("token", "partial"), ("reset", "2")]


async def test_a_job_whose_worker_vanished_is_taken_over_once_swept(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await submit_and_start(api_store, worker_store)
    assert await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, "other:2") is None, (
        "still running"
    )
    await redis.zadd(keys.running(MODEL), {kid("j1"): 0})  # its heartbeat deadline passed
    assert await worker_store.sweep(MODEL) == [kid("j1")]

    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, "other:2")

    assert started is not None
    assert started.attempt == 2
    assert (await record(redis, kid("j1")))["worker"] == "other:2"
    assert await worker_store.append(kid("j1"), 1, "stale", "*") is None


async def test_start_after_refunded_requeue_resets_the_stream_of_the_lost_attempt(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)
    await worker_store.append(kid("j1"), attempt, "partial", "*")
    assert await worker_store.requeue(kid("j1"), MODEL, attempt, refund=True)

    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)

    assert started is not None
    assert [event_type for event_type, _ in await events(redis, kid("j1"))] == ["token", "reset"]


async def test_append_by_the_owning_attempt_writes_a_token_entry(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)

    first = await worker_store.append(kid("j1"), attempt, "Bon", "*")
    second = await worker_store.append(kid("j1"), attempt, "jour", "*")

    assert [entry_id for entry_id, _ in await redis.xrange(keys.stream(kid("j1")))] == [first, second]
    assert await events(redis, kid("j1")) == [("token", "Bon"), ("token", "jour")]


async def test_append_by_a_stale_attempt_writes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)

    assert await worker_store.append(kid("j1"), attempt + 1, "x", "*") is None
    assert await worker_store.append(kid("j1"), attempt - 1, "x", "*") is None

    assert await events(redis, kid("j1")) == []


async def test_append_to_a_queued_job_writes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit(OWNER, [job("j1")])

    assert await worker_store.append(kid("j1"), 0, "x", "*") is None
    assert await events(redis, kid("j1")) == []


# ---- finish, requeue --------------------------------------------------------------------------------------


async def test_finish_with_a_result_closes_the_job(redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory) -> None:
    api_store, worker_store = make_stores(make_settings(RESULT_TTL=5000, STREAM_TTL=300))
    attempt = await submit_and_start(api_store, worker_store)
    await worker_store.append(kid("j1"), attempt, "Bon", "*")

    assert await worker_store.finish(kid("j1"), MODEL, attempt, RESULT, tail="jour.") is True

    stored = await record(redis, kid("j1"))
    assert stored["status"] == "succeeded"
    assert JobResult.model_validate_json(stored["result"]) == RESULT
    assert "error" not in stored
    assert "request" not in stored
    assert int(stored["finished_at"]) >= int(stored["started_at"])
    assert await events(redis, kid("j1")) == [("token", "Bon"), ("token", "jour."), ("done", "succeeded")]
    expires = await redis.zscore(keys.expiring(), kid("j1"))
    assert expires == int(stored["finished_at"]) + 5000 * 1000, "the reaper erases it RESULT_TTL after its end"
    assert 5000 + REAP_GRACE - 10 <= await redis.ttl(keys.job(kid("j1"))) <= 5000 + REAP_GRACE
    assert 290 <= await redis.ttl(keys.stream(kid("j1"))) <= 300
    assert await running(redis) == []


async def test_finish_with_an_error_marks_the_job_failed(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)

    assert await worker_store.finish(kid("j1"), MODEL, attempt, JobError(type="backend_rejected", message="too long"))

    stored = await record(redis, kid("j1"))
    assert stored["status"] == "failed"
    assert orjson.loads(stored["error"]) == {"type": "backend_rejected", "message": "too long"}
    assert "result" not in stored
    assert await events(redis, kid("j1")) == [("done", "failed")]
    assert await running(redis) == []


async def test_finish_without_tail_adds_no_token_entry(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)

    await worker_store.finish(kid("j1"), MODEL, attempt, RESULT)

    assert await events(redis, kid("j1")) == [("done", "succeeded")]


async def test_finish_by_a_stale_attempt_writes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)
    before = await record(redis, kid("j1"))

    assert await worker_store.finish(kid("j1"), MODEL, attempt + 1, RESULT, tail="x") is False

    assert await record(redis, kid("j1")) == before
    assert await events(redis, kid("j1")) == []
    assert await redis.ttl(keys.job(kid("j1"))) == -1
    assert await running(redis) == [kid("j1")]


async def test_finish_after_cancel_writes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)
    await api_store.cancel(OWNER, "j1")

    assert await worker_store.finish(kid("j1"), MODEL, attempt, RESULT, tail="x") is False

    assert (await record(redis, kid("j1")))["status"] == "cancelled"
    assert await events(redis, kid("j1")) == [("done", "cancelled")]


async def test_requeue_gives_the_job_back_counting_the_attempt(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)

    assert await worker_store.requeue(kid("j1"), MODEL, attempt, refund=False) is True

    stored = await record(redis, kid("j1"))
    assert stored["status"] == "queued"
    assert stored["attempts"] == "1"
    assert "request" in stored
    assert await running(redis) == []


async def test_requeue_with_refund_restores_the_attempts(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)

    assert await worker_store.requeue(kid("j1"), MODEL, attempt, refund=True) is True

    assert (await record(redis, kid("j1")))["attempts"] == "0"
    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)
    assert started is not None
    assert started.attempt == 1


async def test_requeue_by_a_stale_attempt_changes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)
    before = await record(redis, kid("j1"))

    assert await worker_store.requeue(kid("j1"), MODEL, attempt + 1, refund=True) is False

    assert await record(redis, kid("j1")) == before
    assert await running(redis) == [kid("j1")]


# ---- cancel -----------------------------------------------------------------------------------------------


async def test_cancel_of_a_queued_job_removes_it_from_the_queue(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, _ = make_stores(make_settings(RESULT_TTL=5000, STREAM_TTL=300))
    await api_store.submit(OWNER, [job("j1"), job("j2")])
    definition = keys.arq_job(await arq_of(api_store, kid("j1")))
    await redis.set(definition, "{}")  # as a worker writes it when it takes the job

    cancelled = await api_store.cancel(OWNER, "j1")

    assert cancelled["status"] == "cancelled"
    assert "finished_at" in cancelled
    assert "request" in cancelled, "kept for a retry"
    assert cancelled == await record(redis, kid("j1"))
    assert await queued(redis) == [kid("j2")]
    assert not await redis.exists(definition)
    assert await events(redis, kid("j1")) == [("done", "cancelled")]
    expires = await redis.zscore(keys.expiring(), kid("j1"))
    assert expires == int(cancelled["finished_at"]) + 5000 * 1000, "the reaper erases it RESULT_TTL after its end"
    assert 5000 + REAP_GRACE - 10 <= await redis.ttl(keys.job(kid("j1"))) <= 5000 + REAP_GRACE
    assert 290 <= await redis.ttl(keys.stream(kid("j1"))) <= 300


async def test_cancel_of_a_queued_job_prevents_its_start(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    await api_store.submit(OWNER, [job("j1")])
    await api_store.cancel(OWNER, "j1")

    assert await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER) is None


async def test_second_cancel_raises_job_finished(redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore) -> None:
    await api_store.submit(OWNER, [job("j1")])
    await api_store.cancel(OWNER, "j1")

    with pytest.raises(JobFinished) as info:
        await api_store.cancel(OWNER, "j1")

    assert info.value.status == "cancelled"
    assert await events(redis, kid("j1")) == [("done", "cancelled")]


async def test_cancel_of_a_succeeded_job_raises_job_finished(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    attempt = await submit_and_start(api_store, worker_store)
    await worker_store.finish(kid("j1"), MODEL, attempt, RESULT)

    with pytest.raises(JobFinished) as info:
        await api_store.cancel(OWNER, "j1")

    assert info.value.status == "succeeded"
    assert (await api_store.get(OWNER, "j1"))["status"] == "succeeded"


async def test_cancel_of_an_unknown_job_raises_not_found(api_store: ApiJobStore) -> None:
    with pytest.raises(JobNotFound):
        await api_store.cancel(OWNER, "nope")


async def test_cancel_of_a_running_job_tells_its_worker(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, pubsub: PubSub
) -> None:
    await pubsub.subscribe(keys.cancel_channel(MODEL))
    attempt = await submit_and_start(api_store, worker_store)

    cancelled = await api_store.cancel(OWNER, "j1")

    assert cancelled["status"] == "cancelled"
    message = await next_message(pubsub)
    assert message is not None
    assert message["channel"] == keys.cancel_channel(MODEL)
    assert message["data"] == kid("j1")
    assert await running(redis) == []
    assert await queued(redis) == []
    assert await worker_store.append(kid("j1"), attempt, "late", "*") is None


async def test_a_retry_answers_the_job_as_it_queued_it_even_once_a_worker_started_it(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await submit_and_start(api_store, worker_store)
    cancelled = await api_store.cancel(OWNER, "j1")
    queue = api_store._store
    taken: list[object] = []

    async def queue_then_start(*args: Any) -> Any:
        """A worker takes the job as soon as submit.lua has queued it, before the route answers."""
        stored = await queue(*args)
        taken.append(await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER))
        return stored

    api_store._store = queue_then_start  # type: ignore[method-assign,assignment]
    retried = await api_store.retry(OWNER, "j1")

    assert taken != [None], "a worker took it at once"
    assert retried["status"] == "queued"
    assert "attempts" not in retried, "0: none yet"
    assert retried["created_at"] == cancelled["created_at"], "a retry keeps the creation time"
    assert retried["rank"] == cancelled["rank"]
    assert (await record(redis, kid("j1")))["status"] == "running"


async def test_cancel_of_a_queued_job_publishes_nothing(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, pubsub: PubSub
) -> None:
    await api_store.submit(OWNER, [job("j1")])
    await pubsub.subscribe(keys.cancel_channel(MODEL))

    await api_store.cancel(OWNER, "j1")
    await redis.publish(keys.cancel_channel(MODEL), "sentinel")

    message = await next_message(pubsub)
    assert message is not None
    assert message["data"] == "sentinel"


# ---- heartbeat, stats -------------------------------------------------------------------------------------


async def test_heartbeat_returns_the_jobs_no_longer_running(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    for job_id in ("live", "cancelled", "done"):
        await submit_and_start(api_store, worker_store, job_id)
    await api_store.cancel(OWNER, "cancelled")
    await worker_store.finish(kid("done"), MODEL, 1, RESULT)
    before = await redis.zscore(keys.running(MODEL), kid("live"))

    runs = {kid("live"): 1, kid("cancelled"): 1, kid("done"): 1, kid("gone"): 1}
    stale = await worker_store.heartbeat(MODEL, WORKER, runs)

    assert stale == [kid("cancelled"), kid("done"), kid("gone")]
    assert await running(redis) == [kid("live")]
    assert await redis.zscore(keys.running(MODEL), kid("live")) >= before
    assert await redis.zscore(keys.workers(MODEL), WORKER) is not None


async def test_heartbeat_without_jobs_registers_the_worker(
    redis: fakeredis.FakeAsyncRedis, worker_store: WorkerJobStore
) -> None:
    assert await worker_store.heartbeat(MODEL, WORKER, {}) == []

    assert await redis.zrange(keys.workers(MODEL), 0, -1) == [WORKER]


async def test_model_stats_counts_queued_running_and_live_workers(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit(OWNER, [job("j1"), job("j2"), job("j3")])
    await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)
    await worker_store.heartbeat(MODEL, WORKER, {kid("j1"): 1})
    await redis.zadd(keys.workers(MODEL), {"dead:1": now_ms() - 600_000})

    stats = await api_store.model_stats([MODEL, "other"])

    assert stats == {
        MODEL: {"queued": 2, "running": 1, "workers": 1},
        "other": {"queued": 0, "running": 0, "workers": 0},
    }


async def test_heartbeat_stops_a_run_that_another_worker_took_over(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await submit_and_start(api_store, worker_store, "j1")
    await api_store.redis.zadd(keys.running(MODEL), {kid("j1"): 0})  # as after the first worker was presumed dead
    await worker_store.sweep(MODEL)
    taken = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, "other:2")
    assert taken is not None

    assert await worker_store.heartbeat(MODEL, WORKER, {kid("j1"): 1}) == [kid("j1")]
    assert await worker_store.heartbeat(MODEL, "other:2", {kid("j1"): taken.run}) == []


# ---- replacement (the old API's resubmission with a new text) ---------------------------------------------


async def test_replace_with_the_same_body_does_no_new_work(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    await api_store.submit(OWNER, [job("j1")], replace=True)
    (again,) = await api_store.submit(OWNER, [job("j1")], replace=True)

    assert not again.created
    assert await queued(redis) == [kid("j1")]


async def test_replace_a_queued_job_swaps_its_queue_entry(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    await api_store.submit(OWNER, [job("j1")])
    old_arq = await arq_of(api_store, kid("j1"))

    (replaced,) = await api_store.submit(OWNER, [job("j1", prompt="Nouveau texte")], replace=True)

    assert replaced.created
    new_arq = await arq_of(api_store, kid("j1"))
    assert new_arq != old_arq
    assert await redis.zrange(keys.queue(MODEL), 0, -1) == [new_arq]
    assert orjson.loads((await record(redis, kid("j1")))["request"])["prompt"] == "Nouveau texte"


async def test_replace_a_running_job_stops_its_run_and_resets_its_stream(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, pubsub: PubSub
) -> None:
    first = await submit_and_start(api_store, worker_store, "j1")
    await worker_store.append(kid("j1"), first, "ancien", "*")
    await pubsub.subscribe(keys.cancel_channel(MODEL))

    await api_store.submit(OWNER, [job("j1", prompt="Nouveau texte")], replace=True)

    message = await next_message(pubsub)
    assert message is not None
    assert message["data"] == kid("j1")
    assert await running(redis) == []
    assert await worker_store.append(kid("j1"), first, "trop tard", "*") is None
    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)
    assert started is not None
    assert started.attempt == 1
    assert started.run == first + 1, "runs keep growing across a replacement, so the old run stays fenced"
    assert [kind for kind, _ in await events(redis, kid("j1"))] == ["token", "reset"]


async def test_replace_a_finished_job_keeps_its_stream_until_the_new_one_ends(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    run = await submit_and_start(api_store, worker_store, "j1")
    await worker_store.finish(kid("j1"), MODEL, run, RESULT)

    (replaced,) = await api_store.submit(OWNER, [job("j1", prompt="Nouveau texte")], replace=True)

    assert replaced.created
    assert (await record(redis, kid("j1")))["status"] == "queued"
    assert await redis.ttl(keys.stream(kid("j1"))) == -1
    assert await redis.ttl(keys.job(kid("j1"))) == -1


# ---- background (batch) jobs -------------------------------------------------------------------------------


async def test_interactive_jobs_run_before_background_jobs_queued_earlier(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    await api_store.submit(OWNER, [job("batch-1"), job("batch-2")], background=True)
    await api_store.submit(OWNER, [job("live")])

    assert await queued(redis) == [kid("live"), kid("batch-1"), kid("batch-2")]


async def test_background_jobs_ignore_the_queue_depth_limit(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=1))
    await api_store.submit(OWNER, [job("b1"), job("b2"), job("b3")], background=True)

    assert len(await queued(redis)) == 3


async def test_queued_batch_jobs_leave_interactive_jobs_their_whole_limit(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=2, MAX_BATCH_QUEUE_DEPTH=10))
    await api_store.submit(OWNER, [job(f"b{n}") for n in range(5)], background=True)

    submitted = await api_store.submit(OWNER, [job("i1"), job("i2")])

    assert [item.created for item in submitted] == [True, True]
    with pytest.raises(QueueFull) as info:
        await api_store.submit(OWNER, [job("i3")])
    assert (info.value.model, info.value.limit, info.value.value) == (MODEL, "MAX_QUEUE_DEPTH", 2)
    assert "MAX_QUEUE_DEPTH=2" in str(info.value)
    assert not await redis.exists(keys.job(kid("i3")))


async def test_batch_jobs_have_a_limit_of_their_own(redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory) -> None:
    api_store, _ = make_stores(make_settings(MAX_QUEUE_DEPTH=1, MAX_BATCH_QUEUE_DEPTH=3))
    await api_store.submit(OWNER, [job("i1")])
    await api_store.submit(OWNER, [job("b1"), job("b2")], background=True)

    with pytest.raises(QueueFull) as info:
        await api_store.submit(OWNER, [job("b3"), job("b4")], background=True)

    assert "MAX_BATCH_QUEUE_DEPTH=3" in str(info.value)
    assert not await redis.exists(keys.job(kid("b3")))
    assert await api_store.batch_depths([MODEL]) == {MODEL: 2}
    await api_store.submit(OWNER, [job("b3")], background=True)
    assert await api_store.batch_depths([MODEL]) == {MODEL: 3}


async def test_a_job_counts_in_its_kind_while_it_runs_and_is_handed_back_until_it_ends(
    redis: fakeredis.FakeAsyncRedis, make_stores: StoreFactory
) -> None:
    api_store, worker_store = make_stores(make_settings(MAX_QUEUE_DEPTH=1, MAX_BATCH_QUEUE_DEPTH=1))
    attempt = await submit_and_start(api_store, worker_store, "i1")
    await api_store.submit(OWNER, [job("b1")], background=True)
    full = (job("i2"), False), (job("b2"), True)

    for handed_back in (False, True):  # running, then handed back in its place (a shutdown)
        if handed_back:
            assert await worker_store.requeue(kid("i1"), MODEL, attempt, refund=True)
        for refused, background in full:
            with pytest.raises(QueueFull):
                await api_store.submit(OWNER, [refused], background=background)
    await api_store.cancel(OWNER, "i1")
    await api_store.cancel(OWNER, "b1")

    for fits, background in full:
        assert (await api_store.submit(OWNER, [fits], background=background))[0].created


async def test_a_batch_ends_with_its_last_job(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    batch = "spp:batch:test"
    await redis.hset(batch, mapping={"total": 3, "status": "validating"})  # type: ignore[misc]
    await api_store.submit(OWNER, [job("b1"), job("b2"), job("b3")], background=True, batch_key=batch)
    await redis.hset(batch, "status", "in_progress")  # type: ignore[misc]
    for job_id in ("b1", "b2"):
        run = await submit_and_start(api_store, worker_store, job_id)
        await worker_store.finish(
            kid(job_id), MODEL, run, RESULT if job_id == "b1" else JobError(type=ErrorType.INTERNAL, message="y")
        )
    assert (await redis.hgetall(batch))["status"] == "in_progress"  # type: ignore[misc]

    await api_store.cancel(OWNER, "b3")

    counts = await redis.hgetall(batch)  # type: ignore[misc]
    assert (counts["completed"], counts["failed"], counts["cancelled"]) == ("1", "1", "1")
    assert counts["status"] == "completed"
    assert "completed_at" in counts
    assert await redis.ttl(batch) > 0


async def test_a_cancelling_batch_becomes_cancelled(redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore) -> None:
    batch = "spp:batch:test"
    await redis.hset(batch, mapping={"total": 1, "status": "validating"})  # type: ignore[misc]
    await api_store.submit(OWNER, [job("b1")], background=True, batch_key=batch)
    await redis.hset(batch, "status", "cancelling")  # type: ignore[misc]

    await api_store.cancel(OWNER, "b1")

    assert (await redis.hgetall(batch))["status"] == "cancelled"  # type: ignore[misc]


@pytest.mark.parametrize("status", ["cancelling", "finalizing", "expired", None])
async def test_a_batch_takes_jobs_only_while_it_is_validating(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, status: str | None
) -> None:
    batch = "spp:batch:test"
    if status is not None:
        await redis.hset(batch, mapping={"total": 2, "status": status})  # type: ignore[misc]
    with pytest.raises(BatchClosed) as closed:
        await api_store.submit(OWNER, [job("b1"), job("b2")], background=True, batch_key=batch)
    assert closed.value.status == status
    assert await redis.exists(keys.job(kid("b1")), keys.job(kid("b2"))) == 0
    assert await redis.zcard(keys.queue(MODEL)) == 0


# ---- the public job -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_type", list(ErrorType))
async def test_every_public_job_validates_against_the_job_schema(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore, error_type: ErrorType
) -> None:
    """`public_job` answers the routes without a pydantic round trip: what it builds must be a `Job`, the
    `response_model` the OpenAPI document promises, in every state."""
    extras: dict[str, Any] = {
        "metadata": {"dossier": "D-1", "n": 3, "ok": True, "none": None},
        "priority": 2,
        "webhook": {"url": "https://example.org/hook"},
    }
    await api_store.submit(OWNER, [job("queued", **extras), job("cancelled"), job("running")])
    await api_store.submit(OWNER, [job("succeeded"), job("failed")])
    for job_id, outcome in (
        ("running", None),
        ("succeeded", RESULT),
        ("failed", JobError(type=error_type, message="the server's words")),
    ):
        started = await worker_store.start(kid(job_id), await arq_of(api_store, kid(job_id)), MODEL, WORKER)
        assert started is not None
        if outcome is not None:
            assert await worker_store.finish(kid(job_id), MODEL, started.run, outcome)
    await api_store.cancel(OWNER, "cancelled")

    for status in JobStatus:
        shown = public_job(await record(redis, kid(status.value)))
        parsed = Job.model_validate(shown)
        assert parsed.status is status
        dumped = parsed.model_dump(mode="json")
        assert {name: dumped[name] for name in shown} == orjson.loads(orjson.dumps(shown)) | {
            name: dumped[name] for name in ("created_at", "started_at", "finished_at")
        }, "the schema changes nothing of what is shown but the times' spelling"
    assert Job.model_validate(public_job(await record(redis, kid("failed")))).error == JobError(
        type=error_type, message="the server's words"
    )


async def test_the_record_type_names_every_field_the_scripts_write(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    """`JobRecord` declares each field of a stored job, and those it marks required are in every record: a field
    written by a script but missing there would be read past mypy. One job goes through every write (a batch's job
    with every optional field of a submission, handed back with a delay, then succeeded)."""
    batch = "spp:batch:test"
    await redis.hset(batch, mapping={"total": 1, "status": "validating"})  # type: ignore[misc]
    extras: dict[str, Any] = {
        "metadata": {"a": 1},
        "priority": 2,
        "webhook": {"url": "https://example.org/hook"},
        "template": "spp",
    }
    await api_store.submit(OWNER, [job("j1", **extras)], background=True, batch_key=batch)
    seen = [await record(redis, kid("j1"))]
    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)
    assert started is not None
    seen.append(await record(redis, kid("j1")))
    line = orjson.dumps({"error": {"type": ErrorType.BACKEND_UNAVAILABLE}, "ended_at": now_ms()}).decode()
    assert await worker_store.requeue(kid("j1"), MODEL, started.run, refund=False, delay=5.0, attempt=line)
    seen.append(await record(redis, kid("j1")))
    started = await worker_store.start(kid("j1"), await arq_of(api_store, kid("j1")), MODEL, WORKER)
    assert started is not None
    assert await worker_store.finish(kid("j1"), MODEL, started.run, RESULT, provenance='{"replica": 0}')
    seen.append(await record(redis, kid("j1")))

    # Read from the annotations: with postponed annotations, TypedDict's own __required_keys__ sees no Required.
    declared = get_type_hints(JobRecord, include_extras=True)
    required = {name for name, hint in declared.items() if get_origin(hint) is Required}
    assert required == {"id", "model", "status", "arq", "hash", "created_at", "cost", "weight", "day", "rank"}
    written = {name for fields in seen for name in fields}
    assert written - set(declared) == set()
    for fields in seen:
        assert required - set(fields) == set()
    assert set(declared) - written == {"webhook_delivery", "error"}, "the delivery process's field, and a failure's"
