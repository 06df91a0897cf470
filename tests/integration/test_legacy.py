"""The old Services Publics Plus endpoints, driven exactly as the old platform did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Sim, Stack, assert_no_internal_details, wait_for, with_credentials

SPP_MODEL = "spp/ok"
SMALL_MODEL = "spp/small"
TEXT = "Bonjour, j'ai envoyé mon dossier à la CAF il y a trois mois et je n'ai toujours pas de réponse."


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(SPP_MODEL, prefill_ms=50, ms_per_token=2)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim) -> Stack:
    return start_stack([(SPP_MODEL, sim.url)], SPP_MAX_TOKENS=150)


@pytest.fixture(scope="module")
def failing_stack(start_stack: Callable[..., Stack], start_sim: Callable[..., Sim]) -> Stack:
    """Its model's context is too small for the SPP prompt: every generation fails (HTTP 400)."""
    small = start_sim(SMALL_MODEL, max_model_len=128)
    return start_stack([(SMALL_MODEL, with_credentials(small.url))], SPP_MAX_TOKENS=150)


def answers(stack: Stack, body: Any) -> Any:
    return stack.http.post("/prod/run/ditp-get-data", json=body)


def wait_answered(stack: Stack, job_id: str) -> dict[str, Any]:
    return stack.wait_job(job_id, until=lambda job: job["status"] in ("succeeded", "failed"))


def test_anonymize_one_item_answers_its_id(stack: Stack) -> None:
    response = stack.http.post("/anonymize", json={"id": "exp-1", "text": TEXT})
    assert response.status_code == 200
    assert response.json() == {"body": {"id": "exp-1"}}


def test_anonymize_an_array_makes_ids_for_missing_ones(stack: Stack) -> None:
    response = stack.http.post(
        "/anonymize", json=[{"id": "exp-a", "text": TEXT}, {"id": None, "text": TEXT}, {"text": TEXT}]
    )
    assert response.status_code == 200
    body = response.json()["body"]
    assert body[0] == {"id": "exp-a"}
    assert len({item["id"] for item in body}) == 3
    for item in body:
        assert wait_answered(stack, item["id"])["status"] == "succeeded"


