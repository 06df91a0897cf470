"""Workers are pinned to their model; replicas share a model's load; legacy `/generate` servers work."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.conftest import Sim, Stack


def test_each_model_reaches_only_its_own_server(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]
) -> None:
    sim_a, sim_b = start_sim("model-a"), start_sim("model-b")
    stack = start_stack([("model-a", sim_a.url), ("model-b", sim_b.url)])
    submitted = stack.http.post(
        "/v1/jobs",
        json=[{"model": "model-b", "prompt": f"question {i}", "params": {"max_tokens": 3}} for i in range(10)]
        + [{"model": "model-a", "prompt": "une seule", "params": {"max_tokens": 3}}],
    ).json()
    for job in submitted:
        done = stack.wait_job(job["id"])
        assert done["status"] == "succeeded"
        assert done["model"] == job["model"]
    assert sim_a.stats()["by_model"] == {"model-a": 1}
    assert sim_b.stats()["by_model"] == {"model-b": 10}


def test_replicas_of_a_model_share_its_jobs(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> None:
    first, second = start_sim("model-r"), start_sim("model-r")
    stack = start_stack([("model-r", first.url), ("model-r", second.url + "/v1")])
    jobs = stack.http.post("/v1/jobs", json=[{"model": "model-r", "prompt": f"q{i}"} for i in range(10)]).json()
    for job in jobs:
        assert stack.wait_job(job["id"])["status"] == "succeeded"
    assert first.stats()["requests"] > 0
    assert second.stats()["requests"] > 0
    assert first.stats()["requests"] + second.stats()["requests"] == 10


def test_a_legacy_generate_server(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> None:
    sim = start_sim("model-g", generate_delimiter="nul")
    stack = start_stack([("model-g", sim.url, "generate")])
    job = stack.http.post(
        "/v1/jobs", json={"model": "model-g", "prompt": "Bonjour", "params": {"max_tokens": 12}}
    ).json()
    done = stack.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["text"]
    assert not done["result"]["text"].startswith("Bonjour")  # the prompt echoed by /generate is removed
    assert done["result"]["usage"]["completion_tokens"] == 12
    assert done["result"]["finish_reason"] == "length"
    assert sim.stats()["by_endpoint"] == {"/generate": 1}


def test_a_rejected_request_fails_with_the_servers_reason(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]
) -> None:
    sim = start_sim("model-small", max_model_len=64)
    stack = start_stack([("model-small", sim.url)])
    job = stack.http.post(
        "/v1/jobs", json={"model": "model-small", "prompt": "trop long", "params": {"max_tokens": 500}}
    ).json()
    done = stack.wait_job(job["id"])
    assert done["status"] == "failed"
    assert done["result"] is None
    assert done["attempts"] == 1
    assert done["error"]["type"] == "backend_rejected"
    assert "maximum context length" in done["error"]["message"]
