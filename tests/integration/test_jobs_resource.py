"""Jobs as a resource, over real processes (redis-server, API, a worker, the simulator): listing with filters and
cursors under concurrent inserts, counts, retry, erasure leaving nothing behind, the reaper, and isolation between
two clients."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shared import keys
from tests.integration.conftest import RedisServer, Sim, Stack, sse_fields, wait_for
from tests.integration.faults import FAST

MODEL = "res/fast"
BROKEN = "res/broken"
"""Served by a simulator failing every request: its jobs fail."""
CLIENTS = {
    "alice": "key-alice-0123456789-0123456789abcdefghijklmnopqrstuv",
    "bob": "key-bob-0123456789-0123456789abcdefghijklmnopqrstuv",
}
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENTS[client]}"}


@pytest.fixture(scope="module")
def stack(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], tmp_path_factory: pytest.TempPathFactory
) -> Stack:
    keys_file: Path = tmp_path_factory.mktemp("resource") / "api_keys.json"
    keys_file.write_bytes(orjson.dumps(CLIENTS))
    fast = start_sim(MODEL, ms_per_token=1)
    broken = start_sim(BROKEN, error_rate=1.0)
    return start_stack(
        [(MODEL, fast.url), (BROKEN, broken.url)],
        headers=auth("alice"),
        ENV="staging",
        API_KEYS_FILE=str(keys_file),
        JOB_MAX_ATTEMPTS=1,
        CLIENT_MAX_QUEUED_JOBS=0,
        WEBHOOK_SECRET_KEY="w" * 32,
        **FAST,
    )


def submit(stack: Stack, jobs: list[dict[str, Any]], client: str = "alice") -> list[dict[str, Any]]:
    response = stack.http.post("/v1/jobs", json=jobs, headers=auth(client))
    assert response.status_code == 202, response.text
    submitted: list[dict[str, Any]] = response.json()
    return submitted


def jobs_of(prefix: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{n:04d}", "model": MODEL, "prompt": "Bonjour", "params": {"max_tokens": 3}, **fields}
        for n in range(count)
    ]


def settle(stack: Stack, client: str = "alice") -> None:
    """Wait until none of the client's jobs is queued or running."""
    wait_for(
        lambda: (
            (counts := stack.http.get("/v1/jobs/stats", headers=auth(client)).json()["counts"])["queued"]
            + counts["running"]
            == 0
        ),
        30,
        "every job ended",
    )


def all_pages(stack: Stack, query: dict[str, Any], client: str = "alice") -> Iterator[dict[str, Any]]:
    after = None
    while True:
        params = {**query, **({"after": after} if after else {})}
        page = stack.http.get("/v1/jobs", params=params, headers=auth(client)).json()
        yield page
        if not page["has_more"]:
            return
        after = page["next_after"]


def listed(stack: Stack, query: dict[str, Any], client: str = "alice") -> list[str]:
    return [job["id"] for page in all_pages(stack, query, client) for job in page["data"]]


def test_pages_are_newest_first_and_never_repeat_or_skip_while_jobs_are_added(stack: Stack) -> None:
    before = submit(stack, jobs_of("page", 250, metadata={"run": "paging"}))
    existing = {job["id"] for job in before}
    stop = threading.Event()

    def keep_adding() -> None:
        with httpx.Client(base_url=stack.url, headers=auth("alice"), timeout=10) as client:
            n = 0
            while not stop.is_set():
                response = client.post("/v1/jobs", json=jobs_of(f"late{n}", 5, metadata={"run": "paging"}))
                assert response.status_code == 202
                n += 1

    adder = threading.Thread(target=keep_adding)
    adder.start()
    try:
        seen = listed(stack, {"limit": 7, "metadata.run": "paging"})
    finally:
        stop.set()
        adder.join()

    assert len(seen) == len(set(seen)), "no job twice"
    assert existing <= set(seen), "every job that existed when paging began"
    assert [job_id for job_id in seen if job_id in existing] == sorted(existing, reverse=True), "newest first"


