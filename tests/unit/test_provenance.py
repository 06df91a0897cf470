"""Provenance: what each attempt and the job's end record of what produced the answer (worker/provenance.py,
worker/generate.py), the model cards asked of /v1/models, and the public form of the record (api/routes)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import fakeredis
import orjson
import pytest

from api.jobs import ApiJobStore
from api.routes.provenance import job_provenance
from shared import keys
from shared.acronyms import acronyms_version
from shared.models import GenerationRequest, JobCreate, JobRecord, now_ms, public_job
from tests.unit.conftest import (
    MODEL,
    MODEL_ROOT,
    Answer,
    Clock,
    MakeContext,
    Serve,
    forever,
    job_record,
    make_settings,
    reply,
    stream,
    worker_contexts,
)
from worker.backends import ModelClient
from worker.context import WorkerContext
from worker.generate import generate
from worker.jobs import WorkerJobStore
from worker.provenance import ModelCard, ModelCards, Trace, card_of

OWNER = "owner1"
KID = keys.key_id(OWNER, "j1")

pytestmark = pytest.mark.usefixtures("clean_env")


def chunks(*texts: str, model: str = MODEL, fingerprint: str | None = None) -> bytes:
    """A streamed completion of `texts` as `model` reports it, with a usage chunk."""
    lines = []
    for index, text in enumerate(texts):
        chunk: dict[str, Any] = {
            "object": "text_completion",
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop" if index == len(texts) - 1 else None}],
        }
        if fingerprint is not None:
            chunk["system_fingerprint"] = fingerprint
        lines.append(orjson.dumps(chunk))
    usage = {"prompt_tokens": 3, "completion_tokens": len(texts), "total_tokens": 3 + len(texts)}
    lines += [orjson.dumps({"model": model, "choices": [], "usage": usage}), b"[DONE]"]
    return b"".join(b"data: " + line + b"\n\n" for line in lines)


def ok(**options: Any) -> Answer:
    return stream(chunks("Il", " fait", " beau.", **options))


def unavailable() -> Answer:
    return reply(b'{"error": {"message": "engine crashed at http://10.0.0.7:8000"}}', 500, "application/json")


def rejected() -> Answer:
    return reply(b'{"error": {"message": "too long", "code": 400}}', 400, "application/json")


@pytest.fixture
async def make_context(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[MakeContext]:
    async with worker_contexts(redis, WorkerJobStore, OWNER, RETRY_BACKOFF=0.01) as build:
        yield build


async def run(spp: WorkerContext, kid: str = KID) -> None:
    """One arq run of the job, under its current arq job id."""
    arq_id: str = await spp.store.redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
    await generate({"spp": spp, "job_id": arq_id}, kid)


async def record(spp: WorkerContext, kid: str = KID) -> JobRecord:
    fields: JobRecord = await spp.store.redis.hgetall(keys.job(kid))  # type: ignore[misc]
    return fields


async def stored(spp: WorkerContext) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The record's provenance (None when absent) and its attempt log's lines, as stored."""
    fields = await record(spp)
    provenance = orjson.loads(fields["provenance"]) if "provenance" in fields else None
    return provenance, [orjson.loads(line) for line in fields.get("attempt_log", "").splitlines()]


async def public(spp: WorkerContext, kid: str = KID) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job's provenance and attempts as clients read them."""
    answer = job_provenance(await record(spp, kid))
    return answer["provenance"], answer["attempts"]


# ---- the acronym list's version ---------------------------------------------------------------------------


def test_the_acronym_version_is_the_hash_of_the_list_file() -> None:
    data = resources.files("shared").joinpath("data/acronyms.csv").read_bytes()

    assert acronyms_version() == hashlib.sha256(data).hexdigest()[:12]


# ---- model cards ------------------------------------------------------------------------------------------


def test_the_card_of_the_model_is_its_entry_in_the_listing() -> None:
    listing = {
        "data": [
            {"id": "other", "root": "/models/other"},
            {"id": MODEL, "root": "/models/m-v2", "parent": "/models/base"},
        ]
    }

    assert card_of(listing, MODEL) == ModelCard(MODEL, "/models/m-v2", "/models/base")
    assert card_of(listing, "not-listed") is None, "which of several models answers is unknown"
    assert card_of({"data": listing["data"][:1]}, "served-under-another-name") == ModelCard("other", "/models/other")


@pytest.mark.parametrize(
    "listing",
    [None, "Not Found", {"detail": "Not Found"}, {"data": "x"}, {"data": []}, {"data": [{"root": "no id"}]}, [1, 2]],
)
def test_a_listing_without_models_gives_no_card(listing: Any) -> None:
    assert card_of(listing, MODEL) is None


