"""What produced a job's answer (`GET /v1/jobs/{id}/provenance`): the model and its weights as the server reported
them, the replica, the template and acronym list, the sampling sent, and every attempt with its timings.

The worker writes the record's `provenance` at the job's end and a line of its `attempt_log` at the end of each
attempt but a success (shared/provenance.py); what the record holds besides (model, template, end time, the
succeeded attempt) is added here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.deps import OwnerDep, StoreDep
from api.responses import JSONResponse
from api.routes.jobs import JobIdPath
from shared.models import JobRecord, JobStatus, iso_time
from shared.provenance import AttemptError, AttemptOutcome, AttemptRecord, StoredProvenance, succeeded_attempt
from shared.templates import ACRONYMS_SEPARATOR

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class Attempt(BaseModel):
    """One ended attempt of the job. An attempt whose worker died holds only `error` (`worker_lost`) and
    `ended_at`."""

    attempt: int | None = Field(None, description="The attempt's number (a shutdown's attempt is run again).")
    run: int | None = Field(None, description="The run's number: it grows with every start, shutdowns included.")
    replica: int | None = Field(
        None, description="Which server of the model was asked: its rank among the model's servers, 0 first."
    )
    started_at: str | None = Field(None, description="ISO 8601, UTC.")
    ended_at: str | None = Field(None, description="ISO 8601, UTC.")
    outcome: AttemptOutcome | None = Field(
        None,
        description="succeeded, failed (the job's end), retry (a transient failure: queued again) or shutdown (the "
        "worker stopped: queued again, the attempt not counted).",
    )
    error: AttemptError | None = Field(None, description="The error's type: its message is the job's `error`.")
    first_token_ms: int | None = Field(None, description="ms from the request to the model server to its first token.")


class Provenance(BaseModel):
    """What produced the answer: the job's last attempt."""

    model: str = Field(description="The model the job asked for (its name in this service).")
    served_model: str | None = Field(
        None, description="The model id the server reported: in its streamed chunks, else in its /v1/models."
    )
    model_revision: str | None = Field(
        None, description="The weights the server loaded, as its /v1/models reports them (vLLM's `root`)."
    )
    model_parent: str | None = Field(
        None, description="The base model of an adapter (LoRA), as /v1/models reports it (vLLM's `parent`)."
    )
    replica: int | None = Field(None, description="Which server of the model answered: its rank, 0 first.")
    template: str | None = Field(
        None, description="`<name>@<12 hex digits of the SHA-256 of its text>` of the template that made the prompt."
    )
    acronyms: str | None = Field(
        None,
        description="With a template: the version of the acronym list that expanded the text (12 hex digits of the "
        "SHA-256 of the list).",
    )
    sampling: dict[str, Any] | None = Field(
        None,
        description="The generation parameters of the request body as sent to the model server (max_tokens, "
        "temperature, top_p, stop, seed); null when no request was sent.",
    )
    system_fingerprint: str | None = Field(None, description="The server's `system_fingerprint`, when it sent one.")
    app_version: str = Field(description="The version of the worker that ran the job.")
    finished_at: str | None = Field(None, description="ISO 8601, UTC.")


class JobProvenance(BaseModel):
    """A job's provenance: final once the job has finished."""

    id: str
    status: JobStatus
    final: bool = Field(description="The job has finished: nothing here changes any more.")
    provenance: Provenance | None = Field(
        None, description="Null until the job has finished, and for a job cancelled or finished before this existed."
    )
    attempts: list[Attempt] = Field(description="The attempts that ended, oldest first (several series after a retry).")


def _attempt(attempt: AttemptRecord) -> dict[str, Any]:
    public = attempt.model_dump(exclude={"started_at", "ended_at"})
    return public | {"started_at": iso_time(attempt.started_at), "ended_at": iso_time(attempt.ended_at)}


def _provenance(record: JobRecord, stored: StoredProvenance) -> dict[str, Any]:
    template, _, acronyms = record.get("template", "").partition(ACRONYMS_SEPARATOR)
    return {
        "model": record["model"],
        **stored.model_dump(exclude={"first_token_ms"}),
        "template": template or None,
        "acronyms": acronyms or None,
        "finished_at": iso_time(record.get("finished_at")),
    }


def job_provenance(record: JobRecord) -> dict[str, Any]:
    """The public provenance of a job from its record."""
    status = JobStatus(record["status"])
    attempts = [AttemptRecord.model_validate_json(line) for line in record.get("attempt_log", "").splitlines() if line]
    stored = None
    if status.finished and "provenance" in record:
        stored = StoredProvenance.read(record["provenance"], record["model"])
        if status is JobStatus.SUCCEEDED:
            attempts.append(succeeded_attempt(record, stored))
    return {
        "id": record["id"],
        "status": status.value,
        "final": status.finished,
        "provenance": None if stored is None else _provenance(record, stored),
        "attempts": [_attempt(attempt) for attempt in attempts],
    }


@router.get("/{job_id}/provenance", response_model=JobProvenance, responses={404: {"description": "Unknown job"}})
async def get_provenance(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    """What produced the job's answer: model and weights, replica, template, sampling, and each attempt."""
    return JSONResponse(job_provenance(await store.get(owner, job_id)))
