"""Workers that die, stop or lose Redis, as real processes: nothing lost, nothing doubled."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import RedisServer, Sim, Stack, read_events, wait_for
from tests.integration.faults import FAST, record, runner_of, stream, tokens_after_last_reset, unique, worker_id

KILL, SHORT, LONG_TERM, REDIS = "faults/kill", "faults/term-short", "faults/term-long", "faults/redis"
"""One model per test: the stacks of this module share Redis, and a model's workers take all its jobs."""
LONG = {"max_tokens": 300}
"""About 3 s of generation with the simulator's 10 ms per token."""


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(KILL, SHORT, LONG_TERM, REDIS, ms_per_token=10)


def submit(stack: Stack, params: dict[str, int]) -> str:
    job_id = unique()
    body = {"id": job_id, "prompt": "Ma carte grise n'est pas arrivée", "params": params}
    assert stack.http.post("/v1/jobs", json=body).status_code == 202
    return job_id


def wait_tokens(redis_server: RedisServer, job_id: str) -> None:
    client = redis_server.client()
    wait_for(lambda: any(kind == "token" for kind, _ in stream(client, job_id)), 10, f"tokens of {job_id}")


def test_a_worker_killed_mid_generation_loses_nothing_and_doubles_nothing(
    start_stack: Callable[..., Stack], sim: Sim, redis_server: RedisServer
) -> None:
    stack = start_stack([(KILL, sim.url)], workers={KILL: 2}, **FAST)
    client = redis_server.client()
    job_id = submit(stack, LONG)
    wait_tokens(redis_server, job_id)
    victim = runner_of(stack, client, job_id, KILL)

    victim.kill()
    killed = time.monotonic()

    def handed_back() -> bool:
        job = record(client, job_id)
        return job["status"] != "running" or job["worker"] != worker_id(victim)

    wait_for(handed_back, 3, "the killed worker's job handed back")
    assert time.monotonic() - killed < 1.5, "status said running for a job nobody ran"
    done = stack.wait_job(job_id, timeout=30)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2, "the killed attempt counts"
    assert record(client, job_id)["worker"] != worker_id(victim)
    events = read_events(stack.http, job_id)
    kinds = [kind for kind, _, _ in events]
    assert kinds.count("done") == 1
    resets = [data for kind, _, data in events if kind == "reset"]
    assert resets == [{"attempt": 2}]
    raw = [(kind, data["text"] if kind == "token" else "") for kind, _, data in events]
    assert tokens_after_last_reset(raw) == done["result"]["text"]


def test_sigterm_lets_a_short_generation_finish_and_takes_no_new_job(
    start_stack: Callable[..., Stack], sim: Sim, redis_server: RedisServer
) -> None:
    stack = start_stack([(SHORT, sim.url)], workers={SHORT: 2}, WORKER_SHUTDOWN_GRACE=10, **FAST)
    client = redis_server.client()
    job_id = submit(stack, {"max_tokens": 100})
    wait_tokens(redis_server, job_id)
    victim = runner_of(stack, client, job_id, SHORT)

    victim.signal(signal.SIGTERM)
    log = victim.log
    assert log is not None
    wait_for(lambda: "stopping on SIGTERM" in log.read_text(), 5, "the worker is stopping")
    later = submit(stack, {"max_tokens": 5})

    done = stack.wait_job(job_id, timeout=15)
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert record(client, job_id)["worker"] == worker_id(victim)
    assert "reset" not in [kind for kind, _ in stream(client, job_id)]
    assert stack.wait_job(later)["status"] == "succeeded"
    assert record(client, later)["worker"] != worker_id(victim), "a stopping worker takes no new job"
    wait_for(lambda: not victim.alive(), 10, "the stopped worker exits")


def test_sigterm_hands_a_long_generation_back_without_counting_its_attempt(
    start_stack: Callable[..., Stack], sim: Sim, redis_server: RedisServer
) -> None:
    stack = start_stack([(LONG_TERM, sim.url)], workers={LONG_TERM: 2}, WORKER_SHUTDOWN_GRACE=0.5, **FAST)
    client = redis_server.client()
    job_id = submit(stack, LONG)
    wait_tokens(redis_server, job_id)
    victim = runner_of(stack, client, job_id, LONG_TERM)

    victim.signal(signal.SIGTERM)
    stopped = time.monotonic()

    wait_for(lambda: record(client, job_id)["worker"] != worker_id(victim), 5, "the job taken by the other worker")
    assert time.monotonic() - stopped < 2, "the grace period, then at once"
    done = stack.wait_job(job_id, timeout=15)
    assert (done["status"], done["attempts"]) == ("succeeded", 1), "a shutdown is not a failed attempt"
    events = stream(client, job_id)
    assert [data for kind, data in events if kind == "reset"] == ["1"]
    assert tokens_after_last_reset(events) == done["result"]["text"]
    wait_for(lambda: not victim.alive(), 10, "the stopped worker exits")
    assert victim.process.returncode == 0


def test_a_redis_restart_loses_no_job_and_workers_carry_on(
    start_stack: Callable[..., Stack], sim: Sim, redis_server: RedisServer
) -> None:
    stack = start_stack([(REDIS, sim.url)], workers={REDIS: 2}, WORKER_MAX_JOBS=4, **FAST)
    job_ids = [submit(stack, {"max_tokens": 150}) for _ in range(12)]
    wait_tokens(redis_server, job_ids[0])
    client = redis_server.client()
    assert "queued" in {record(client, job_id)["status"] for job_id in job_ids}, "jobs running and jobs queued"

    redis_server.stop()
    logs = [service.log for service in stack.workers[REDIS]]
    wait_for(
        lambda: all(log is not None and "pub/sub connection lost" in log.read_text() for log in logs),
        10,
        "every worker saw Redis go",
    )
    redis_server.start()

    for job_id in job_ids:
        done = stack.wait_job(job_id, timeout=30)
        assert done["status"] == "succeeded", done
        events = stream(client, job_id)
        assert [kind for kind, _ in events].count("done") == 1
        assert tokens_after_last_reset(events) == done["result"]["text"]
    assert all(service.alive() for service in stack.workers[REDIS])
    assert stack.wait_job(submit(stack, {"max_tokens": 5}))["status"] == "succeeded"