def test_pending_and_unknown_ids_are_not_found(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-pending", "text": TEXT + " (en attente)"})
    pending = answers(stack, {"id": "exp-pending"})
    assert pending.status_code == 400
    assert pending.json() == {"detail": "ID not found"}
    unknown = answers(stack, {"id": "never-sent"})
    assert unknown.status_code == 400
    assert unknown.json() == {"detail": "ID not found"}


def test_the_answer_is_the_generated_text(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-answer", "text": TEXT})
    job = wait_answered(stack, "exp-answer")
    response = answers(stack, {"id": "exp-answer"})
    assert response.status_code == 200
    assert response.json() == {"body": {"generated_answer": job["result"]["text"]}}


def test_an_array_of_ids_answers_null_where_there_is_no_answer(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-arr", "text": TEXT})
    job = wait_answered(stack, "exp-arr")
    response = answers(stack, [{"id": "exp-arr"}, {"id": "never-sent"}])
    assert response.status_code == 200
    body = response.json()["body"]
    assert body[0]["generated_answer"] == job["result"]["text"]
    assert body[1]["generated_answer"] is None


def test_the_spp_prompt_reaches_the_model_rendered_with_acronyms_expanded(stack: Stack, sim: Sim) -> None:
    stack.http.post("/anonymize", json={"id": "exp-prompt", "text": TEXT})
    wait_answered(stack, "exp-prompt")
    sent_by = stack.request_ids()
    (request,) = [r for r in sim.stats()["recent"] if sent_by.get(r["request_id"]) == "exp-prompt"]
    assert request["endpoint"] == "/v1/chat/completions"
    (message,) = request["messages"]
    assert message["role"] == "user"
    assert "la CAF (Caisse d'allocations familiales) il y a trois mois" in message["content"]
    assert "Réponse de l'administration" in message["content"]
    assert (request["max_tokens"], request["temperature"]) == (150, 0.2)


def test_resubmitting_the_same_text_does_no_new_work(stack: Stack, sim: Sim) -> None:
    stack.http.post("/anonymize", json={"id": "exp-same", "text": TEXT})
    first = wait_answered(stack, "exp-same")
    requests = sim.stats()["requests"]
    again = stack.http.post("/anonymize", json={"id": "exp-same", "text": TEXT})
    assert again.json() == {"body": {"id": "exp-same"}}
    assert stack.http.get("/v1/jobs/exp-same").json() == first
    assert sim.stats()["requests"] == requests


def test_resubmitting_a_new_text_replaces_the_answer(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-new", "text": TEXT})
    first = wait_answered(stack, "exp-new")
    stack.http.post("/anonymize", json={"id": "exp-new", "text": "Ma carte grise n'est jamais arrivée."})
    second = wait_answered(stack, "exp-new")
    assert second["result"]["text"] != first["result"]["text"]
    assert answers(stack, {"id": "exp-new"}).json()["body"]["generated_answer"] == second["result"]["text"]


def test_resubmitting_while_running_replaces_the_running_generation(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-race", "text": TEXT})
    stack.wait_job("exp-race", until=lambda job: job["status"] == "running")
    stack.http.post("/anonymize", json={"id": "exp-race", "text": "Un tout autre récit."})
    job = wait_answered(stack, "exp-race")
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1


def test_an_anonymize_item_is_a_job_like_any_other(stack: Stack) -> None:
    stack.http.post("/anonymize", json={"id": "exp-job", "text": TEXT})
    with stack.http.stream("GET", "/v1/jobs/exp-job/events") as response:
        lines = [line for line in response.iter_lines() if line.startswith("event: ")]
    assert lines[-1] == "event: done"
    job = stack.http.get("/v1/jobs/exp-job").json()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1


def test_a_failed_generation_is_never_an_answer(failing_stack: Stack) -> None:
    failing_stack.http.post("/anonymize", json={"id": "exp-fail", "text": TEXT})
    job = wait_answered(failing_stack, "exp-fail")
    assert job["status"] == "failed"
    single = answers(failing_stack, {"id": "exp-fail"})
    assert single.status_code == 422
    body = single.json()
    assert body["detail"] == "Generation failed"
    assert "body" not in body
    assert body["error"]["type"] == "backend_rejected"
    array = answers(failing_stack, [{"id": "exp-fail"}]).json()["body"]
    assert array[0]["generated_answer"] is None
    assert array[0]["status"] == "failed"
    assert "maximum context length" in array[0]["error"]["message"]
    assert_no_internal_details(single.text)
    assert_no_internal_details(str(array))


def test_healthcheck(stack: Stack) -> None:
    response = stack.http.get("/healthcheck", headers={"Authorization": ""})
    assert response.json() == {"msg": "OK", "version": "0.1.0"}


def test_bad_input_names_the_field(stack: Stack) -> None:
    response = stack.http.post("/anonymize", json={"id": "x"})
    assert response.status_code == 422
    assert ["body", "text"] in [error["loc"] for error in response.json()["detail"]]
    empty = stack.http.post("/anonymize", json=[{"id": "x", "text": ""}])
    assert ["body", 0, "text"] in [error["loc"] for error in empty.json()["detail"]]


def test_every_accepted_item_is_kept_until_answered(stack: Stack) -> None:
    ids = [f"exp-many-{i}" for i in range(30)]
    stack.http.post("/anonymize", json=[{"id": job_id, "text": f"{TEXT} ({job_id})"} for job_id in ids])
    wait_for(
        lambda: all(item["generated_answer"] for item in answers(stack, [{"id": i} for i in ids]).json()["body"]),
        30,
        "every item answered",
    )