def test_filters_combine_and_counts_follow_the_statuses(stack: Stack) -> None:
    good = submit(stack, jobs_of("f-good", 6, metadata={"service": "caf", "n": 1}))
    submit(stack, jobs_of("f-other", 4, metadata={"service": "ants", "n": 1}))
    bad = submit(stack, [{**job, "model": BROKEN} for job in jobs_of("f-bad", 3, metadata={"service": "caf", "n": 2})])
    settle(stack)

    assert set(listed(stack, {"metadata.service": "caf"})) == {job["id"] for job in good + bad}
    assert set(listed(stack, {"metadata.service": "caf", "metadata.n": "2"})) == {job["id"] for job in bad}
    assert set(listed(stack, {"metadata.service": "caf", "status": "failed"})) == {job["id"] for job in bad}
    assert set(listed(stack, {"metadata.service": "caf", "model": MODEL})) == {job["id"] for job in good}
    failed = set(listed(stack, {"status": ["failed", "cancelled"], "model": BROKEN}))
    assert {job["id"] for job in bad} <= failed
    assert all(job_id.startswith("f-bad") or not job_id.startswith("f-") for job_id in failed)
    created = good[0]["created_at"]
    assert set(listed(stack, {"metadata.service": "ants", "created_after": created})) == {
        f"f-other-{n:04d}" for n in range(4)
    }
    assert listed(stack, {"metadata.service": "ants", "created_before": created}) == []

    stats = stack.http.get("/v1/jobs/stats", params={"metadata.service": "caf"}).json()
    assert stats["counts"] == {"queued": 0, "running": 0, "succeeded": 6, "failed": 3, "cancelled": 0}
    assert stats["total"] == 9
    overall = stack.http.get("/v1/jobs/stats").json()
    assert overall["models"][BROKEN]["failed"] >= 3
    assert overall["total"] == sum(overall["counts"].values())
    assert sum(row["succeeded"] for row in overall["models"].values()) == overall["counts"]["succeeded"]


def test_a_page_is_bounded_and_bad_queries_name_the_parameter(stack: Stack) -> None:
    assert stack.http.get("/v1/jobs", params={"limit": 1001}).status_code == 422
    response = stack.http.get("/v1/jobs", params={"stauts": "failed"})
    assert (response.status_code, response.json()["detail"][0]["loc"]) == (422, ["query", "stauts"])
    response = stack.http.get("/v1/jobs", params={"status": "done"})
    assert (response.status_code, response.json()["detail"][0]["loc"][:2]) == (422, ["query", "status"])
    assert stack.http.get("/v1/jobs", params={"after": "nonsense"}).status_code == 422
    assert stack.http.get("/v1/jobs", params={"model": "nope"}).status_code == 404
    assert stack.http.delete("/v1/jobs").status_code == 422, "an erasure names what it erases"
    assert stack.http.post("/v1/jobs", json={"id": "stats", "prompt": "x"}).status_code == 422


def test_a_failed_or_cancelled_job_runs_again_under_its_id(stack: Stack) -> None:
    (failed,) = submit(stack, [{"id": "r-failed", "model": BROKEN, "prompt": "Bonjour"}])
    assert stack.wait_job(failed["id"])["status"] == "failed"
    (done,) = submit(stack, jobs_of("r-done", 1))
    assert stack.wait_job(done["id"])["status"] == "succeeded"

    assert stack.http.post("/v1/jobs/r-done-0000/retry").status_code == 409
    assert stack.http.post("/v1/jobs/r-unknown/retry").status_code == 404
    assert stack.http.post("/v1/jobs/r-failed/retry", headers=auth("bob")).status_code == 404
    retried = stack.http.post("/v1/jobs/r-failed/retry")
    assert retried.status_code == 202, retried.text
    assert (retried.json()["status"], retried.json()["attempts"]) == ("queued", 0)
    assert retried.json()["created_at"] == failed["created_at"]
    again = stack.wait_job("r-failed")
    assert (again["status"], again["attempts"]) == ("failed", 1)

    # A cancelled job runs again, and its stream starts over with a reset.
    submit(stack, [{"id": "r-cancel", "model": MODEL, "prompt": "x", "params": {"max_tokens": 2000}}])
    stack.wait_job("r-cancel", until=lambda job: job["status"] == "running")
    assert stack.http.delete("/v1/jobs/r-cancel").json()["status"] == "cancelled"
    assert stack.http.post("/v1/jobs/r-cancel/retry").status_code == 202
    assert stack.http.post("/v1/jobs/r-cancel/retry").status_code == 409, "queued or running now"
    finished = stack.wait_job("r-cancel", timeout=30)
    assert finished["status"] == "succeeded"
    events = [fields["event"] for fields in sse_fields(stack.http, "r-cancel")]
    assert events[0] == "reset", events
    assert events[-1] == "done", events
    assert "cancelled" not in str(events)


