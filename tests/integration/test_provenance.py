"""A job's provenance over real processes (redis-server, the API, workers, simulators): the model and weights the
server reported, the replica, the template and acronym list, the sampling the simulator received, each attempt of a
job retried after a fault; no server address or credential shown; per client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.acronyms import acronyms_version
from shared.templates import template_tag
from tests.integration.conftest import Sim, Stack, assert_no_internal_details, wait_for, with_credentials
from tests.integration.faults import FAST, unique

FLAKY = "prov/flaky"
"""Its simulator fails its first request (HTTP 500) and answers the second (error rate 0.5, fault seed 1)."""
KEYED = "prov/keyed"
"""Its simulator wants a bearer key, given by its LLM_TABLE entry: /v1/models too."""
SLOW = "prov/slow"
SERVER_KEY = "sk-prov-server-0123456789"
CLIENTS = {
    "alice": "key-alice-prov-0123456789-0123456789abcdefghijklmnopqrstuv",
    "bob": "key-bob-prov-0123456789-0123456789abcdefghijklmnopqrstuv",
}
NOT_SAMPLING = ("model", "prompt", "messages", "stream", "stream_options", "endpoint", "request_id")
"""What a request body as the simulator keeps it holds besides the sampling."""


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENTS[client]}"}


@pytest.fixture(scope="module")
def sims(start_sim: Callable[..., Sim]) -> dict[str, Sim]:
    return {
        FLAKY: start_sim(FLAKY, error_rate=0.5, fault_seed=1, ms_per_token=1),
        KEYED: start_sim(KEYED, api_key=SERVER_KEY, ms_per_token=1),
        SLOW: start_sim(SLOW, ms_per_token=200),
    }


@pytest.fixture(scope="module")
def stack(sims: dict[str, Sim], start_stack: Callable[..., Stack], tmp_path_factory: pytest.TempPathFactory) -> Stack:
    keys_file: Path = tmp_path_factory.mktemp("provenance") / "api_keys.json"
    keys_file.write_bytes(orjson.dumps(CLIENTS))
    table: list[tuple[object, ...]] = [
        (FLAKY, with_credentials(sims[FLAKY].url)),
        (KEYED, sims[KEYED].url, {"api_key": SERVER_KEY}),
        (SLOW, sims[SLOW].url),
    ]
    return start_stack(
        table,
        headers=auth("alice"),
        ENV="staging",
        API_KEYS_FILE=str(keys_file),
        WEBHOOK_SECRET_KEY="w" * 32,
        JOB_MAX_ATTEMPTS=3,
        APP_VERSION="7.7.7-prov",
        **FAST,
    )


def submit(stack: Stack, **job: Any) -> str:
    job_id = unique("prov")
    response = stack.http.post("/v1/jobs", json={"id": job_id, **job})
    assert response.status_code == 202, response.text
    return job_id


def provenance(stack: Stack, job_id: str, client: str = "alice") -> dict[str, Any]:
    response = stack.http.get(f"/v1/jobs/{job_id}/provenance", headers=auth(client))
    assert response.status_code == 200, response.text
    assert_no_internal_details(response.text)
    answer: dict[str, Any] = response.json()
    return answer


def received(sim: Sim, job_id: str, stack: Stack) -> list[dict[str, Any]]:
    """The request bodies the simulator received for the job, oldest first."""
    sent_as = {request_id for request_id, owner_job in stack.request_ids().items() if owner_job == job_id}
    return [body for body in sim.stats()["recent"] if body["request_id"] in sent_as]


def test_a_job_retried_after_a_fault_shows_both_attempts(stack: Stack, sims: dict[str, Sim]) -> None:
    job_id = submit(stack, model=FLAKY, prompt="Bonjour", params={"max_tokens": 5, "temperature": 0.3, "seed": 11})
    job = stack.wait_job(job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 2), job

    answer = provenance(stack, job_id)

    assert (answer["id"], answer["status"], answer["final"]) == (job_id, "succeeded", True)
    first, second = answer["attempts"]
    assert (first["attempt"], first["outcome"], first["error"]) == (1, "retry", {"type": "backend_unavailable"})
    assert (second["attempt"], second["outcome"], second["error"]) == (2, "succeeded", None)
    assert first["replica"] == second["replica"] == 0
    assert first["started_at"] <= first["ended_at"] <= second["started_at"] <= second["ended_at"]
    assert second["first_token_ms"] >= 0
    found = answer["provenance"]
    assert found["model"] == found["served_model"] == found["model_revision"] == FLAKY
    assert found["replica"] == 0
    assert (found["template"], found["acronyms"]) == (None, None)
    assert found["app_version"] == "7.7.7-prov"
    assert found["finished_at"] == job["finished_at"]
    bodies = received(sims[FLAKY], job_id, stack)
    assert len(bodies) == 2
    assert found["sampling"] == _sampling(bodies[-1])
    assert found["sampling"]["seed"] == 11


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in NOT_SAMPLING}


def test_a_template_job_names_the_template_and_acronym_list(stack: Stack, sims: dict[str, Sim]) -> None:
    job_id = submit(stack, model=KEYED, template="spp", prompt="Ma CAF ne répond pas", params={"max_tokens": 4})
    assert stack.wait_job(job_id)["status"] == "succeeded"

    found = provenance(stack, job_id)["provenance"]

    assert f"{found['template']} acronyms@{found['acronyms']}" == template_tag("spp")
    assert found["acronyms"] == acronyms_version()
    assert found["model_revision"] == KEYED, "asked of /v1/models with the entry's key"
    assert found["sampling"] == _sampling(received(sims[KEYED], job_id, stack)[-1])
    assert set(found["sampling"]) == {"max_tokens", "temperature", "top_p"}


def test_a_running_job_shows_no_provenance_yet_then_its_cancellation(stack: Stack) -> None:
    job_id = submit(stack, model=SLOW, prompt="Bonjour", params={"max_tokens": 100})
    stack.wait_job(job_id, until=lambda job: job["status"] == "running")

    running = provenance(stack, job_id)
    assert (running["status"], running["final"], running["provenance"], running["attempts"]) == (
        "running",
        False,
        None,
        [],
    )

    assert stack.http.delete(f"/v1/jobs/{job_id}").status_code == 200
    wait_for(lambda: provenance(stack, job_id)["status"] == "cancelled", 10, "the job cancelled")
    cancelled = provenance(stack, job_id)
    assert (cancelled["final"], cancelled["provenance"]) == (True, None)


def test_the_provenance_of_another_clients_job_or_an_unknown_one_is_not_found(stack: Stack) -> None:
    job_id = submit(stack, model=KEYED, prompt="Bonjour", params={"max_tokens": 2})
    stack.wait_job(job_id)

    for client, asked in (("bob", job_id), ("alice", "prov-unknown")):
        response = stack.http.get(f"/v1/jobs/{asked}/provenance", headers=auth(client))
        assert response.status_code == 404, response.text
    assert provenance(stack, job_id)["final"] is True
