"""Redis past its maxmemory (policy noeviction), on a real redis-server with a tiny limit: submissions answer 503
with Retry-After and store nothing, a running job waits the outage out, and all goes on once memory is freed."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from api.errors import REDIS_FULL
from api.observability import report_redis_memory
from stack.processes import free_port, start_redis
from tests.integration.conftest import RedisServer, Sim, Stack

MODEL = "oom/model"
MAXMEMORY = 4 * 2**20
LIMITED = "oom/rate-limited"  # a model of its own: its worker must not take the other stack's jobs
FILLER = "filler:"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[RedisServer]:
    """The module's redis-server, as `make run` starts it but with a limit a test fills in a moment."""
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    log = logs_dir / f"redis-{port}.log"
    server = RedisServer(port, data, log, start_redis(port, data, appendonly=True, maxmemory="4mb", log=log))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    sim = start_sim(MODEL, ms_per_token=50)
    return start_stack([(MODEL, sim.url)])


def fill(client: redis.Redis) -> int:
    """Write filler keys until Redis refuses one (OOM), in smaller and smaller values: the query buffer of a
    refused command counts against maxmemory, and is freed once it is refused; returns how many it took."""
    count = 0
    for size in (65536, 4096, 256, 16):
        while True:
            try:
                client.set(f"{FILLER}{count}", "x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            count += 1
    return count


@contextlib.contextmanager
def full(client: redis.Redis) -> Iterator[None]:
    """Redis full while in the block: filled with filler keys until it refuses a write, then its maxmemory lowered
    by 512 KiB, since Redis soon frees the buffers of the refused commands (~50 KiB measured) and small writes
    would fit again. On leaving, the filler keys are deleted and the limit restored."""
    assert fill(client) > 0
    client.config_set("maxmemory", MAXMEMORY - 2**19)
    try:
        yield
    finally:
        fillers = list(client.scan_iter(f"{FILLER}*", count=1000))
        if fillers:
            client.delete(*fillers)
        client.config_set("maxmemory", MAXMEMORY)


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[1])


def all_keys(client: redis.Redis) -> set[str]:
    return set(client.scan_iter("*", count=1000))


def test_redis_starts_with_the_limit_and_never_evicts(redis_server: RedisServer) -> None:
    config: dict[str, str] = redis_server.client().config_get("maxmemory*")  # type: ignore[assignment]
    assert config["maxmemory"] == str(MAXMEMORY)
    assert config["maxmemory-policy"] == "noeviction"


def test_a_submission_refused_by_oom_answers_503_stores_nothing_and_succeeds_once_freed(
    stack: Stack, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    body = {"id": "oom-refused-1", "model": MODEL, "prompt": "Mon allocation", "params": {"max_tokens": 3}}
    with full(client):
        before = all_keys(client)
        response = stack.http.post("/v1/jobs", json=body)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "30"
        assert response.json()["detail"] == REDIS_FULL == "Redis is out of memory (maxmemory): retry later"
        assert not all_keys(client) - before, "a refused submission stored something"
        assert stack.http.get("/v1/jobs/oom-refused-1").status_code == 404
        # An OpenAI-compatible route: the same answer, in OpenAI's shape too.
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}], "max_tokens": 3}
        response = stack.http.post("/v1/chat/completions", json=chat)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "30"
        assert response.json()["error"]["message"] == REDIS_FULL
    response = stack.http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert stack.wait_job("oom-refused-1")["status"] == "succeeded"


def test_a_full_redis_still_serves_reads_with_the_rate_limit_on(
    start_stack: Callable[..., Stack], sim_for_limited: Sim, redis_server: RedisServer
) -> None:
    """The rate limit's bucket is a Redis write, refused while Redis is full: reads must still be served."""
    limited = start_stack([(LIMITED, sim_for_limited.url)], RATE_LIMIT=1000)
    body = {"id": "oom-read-1", "model": LIMITED, "prompt": "Mon allocation", "params": {"max_tokens": 3}}
    assert limited.http.post("/v1/jobs", json=body).status_code == 202
    assert limited.wait_job("oom-read-1")["status"] == "succeeded"
    with full(redis_server.client()):
        response = limited.http.get("/v1/jobs/oom-read-1")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        assert limited.http.post("/v1/jobs", json={**body, "id": "oom-read-2"}).status_code == 503


@pytest.fixture(scope="module")
def sim_for_limited(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(LIMITED)


def test_a_running_job_waits_out_a_full_redis_and_succeeds(stack: Stack, redis_server: RedisServer) -> None:
    """Its tokens and its final record are refused while Redis is full: the worker keeps them and retries
    (REDIS_PATIENCE), rather than failing the job as `internal`."""
    client = redis_server.client()
    body = {"id": "oom-running-1", "model": MODEL, "prompt": "Mon allocation", "params": {"max_tokens": 20}}
    assert stack.http.post("/v1/jobs", json=body).status_code == 202
    stack.wait_job("oom-running-1", until=lambda job: job["status"] == "running")
    with full(client):
        # Its generation (20 tokens at 50 ms) ends while Redis is full: the finish write is refused for a while.
        time.sleep(1.5)
        assert stack.http.get("/v1/jobs/oom-running-1").json()["status"] == "running"
    job = stack.wait_job("oom-running-1", timeout=30)
    assert job["status"] == "succeeded", job
    assert job["result"]["usage"]["completion_tokens"] == 20


def test_metrics_and_dashboard_show_redis_memory(stack: Stack) -> None:
    text = stack.http.get("/metrics").text
    assert gauge(text, "spp_redis_maxmemory_bytes") == MAXMEMORY
    assert 0 < gauge(text, "spp_redis_used_memory_bytes") < 2 * MAXMEMORY
    memory = stack.http.get("/dashboard/data").json()["redis"]
    assert memory["maxmemory"] == MAXMEMORY
    assert 0 < memory["used_memory"] < 2 * MAXMEMORY
    page = stack.http.get("/dashboard").text
    assert "Redis memory" in page


async def test_a_policy_that_evicts_is_reported_at_start(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with caplog.at_level(logging.INFO, logger="api.observability"):
            await report_redis_memory(client)
            assert "maxmemory 4.00M, maxmemory-policy noeviction" in caplog.text
            caplog.clear()
            await client.config_set("maxmemory-policy", "allkeys-lru")
            await report_redis_memory(client)
        warning = next(record for record in caplog.records if record.levelno == logging.WARNING)
        assert "allkeys-lru, which evicts keys" in warning.getMessage()
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.aclose()
