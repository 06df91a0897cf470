"""Real processes on free ports: redis-server, the vLLM simulator, arq workers and uvicorn."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from openai import OpenAI
from openai.types import Batch
from redis.asyncio import Redis

from api.jobs import ApiJobStore
from shared.keys import split_key_id
from stack.processes import Service, free_port, start_python, start_redis
from tests.unit.conftest import make_settings
from worker.jobs import WorkerJobStore

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer test-key"}


@dataclass
class RedisServer:
    port: int
    data_dir: Path
    log: Path
    service: Service

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> None:
        self.service = start_redis(self.port, self.data_dir, appendonly=True, log=self.log)


@dataclass
class Sim:
    url: str
    service: Service

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.url}/sim/stats", timeout=5).json()
        return stats

    def reset(self) -> None:
        httpx.post(f"{self.url}/sim/reset", timeout=5).raise_for_status()


@dataclass
class Stack:
    """An API and workers sharing one Redis; `http` is a client of the API."""

    url: str
    env: dict[str, str]
    api: Service
    workers: dict[str, list[Service]]
    http: httpx.Client
    logs: Path
    extra: list[Service] = field(default_factory=list)

    def wait_job(
        self, job_id: str, timeout: float = 20.0, until: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """Poll the job until it has finished (or `until(job)`), failing after `timeout` seconds."""
        done = until or (lambda job: job["status"] in ("succeeded", "failed", "cancelled"))
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            if done(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
            time.sleep(0.02)

    def request_ids(self) -> dict[str, str]:
        """{X-Request-Id the workers sent to a model server: its job id}, from the workers' `job_started` log
        lines, which put the request id (a UUID) next to the job."""
        found: dict[str, str] = {}
        for services in self.workers.values():
            for service in services:
                assert service.log is not None
                for line in service.log.read_text(errors="replace").splitlines():
                    if '"job_started"' in line and line.startswith("{"):
                        fields = json.loads(line)
                        found[fields["request_id"]] = split_key_id(fields["job"])[1]
        return found


SECRET = "s3cret-in-the-url"
"""A password put in LLM_TABLE URLs: what clients see must never contain it, nor the server's address."""


def with_credentials(url: str) -> str:
    """`url` with operator credentials in it, as an LLM_TABLE entry may have them."""
    return url.replace("http://", f"http://operator:{SECRET}@", 1)


def assert_no_internal_details(text: str) -> None:
    """A client-visible error names neither the model server's address nor its credentials."""
    for internal in (SECRET, "operator", "127.0.0.1", "http://"):
        assert internal not in text, f"{internal!r} shown to a client: {text}"


def read_events(
    client: httpx.Client, job_id: str, last_event_id: str | None = None, stop_after: int | None = None
) -> list[tuple[str, str, Any]]:
    """(event, id, data) of the job's SSE stream, until it closes (or after `stop_after` events); a
    `last_event_id` is sent as it is, an empty one too."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    return [
        (fields["event"], fields["id"], orjson.loads(fields["data"]))
        for fields in sse_fields(client, job_id, headers, stop_after)
    ]


def sse_fields(
    client: httpx.Client, job_id: str, headers: dict[str, str] | None = None, stop_after: int | None = None
) -> list[dict[str, str]]:
    """The fields of each event of the job's SSE stream (`id` only where the event has one), until it closes (or
    after `stop_after` events)."""
    events: list[dict[str, str]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields:
                events.append(fields)
                fields = {}
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events


def wait_batch(client: OpenAI, batch_id: str, until: Callable[[Batch], bool], timeout: float = 30) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s: {batch}")
        time.sleep(0.05)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[RedisServer]:
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    log = logs_dir / f"redis-{port}.log"
    server = RedisServer(port, data, log, start_redis(port, data, appendonly=True, log=log))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def start_sim(logs_dir: Path) -> Iterator[Callable[..., Sim]]:
    started: list[Service] = []

    def start(*models: str, **options: Any) -> Sim:
        port = free_port()
        args = ["sim", "--port", str(port)]
        for model in models:
            args += ["--model", model]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        url = f"http://127.0.0.1:{port}"
        service = start_python("sim", args, env={}, ready_url=f"{url}/health", log=logs_dir / f"sim-{port}.log")
        started.append(service)
        return Sim(url, service)

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def start_stack(redis_server: RedisServer, logs_dir: Path) -> Iterator[Callable[..., Stack]]:
    """Start an API (and workers, one per model unless `workers` says otherwise) against `redis_server`."""
    stacks: list[Stack] = []

    def start(
        llm_table: list[tuple[str, ...]],
        workers: dict[str, int] | None = None,
        headers: dict[str, str] | None = None,
        **settings: Any,
    ) -> Stack:
        env = {
            "ENV": "unittest",
            "REDIS_URL": redis_server.url,
            "LLM_TABLE": json.dumps(llm_table),
            "LOG_LEVEL": "INFO",
            "RATE_LIMIT": "0",  # tests poll fast; test_limits.py sets its own
            "AUTH_FAILURES_PER_MINUTE": "0",  # tests poll 401s fast; test_auth.py sets its own
            "WORKER_METRICS_PORT": "0",  # several workers per machine; test_observability.py sets one
            "WEBHOOK_SECRET_KEY": "integration tests' webhook secret key, 32+ characters",
            **{name: str(value) for name, value in settings.items()},
        }
        models = list(dict.fromkeys(entry[0] for entry in llm_table))
        counts = workers if workers is not None else dict.fromkeys(models, 1)
        started: dict[str, list[Service]] = {}
        for model, count in counts.items():
            started[model] = [
                start_python(
                    "worker",
                    ["worker", "--model", model],
                    env=env,
                    log=logs_dir / f"worker-{free_port()}.log",
                )
                for _ in range(count)
            ]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api = start_python(
            "api",
            ["api"],
            env={**env, "API_PORT": str(port)},
            ready_url=f"{url}/health",
            log=logs_dir / f"api-{port}.log",
        )
        client = httpx.Client(base_url=url, timeout=10, headers=AUTH if headers is None else headers)
        stack = Stack(url, env, api, started, client, logs_dir)
        live = sum(counts.values())
        wait_for(
            lambda: sum(m["workers"] for m in stack.http.get("/v1/models").json()["data"]) >= live,
            20,
            "workers registered",
        )
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.http.close()
        stack.api.stop()
        for services in stack.workers.values():
            for service in services:
                service.stop()
        for service in stack.extra:
            service.stop()


@pytest.fixture
async def job_stores(redis_server: RedisServer) -> AsyncIterator[tuple[ApiJobStore, WorkerJobStore]]:
    """The API's and the workers' job stores on the module's redis-server, emptied first."""
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    await redis.flushdb()
    settings = make_settings()
    api_store = ApiJobStore(redis, settings)
    yield api_store, WorkerJobStore(redis, settings)
    await api_store.aclose()
    await redis.aclose()


@pytest.fixture
def api_store(job_stores: tuple[ApiJobStore, WorkerJobStore]) -> ApiJobStore:
    return job_stores[0]


@pytest.fixture
def worker_store(job_stores: tuple[ApiJobStore, WorkerJobStore]) -> WorkerJobStore:
    return job_stores[1]
