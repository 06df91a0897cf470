"""Sharing a model between clients, on an in-memory Redis: the fair queue's order (weights, latecomers, the batch
tier), priorities within a client's share, and the client limits of submit.lua and take.lua."""

from __future__ import annotations

from collections import Counter
from typing import Any

import fakeredis
import pytest

from api.exceptions import PriorityNotAllowed, QuotaExceeded
from api.jobs import ApiJobStore, utc_day
from shared import keys
from shared.models import JobCreate, JobResult, Usage, now_ms
from shared.policy import ClientPolicy, default_policy
from tests.unit.conftest import MODEL, make_settings
from worker.jobs import WorkerJobStore

pytestmark = pytest.mark.usefixtures("clean_env")

DEFAULT = default_policy(make_settings())
WORKER = "host:1"


def policy(**fields: Any) -> ClientPolicy:
    return DEFAULT.model_copy(update=fields)


def jobs(prefix: str, count: int, *, max_tokens: int = 100, priority: int = 0) -> list[JobCreate]:
    return [
        JobCreate.model_validate(
            {"id": f"{prefix}{n}", "prompt": "Bonjour", "params": {"max_tokens": max_tokens}, "priority": priority}
        )
        for n in range(count)
    ]


async def take(worker_store: WorkerJobStore, slots: int = 1) -> list[str]:
    """What a worker with `slots` free takes now (candidates read as arq reads them), as `<owner>:<job id>`;
    each taken job is started, as the worker does."""
    candidates = await worker_store.redis.zrangebyscore(keys.queue(MODEL), "-inf", now_ms())
    taken = await worker_store.take(MODEL, candidates, slots, lease_ms=60_000, definition_ttl_ms=60_000)
    kids = [keys.kid_of_arq_id(arq_id) for arq_id, _ in taken]
    for (arq_id, _), kid in zip(taken, kids, strict=True):
        assert await worker_store.start(kid, arq_id, MODEL, WORKER) is not None
    return kids


async def take_all(worker_store: WorkerJobStore, count: int) -> list[str]:
    return [kid for _ in range(count) for kid in await take(worker_store)]


def owners(kids: list[str]) -> list[str]:
    return [keys.split_key_id(kid)[0] for kid in kids]