def redis_dump(redis_server: RedisServer) -> str:
    """Every key and value in Redis, as text."""
    client = redis_server.client()
    parts = []
    for key in list(client.scan_iter(count=1000)):
        kind = client.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.append(str(client.hgetall(key)))
        elif kind == "zset":
            parts.append(str(client.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(str(client.xrange(key)))
        elif kind == "list":
            parts.append(str(client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(str(client.smembers(key)))
    return "\n".join(parts)


def test_erasure_leaves_nothing_of_the_jobs_in_redis(stack: Stack, redis_server: RedisServer) -> None:
    citizen = "citizen-7c1f9e"
    text = "Mon dossier CAF numero 8812 est bloque"
    erased = submit(stack, jobs_of("erase-me", 5, prompt=text, metadata={"citizen": citizen}))
    (slow,) = submit(
        stack,
        [
            {
                "id": "erase-slow",
                "model": MODEL,
                "prompt": text,
                "params": {"max_tokens": 3500},
                "metadata": {"c": citizen},
            }
        ],
    )
    kept = submit(stack, jobs_of("keep-me", 2, metadata={"citizen": "someone-else"}))
    (other,) = submit(stack, jobs_of("erase-me", 1, metadata={"citizen": citizen}), client="bob")
    for job in [*erased, *kept]:
        stack.wait_job(job["id"])
    stack.wait_job(slow["id"], until=lambda job: job["status"] == "running")
    client = redis_server.client()
    (record,) = client.scan_iter(match=keys.job("*:keep-me-0000"))
    alice = keys.split_key_id(record.removeprefix(keys.job("")))[0]
    assert text in redis_dump(redis_server)

    response = stack.http.delete("/v1/jobs", params={"metadata.citizen": citizen})
    assert response.json() == {"object": "job.deleted_list", "deleted": 5}
    response = stack.http.delete("/v1/jobs", params={"metadata.c": citizen})
    assert response.json() == {"object": "job.deleted_list", "deleted": 1}, "running: cancelled, then erased"
    (done,) = submit(stack, jobs_of("erase-one", 1))
    stack.wait_job(done["id"])
    assert stack.http.delete("/v1/jobs/erase-one-0000").json() == {
        "id": "erase-one-0000",
        "object": "job.deleted",
        "deleted": True,
    }

    dump = redis_dump(redis_server)
    assert text not in dump
    for job in [*erased, slow, done]:
        assert stack.http.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert f"{alice}:{job['id']}" not in dump, job["id"]
    for key in list(client.scan_iter(match=keys.index_prefix(alice) + ":*")):
        members: list[str] = client.zrange(key, 0, -1)  # type: ignore[assignment]
        assert not [member for member in members if member.startswith("erase")], key
    assert stack.http.get("/v1/jobs", params={"metadata.citizen": citizen}).json()["data"] == []
    assert stack.http.get("/v1/jobs/stats", params={"metadata.citizen": citizen}).json()["total"] == 0
    # Bob's job of the same id and pair, and Alice's other jobs, are untouched.
    assert stack.http.get(f"/v1/jobs/{other['id']}", headers=auth("bob")).json()["status"] == "succeeded"
    bob_stats = stack.http.get("/v1/jobs/stats", params={"metadata.citizen": citizen}, headers=auth("bob")).json()
    assert bob_stats["total"] == 1
    assert all(stack.http.get(f"/v1/jobs/{job['id']}").status_code == 200 for job in kept)


def test_clients_never_see_each_others_jobs(stack: Stack) -> None:
    submit(stack, jobs_of("iso", 3, metadata={"tag": "shared-tag"}), client="bob")
    settle(stack, "bob")

    assert listed(stack, {"metadata.tag": "shared-tag"}, client="alice") == []
    assert stack.http.get("/v1/jobs/stats", params={"metadata.tag": "shared-tag"}).json()["total"] == 0
    assert stack.http.delete("/v1/jobs", params={"metadata.tag": "shared-tag"}).json()["deleted"] == 0
    assert stack.http.delete("/v1/jobs/iso-0000").status_code == 404
    assert stack.http.post("/v1/jobs/iso-0000/retry").status_code == 404
    assert len(listed(stack, {"metadata.tag": "shared-tag"}, client="bob")) == 3


def test_the_reaper_erases_jobs_and_their_index_entries_after_result_ttl(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], redis_server: RedisServer
) -> None:
    sim = start_sim("res/reaped", ms_per_token=1)
    stack = start_stack([("res/reaped", sim.url)], RESULT_TTL=2, **FAST)
    submit_response = stack.http.post(
        "/v1/jobs", json=[{"id": f"reap-{n}", "prompt": "x", "params": {"max_tokens": 2}} for n in range(3)]
    )
    assert submit_response.status_code == 202
    for n in range(3):
        assert stack.wait_job(f"reap-{n}")["status"] == "succeeded"
    client = redis_server.client()
    index = list(client.scan_iter(match=keys.index_prefix("*") + ":model:res/reaped:*"))
    assert any(client.zcard(key) for key in index)

    wait_for(lambda: stack.http.get("/v1/jobs/reap-0").status_code == 404, 15, "the job reaped")
    wait_for(lambda: not any(client.zcard(key) for key in index), 5, "its index entries gone")
    expiring: list[str] = client.zrange(keys.expiring(), 0, -1)  # type: ignore[assignment]
    assert not [kid for kid in expiring if ":reap-" in kid]
