"""Clients sharing a model, over real processes (redis-server, API, arq workers, simulator): weights, priorities,
the batch tier, max_running_jobs, quotas refused whole, and a reload of the keys file changing a policy."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI

from tests.integration.conftest import Sim, Stack, wait_batch, wait_for

ONE = "fair/one-slot"
"""Served by one worker running one job at a time: the order jobs start in is the queue's order."""
MANY = "fair/many-slots"
"""Served by one worker running four jobs at once."""

POLICIES: dict[str, Any] = {
    "light": {"key": "key-light-0123456789abcdefghijklmnopqrstuv", "weight": 1},
    "heavy": {"key": "key-heavy-0123456789abcdefghijklmnopqrstuv", "weight": 3},
    "prio": {"key": "key-prio-0123456789abcdefghijklmnopqrstuv", "max_priority": 5},
    "capped": {"key": "key-capped-0123456789abcdefghijklmnopqrstuv", "max_running_jobs": 1},
    "small": {"key": "key-small-0123456789abcdefghijklmnopqrstuv", "max_queued_jobs": 3, "tokens_per_day": 1000},
    "other": "key-other-0123456789abcdefghijklmnopqrstuv",
}


ACTIVE = ("queued", "running")


def auth(client: str) -> dict[str, str]:
    entry = POLICIES[client]
    return {"Authorization": f"Bearer {entry if isinstance(entry, str) else entry['key']}"}


def write_keys(path: Path, policies: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(policies))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a change even within the same tick


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fair") / "api_keys.json"
    write_keys(path, POLICIES)
    return path


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(ONE, MANY, ms_per_token=5)


def start(start_stack: Callable[..., Stack], sim: Sim, keys_file: Path, model: str, slots: int) -> Stack:
    return start_stack(
        [(model, sim.url)],
        headers=auth("other"),
        ENV="staging",
        API_KEYS_FILE=str(keys_file),
        WORKER_MAX_JOBS=slots,
        STREAM_FLUSH_MS=0,
        WORKER_IDLE_POLL=30,  # a worker must take the next job as one ends, not at its next idle poll
    )


@pytest.fixture(scope="module")
def one(start_stack: Callable[..., Stack], sim: Sim, keys_file: Path) -> Stack:
    return start(start_stack, sim, keys_file, ONE, 1)


@pytest.fixture(scope="module")
def many(start_stack: Callable[..., Stack], sim: Sim, keys_file: Path) -> Stack:
    return start(start_stack, sim, keys_file, MANY, 4)


def submit(stack: Stack, client: str, jobs: list[dict[str, Any]], model: str = ONE) -> list[dict[str, Any]]:
    response = stack.http.post("/v1/jobs", json=[{"model": model, **job} for job in jobs], headers=auth(client))
    assert response.status_code == 202, response.text
    submitted: list[dict[str, Any]] = response.json()
    return submitted


def short_jobs(prefix: str, count: int, max_tokens: int = 20, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{n}", "prompt": "Bonjour", "params": {"max_tokens": max_tokens}, **fields}
        for n in range(count)
    ]


def finished(stack: Stack, client: str, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    """The jobs of `client`, once they have all succeeded."""
    jobs = []
    for job_id in ids:
        deadline = time.monotonic() + timeout
        while (job := stack.http.get(f"/v1/jobs/{job_id}", headers=auth(client)).json())["status"] in ACTIVE:
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout}s"
            time.sleep(0.05)
        assert job["status"] == "succeeded", job
        jobs.append(job)
    return jobs


def block(stack: Stack, model: str = ONE, max_tokens: int = 200) -> str:
    """A job of another client that holds the model's one slot for about a second: what is submitted meanwhile
    queues, and then runs in the queue's order."""
    (job,) = submit(stack, "other", short_jobs(f"blocker-{time.monotonic_ns()}", 1, max_tokens=max_tokens), model)
    stack.wait_job(job["id"], until=lambda record: record["status"] == "running")
    return str(job["id"])


def start_order(jobs: list[dict[str, Any]]) -> list[str]:
    return [job["id"] for job in sorted(jobs, key=lambda job: job["started_at"])]


