"""What produced a job's answer, as the worker stores it in the record: the `provenance` of the final attempt and one
`attempt_log` line per attempt that did not end the job with its answer (`WorkerJobStore.finish` and `requeue`).

Compact, as a record's memory counts (docs/PERFORMANCE.md; ~175 bytes a succeeded job with these rules, ~470 with
every field and line written out in full):
- None fields are left out;
- the served model id and the weights' revision are left out when they are the job's model name (the usual case),
  and an unknown one is written null, so that it is not read as the model name;
- the attempt that succeeded has no line: the record holds its attempt, run, start and end, and the provenance its
  replica and first token time; `succeeded_attempt` rebuilds it. A succeeded job is never run again, so no later
  series of attempts needs that line (a failed one's is written).

The reader (`GET /v1/jobs/{id}/provenance`) fills all of it back in; what the record holds besides (model,
template, end time) is not repeated here.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.models import ErrorType, JobRecord

AttemptOutcome = Literal["succeeded", "failed", "retry", "shutdown"]

_NAMED_AS_THE_MODEL = ("served_model", "model_revision")
"""Fields stored only when they are not the job's model name."""


class AttemptError(BaseModel):
    """Why an attempt ended without an answer: its type only. The message stays in the job's `error` (the last
    attempt's) and in the worker's log: a model server's words may name its own details."""

    model_config = ConfigDict(extra="ignore")

    type: ErrorType


class AttemptRecord(BaseModel):
    """One ended attempt. A line the sweeper wrote for an attempt whose worker died holds only `error` (type
    `worker_lost`) and `ended_at`."""

    model_config = ConfigDict(extra="ignore")

    attempt: int | None = Field(None, description="The attempt's number (a shutdown's attempt is run again).")
    run: int | None = Field(None, description="The run's number: it grows with every start, shutdowns included.")
    replica: int | None = Field(
        None, description="Which server of the model was asked: its rank among the model's servers, 0 first."
    )
    started_at: int | None = Field(None, description="ms since the epoch.")
    ended_at: int | None = Field(None, description="ms since the epoch.")
    outcome: AttemptOutcome | None = Field(
        None,
        description="succeeded, failed (the job's end), retry (a transient failure, queued again) or shutdown (the "
        "worker stopped: queued again, the attempt not counted).",
    )
    error: AttemptError | None = None
    first_token_ms: int | None = Field(None, description="ms from the request to the model server to its first token.")

    def stored(self) -> str:
        """The line written to the record's `attempt_log`."""
        return self.model_dump_json(exclude_none=True)


class StoredProvenance(BaseModel):
    """What the worker learned, at the job's end, about what produced its answer."""

    model_config = ConfigDict(extra="ignore")

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
    sampling: dict[str, Any] | None = Field(
        None,
        description="The generation parameters of the request body as the worker sent them (max_tokens, "
        "temperature, top_p, stop, seed); none when no request was sent.",
    )
    system_fingerprint: str | None = Field(None, description="The server's `system_fingerprint`, when it sent one.")
    first_token_ms: int | None = Field(None, description="The last attempt's: see AttemptRecord.")
    app_version: str = Field(description="The worker's APP_VERSION.")

    def stored(self, model: str) -> str:
        """The JSON written to the record of a job of `model` (see the module's rules)."""
        data = self.model_dump(exclude_none=True)
        for name in _NAMED_AS_THE_MODEL:
            value = getattr(self, name)
            if value == model:
                del data[name]
            elif value is None:
                data[name] = None
        return orjson.dumps(data).decode()

    @classmethod
    def read(cls, stored: str, model: str) -> StoredProvenance:
        """The provenance `stored` wrote for a job of `model`."""
        data = orjson.loads(stored)
        for name in _NAMED_AS_THE_MODEL:
            data.setdefault(name, model)
        return cls.model_validate(data)


def succeeded_attempt(record: JobRecord, provenance: StoredProvenance) -> AttemptRecord:
    """The line of a succeeded job's last attempt, which is not stored: from its record and its provenance."""
    return AttemptRecord(
        attempt=int(record["attempts"]),
        run=int(record["run"]),
        replica=provenance.replica,
        started_at=int(record["started_at"]),
        ended_at=int(record["finished_at"]),
        outcome="succeeded",
        first_token_ms=provenance.first_token_ms,
    )
