"""bench/listing.py's helpers: the jobs it writes (their filters' shares) and its stand-in for the workers' scripts.

The benchmark itself writes 1.1 M jobs (`python -m bench listing`, ~6 minutes); these check, without a process, that
what it measures is what the product would have stored.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import fakeredis

from api.jobs import ApiJobStore
from bench.__main__ import BENCHMARKS, parser
from bench.listing import MODELS, SETTINGS, job_create, job_metadata, job_model, job_status, list_path, make_writer
from shared import keys
from shared.models import JobError, JobResult, JobStatus, Usage
from tests.unit.conftest import make_settings
from worker.jobs import WorkerJobStore

REAL, BENCH = "real", "bench"
"""Two owners: one whose jobs end through the product's scripts, one whose jobs end through the bench's."""


def test_the_filters_select_the_shares_the_benchmark_documents() -> None:
    total = 100_000
    draws = random.Random(15)
    statuses = Counter(job_status(n, total, draws.random()) for n in range(total))
    metadata = [job_metadata(n) for n in range(total)]

    assert sum(1 for m in metadata if m and m["citizen"] == "42") == total // 1000, "citizen=42: 0.1 %"
    assert sum(1 for m in metadata if m and m["service"] == "caf") == total * 40 // 100
    assert sum(1 for n in range(total) if job_model(n) == MODELS[1]) == total // 3
    assert statuses[JobStatus.QUEUED] + statuses[JobStatus.RUNNING] == total * 5 // 100, "the newest 5 %"
    assert 0.035 < statuses[JobStatus.FAILED] / total < 0.045
    assert 0.01 < statuses[JobStatus.CANCELLED] / total < 0.02


def test_a_query_is_encoded_as_the_api_reads_it() -> None:
    path = list_path([("model", MODELS[1]), ("metadata.citizen", "42")], after="17~a b")

    assert path == "/v1/jobs?limit=100&model=AgentPublic%2Falbert-large&metadata.citizen=42&after=17~a+b"


def test_the_benchmark_is_registered_with_its_options() -> None:
    args = parser().parse_args(["listing", "--listing-jobs", "1000", "--listing-rounds", "1"])

    assert "listing" in BENCHMARKS
    assert (args.listing_jobs, args.listing_rounds, args.listing_other_jobs) == (1000, 1, 100_000)


async def contents(redis: fakeredis.FakeAsyncRedis, owner: str) -> dict[str, Any]:
    """The owner's index sets (members), its expiring jobs and unfinished jobs, and its records' states: with the
    owner's name taken out, so that two owners compare. Not the queues: a worker's take.lua leaves them, which the
    real path here does not run."""
    found: dict[str, Any] = {}
    async for key in redis.scan_iter(match=keys.index_prefix(owner) + ":*"):
        found[key.removeprefix(keys.index_prefix(owner))] = sorted(await redis.zrange(key, 0, -1))
    expiring = await redis.zrange(keys.expiring(), 0, -1)
    found["expiring"] = sorted(kid.partition(":")[2] for kid in expiring if kid.startswith(owner + ":"))
    found["unfinished"] = sorted(kid.partition(":")[2] for kid in await redis.zrange(keys.client_jobs(owner), 0, -1))
    async for key in redis.scan_iter(match=keys.job(owner + ":*")):
        record = await redis.hgetall(key)  # type: ignore[misc]
        found[key.removeprefix(keys.job(owner))] = (
            record["status"],
            "request" in record,
            "result" in record,
            "error" in record,
            await redis.ttl(key) > 0,
        )
    return found


async def test_the_bench_ends_jobs_as_the_workers_and_the_api_do(redis: fakeredis.FakeAsyncRedis) -> None:
    settings = make_settings(**SETTINGS)
    api_store, worker_store = ApiJobStore(redis, settings), WorkerJobStore(redis, settings)
    try:
        await _end_like_the_bench(redis, api_store, worker_store)
    finally:
        await api_store.aclose()


async def _end_like_the_bench(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    writer = make_writer(api_store, 50)
    plan = [JobStatus(status) for status in ("queued", "running", "succeeded", "failed", "cancelled")] * 3
    jobs = [job_create(n).model_copy(update={"id": f"j{n}"}) for n in range(len(plan))]
    for owner in (REAL, BENCH):
        await api_store.submit(owner, jobs)

    for n, status in enumerate(plan):
        job_id, model = f"j{n}", job_model(n)
        kid = keys.key_id(REAL, job_id)
        if status == JobStatus.CANCELLED:
            await api_store.cancel(REAL, job_id)
        elif status != JobStatus.QUEUED:
            arq_id = await redis.hget(keys.job(kid), "arq")  # type: ignore[misc]
            started = await worker_store.start(kid, arq_id, model, "host:1")
            assert started is not None
            if status == JobStatus.SUCCEEDED:
                result = JobResult(text="Oui.", finish_reason="stop", usage=Usage(completion_tokens=2))
                assert await worker_store.finish(kid, model, started.run, result)
            elif status == JobStatus.FAILED:
                assert await worker_store.finish(kid, model, started.run, JobError(type="backend_error", message="503"))
    await writer.end(BENCH, [(f"j{n}", status.value) for n, status in enumerate(plan) if status != JobStatus.QUEUED])

    real, bench = await contents(redis, REAL), await contents(redis, BENCH)
    assert bench == real
    assert real[f":model:{MODELS[0]}:failed"], "the comparison covers every status set"
    assert any(scope.startswith(":meta:") for scope in real)
