"""Model servers that want a bearer key (vLLM's --api-key): LLM_API_KEY, a key of one LLM_TABLE entry, and a
refused key, through real workers and the simulator run with --api-key."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Sim, Stack, assert_no_internal_details

SERVER_KEY = "sk-model-server-0123456789"
SHARED = "keyed/llm-api-key"
OWN = "keyed/entry-key"
WRONG = "keyed/wrong-key"


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    shared = start_sim(SHARED, api_key=SERVER_KEY)
    own = start_sim(OWN, api_key="sk-another-server")
    wrong = start_sim(WRONG, api_key="sk-not-what-the-worker-sends")
    table: list[tuple[object, ...]] = [
        (SHARED, shared.url),
        (OWN, own.url, {"api_key": "sk-another-server"}),
        (WRONG, wrong.url),
    ]
    return start_stack(table, LLM_API_KEY=SERVER_KEY, JOB_MAX_ATTEMPTS=2, RETRY_BACKOFF=0.05)


def run_job(stack: Stack, model: str, job_id: str) -> dict[str, object]:
    body = {"id": job_id, "model": model, "prompt": "Bonjour", "params": {"max_tokens": 4}}
    assert stack.http.post("/v1/jobs", json=body).status_code == 202
    return stack.wait_job(job_id)


def test_llm_api_key_is_sent_to_a_server_that_wants_it(stack: Stack) -> None:
    job = run_job(stack, SHARED, "keyed-shared")

    assert (job["status"], job["attempts"]) == ("succeeded", 1)


def test_an_entry_key_wins_over_llm_api_key(stack: Stack) -> None:
    job = run_job(stack, OWN, "keyed-own")

    assert (job["status"], job["attempts"]) == ("succeeded", 1)


def test_a_refused_key_is_retried_then_fails_naming_the_setting(stack: Stack) -> None:
    job = run_job(stack, WRONG, "keyed-wrong")

    assert (job["status"], job["attempts"]) == ("failed", 2)
    error = job["error"]
    assert isinstance(error, dict)
    assert error["type"] == "backend_unavailable"
    assert "HTTP 401" in error["message"]
    assert "LLM_API_KEY" in error["message"]
    assert SERVER_KEY not in str(job)
    assert_no_internal_details(str(job))
