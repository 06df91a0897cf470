"""The worker, unchanged, against real OpenAI-compatible servers (conftest.py starts them with a tiny model).

Each test runs once per server module, through the whole stack: a job posted to the API, run by an arq worker
whose LLM_TABLE names the real server (behind a TCP proxy), read back from the API. What a server lacks is
declared in its `RealServer.features`, and checked both ways: a server that sends a usage chunk it does not
declare fails as surely as one that declares it and sends none.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conformance.proxy import TcpProxy
from tests.conformance.servers import RealServer
from tests.integration.conftest import Stack, assert_no_internal_details, read_events, wait_for

#: The first test of a server waits for its install, the first time on a machine: 4 to 6 minutes on 2 cores for
#: each llama.cpp build, 1 to 3 for transformers; nothing later. Every wait inside a test has its own deadline.
INSTALL_TIMEOUT = 2400

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.timeout(INSTALL_TIMEOUT)]

PROMPT = "Bonjour, ma carte grise n'a pas été reçue"
MESSAGES = [{"role": "user", "content": PROMPT}]
GREEDY = {"max_tokens": 24, "temperature": 0.0}
JOB_TIMEOUT = 60.0


def submit(stack: Stack, **job: Any) -> str:
    response = stack.http.post("/v1/jobs", json=job)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def run(stack: Stack, **job: Any) -> dict[str, Any]:
    return stack.wait_job(submit(stack, **job), timeout=JOB_TIMEOUT)


def needs(server: RealServer, feature: str) -> None:
    if feature not in server.features:
        pytest.skip(f"{server.name} has no {feature!r}")


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_a_job_succeeds_with_the_servers_text_and_usage(stack: Stack, real_server: RealServer, kind: str) -> None:
    """A prompt job (/v1/completions) and a chat job (/v1/chat/completions), streamed; usage from the usage chunk
    when the server sends one (the worker asks `stream_options.include_usage`), else the worker's count."""
    needs(real_server, kind)
    body: dict[str, Any] = {"prompt": PROMPT} if kind == "completions" else {"messages": MESSAGES}
    job = run(stack, **body, params=GREEDY)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    result = job["result"]
    assert result["text"].strip()
    assert result["finish_reason"] == "length"  # the tiny model never ends by itself
    usage = result["usage"]
    assert 0 < usage["completion_tokens"] <= GREEDY["max_tokens"]
    if "usage_chunk" in real_server.features:
        assert usage["prompt_tokens"] > 0, usage
        assert usage["completion_tokens"] == GREEDY["max_tokens"], usage
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    else:
        # No usage chunk: the job still succeeds, with the number of streamed pieces the worker counted.
        assert usage["prompt_tokens"] is None, f"a usage chunk came from a server that declares none: {usage}"


def test_the_provenance_names_what_the_server_reported(stack: Stack, real_server: RealServer) -> None:
    """The model id the server reports (in its chunks, else its /v1/models), and the sampling sent; the weights'
    revision where its /v1/models reports a `root` (vLLM does; the others may not)."""
    job_id = submit(stack, messages=MESSAGES, params=GREEDY)
    assert stack.wait_job(job_id, timeout=JOB_TIMEOUT)["status"] == "succeeded"

    response = stack.http.get(f"/v1/jobs/{job_id}/provenance")

    assert response.status_code == 200, response.text
    assert_no_internal_details(response.text)
    answer = response.json()
    assert [(line["outcome"], line["replica"]) for line in answer["attempts"]] == [("succeeded", 0)]
    found = answer["provenance"]
    assert found["served_model"], f"{real_server.name} reported no model id: {found}"
    assert found["model_revision"] is None or isinstance(found["model_revision"], str)
    assert found["sampling"]["max_tokens"] == GREEDY["max_tokens"]
    assert found["sampling"]["temperature"] == GREEDY["temperature"]


def test_jobs_in_flight_together_each_run_to_their_end(stack: Stack) -> None:
    """The worker sends a model's jobs side by side (WORKER_MAX_JOBS); vLLM runs them together. A server that
    runs one at a time must queue the others, not cut the one streaming: llama-cpp-python's default
    (`interrupt_requests`) ends it with `[DONE]` and no finish_reason, which the worker stores as a success."""
    job_ids = [submit(stack, prompt=f"{PROMPT} ({index})", params={**GREEDY, "max_tokens": 64}) for index in range(3)]
    for job_id in job_ids:
        job = stack.wait_job(job_id, timeout=JOB_TIMEOUT)
        assert job["status"] == "succeeded", job
        assert job["result"]["finish_reason"] == "length", job