def test_clients_get_the_model_in_proportion_to_their_weights(one: Stack) -> None:
    block(one)
    light = submit(one, "light", short_jobs("light", 8))
    heavy = submit(one, "heavy", short_jobs("heavy", 8))

    jobs = finished(one, "light", [job["id"] for job in light]) + finished(one, "heavy", [job["id"] for job in heavy])

    first = start_order(jobs)[:8]
    assert Counter(job_id.split("-")[0] for job_id in first) == {"heavy": 6, "light": 2}, first


def test_a_higher_priority_runs_first_within_its_client(one: Stack) -> None:
    block(one)
    low = submit(one, "prio", short_jobs("low", 3))
    high = submit(one, "prio", short_jobs("high", 1, priority=5))

    jobs = finished(one, "prio", [job["id"] for job in low + high])

    assert start_order(jobs) == ["high-0", "low-0", "low-1", "low-2"]
    refused = one.http.post("/v1/jobs", json={"prompt": "x", "priority": 6}, headers=auth("prio"))
    assert refused.status_code == 422
    assert "max_priority=5" in refused.json()["detail"]


def test_a_latecomer_runs_before_a_flood_queued_earlier(one: Stack) -> None:
    block(one)
    flood = submit(one, "light", short_jobs("flood", 5))
    late = submit(one, "prio", short_jobs("late", 1))  # "other" just had its turn: the blocker

    jobs = finished(one, "light", [job["id"] for job in flood]) + finished(one, "prio", [late[0]["id"]])

    assert start_order(jobs).index("late-0") <= 1, "the latecomer's turn comes within the flood's first jobs"
    spans = sorted(
        (datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["finished_at"])) for job in jobs
    )
    gaps = [(spans[n + 1][0] - spans[n][1]).total_seconds() for n in range(len(spans) - 1)]
    assert max(gaps) < 1, f"the full worker took the next job as soon as its one slot was free: {gaps}"


def test_a_batch_never_holds_back_an_interactive_job(one: Stack) -> None:
    lines = [
        {
            "custom_id": f"line-{n}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": ONE, "prompt": "Bonjour", "max_tokens": 150},
        }
        for n in range(6)
    ]
    with OpenAI(
        base_url=one.url + "/v1", api_key="key-light-0123456789abcdefghijklmnopqrstuv", max_retries=0
    ) as client:
        upload = client.files.create(
            file=("in.jsonl", b"\n".join(orjson.dumps(line) for line in lines)), purpose="batch"
        )
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
        wait_batch(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 1)

        (job,) = submit(one, "other", short_jobs("interactive", 1))
        finished(one, "other", [job["id"]])

        counts = client.batches.retrieve(batch.id).request_counts
        assert counts is not None
        assert counts.completed <= 3, f"the interactive job ran next, not after the batch: {counts}"
        client.batches.cancel(batch.id)


def test_max_running_jobs_holds_a_client_back_while_others_run(many: Stack) -> None:
    capped = submit(many, "capped", short_jobs("capped", 3, max_tokens=60), MANY)
    others = submit(many, "other", short_jobs("free", 3, max_tokens=60), MANY)

    capped_jobs = finished(many, "capped", [job["id"] for job in capped])
    free_jobs = finished(many, "other", [job["id"] for job in others])

    spans = sorted((job["started_at"], job["finished_at"]) for job in capped_jobs)
    assert all(spans[n][1] <= spans[n + 1][0] for n in range(len(spans) - 1)), f"one at a time: {spans}"
    assert min(job["started_at"] for job in free_jobs) < spans[1][0], "others did not wait for the capped client"


def test_quotas_refuse_a_submission_whole_and_name_the_limit(one: Stack) -> None:
    too_many = short_jobs("array", 4)

    response = one.http.post("/v1/jobs", json=too_many, headers=auth("small"))

    assert response.status_code == 429
    assert response.headers["Retry-After"].isdigit()
    body = response.json()
    assert (body["limit"], body["value"], body["usage"], body["requested"]) == ("max_queued_jobs", 3, 0, 4)
    assert "max_queued_jobs" in body["detail"]
    for job in too_many:
        assert one.http.get(f"/v1/jobs/{job['id']}", headers=auth("small")).status_code == 404, "nothing stored"

    expensive = short_jobs("tokens", 2, max_tokens=600)
    response = one.http.post("/v1/jobs", json=expensive, headers=auth("small"))
    assert response.status_code == 429
    assert response.json()["limit"] == "tokens_per_day"
    assert response.json()["requested"] == 2 * (2 + 600)
    assert one.http.get("/v1/jobs/tokens-0", headers=auth("small")).status_code == 404


