"""Shared fixtures of the unit tests: settings isolated from the environment, an in-memory Redis, a job store,
and mock model servers (real HTTP servers on 127.0.0.1 answering with scripted responses).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import fakeredis
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from api.batches import BatchStore
from api.files import FileStore
from api.jobs import ApiJobStore
from shared.models import JobCreate, JobRecord
from shared.settings import Settings
from worker.backends import ModelClient
from worker.context import WorkerContext
from worker.jobs import WorkerJobStore

MODEL = "test-model"
BACKEND_URL = "http://backend.test"


def make_settings(**overrides: Any) -> Settings:
    """Settings for one test: no `.env` file, one model on a fake backend unless overridden."""
    values: dict[str, Any] = {
        "ENV": "unittest",
        "LLM_TABLE": f'[["{MODEL}", "{BACKEND_URL}"]]',
        "WEBHOOK_SECRET_KEY": "unit tests' webhook secret key, 32+ characters",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every variable Settings reads, so that the shell running the tests cannot change them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings(clean_env: None) -> Settings:
    return make_settings()


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """A fresh in-memory Redis (its own server: nothing is shared between tests)."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    await client.aclose()


StoreFactory = Callable[[Settings], tuple[ApiJobStore, WorkerJobStore]]
"""settings -> the API's and the workers' job stores on the test's Redis."""


@pytest.fixture
async def make_stores(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[StoreFactory]:
    """The API's and the workers' job stores on the test's Redis; the API's are closed after the test (each may hold
    a shared connection)."""
    api_stores: list[ApiJobStore] = []

    def make(settings: Settings) -> tuple[ApiJobStore, WorkerJobStore]:
        api_stores.append(ApiJobStore(redis, settings))
        return api_stores[-1], WorkerJobStore(redis, settings)

    yield make
    for store in api_stores:
        await store.aclose()


@pytest.fixture
def job_stores(make_stores: StoreFactory, settings: Settings) -> tuple[ApiJobStore, WorkerJobStore]:
    return make_stores(settings)


@pytest.fixture
def api_store(job_stores: tuple[ApiJobStore, WorkerJobStore]) -> ApiJobStore:
    """The API's job store (submit, read, cancel) on the test's Redis."""
    return job_stores[0]


@pytest.fixture
def worker_store(job_stores: tuple[ApiJobStore, WorkerJobStore]) -> WorkerJobStore:
    """The workers' job store (take, start, append, finish...) on the same Redis, with the same settings."""
    return job_stores[1]


def job_record(**fields: str) -> JobRecord:
    """A job's record as submit.lua writes it (job j1 of MODEL, queued, created at 2023-11-14T22:13:20.123Z), with
    `fields` set or replaced: for what reads records."""
    created = 1_700_000_000_123
    record: JobRecord = {
        "id": "j1",
        "model": MODEL,
        "status": "queued",
        "arq": "owner:j1#1",
        "hash": "0" * 32,
        "created_at": str(created),
        "cost": "110",
        "weight": "1",
        "day": "20231114",
        "rank": str(created * 1024),
    }
    return cast(JobRecord, record | fields)


# ---- mock model servers -----------------------------------------------------------------------------------

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""How a mock server answers one request."""

Step = bytes | Callable[[], Awaitable[object]]
"""One step of a streamed answer: bytes to send, or something to wait for (an event, an action) before the next."""


@dataclass(frozen=True, slots=True)
class Received:
    """A request as the mock server received it."""

    method: str
    url: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: tuple[str, int]
    """The client's address and port: one per TCP connection."""

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.body)
        return body


def reply(body: bytes, status: int = 200, content_type: str = "text/event-stream") -> Answer:
    """An answer sent all at once, with a Content-Length."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers={"Content-Type": content_type} if content_type else {})

    return answer


def stream(*steps: Step, cut: bool = False, content_type: str = "text/event-stream") -> Answer:
    """A 200 answer with a chunked body written step by step; with `cut`, the connection is then closed
    without ending the chunked body (a server that died mid-stream)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for step in steps:
                if isinstance(step, bytes):
                    await response.write(step)
                else:
                    await step()
            if cut:
                assert request.transport is not None
                request.transport.close()  # what was written is still delivered, then the connection ends
            else:
                await response.write_eof()
        except ConnectionError:
            pass  # the client went away first: nothing to answer
        return response

    return answer


