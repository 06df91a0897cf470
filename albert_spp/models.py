"""The server's public JSON as typed models (answers), and the shapes of what is sent (requests).

The answers mirror the API's documented JSON rather than importing the server's own models: this package needs
only httpx and pydantic. Unknown fields are kept (`extra="allow"`), so that a newer server does not break an
older client.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict

MetadataValue = str | int | float | bool | None


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Answer):
    prompt_tokens: int | None = None
    completion_tokens: int
    total_tokens: int | None = None


class JobResult(_Answer):
    text: str
    finish_reason: str | None = None
    usage: Usage


class JobError(_Answer):
    type: str
    message: str


class Webhook(_Answer):
    url: str
    events: list[str]
    delivery: dict[str, Any] | None = None


class Job(_Answer):
    """A job as `GET /v1/jobs/{id}` shows it."""

    id: str
    model: str
    status: JobStatus
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: JobError | None = None
    metadata: dict[str, MetadataValue] | None = None
    priority: int = 0
    queue_position: int | None = None
    estimated_start_at: datetime | None = None
    webhook: Webhook | None = None

    @property
    def text(self) -> str | None:
        """The answer's text once the job has succeeded, else None."""
        return self.result.text if self.result is not None else None


class JobList(_Answer):
    """One page of `GET /v1/jobs`, newest first: pass `next_after` as `after` for the next one."""

    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    next_after: str | None = None
    first_id: str | None = None
    last_id: str | None = None


class StatusCounts(_Answer):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class JobStats(_Answer):
    """`GET /v1/jobs/stats`: the client's jobs counted by status (and by model, without a filter)."""

    object: Literal["job.stats"] = "job.stats"
    total: int
    counts: StatusCounts
    models: dict[str, StatusCounts] | None = None
    """Per model; None when a filter was given."""


class Deleted(_Answer):
    """A finished job erased by `DELETE /v1/jobs/{id}`."""

    id: str
    object: Literal["job.deleted"] = "job.deleted"
    deleted: bool


# ---- requests --------------------------------------------------------------------------------------------------


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Params(TypedDict, total=False):
    """Sampling parameters; the server's defaults apply to those left out."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: str | list[str]
    seed: int


class WebhookRequest(TypedDict):
    url: str
    events: NotRequired[list[Literal["succeeded", "failed", "cancelled"]]]


class JobRequest(TypedDict, total=False):
    """A job as `POST /v1/jobs` takes it: exactly one of `prompt` or `messages`."""

    id: str
    model: str
    prompt: str
    template: str
    messages: list[Message]
    params: Params
    metadata: dict[str, MetadataValue]
    priority: int
    webhook: WebhookRequest