def test_a_reload_of_the_keys_file_changes_a_weight(one: Stack, keys_file: Path) -> None:
    swapped = {
        "light": {"key": "key-light-0123456789abcdefghijklmnopqrstuv", "weight": 3, "max_priority": 8},
        "heavy": {"key": "key-heavy-0123456789abcdefghijklmnopqrstuv"},
    }
    write_keys(keys_file, POLICIES | swapped)
    probes: list[str] = []

    def reloaded() -> bool:
        probe = {"prompt": "x", "params": {"max_tokens": 1}, "priority": 9}
        response = one.http.post("/v1/jobs", json=probe, headers=auth("light"))
        if response.status_code == 202:
            probes.append(response.json()["id"])
        return response.status_code == 422

    try:
        wait_for(reloaded, 10, "the new policy of 'light' (max_priority 8) in force")
        finished(one, "light", probes)
        block(one)
        light = submit(one, "light", short_jobs("light2", 8))
        heavy = submit(one, "heavy", short_jobs("heavy2", 8))

        jobs = finished(one, "light", [job["id"] for job in light])
        jobs += finished(one, "heavy", [job["id"] for job in heavy])

        first = start_order(jobs)[:8]
        assert Counter(job_id.split("-")[0] for job_id in first) == {"light2": 6, "heavy2": 2}, first
    finally:
        write_keys(keys_file, POLICIES)


def test_a_client_sees_its_policy_and_its_usage(one: Stack) -> None:
    before = one.http.get("/v1/usage", headers=auth("small")).json()
    assert before["client"] == "small"
    assert (before["policy"]["max_queued_jobs"], before["policy"]["tokens_per_day"]) == (3, 1000)
    assert before["policy"]["weight"] == 1.0, "the defaults fill what the keys file leaves out"
    block(one)

    jobs = submit(one, "small", short_jobs(f"usage-{time.monotonic_ns()}", 2))

    queued = one.http.get("/v1/usage", headers=auth("small")).json()["usage"]
    assert queued["queued_jobs"] == before["usage"]["queued_jobs"] + 2
    assert queued["tokens_today"] == before["usage"]["tokens_today"] + 2 * (2 + 20), "reserved: prompt and max_tokens"
    done = finished(one, "small", [job["id"] for job in jobs])
    used = sum(job["result"]["usage"]["total_tokens"] for job in done)
    after = one.http.get("/v1/usage", headers=auth("small")).json()["usage"]
    assert after["queued_jobs"] == before["usage"]["queued_jobs"]
    assert after["tokens_today"] == before["usage"]["tokens_today"] + used, "settled with the real usage"


def test_the_openai_client_sets_a_priority_and_meets_the_quotas(one: Stack) -> None:
    with OpenAI(base_url=one.url + "/v1", api_key="key-prio-0123456789abcdefghijklmnopqrstuv", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "Bonjour"}]
        answer = client.chat.completions.create(
            model=ONE, messages=messages, max_tokens=5, extra_headers={"X-Job-Priority": "3"}
        )
        job = one.http.get(f"/v1/jobs/{answer.id.removeprefix('chatcmpl-')}", headers=auth("prio")).json()
        assert (job["status"], job["priority"]) == ("succeeded", 3)

        with pytest.raises(openai.BadRequestError, match="max_priority=5"):
            client.chat.completions.create(
                model=ONE, messages=messages, max_tokens=5, extra_headers={"X-Job-Priority": "6"}
            )

    with OpenAI(
        base_url=one.url + "/v1", api_key="key-small-0123456789abcdefghijklmnopqrstuv", max_retries=0
    ) as client:
        with pytest.raises(openai.RateLimitError, match="tokens_per_day") as refused:
            client.completions.create(model=ONE, prompt="Bonjour", max_tokens=1200)
        assert refused.value.response.headers["Retry-After"].isdigit()