def test_the_event_stream_carries_the_stored_text(stack: Stack) -> None:
    job_id = submit(stack, prompt=PROMPT, params={**GREEDY, "max_tokens": 48})
    events = read_events(stack.http, job_id)
    assert [name for name, _, _ in events if name != "token"] == ["done"]
    streamed = "".join(data["text"] for name, _, data in events if name == "token")
    done = events[-1][2]
    stored = stack.wait_job(job_id)
    assert done["status"] == stored["status"] == "succeeded", stored
    assert streamed == done["result"]["text"] == stored["result"]["text"]


def test_greedy_generation_is_repeatable_and_stop_cuts_it(stack: Stack, real_server: RealServer) -> None:
    """`stop` ends the text before the stop string's first occurrence, with finish_reason `stop`."""
    needs(real_server, "stop")
    params = {**GREEDY, "max_tokens": 32}
    full = run(stack, prompt=PROMPT, params=params)["result"]["text"]
    assert run(stack, prompt=PROMPT, params=params)["result"]["text"] == full, "greedy decoding is not repeatable"
    middle = len(full) // 2
    start = next(index for index in range(middle, len(full) - 3) if full.find(full[index : index + 3]) == index)
    stop = full[start : start + 3]
    job = run(stack, prompt=PROMPT, params={**params, "stop": [stop]})
    assert job["status"] == "succeeded", job
    assert job["result"]["text"] == full[:start], (stop, full)
    assert job["result"]["finish_reason"] == "stop"


def test_the_same_seed_samples_the_same_text(stack: Stack, real_server: RealServer) -> None:
    needs(real_server, "seed")
    params = {"max_tokens": 32, "temperature": 1.0, "top_p": 1.0}
    first = run(stack, prompt=PROMPT, params={**params, "seed": 1234})["result"]["text"]
    again = run(stack, prompt=PROMPT, params={**params, "seed": 1234})["result"]["text"]
    other = run(stack, prompt=PROMPT, params={**params, "seed": 4321})["result"]["text"]
    assert first == again
    assert other != first, "another seed sampled the same text: is the temperature applied?"


def test_cancel_closes_the_request_to_the_server(stack: Stack, proxy: TcpProxy) -> None:
    """DELETE of a running job: the worker closes its connection to the server, wherever the server's reply is."""
    held = len(proxy.held)
    proxy.hold = True
    try:
        job_id = submit(stack, prompt=PROMPT, params={"max_tokens": 400, "temperature": 0.0})
        wait_for(lambda: len(proxy.held) > held, JOB_TIMEOUT, "a first token reached the worker")
    finally:
        proxy.hold = False
    connection = proxy.held[held]
    assert stack.http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    assert not connection.client_closed.is_set()
    asked = time.monotonic()
    assert stack.http.delete(f"/v1/jobs/{job_id}").status_code in (200, 202)
    assert connection.client_closed.wait(5), "the worker kept its request to the server open after the cancel"
    closed_after = time.monotonic() - asked
    job = stack.wait_job(job_id)
    assert job["status"] == "cancelled", job
    assert closed_after < 5
    # The server is still fine after a client went away mid-stream.
    assert run(stack, prompt=PROMPT, params=GREEDY)["status"] == "succeeded"


def test_a_prompt_longer_than_the_context(stack: Stack, real_server: RealServer) -> None:
    """vLLM answers 400 before streaming: the job fails at once (attempts 1, backend_rejected). Without that 4xx
    the worker cannot reject at once: a server that answers 200 and breaks the stream is retried like a crashed
    one, then the job fails as backend_unavailable; one that enforces no context at all generates."""
    too_long = " ".join(["Bonjour"] * (2 * real_server.n_ctx))
    job = run(stack, prompt=too_long, params={"max_tokens": 8})
    if "overflow_4xx" in real_server.features:
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "backend_rejected", job["error"]
        assert job["attempts"] == 1
    elif job["status"] == "failed":
        assert job["error"]["type"] == "backend_unavailable", f"declare 'overflow_4xx'? {job['error']}"
        assert job["attempts"] == int(stack.env["JOB_MAX_ATTEMPTS"])
    else:
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1


def test_the_server_refuses_requests_without_its_key(real_server: RealServer) -> None:
    """The key is real: every job above went through only because the worker sent LLM_API_KEY."""
    if real_server.api_key is None:
        pytest.skip(f"{real_server.name} runs without a key")
    body = {"model": real_server.model, "prompt": PROMPT, "max_tokens": 4}
    answer = httpx.post(f"{real_server.url}/v1/completions", json=body, timeout=30)
    assert answer.status_code == 401, answer.text
