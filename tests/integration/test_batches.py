"""The Files and Batch API through the official `openai` client, over real processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx
import openai
import orjson
import pytest
from openai import OpenAI
from openai.types import Batch

from shared import keys
from tests.integration.conftest import (
    AUTH,
    RedisServer,
    Sim,
    Stack,
    assert_no_internal_details,
    wait_batch,
    wait_for,
)

MODEL = "AgentPublic/fabrique-reference-2"
SLOW = "batch/slow"
IDLE = "batch/no-worker"
CHAT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
COMPLETIONS: Literal["/v1/completions"] = "/v1/completions"


@pytest.fixture(scope="module")
def sims(start_sim: Callable[..., Sim]) -> tuple[Sim, Sim]:
    # The simulator's context is 4096 tokens: a request for more is refused (HTTP 400), so its line fails.
    return start_sim(MODEL, IDLE, prefill_ms=2, ms_per_token=1), start_sim(SLOW, ms_per_token=100)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sims: tuple[Sim, Sim]) -> Stack:
    fast, slow = sims
    # IDLE has no worker: its jobs stay queued until cancelled.
    return start_stack([(MODEL, fast.url), (SLOW, slow.url), (IDLE, fast.url)], workers={MODEL: 1, SLOW: 1})


@pytest.fixture(scope="module")
def second(start_stack: Callable[..., Stack], stack: Stack, sims: tuple[Sim, Sim]) -> Stack:
    """Another API process (no workers of its own) on the same Redis."""
    fast, slow = sims
    return start_stack([(MODEL, fast.url), (SLOW, slow.url), (IDLE, fast.url)], workers={})


@pytest.fixture(scope="module")
def limited(start_stack: Callable[..., Stack], sims: tuple[Sim, Sim]) -> Stack:
    return start_stack([(MODEL, sims[0].url)], workers={}, BATCH_MAX_LINES=5, BATCH_MAX_BYTES=4096)


def client_of(stack: Stack, api_key: str = "test-key") -> OpenAI:
    # No retries: a 409 or 5xx must surface, not be sent again.
    return OpenAI(base_url=stack.url + "/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[OpenAI]:
    with client_of(stack) as client:
        yield client


def chat(custom_id: str, text: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": messages, **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


def start_batch(client: OpenAI, lines: list[Any], endpoint: Any = CHAT, **options: Any) -> Batch:
    uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", **options)


def ended(batch: Batch) -> bool:
    return batch.status in ("completed", "failed", "expired", "cancelled")


def lines_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def batch_jobs(redis_server: RedisServer, batch_id: str) -> list[str]:
    return list(redis_server.client().scan_iter(match=keys.job(f"*:{batch_id}-*"), count=10_000))


def test_upload_retrieve_content_delete(client: OpenAI) -> None:
    data = jsonl([chat(f"q-{i}", "é" * 4000) for i in range(300)]) + b"\xff no newline at the end"
    assert len(data) > 2 * 2**20  # several chunks of the upload and of the download
    uploaded = client.files.create(file=("questions.jsonl", data), purpose="batch")
    assert uploaded.id.startswith("file-")
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.purpose) == (
        "file",
        len(data),
        "questions.jsonl",
        "batch",
    )
    assert abs(uploaded.created_at - time.time()) < 60
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == data
    deleted = client.files.delete(uploaded.id)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(uploaded.id)


def test_uploads_that_are_refused(client: OpenAI, limited: Stack, redis_server: RedisServer) -> None:
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.files.create(file=("a.jsonl", b""), purpose="batch")
    response = httpx.post(f"{limited.url}/v1/files", json={"purpose": "batch"}, headers=AUTH)
    assert response.status_code == 400
    with client_of(limited) as small, pytest.raises(openai.APIStatusError, match="BATCH_MAX_BYTES") as refused:
        small.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert refused.value.status_code == 413
    assert not list(redis_server.client().scan_iter(match=keys.file_upload("*", "*")))


def test_a_chat_batch_runs_to_completion(client: OpenAI, stack: Stack, redis_server: RedisServer) -> None:
    lines = [chat(f"q-{i}", f"Question {i} sur ma carte grise", max_tokens=5, seed=i) for i in range(300)]
    lines += [chat(f"too-long-{i}", "Une très longue réponse", max_tokens=5000) for i in range(3)]
    batch = start_batch(client, lines, metadata={"campaign": "spp-test"})
    assert batch.status == "validating"
    assert batch.metadata == {"campaign": "spp-test"}
    assert batch.expires_at == batch.created_at + 24 * 3600
    done = wait_batch(client, batch.id, ended)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (303, 300, 3)
    assert done.in_progress_at is not None
    assert done.completed_at is not None
    assert batch.created_at <= done.in_progress_at <= done.completed_at == done.finalizing_at

    output = lines_of(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"q-{i}" for i in range(300)]
    first = output[0]
    assert first["id"] == f"batch_req_{batch.id}-000000"
    assert first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"] == f"{batch.id}-000000"
    body = first["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["usage"]["completion_tokens"] <= 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert client.files.retrieve(output_id(done)).bytes == len(client.files.content(output_id(done)).content)

    errors = lines_of(client, done.error_file_id)
    assert [line["custom_id"] for line in errors] == [f"too-long-{i}" for i in range(3)]
    assert all(line["response"] is None and line["error"]["code"] == "backend_rejected" for line in errors)
    assert_no_internal_details(str(errors))  # the model server's address stays in the worker's log

    # Each request is a job of the owner, naming its custom_id.
    job = httpx.get(f"{stack.url}/v1/jobs/{batch.id}-000007", headers=AUTH).json()
    assert (job["status"], job["metadata"]) == ("succeeded", {"custom_id": "q-7"})
    assert len(batch_jobs(redis_server, batch.id)) == 303


def output_id(batch: Batch) -> str:
    assert batch.output_file_id is not None
    return batch.output_file_id


def test_a_completions_batch(client: OpenAI) -> None:
    lines = [
        {"custom_id": f"c-{i}", "method": "POST", "url": COMPLETIONS, "body": {"model": MODEL, "prompt": f"Texte {i}"}}
        for i in range(20)
    ]
    done = wait_batch(client, start_batch(client, lines, endpoint=COMPLETIONS).id, ended)
    assert done.status == "completed"
    assert done.error_file_id is None
    output = lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(f"c-{i}" for i in range(20))
    body = output[0]["response"]["body"]
    assert (body["object"], body["model"]) == ("text_completion", MODEL)
    assert body["choices"][0]["text"]


def test_a_batchs_jobs_are_listed_counted_and_erased_by_batch(client: OpenAI, stack: Stack) -> None:
    lines = [chat(f"b-{i}", f"Question {i}", max_tokens=3) for i in range(12)]
    done = wait_batch(client, start_batch(client, lines).id, ended)
    assert done.status == "completed"
    other = wait_batch(client, start_batch(client, lines[:2]).id, ended)

    listed = httpx.get(f"{stack.url}/v1/jobs", params={"batch": done.id, "limit": 5}, headers=AUTH).json()
    ids = [job["id"] for job in listed["data"]]
    while listed["has_more"]:
        page = {"batch": done.id, "limit": 5, "after": listed["next_after"]}
        listed = httpx.get(f"{stack.url}/v1/jobs", params=page, headers=AUTH).json()
        ids += [job["id"] for job in listed["data"]]
    assert sorted(ids) == [f"{done.id}-{i:06d}" for i in range(12)]
    stats = httpx.get(f"{stack.url}/v1/jobs/stats", params={"batch": done.id}, headers=AUTH).json()
    assert (stats["total"], stats["counts"]["succeeded"]) == (12, 12), stats

    erased = httpx.delete(f"{stack.url}/v1/jobs", params={"batch": done.id}, headers=AUTH).json()
    assert erased["deleted"] == 12
    assert httpx.get(f"{stack.url}/v1/jobs/{done.id}-000000", headers=AUTH).status_code == 404
    assert httpx.get(f"{stack.url}/v1/jobs/{other.id}-000000", headers=AUTH).status_code == 200


def test_an_invalid_input_fails_the_batch_with_every_bad_line(client: OpenAI, redis_server: RedisServer) -> None:
    lines: list[Any] = [
        chat("ok-1", "Bonjour"),
        b'{"custom_id": "broken", "method": "POST",',
        chat("ok-1", "Encore"),
        {**chat("wrong-url", "x"), "url": COMPLETIONS},
        chat("unknown-model", "x", model="nobody/model"),
        b"",
        chat("two-choices", "x", n=2),
        {"custom_id": "no-messages", "method": "POST", "url": CHAT, "body": {"model": MODEL}},
        chat("ok-2", "Au revoir"),
    ]
    batch = start_batch(client, lines)
    failed = wait_batch(client, batch.id, ended)
    assert failed.status == "failed"
    assert failed.failed_at is not None
    assert failed.output_file_id is None
    assert failed.errors is not None
    assert failed.errors.data is not None
    found = [(error.line, error.code, error.param) for error in failed.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "invalid_url", "url"),
        (5, "model_not_found", "body.model"),
        (7, "invalid_request", "body.n"),
        (8, "invalid_request", "body.messages"),
    ]
    assert "line 1" in (failed.errors.data[1].message or "")
    assert not batch_jobs(redis_server, batch.id)


def test_too_many_lines(limited: Stack, redis_server: RedisServer) -> None:
    with client_of(limited) as small:
        failed = wait_batch(small, start_batch(small, [chat(f"q-{i}", "x") for i in range(6)]).id, ended)
    assert failed.status == "failed"
    assert failed.errors is not None
    assert failed.errors.data is not None
    [error] = failed.errors.data
    assert (error.code, error.line) == ("too_many_lines", 6)
    assert "BATCH_MAX_LINES=5" in (error.message or "")
    assert not batch_jobs(redis_server, failed.id)


def test_bad_creations_are_refused(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nothere", endpoint=CHAT, completion_window="24h")
    uploaded = client.files.create(file=("a.jsonl", jsonl([chat("a", "x")])), purpose="batch")
    for endpoint, window in (("/v1/embeddings", "24h"), (CHAT, "soon")):
        with pytest.raises(openai.UnprocessableEntityError):
            client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window=window)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch-nothere")


def test_cancel_a_running_batch(client: OpenAI, sims: tuple[Sim, Sim]) -> None:
    slow = sims[1]
    aborted = slow.stats()["aborted"]
    batch = start_batch(client, [chat(f"s-{i}", "Une longue réponse", model=SLOW, max_tokens=1000) for i in range(20)])
    wait_batch(client, batch.id, lambda b: b.status == "in_progress")
    wait_for(lambda: slow.stats()["running"] >= 1, 10, "the slow model generates")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None
    cancelled = wait_batch(client, batch.id, ended)
    assert cancelled.status == "cancelled"
    assert cancelled.request_counts is not None
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 20)
    errors = lines_of(client, cancelled.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == sorted(f"s-{i}" for i in range(20))
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert lines_of(client, cancelled.output_file_id) == []
    wait_for(lambda: slow.stats()["aborted"] > aborted, 10, "running requests were closed")
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_a_finished_batch_cannot_be_cancelled(client: OpenAI) -> None:
    done = wait_batch(client, start_batch(client, [chat("one", "x", max_tokens=2)]).id, ended)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(done.id)


def test_expiry_cancels_the_work_left_and_keeps_the_results(client: OpenAI, redis_server: RedisServer) -> None:
    lines = [chat(f"fast-{i}", "x", max_tokens=3) for i in range(3)]
    lines += [chat(f"idle-{i}", "x", model=IDLE) for i in range(5)]
    batch = start_batch(client, lines)
    running = wait_batch(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed == 3)
    assert running.status == "in_progress"
    redis = redis_server.client()
    [key] = redis.scan_iter(match=keys.batch("*", batch.id))
    owner = key.split(":")[2]
    past = int(time.time() * 1000) - 1000
    redis.hset(key, "expires_at", str(past))
    redis.zadd(keys.active_batches(), {keys.key_id(owner, batch.id): past})
    expired = wait_batch(client, batch.id, ended, timeout=10)
    assert expired.status == "expired"
    assert expired.expired_at is not None
    assert expired.request_counts is not None
    assert (expired.request_counts.completed, expired.request_counts.failed) == (3, 5)
    assert sorted(line["custom_id"] for line in lines_of(client, expired.output_file_id)) == [
        "fast-0",
        "fast-1",
        "fast-2",
    ]
    errors = lines_of(client, expired.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == [f"idle-{i}" for i in range(5)]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert redis.zcard(keys.queue(IDLE)) == 0


def test_two_api_processes_serve_the_same_batches(client: OpenAI, second: Stack) -> None:
    with client_of(second) as other:
        uploaded = other.files.create(
            file=("a.jsonl", jsonl([chat(f"q-{i}", "x", max_tokens=3) for i in range(10)])), purpose="batch"
        )
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        done = wait_batch(other, batch.id, ended)
        assert done.status == "completed"
        assert client.batches.retrieve(batch.id) == done
        assert batch.id in [item.id for item in other.batches.list(limit=100)]
        assert other.files.content(output_id(done)).content == client.files.content(output_id(done)).content


def test_another_key_sees_nothing(client: OpenAI, stack: Stack) -> None:
    done = wait_batch(client, start_batch(client, [chat("mine", "x", max_tokens=2)]).id, ended)
    with client_of(stack, "another-key") as stranger:
        for call, object_id in (
            (stranger.batches.retrieve, done.id),
            (stranger.batches.cancel, done.id),
            (stranger.files.retrieve, done.input_file_id),
            (stranger.files.content, done.input_file_id),
            (stranger.files.delete, done.input_file_id),
            (stranger.files.content, output_id(done)),
        ):
            with pytest.raises(openai.NotFoundError):
                call(object_id)
        assert done.id not in [item.id for item in stranger.batches.list()]
    assert client.files.retrieve(done.input_file_id).id == done.input_file_id


def test_list_pages_newest_first(stack: Stack) -> None:
    with client_of(stack, "lister-key") as lister:
        created = [start_batch(lister, [chat("a", "x", max_tokens=2)]).id for _ in range(3)]
        page = lister.batches.list(limit=2)
        assert [item.id for item in page.data] == created[::-1][:2]
        assert page.has_more
        rest = lister.batches.list(limit=2, after=page.data[-1].id)
        assert [item.id for item in rest.data] == created[:1]
        assert not rest.has_more
        assert [item.id for item in lister.batches.list(limit=2)] == created[::-1]  # the client follows the pages
        raw = httpx.get(f"{stack.url}/v1/batches", params={"limit": 1}, headers={"Authorization": "Bearer lister-key"})
        assert raw.json()["first_id"] == raw.json()["last_id"] == created[-1]
