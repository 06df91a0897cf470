"""The core pipeline over real sockets: API → Redis → worker → simulator, and back."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.conftest import AUTH, RedisServer, Sim, Stack, read_events, wait_for

MODEL = "AgentPublic/fabrique-reference-2"
IDLE = "idle/no-worker"


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(MODEL, IDLE, prefill_ms=20, ms_per_token=5)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim) -> Stack:
    # IDLE has no worker: its jobs stay queued, which the cancel tests need.
    return start_stack([(MODEL, sim.url), (IDLE, sim.url)], workers={MODEL: 1}, STREAM_FLUSH_MS=20)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_submit_then_poll_until_succeeded(stack: Stack) -> None:
    response = stack.http.post("/v1/jobs", json={"prompt": "Bonjour, ma carte grise n a pas été reçue"})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert job["model"] == MODEL
    assert {"id", "created_at"} <= job.keys()

    done = stack.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["result"]["text"]
    assert done["result"]["finish_reason"] in ("length", "stop")
    assert done["result"]["usage"]["completion_tokens"] > 0
    assert done["result"]["usage"]["prompt_tokens"] > 0
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["error"] is None


def test_sampling_parameters_reach_the_model_server_explicitly(stack: Stack, sim: Sim) -> None:
    job_id = unique()
    params = {"max_tokens": 7, "temperature": 0.3, "top_p": 0.9, "stop": ["zzz"], "seed": 42}
    body = {"id": job_id, "messages": [{"role": "user", "content": "Où en est mon dossier ?"}], "params": params}
    assert stack.http.post("/v1/jobs", json=body).status_code == 202
    done = stack.wait_job(job_id)
    assert done["status"] == "succeeded"
    assert done["result"]["usage"]["completion_tokens"] == 7
    sent_by = stack.request_ids()
    sent = [r for r in sim.stats()["recent"] if sent_by.get(r["request_id"]) == job_id]
    assert len(sent) == 1
    request = sent[0]
    assert request["endpoint"] == "/v1/chat/completions"
    assert request["stream"] is True
    assert (request["max_tokens"], request["temperature"], request["top_p"], request["seed"]) == (7, 0.3, 0.9, 42)
    assert request["stop"] == ["zzz"]


def test_events_replay_then_resume_without_gap_or_repeat(stack: Stack) -> None:
    job_id = unique()
    stack.http.post("/v1/jobs", json={"id": job_id, "prompt": "Mon allocation", "params": {"max_tokens": 40}})
    live = read_events(stack.http, job_id)
    kinds = [event for event, _, _ in live]
    assert kinds[-1] == "done"
    assert kinds.count("done") == 1
    assert set(kinds[:-1]) == {"token"}
    final = live[-1][2]
    assert final["status"] == "succeeded"
    assert "".join(data["text"] for event, _, data in live if event == "token") == final["result"]["text"]

    replay = read_events(stack.http, job_id)  # a late subscriber gets everything again
    assert replay == live

    middle = len(live) // 2
    resumed = read_events(stack.http, job_id, last_event_id=live[middle - 1][1])
    assert resumed == live[middle:]


def test_events_follow_a_job_live(stack: Stack) -> None:
    job_id = unique()
    stack.http.post("/v1/jobs", json={"id": job_id, "prompt": "Mon titre de séjour", "params": {"max_tokens": 200}})
    events = read_events(stack.http, job_id)  # subscribed while queued or running
    assert events[-1][0] == "done"
    tokens = [data["text"] for event, _, data in events if event == "token"]
    assert len(tokens) > 1, "tokens arrive in several coalesced chunks"
    assert "".join(tokens) == events[-1][2]["result"]["text"]
    ids = [event_id for _, event_id, _ in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_many_subscribers_share_one_stream_reader(stack: Stack) -> None:
    job_id = unique()
    stack.http.post("/v1/jobs", json={"id": job_id, "prompt": "Ma retraite", "params": {"max_tokens": 100}})
    results: list[list[tuple[str, str, Any]]] = []

    def follow() -> None:
        with httpx.Client(base_url=stack.url, headers=AUTH) as client:
            results.append(read_events(client, job_id))

    threads = [threading.Thread(target=follow) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 20
    assert all(events == results[0] for events in results)
    assert results[0][-1][0] == "done"


def test_array_is_stored_in_one_round_trip_and_all_run(stack: Stack, redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.config_set("slowlog-max-len", 100_000)
    client.config_set("slowlog-log-slower-than", 0)  # the slow log now records every command, with its client
    client.slowlog_reset()
    jobs = [{"id": unique("batch"), "prompt": f"Question {i}", "params": {"max_tokens": 3}} for i in range(50)]
    try:
        response = stack.http.post("/v1/jobs", json=jobs)
        log: list[dict[str, Any]] = client.slowlog_get(100_000)  # type: ignore[assignment]
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)
    assert response.status_code == 202
    body = response.json()
    assert [job["id"] for job in body] == [job["id"] for job in jobs]
    assert all(job["status"] == "queued" for job in body)
    # redis-py leaves the slow log's fields as bytes
    api_commands = [e["command"].split()[0].upper() for e in log if e.get("client_name") == b"spp-api"]
    assert [name for name in api_commands if name != b"PING"] == [b"EVALSHA"]
    for job_id in (job["id"] for job in body):
        assert stack.wait_job(job_id)["status"] == "succeeded"


def test_resubmitting_an_id_returns_the_existing_job(stack: Stack, sim: Sim) -> None:
    job_id = unique()
    body = {"id": job_id, "prompt": "Même question", "params": {"max_tokens": 3}}
    first = stack.http.post("/v1/jobs", json=body)
    assert first.status_code == 202
    stack.wait_job(job_id)
    requests = sim.stats()["requests"]
    again = stack.http.post("/v1/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["status"] == "succeeded"
    assert again.json()["created_at"] == first.json()["created_at"]
    other = stack.http.post("/v1/jobs", json={**body, "prompt": "Autre question"})
    assert other.status_code == 409
    assert job_id in other.json()["detail"]
    assert sim.stats()["requests"] == requests


def test_cancel_a_queued_job_at_once(stack: Stack, sim: Sim) -> None:
    job_id = unique()
    stack.http.post("/v1/jobs", json={"id": job_id, "model": IDLE, "prompt": "Personne ne me lira"})
    response = stack.http.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert stack.http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    events = read_events(stack.http, job_id)
    assert [event for event, _, _ in events] == ["done"]
    assert events[0][2]["status"] == "cancelled"
    assert sim.stats()["by_model"].get(IDLE, 0) == 0


def test_cancel_a_running_job_closes_the_model_request(stack: Stack, sim: Sim) -> None:
    job_id = unique()
    aborted = sim.stats()["aborted"]
    stack.http.post("/v1/jobs", json={"id": job_id, "prompt": "Une longue réponse", "params": {"max_tokens": 4000}})
    stack.wait_job(job_id, until=lambda job: job["status"] == "running")
    wait_for(lambda: sim.stats()["running"] >= 1, 5, "the simulator generates")
    started = time.monotonic()
    response = stack.http.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    wait_for(lambda: sim.stats()["aborted"] == aborted + 1, 5, "the model request was closed")
    assert time.monotonic() - started < 1.5
    job = stack.wait_job(job_id)
    assert job["status"] == "cancelled"
    assert job["result"] is None


def test_a_finished_job_is_erased_not_cancelled(stack: Stack) -> None:
    job_id = unique()
    stack.http.post("/v1/jobs", json={"id": job_id, "prompt": "Vite", "params": {"max_tokens": 2}})
    stack.wait_job(job_id)
    response = stack.http.delete(f"/v1/jobs/{job_id}")
    assert response.json() == {"id": job_id, "object": "job.deleted", "deleted": True}
    assert stack.http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert stack.http.delete(f"/v1/jobs/{job_id}").status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prompt": "x", "params": {"temperature": 9}}, ["body", "params", "temperature"]),
        ({"prompt": "x", "unknown": 1}, ["body", "unknown"]),
        ({"messages": [{"role": "robot", "content": "x"}]}, ["body", "messages", 0, "role"]),
        ([{"prompt": "x"}, {"prompt": ""}], ["body", 1, "prompt"]),
    ],
)
def test_bad_fields_are_named(stack: Stack, body: Any, loc: list[Any]) -> None:
    response = stack.http.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]


def test_malformed_input_is_refused_with_the_reason(stack: Stack) -> None:
    response = stack.http.post("/v1/jobs", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"][0]["msg"]
    neither = stack.http.post("/v1/jobs", json={"params": {}})
    assert neither.status_code == 422
    assert "prompt" in neither.text
    assert "messages" in neither.text
    too_many = stack.http.post("/v1/jobs", json=[{"prompt": "x"}] * 1001)
    assert too_many.status_code == 422
    assert "MAX_JOBS_PER_REQUEST" in too_many.text
    twice = stack.http.post("/v1/jobs", json=[{"id": "same", "prompt": "x"}, {"id": "same", "prompt": "y"}])
    assert twice.status_code == 422
    assert stack.http.get("/v1/jobs/same").status_code == 404


def test_unknown_model_is_named_with_the_known_ones(stack: Stack) -> None:
    response = stack.http.post("/v1/jobs", json={"prompt": "x", "model": "gpt-17"})
    assert response.status_code == 404
    body = response.json()
    assert "gpt-17" in body["detail"]
    assert body["known_models"] == [MODEL, IDLE]


def test_unknown_job_is_404(stack: Stack) -> None:
    assert stack.http.get("/v1/jobs/nope-nope").status_code == 404
    assert stack.http.get("/v1/jobs/nope-nope/events").status_code == 404
    assert stack.http.delete("/v1/jobs/nope-nope").status_code == 404


@pytest.mark.parametrize("job_id", ["-starts-with-a-dash", "has%20a%20space", "x" * 201, "line%0A"])
def test_a_job_id_off_the_pattern_is_422_on_every_route(stack: Stack, job_id: str) -> None:
    for response in (
        stack.http.get(f"/v1/jobs/{job_id}"),
        stack.http.get(f"/v1/jobs/{job_id}/events"),
        stack.http.delete(f"/v1/jobs/{job_id}"),
    ):
        assert response.status_code == 422, response.request.method
        [error] = response.json()["detail"]
        assert error["loc"] == ["path", "job_id"]
        assert error["type"] == "string_pattern_mismatch"


def test_models_show_queue_running_and_workers(stack: Stack) -> None:
    job_ids = [unique() for _ in range(3)]
    stack.http.post("/v1/jobs", json=[{"id": job_id, "model": IDLE, "prompt": "attente"} for job_id in job_ids])
    models = {model["id"]: model for model in stack.http.get("/v1/models").json()["data"]}
    assert models[MODEL]["workers"] == 1
    assert models[IDLE]["workers"] == 0
    assert models[IDLE]["queued"] >= 3
    for job_id in job_ids:
        stack.http.delete(f"/v1/jobs/{job_id}")


def test_health(stack: Stack) -> None:
    assert stack.http.get("/health").json()["status"] == "ok"
    assert stack.http.get("/ready").status_code == 200