def test_a_card_without_root_or_parent_has_none() -> None:
    assert card_of({"data": [{"id": MODEL, "root": "", "parent": None}]}, MODEL) == ModelCard(MODEL)


class Fetches:
    """A fetch of cards that counts its calls; each call waits for `gate` when one is set."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, replica: int) -> ModelCard | None:
        self.calls.append(replica)
        if self.gate is not None:
            await self.gate.wait()
        return ModelCard(f"model-{replica}", f"/weights/{len(self.calls)}")


async def test_a_replica_is_asked_once_per_ttl(clock: Clock) -> None:
    fetches = Fetches()
    cards = ModelCards(fetches, ttl=60, clock=clock)
    try:
        for _ in range(3):
            cards.refresh(0)
        assert await cards.get(0, wait=1) == ModelCard("model-0", "/weights/1")
        clock.now += 59
        cards.refresh(0)
        cards.refresh(1)
        assert await cards.get(0, wait=1) == ModelCard("model-0", "/weights/1")
        assert await cards.get(1, wait=1) == ModelCard("model-1", "/weights/2")
        clock.now += 1
        cards.refresh(0)

        assert await cards.get(0, wait=1) == ModelCard("model-0", "/weights/3")
        assert fetches.calls == [0, 1, 0]
    finally:
        await cards.aclose()


async def test_a_failed_replica_is_asked_again_at_its_next_use(clock: Clock) -> None:
    fetches = Fetches()
    cards = ModelCards(fetches, ttl=60, clock=clock)
    try:
        cards.refresh(0)
        await cards.get(0, wait=1)

        cards.forget(0)

        assert await cards.get(0, wait=1) is None, "no card until asked again"
        cards.refresh(0)
        assert await cards.get(0, wait=1) == ModelCard("model-0", "/weights/2")
    finally:
        await cards.aclose()


async def test_a_card_slower_than_the_wait_is_left_out_then_used_once_it_came(clock: Clock) -> None:
    fetches = Fetches()
    fetches.gate = asyncio.Event()
    cards = ModelCards(fetches, ttl=60, clock=clock)
    try:
        cards.refresh(0)

        assert await cards.get(0, wait=0.01) is None
        fetches.gate.set()
        assert await cards.get(0, wait=1) == ModelCard("model-0", "/weights/1")
    finally:
        await cards.aclose()


async def test_closing_stops_the_questions_on_their_way(clock: Clock) -> None:
    fetches = Fetches()
    fetches.gate = asyncio.Event()
    cards = ModelCards(fetches, clock=clock)
    cards.refresh(0)
    cards.forget(0)
    cards.refresh(0)
    await asyncio.sleep(0)

    await cards.aclose()

    assert await cards.get(0, wait=0) is None


# ---- what the model client tells a trace -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "generate"])
async def test_the_trace_names_the_replica_and_the_sampling_sent(serve: Serve, protocol: str) -> None:
    answer = ok() if protocol == "openai" else stream(b'{"text": ["P x"]}\n')
    first, second = await serve(answer), await serve(answer)
    table = orjson.dumps([[MODEL, first.url, protocol], [MODEL, second.url, protocol]]).decode()
    client = ModelClient(make_settings(LLM_TABLE=table), MODEL)
    request = GenerationRequest(model=MODEL, prompt="P", max_tokens=7, temperature=0.1, top_p=0.5, stop=["."], seed=4)
    traces = [Trace(started_at=0), Trace(started_at=0)]
    try:
        for trace in traces:
            [event async for event in client.stream(request, "k:1", trace)]
        card = await client.cards.get(1, wait=5)
    finally:
        await client.aclose()

    assert [trace.replica for trace in traces] == [0, 1]
    body = second.body
    assert traces[1].sampling == {key: body[key] for key in ("max_tokens", "temperature", "top_p", "stop", "seed")}
    assert set(body) - set(traces[1].sampling) == {"prompt", "stream"} | (
        {"model", "stream_options"} if protocol == "openai" else set()
    )
    assert card == ModelCard(MODEL, MODEL_ROOT)
    assert [len(first.listings), len(second.listings)] == [1, 1]


# ---- what the worker records ------------------------------------------------------------------------------


async def test_a_success_records_its_provenance_and_its_attempt(make_context: MakeContext, serve: Serve) -> None:
    server = await serve(ok(model="served-as-this", fingerprint="fp_123"))
    spp = await make_context(server, APP_VERSION="9.8.7")
    before = now_ms()

    await run(spp)

    provenance, lines = await stored(spp)
    body = server.requests[0].json()
    sent = {key: value for key, value in body.items() if key not in ("model", "prompt", "stream", "stream_options")}
    assert provenance is not None
    first_token_ms = provenance.pop("first_token_ms")
    assert first_token_ms >= 0
    assert provenance == {
        "served_model": "served-as-this",
        "model_revision": MODEL_ROOT,
        "replica": 0,
        "sampling": sent,
        "system_fingerprint": "fp_123",
        "app_version": "9.8.7",
    }
    assert set(sent) == {"max_tokens", "temperature", "top_p"}
    assert lines == [], "the record holds the succeeded attempt"
    _, [attempt] = await public(spp)
    fields = await record(spp)
    job = public_job(fields)
    assert attempt == {
        "attempt": 1,
        "run": 1,
        "replica": 0,
        "started_at": job["started_at"],
        "ended_at": job["finished_at"],
        "outcome": "succeeded",
        "error": None,
        "first_token_ms": first_token_ms,
    }
    assert before <= int(fields["started_at"]) <= int(fields["finished_at"]) <= now_ms()


async def test_names_that_are_the_models_are_not_stored_twice(make_context: MakeContext, serve: Serve) -> None:
    server = await serve(ok())
    server.models = {"data": [{"id": MODEL, "root": MODEL}]}
    spp = await make_context(server, APP_VERSION="1.0")

    await run(spp)

    provenance, _ = await stored(spp)
    assert provenance is not None
    assert set(provenance) == {"replica", "sampling", "first_token_ms", "app_version"}
    found, _ = await public(spp)
    assert (found["model"], found["served_model"], found["model_revision"]) == (MODEL, MODEL, MODEL)


async def test_the_model_card_is_asked_once_for_many_jobs_with_the_servers_key(
    make_context: MakeContext, serve: Serve, api_store: ApiJobStore
) -> None:
    server = await serve(ok())
    spp = await make_context(server, LLM_API_KEY="sk-worker")
    await api_store.submit(OWNER, [JobCreate(id=f"j{index}", prompt="Encore ?") for index in (2, 3)])

    for job_id in ("j1", "j2", "j3"):
        await run(spp, keys.key_id(OWNER, job_id))

    for job_id in ("j1", "j2", "j3"):
        found, _ = await public(spp, keys.key_id(OWNER, job_id))
        assert found["model_revision"] == MODEL_ROOT
    assert len(server.requests) == 3
    assert [headers["Authorization"] for headers in server.listings] == ["Bearer sk-worker"]


async def test_a_server_without_a_model_listing_leaves_the_revision_out(
    make_context: MakeContext, serve: Serve
) -> None:
    server = await serve(ok())
    server.models = {"detail": "Not Found"}
    spp = await make_context(server)

    await run(spp)

    provenance, _ = await stored(spp)
    assert provenance is not None
    assert provenance["model_revision"] is None, "unknown: stored null, not read as the model's name"
    found, _ = await public(spp)
    assert (found["served_model"], found["model_revision"]) == (MODEL, None), "the id from the streamed chunks"


async def test_a_retried_job_logs_each_attempt_with_its_error_type(make_context: MakeContext, serve: Serve) -> None:
    server = await serve(unavailable(), ok())
    spp = await make_context(server, JOB_MAX_ATTEMPTS=3)

    await run(spp)
    _, attempts = await stored(spp)
    assert [(line["outcome"], line.get("error")) for line in attempts] == [("retry", {"type": "backend_unavailable"})]
    await run(spp)

    found, attempts = await public(spp)
    assert [(line["attempt"], line["run"], line["outcome"]) for line in attempts] == [
        (1, 1, "retry"),
        (2, 2, "succeeded"),
    ]
    assert attempts[0]["first_token_ms"] is None
    assert attempts[1]["first_token_ms"] is not None
    assert "10.0.0.7" not in (await record(spp))["attempt_log"], "no server message in the log"
    assert found["model_revision"] == MODEL_ROOT
    assert len(server.listings) == 2, "asked again after the replica failed"


@pytest.mark.parametrize(
    ("answers", "attempts", "error", "revision"),
    [((rejected(),), 1, "backend_rejected", MODEL_ROOT), ((unavailable(),), 2, "backend_unavailable", None)],
    ids=["rejected", "last-attempt"],
)
async def test_a_failed_job_records_its_provenance_and_failed_attempt(
    make_context: MakeContext,
    serve: Serve,
    answers: tuple[Answer, ...],
    attempts: int,
    error: str,
    revision: str | None,
) -> None:
    """A server that refused the request is up: its card stays; one that failed is asked again at its next use."""
    server = await serve(*answers)
    spp = await make_context(server, JOB_MAX_ATTEMPTS=2)

    for _ in range(attempts):
        await run(spp)

    found, lines = await public(spp)
    assert (await record(spp))["status"] == "failed"
    assert lines[-1]["outcome"] == "failed"
    assert lines[-1]["error"] == {"type": error}
    assert len(lines) == attempts
    assert found["replica"] == 0
    assert found["sampling"]["max_tokens"] == server.requests[-1].json()["max_tokens"]
    assert found["model_revision"] == revision
    assert found["served_model"] == (MODEL if revision else None), "no chunk came: the card's id"


async def test_a_shutdown_logs_its_attempt_as_handed_back(make_context: MakeContext, serve: Serve) -> None:
    body = chunks("Il", " pleut")
    sent = asyncio.Event()

    async def first_token_sent() -> None:
        sent.set()

    spp = await make_context(await serve(stream(body[: body.index(b"\n\n") + 2], first_token_sent, forever), ok()))
    task = asyncio.create_task(run(spp))
    async with asyncio.timeout(10):
        await sent.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await run(spp)

    _, attempts = await public(spp)
    assert [(line["attempt"], line["run"], line["outcome"]) for line in attempts] == [
        (1, 1, "shutdown"),
        (1, 2, "succeeded"),
    ]


async def test_a_job_failed_before_any_request_has_a_provenance_without_sampling(
    make_context: MakeContext, serve: Serve
) -> None:
    server = await serve(ok())
    spp = await make_context(server, JOB_MAX_ATTEMPTS=1, APP_VERSION="1.2.3")
    arq_id: str = await spp.store.redis.hget(keys.job(KID), "arq")  # type: ignore[misc]
    assert await spp.store.start(KID, arq_id, MODEL, "dead:1") is not None
    await spp.store.redis.zadd(keys.running(MODEL), {KID: 0})
    assert await spp.store.sweep(MODEL) == [KID]

    await run(spp)

    provenance, attempts = await stored(spp)
    assert provenance == {"served_model": None, "model_revision": None, "app_version": "1.2.3"}
    assert [line["error"]["type"] for line in attempts] == ["worker_lost"], "the sweeper's line only"
    assert server.requests == []


# ---- the public form --------------------------------------------------------------------------------------


def test_a_running_job_shows_its_attempts_so_far_and_no_provenance() -> None:
    record = job_record(
        id="j1",
        model=MODEL,
        status="running",
        provenance='{"app_version": "old"}',  # a previous series', before a retry
        attempt_log='{"error":{"type":"worker_lost"},"ended_at":1700000000123}',
    )

    public = job_provenance(record)

    assert public == {
        "id": "j1",
        "status": "running",
        "final": False,
        "provenance": None,
        "attempts": [
            {
                "attempt": None,
                "run": None,
                "replica": None,
                "started_at": None,
                "ended_at": "2023-11-14T22:13:20.123Z",
                "outcome": None,
                "error": {"type": "worker_lost"},
                "first_token_ms": None,
            }
        ],
    }


def test_a_finished_job_adds_what_its_record_holds() -> None:
    record = job_record(
        id="j1",
        model=MODEL,
        status="succeeded",
        attempts="2",
        run="3",
        started_at="1699999999000",
        finished_at="1700000000000",
        template="spp@0123456789ab acronyms@ba9876543210",
        provenance='{"model_revision": null, "replica": 1, "sampling": {"max_tokens": 5}, "first_token_ms": 12, '
        '"app_version": "0.1.0"}',
        attempt_log='{"attempt":1,"run":1,"replica":0,"started_at":1699999990000,"ended_at":1699999991000,'
        '"outcome":"shutdown"}\n{"error":{"type":"worker_lost"},"ended_at":1699999995000}',
    )

    public = job_provenance(record)

    assert public["final"] is True
    assert public["provenance"] == {
        "model": MODEL,
        "served_model": MODEL,
        "model_revision": None,
        "model_parent": None,
        "replica": 1,
        "sampling": {"max_tokens": 5},
        "system_fingerprint": None,
        "app_version": "0.1.0",
        "template": "spp@0123456789ab",
        "acronyms": "ba9876543210",
        "finished_at": "2023-11-14T22:13:20.000Z",
    }
    assert [(line["attempt"], line["run"], line["outcome"]) for line in public["attempts"]] == [
        (1, 1, "shutdown"),
        (None, None, None),
        (2, 3, "succeeded"),
    ]
    assert public["attempts"][-1] == {
        "attempt": 2,
        "run": 3,
        "replica": 1,
        "started_at": "2023-11-14T22:13:19.000Z",
        "ended_at": "2023-11-14T22:13:20.000Z",
        "outcome": "succeeded",
        "error": None,
        "first_token_ms": 12,
    }


def test_without_a_template_there_is_no_acronym_version() -> None:
    record = job_record(id="j1", model=MODEL, status="cancelled", provenance='{"app_version": "0.1.0"}')

    public = job_provenance(record)

    assert public["provenance"]["template"] is None
    assert public["provenance"]["acronyms"] is None
    assert public["attempts"] == []
