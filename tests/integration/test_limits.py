"""Limits and hostile input: body size, job caps, full queues, per-key rate limits, CORS, log hygiene."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.integration.conftest import AUTH, Sim, Stack

MODEL = "limits/model"
NO_WORKER = "limits/no-worker"
SECRET_PROMPT = "Texte-confidentiel-8c1f: mon numéro fiscal est 1234"


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(MODEL, NO_WORKER)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim) -> Stack:
    return start_stack(
        [(MODEL, sim.url), (NO_WORKER, sim.url)],
        workers={MODEL: 1},
        MAX_BODY_BYTES=4096,
        MAX_PROMPT_CHARS=500,
        MAX_MESSAGES=3,
        MAX_TOKENS_LIMIT=100,
        MAX_JOBS_PER_REQUEST=5,
        MAX_QUEUE_DEPTH=3,
        CORS_ORIGINS="https://dashboard.example",
    )


def test_a_body_over_the_limit_is_413_naming_it(stack: Stack) -> None:
    response = stack.http.post("/v1/jobs", content=b'{"prompt": "' + b"x" * 5000 + b'"}')
    assert response.status_code == 413
    assert "MAX_BODY_BYTES=4096" in response.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413_too(stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = stack.http.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "limit"),
    [
        ({"prompt": "x" * 501}, "limit of 500"),
        ({"messages": [{"role": "user", "content": "x"}] * 4}, "limit of 3"),
        ({"prompt": "x", "params": {"max_tokens": 101}}, "limit of 100"),
        ([{"prompt": "x"}] * 6, "MAX_JOBS_PER_REQUEST=5"),
    ],
)
def test_job_caps_answer_422_naming_the_limit(stack: Stack, body: object, limit: str) -> None:
    response = stack.http.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert limit in response.text


def test_a_full_queue_answers_429_and_stores_nothing(stack: Stack) -> None:
    accepted = stack.http.post("/v1/jobs", json=[{"model": NO_WORKER, "prompt": f"q{i}"} for i in range(3)])
    assert accepted.status_code == 202
    refused = stack.http.post("/v1/jobs", json=[{"id": "over-1", "model": NO_WORKER, "prompt": "encore"}])
    assert refused.status_code == 429
    assert refused.headers["retry-after"]
    assert "full" in refused.json()["detail"]
    assert stack.http.get("/v1/jobs/over-1").status_code == 404
    for job in accepted.json():
        stack.http.delete(f"/v1/jobs/{job['id']}")
    assert stack.http.post("/v1/jobs", json={"model": NO_WORKER, "prompt": "de la place"}).status_code == 202


def test_cors_allows_the_configured_origin_with_credentials(stack: Stack) -> None:
    headers = {"Origin": "https://dashboard.example", "Access-Control-Request-Method": "GET"}
    response = stack.http.options("/v1/jobs/x", headers=headers)
    assert response.headers["access-control-allow-origin"] == "https://dashboard.example"
    assert response.headers["access-control-allow-credentials"] == "true"
    other = stack.http.options("/v1/jobs/x", headers={**headers, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_wildcard_origin_never_comes_with_credentials(start_stack: Callable[..., Stack], sim: Sim) -> None:
    stack = start_stack([(MODEL, sim.url)], workers={}, CORS_ORIGINS="*")
    headers = {"Origin": "https://anyone.example", "Access-Control-Request-Method": "GET"}
    response = stack.http.options("/v1/jobs/x", headers=headers)
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


def test_prompts_and_keys_never_reach_the_logs_at_info(stack: Stack) -> None:
    job = stack.http.post("/v1/jobs", json={"prompt": SECRET_PROMPT, "params": {"max_tokens": 3}}).json()
    assert stack.wait_job(job["id"])["status"] == "succeeded"
    logs = "".join(path.read_text(errors="replace") for path in stack.logs.glob("*.log") if "sim-" not in path.name)
    assert job["id"] in logs, "the job is logged, by id"
    assert "Texte-confidentiel-8c1f" not in logs
    assert AUTH["Authorization"].split()[1] not in logs


def test_the_rate_limit_is_per_key_and_shared_by_api_processes(start_stack: Callable[..., Stack], sim: Sim) -> None:
    first = start_stack([(MODEL, sim.url)], workers={}, RATE_LIMIT=1, RATE_LIMIT_BURST=3)
    second = start_stack([(MODEL, sim.url)], workers={}, RATE_LIMIT=1, RATE_LIMIT_BURST=3)
    key = {"Authorization": "Bearer rate-limited-key"}
    statuses = [client.get("/v1/models", headers=key).status_code for client in (first.http, second.http) * 2]
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3] == 429, "the two processes share one bucket"
    refused = second.http.get("/v1/models", headers=key)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "RATE_LIMIT" in refused.json()["detail"]
    assert first.http.get("/v1/models", headers={"Authorization": "Bearer another-key"}).status_code == 200
    assert first.http.get("/health", headers=key).status_code == 200, "health is not limited"
    deadline = time.monotonic() + 5
    while first.http.get("/v1/models", headers=key).status_code != 200:
        assert time.monotonic() < deadline, "the bucket refills"
        time.sleep(0.2)


ROUTES_OF_EVERY_KIND = [
    "/v1/jobs",
    "/v1/jobs/stats",
    "/v1/jobs/job-x",
    "/v1/jobs/job-x/provenance",
    "/v1/models",
    "/v1/usage",
    "/v1/webhooks/secret",
    "/v1/files/file-x",
    "/v1/batches",
    "/dashboard/data",
]
"""GETs of routes that read the caller in each of the ways they can: by hand (the hot ones), as a dependency, as a
dependency of a dependency (the dashboard's), or not at all (/v1/models)."""


def test_every_route_counts_a_request_once(start_stack: Callable[..., Stack], sim: Sim) -> None:
    """A burst of 3 lets exactly 3 requests through, whichever route they go to (one key each)."""
    stack = start_stack([(MODEL, sim.url)], workers={}, RATE_LIMIT=0.01, RATE_LIMIT_BURST=3)
    for path in ROUTES_OF_EVERY_KIND:
        key = {"Authorization": f"Bearer once-{path}"}
        statuses = [stack.http.get(path, headers=key).status_code for _ in range(4)]
        assert [status == 429 for status in statuses] == [False, False, False, True], (path, statuses)


def test_a_fresh_client_sees_cors_headers_on_errors_too(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        response = client.get("/v1/jobs/x", headers={"Origin": "https://dashboard.example"})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "https://dashboard.example"