async def forever() -> None:
    """A step that never ends: the server stays silent until the client leaves or the test ends."""
    await asyncio.Event().wait()


MODEL_ROOT = "/models/test-model-weights"
"""The weights the mock servers' /v1/models reports for MODEL (vLLM's `root`)."""


class MockServer:
    """A model server on 127.0.0.1: records every request and answers each with the next of `answers`
    (the last one repeats). `GET /v1/models`, which the worker asks alongside generations for their provenance,
    is answered apart with `models`, its headers kept in `listings`, not in `requests`."""

    def __init__(self, answers: tuple[Answer, ...]) -> None:
        if not answers:
            raise ValueError("a mock server needs at least one answer")
        self.answers = answers
        self.requests: list[Received] = []
        self.models: dict[str, Any] = {"object": "list", "data": [{"id": MODEL, "object": "model", "root": MODEL_ROOT}]}
        self.listings: list[CIMultiDictProxy[str]] = []
        self.url = ""
        self._handling: set[asyncio.Task[Any]] = set()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        # handler_cancellation: a client that leaves stops the answer it was reading (a silent one included).
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        for task in list(self._handling):
            task.cancel()
        await self._runner.cleanup()

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body of the last request."""
        return self.requests[-1].json()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith("/v1/models"):
            self.listings.append(request.headers)
            return web.json_response(self.models)
        assert request.transport is not None
        host, port = request.transport.get_extra_info("peername")[:2]
        received = Received(
            request.method, str(request.url), request.path, request.headers, await request.read(), (host, port)
        )
        self.requests.append(received)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        task = asyncio.current_task()
        assert task is not None
        self._handling.add(task)
        try:
            return await answer(request)
        finally:
            self._handling.discard(task)


class Serve(Protocol):
    async def __call__(self, *answers: Answer) -> MockServer: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts mock model servers, each on a free port; all are stopped after the test."""
    servers: list[MockServer] = []

    async def start(*answers: Answer) -> MockServer:
        server = MockServer(answers)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.close()


# ---- worker contexts ---------------------------------------------------------------------------------------

MakeContext = Callable[..., Awaitable[WorkerContext]]
"""(mock server, **settings) -> a worker context whose model is served by the mock server."""


@contextlib.asynccontextmanager
async def worker_contexts(
    redis: fakeredis.FakeAsyncRedis, store_class: type[WorkerJobStore], owner: str, **defaults: Any
) -> AsyncIterator[MakeContext]:
    """Builds worker contexts on the in-memory Redis, each with job `j1` of `owner` submitted (settings:
    `defaults`, then the build's own); closes their model clients and stores at the end."""
    clients: list[ModelClient] = []
    stores: list[ApiJobStore] = []

    async def build(server: MockServer, **overrides: Any) -> WorkerContext:
        table = f'[["{MODEL}", "{server.url}"]]'
        settings = make_settings(**{"LLM_TABLE": table, "STREAM_FLUSH_MS": 0} | defaults | overrides)
        stores.append(api_store := ApiJobStore(redis, settings))
        clients.append(client := ModelClient(settings, MODEL))
        await api_store.submit(owner, [JobCreate(id="j1", prompt="Quel temps ?")])
        store = store_class(redis, settings)
        return WorkerContext(settings=settings, model=MODEL, worker_id="host:1", store=store, client=client)

    try:
        yield build
    finally:
        for client in clients:
            await client.aclose()
        for store in stores:
            await store.aclose()


@contextlib.asynccontextmanager
async def batch_stores(settings: Settings) -> AsyncIterator[tuple[FileStore, BatchStore]]:
    """A FileStore and a BatchStore (over its ApiJobStore) on one in-memory Redis, closed at the end."""
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    raw_redis = fakeredis.FakeAsyncRedis(server=server)
    files = FileStore(redis, raw_redis, settings)
    store = ApiJobStore(redis, settings)
    try:
        yield files, BatchStore(store, files)
    finally:
        await store.aclose()
        await redis.aclose()
        await raw_redis.aclose()


class Clock:
    """A monotonic clock a test moves by hand (`clock.now`), for what reads one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()