async def test_clients_get_tokens_in_proportion_to_their_weights(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("light", jobs("l", 12), policy=policy(weight=1))
    await api_store.submit("heavy", jobs("h", 12), policy=policy(weight=3))

    first = owners(await take_all(worker_store, 8))

    assert Counter(first) == {"heavy": 6, "light": 2}


async def test_weights_count_tokens_not_jobs(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    await api_store.submit("long", jobs("l", 10, max_tokens=400))
    await api_store.submit("short", jobs("s", 40, max_tokens=100))

    first = owners(await take_all(worker_store, 15))

    assert Counter(first) == {"short": 12, "long": 3}, "a long job costs its client four short ones"


async def test_a_latecomer_runs_next_not_behind_the_flood(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    await api_store.submit("flood", jobs("f", 200))
    await take_all(worker_store, 10)

    await api_store.submit("late", jobs("x", 1))

    assert await take(worker_store) == [keys.key_id("late", "x0")]


async def test_a_client_alone_gets_everything_in_its_order(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("alone", jobs("a", 5), policy=policy(weight=0.5))

    assert await take(worker_store, slots=10) == [keys.key_id("alone", f"a{n}") for n in range(5)]


async def test_a_client_that_was_idle_does_not_bank_credit(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("early", jobs("e", 2))
    await take_all(worker_store, 2)
    await api_store.submit("busy", jobs("b", 40))
    await take_all(worker_store, 20)

    await api_store.submit("early", jobs("again", 10))

    assert Counter(owners(await take_all(worker_store, 10))) == {"early": 5, "busy": 5}, (
        "shares from now on, not before"
    )


async def test_batch_jobs_wait_for_every_interactive_job_whatever_the_client(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("batcher", jobs("b", 3), background=True)
    await api_store.submit("other", jobs("i", 2))

    assert owners(await take(worker_store, slots=5)) == ["other", "other", "batcher", "batcher", "batcher"]


async def test_batch_jobs_of_two_clients_share_by_weight_too(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("a", jobs("a", 10), background=True, policy=policy(weight=1))
    await api_store.submit("b", jobs("b", 10), background=True, policy=policy(weight=1))

    assert Counter(owners(await take_all(worker_store, 6))) == {"a": 3, "b": 3}


# ---- priority -----------------------------------------------------------------------------------------------


async def test_a_higher_priority_runs_first_among_its_client_s_jobs(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("c", jobs("low", 3))
    await api_store.submit("c", jobs("high", 1, priority=5))
    await api_store.submit("c", jobs("mid", 1, priority=2))

    order = [keys.split_key_id(kid)[1] for kid in await take_all(worker_store, 5)]

    assert order == ["high0", "mid0", "low0", "low1", "low2"]


async def test_priority_does_not_take_other_clients_share(api_store: ApiJobStore, worker_store: WorkerJobStore) -> None:
    await api_store.submit("a", jobs("low", 4))
    await api_store.submit("b", jobs("b", 4))
    await api_store.submit("a", jobs("high", 4, priority=9))

    first = await take_all(worker_store, 8)

    assert Counter(owners(first[:4])) == {"a": 2, "b": 2}, "the same turns as without priorities"
    a_jobs = [keys.split_key_id(kid)[1] for kid in first if kid.startswith("a:")]
    assert a_jobs[:4] == ["high0", "high1", "high2", "high3"]


async def test_a_priority_above_the_client_s_maximum_is_refused_whole(api_store: ApiJobStore) -> None:
    with pytest.raises(PriorityNotAllowed, match="max_priority=3"):
        await api_store.submit(
            "c", [*jobs("ok", 1, priority=3), *jobs("no", 1, priority=4)], policy=policy(max_priority=3)
        )

    assert not await api_store.redis.exists(keys.job(keys.key_id("c", "ok0")))


# ---- limits ---------------------------------------------------------------------------------------------------


async def test_max_running_jobs_holds_a_client_back_and_others_go_ahead(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("capped", jobs("c", 3), policy=policy(max_running_jobs=1))
    await api_store.submit("free", jobs("f", 2))

    candidates = await api_store.redis.zrangebyscore(keys.queue(MODEL), "-inf", now_ms())
    taken = await worker_store.take(MODEL, candidates, 4, lease_ms=60_000, definition_ttl_ms=60_000)

    assert Counter(owners([keys.kid_of_arq_id(arq_id) for arq_id, _ in taken])) == {"capped": 1, "free": 2}


async def test_max_queued_jobs_refuses_a_submission_whole_and_names_the_usage(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    limited = policy(max_queued_jobs=3)
    await api_store.submit("c", jobs("a", 2), policy=limited)

    with pytest.raises(QuotaExceeded) as info:
        await api_store.submit("c", jobs("b", 2), policy=limited)

    error = info.value
    assert (error.limit, error.value, error.usage, error.requested, error.model) == ("max_queued_jobs", 3, 2, 2, MODEL)
    assert not await redis.exists(keys.job(keys.key_id("c", "b0")))
    assert await api_store.submit("c", jobs("b", 1), policy=limited), "what fits still goes"
    await api_store.submit("c", jobs("batch", 10), policy=limited, background=True)  # batch jobs do not count


async def test_a_finished_or_cancelled_job_frees_its_place(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    limited = policy(max_queued_jobs=2)
    await api_store.submit("c", jobs("a", 2), policy=limited)
    (kid,) = await take(worker_store)
    run = int(await api_store.redis.hget(keys.job(kid), "run"))  # type: ignore[misc]
    await worker_store.finish(
        kid, MODEL, run, JobResult(text="x", finish_reason="stop", usage=Usage(completion_tokens=1))
    )
    await api_store.cancel("c", "a1")

    assert len(await api_store.submit("c", jobs("b", 2), policy=limited)) == 2


async def test_a_lost_record_does_not_hold_a_place_forever(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    limited = policy(max_queued_jobs=2)
    await api_store.submit("c", jobs("a", 2), policy=limited)
    await redis.delete(keys.job(keys.key_id("c", "a0")))  # e.g. lost with a Redis restart

    assert await api_store.submit("c", jobs("b", 1), policy=limited)


async def test_tokens_per_day_are_reserved_then_settled_with_the_real_usage(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    daily = policy(tokens_per_day=250)
    counter = keys.tokens("c", utc_day(now_ms()))
    await api_store.submit("c", jobs("a", 2), policy=daily)  # 2 + 100 tokens each
    assert await redis.get(counter) == "204"

    with pytest.raises(QuotaExceeded) as info:
        await api_store.submit("c", jobs("b", 1), policy=daily)
    assert (info.value.limit, info.value.usage, info.value.requested) == ("tokens_per_day", 204, 102)
    assert 0 < info.value.retry_after <= 86_400  # type: ignore[operator]

    (kid,) = await take(worker_store)
    run = int(await redis.hget(keys.job(kid), "run"))  # type: ignore[misc]
    usage = Usage(prompt_tokens=3, completion_tokens=7)
    await worker_store.finish(kid, MODEL, run, JobResult(text="x", finish_reason="stop", usage=usage))
    await api_store.cancel("c", "a1")  # queued: gives its reservation back

    assert await redis.get(counter) == "10"
    assert await api_store.submit("c", jobs("b", 2), policy=daily)


async def test_a_client_is_charged_the_tokens_its_jobs_used_not_their_estimate(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("a", jobs("long", 1, max_tokens=400))
    (kid,) = await take(worker_store)
    run = int(await api_store.redis.hget(keys.job(kid), "run"))  # type: ignore[misc]
    usage = Usage(prompt_tokens=2, completion_tokens=3)  # stopped early: 5 tokens of the 402 reserved
    await worker_store.finish(kid, MODEL, run, JobResult(text="x", finish_reason="stop", usage=usage))
    await api_store.submit("b", jobs("b", 3, max_tokens=100))

    await api_store.submit("a", jobs("next", 1, max_tokens=100))

    order = [keys.split_key_id(kid)[1] for kid in await take_all(worker_store, 4)]
    assert order == ["b0", "next0", "b1", "b2"], "not behind the 402 tokens 'long' was estimated at"


async def test_a_cancelled_queued_job_gives_its_client_s_turn_back(
    api_store: ApiJobStore, worker_store: WorkerJobStore
) -> None:
    await api_store.submit("a", jobs("a", 3, max_tokens=100))
    for n in range(3):
        await api_store.cancel("a", f"a{n}")
    await api_store.submit("b", jobs("b", 2, max_tokens=100))

    await api_store.submit("a", jobs("again", 1, max_tokens=100))

    assert sorted(owners(await take_all(worker_store, 2))) == ["a", "b"], "not behind the three it cancelled"


async def test_job_metadata_counts_against_max_stored_bytes(
    redis: fakeredis.FakeAsyncRedis, api_store: ApiJobStore
) -> None:
    tagged = [
        JobCreate.model_validate({"id": f"m{n}", "prompt": "Bonjour", "metadata": {"note": "x" * 400}})
        for n in range(3)
    ]
    limited = policy(max_stored_bytes=1000)
    await api_store.submit("c", tagged[:2], policy=limited)  # 411 bytes of JSON each

    with pytest.raises(QuotaExceeded) as info:
        await api_store.submit("c", tagged[2:], policy=limited)

    assert (info.value.limit, info.value.usage, info.value.requested) == ("max_stored_bytes", 822, 411)
    assert "822 and this request asks 411 more" in str(info.value)
    assert not await redis.exists(keys.job(keys.key_id("c", "m2")))
    assert await api_store.submit("c", jobs("plain", 2), policy=limited), "jobs without metadata store nothing more"
