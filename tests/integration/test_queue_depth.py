"""Queue depth limits over real processes: a batch's jobs never count against MAX_QUEUE_DEPTH (the interactive
limit), they have their own, MAX_BATCH_QUEUE_DEPTH."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI
from openai.types import Batch

from shared import keys
from tests.integration.conftest import RedisServer, Sim, Stack, wait_batch

MODEL = "depth/model"
MAX_QUEUE_DEPTH = 3
MAX_BATCH_QUEUE_DEPTH = 15
BATCH_SIZE = 10
"""Over MAX_QUEUE_DEPTH, under MAX_BATCH_QUEUE_DEPTH; two batches are over it."""
OTHER = {"Authorization": "Bearer another-client"}


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    # 50 ms a token: a batch line of 400 tokens runs 20 s, an interactive job of 2 tokens 0.1 s.
    return start_sim(MODEL, ms_per_token=50)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim) -> Stack:
    return start_stack(
        [(MODEL, sim.url)],
        MAX_QUEUE_DEPTH=MAX_QUEUE_DEPTH,
        MAX_BATCH_QUEUE_DEPTH=MAX_BATCH_QUEUE_DEPTH,
        SPP_MAX_TOKENS=2,
    )


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.url + "/v1", api_key="batch-client", max_retries=0, timeout=30) as client:
        yield client


def start_batch(client: OpenAI, size: int, max_tokens: int = 400) -> Batch:
    lines = [
        {
            "custom_id": f"q{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Bonjour {index}"}],
                "max_tokens": max_tokens,
            },
        }
        for index in range(size)
    ]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


@pytest.fixture(scope="module")
def big_batch(client: OpenAI, redis_server: RedisServer) -> Iterator[Batch]:
    """A batch of more jobs than MAX_QUEUE_DEPTH, in the model's queue (running slowly) while the tests run."""
    batch = wait_batch(client, start_batch(client, BATCH_SIZE).id, lambda b: b.status != "validating")
    assert batch.status == "in_progress", batch
    yield batch
    client.batches.cancel(batch.id)
    wait_batch(client, batch.id, lambda b: b.status == "cancelled")


def in_queue(redis_server: RedisServer) -> int:
    """Entries of the model's queue: queued or running jobs (arq removes a job's entry when it ends)."""
    count = redis_server.client().zcard(keys.queue(MODEL))
    assert isinstance(count, int)
    return count


def test_a_batch_over_max_queue_depth_leaves_interactive_routes_open(
    stack: Stack, big_batch: Batch, redis_server: RedisServer
) -> None:
    assert in_queue(redis_server) >= BATCH_SIZE
    other = httpx.Client(base_url=stack.url, headers=OTHER, timeout=30)

    job = other.post("/v1/jobs", json={"model": MODEL, "prompt": "Bonjour", "params": {"max_tokens": 2}})
    assert job.status_code == 202, job.text
    chat = other.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}], "max_tokens": 2},
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    completion = other.post("/v1/completions", json={"model": MODEL, "prompt": "Bonjour", "max_tokens": 2})
    assert completion.status_code == 200, completion.text
    legacy = other.post("/anonymize", json={"id": "depth-legacy-1", "text": "Ma carte grise n'est pas arrivée"})
    assert legacy.status_code == 200, legacy.text
    assert legacy.json() == {"body": {"id": "depth-legacy-1"}}

    for job_id in (job.json()["id"], "depth-legacy-1"):
        assert wait_succeeded(other, job_id)
    assert in_queue(redis_server) >= BATCH_SIZE, "the batch was queued all along"
    other.close()


def wait_succeeded(http: httpx.Client, job_id: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    status: str
    while (status := http.get(f"/v1/jobs/{job_id}").json()["status"]) in ("queued", "running"):
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status} after {timeout}s")
        time.sleep(0.05)
    return status == "succeeded"


def test_the_interactive_limit_still_answers_429_naming_max_queue_depth(
    stack: Stack, big_batch: Batch, redis_server: RedisServer
) -> None:
    over = [{"id": f"depth-over-{n}", "model": MODEL, "prompt": "x"} for n in range(MAX_QUEUE_DEPTH + 1)]

    refused = stack.http.post("/v1/jobs", json=over, headers=OTHER)

    assert refused.status_code == 429
    assert f"MAX_QUEUE_DEPTH={MAX_QUEUE_DEPTH}" in refused.json()["detail"]
    assert refused.headers["retry-after"]
    assert stack.http.get("/v1/jobs/depth-over-0", headers=OTHER).status_code == 404
    # Still open to jobs up to the limit, the batch's jobs being in the queue.
    chat: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert in_queue(redis_server) >= BATCH_SIZE
    assert stack.http.post("/v1/chat/completions", json=chat, headers=OTHER).status_code == 200


def test_a_batch_over_max_batch_queue_depth_fails_whole_naming_it(
    client: OpenAI, big_batch: Batch, redis_server: RedisServer
) -> None:
    refused = wait_batch(client, start_batch(client, BATCH_SIZE).id, lambda b: b.status != "validating")

    assert refused.status == "failed"
    assert refused.errors is not None
    assert refused.errors.data
    error = refused.errors.data[0]
    assert error.code == "queue_full"
    assert f"MAX_BATCH_QUEUE_DEPTH={MAX_BATCH_QUEUE_DEPTH}" in (error.message or "")
    assert not list(redis_server.client().scan_iter(match=keys.job(f"*:{refused.id}-*"), count=10_000)), (
        "nothing queued"
    )
    # One that fits is queued.
    fits = wait_batch(
        client, start_batch(client, MAX_BATCH_QUEUE_DEPTH - BATCH_SIZE, 2).id, lambda b: b.status != "validating"
    )
    assert fits.status == "in_progress", fits
