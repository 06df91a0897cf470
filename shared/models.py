"""The shapes that cross process boundaries: job requests, job records and their public form."""

from __future__ import annotations

import enum
import functools
import hashlib
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Required, TypedDict

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    model_validator,
)

from shared.settings import Settings
from shared.webhooks import WebhookSpec

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,199}$"

JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
MetadataValue = str | int | float | bool | None

METADATA_VALUE_CHARS = 512
"""Characters of one metadata string value (OpenAI's cap)."""
METADATA_MAX_BYTES = 8192
"""Bytes of a whole `metadata`, as compact JSON: what Redis keeps per job (or batch) for RESULT_TTL."""


def _check_metadata_value(value: MetadataValue) -> MetadataValue:
    if isinstance(value, str) and len(value) > METADATA_VALUE_CHARS:
        limit = METADATA_VALUE_CHARS
        raise ValueError(f"the value has {len(value)} characters, over the limit of METADATA_VALUE_CHARS={limit}")
    return value


def _check_metadata_size(metadata: dict[str, Any]) -> dict[str, Any]:
    # One compact serialization (orjson, as the store writes it), a microsecond for a small mapping.
    size = len(orjson.dumps(metadata))
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes of JSON, over the limit of METADATA_MAX_BYTES={METADATA_MAX_BYTES}")
    return metadata


MetadataKey = Annotated[str, StringConstraints(max_length=64)]
Metadata = Annotated[
    dict[MetadataKey, Annotated[MetadataValue, AfterValidator(_check_metadata_value)]],
    AfterValidator(_check_metadata_size),
]
"""A job's `metadata`: flat values, each string at most METADATA_VALUE_CHARS, METADATA_MAX_BYTES in all; a
violation names the key (`loc` ends with `metadata` and the key) and the limit."""
StringMetadata = Annotated[
    dict[MetadataKey, Annotated[str, AfterValidator(_check_metadata_value)]],
    AfterValidator(_check_metadata_size),
]
"""A batch's `metadata` (OpenAI's: strings only), with the same caps."""


class ErrorType(enum.StrEnum):
    """Why a job (or an attempt) failed: `error.type` of a job, `error.type` of a line of its attempt log."""

    BACKEND_ERROR = "backend_error"
    """The model server's answer broke off or could not be read."""
    BACKEND_UNAVAILABLE = "backend_unavailable"
    """The model server could not be reached, or answered 5xx or 429 (retried)."""
    BACKEND_REJECTED = "backend_rejected"
    """The model server refused the request (4xx): failed at once, with its words."""
    TIMEOUT = "timeout"
    """The model server was silent for BACKEND_READ_TIMEOUT."""
    DEADLINE = "deadline"
    """JOB_DEADLINE passed since the job was created, before an attempt could start again."""
    WORKER_LOST = "worker_lost"
    """The workers running it stopped (killed, crashed, cut off from Redis) until JOB_MAX_ATTEMPTS were made."""
    INTERNAL = "internal"
    """A fault of the worker itself."""


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


ACTIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
FINISHED_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationParams(BaseModel):
    """Sampling parameters, always sent explicitly to the model server."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=1, description="Default: the DEFAULT_MAX_TOKENS setting.")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(None, max_length=8)
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("stop"), str):
            return {**data, "stop": [data["stop"]]}
        return data


class JobCreate(BaseModel):
    """A generation job as submitted: exactly one of `prompt` or `messages`."""

    model_config = ConfigDict(extra="forbid")

    id: JobId | None = Field(
        None, description="Your own id; resubmitting it with the same job (defaults applied) and metadata is a no-op."
    )
    model: str | None = Field(None, description="Default: the first model of LLM_TABLE.")
    prompt: str | None = Field(None, min_length=1)
    template: str | None = Field(
        None, description="A prompt template (e.g. 'spp'): `prompt` is then the user's text it is rendered with."
    )
    messages: list[Message] | None = Field(None, min_length=1)
    params: GenerationParams = Field(default_factory=GenerationParams)
    metadata: Metadata | None = Field(None, max_length=32)
    priority: int = Field(
        0,
        ge=0,
        le=9,
        description="0 (the default) to 9, at most the client's max_priority: a higher priority runs first among the "
        "client's own queued jobs; it does not take GPU time from other clients.",
    )
    webhook: WebhookSpec | None = Field(
        None, description="Called (Standard Webhooks) when the job ends; default: the client's own, if it has one."
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> JobCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.template is not None and self.prompt is None:
            raise ValueError("'template' renders 'prompt' (the user's text): give 'prompt', not 'messages'")
        limits: Limits | None = (info.context or {}).get("limits")
        if limits is not None:
            limits.check(self)
        return self


def fingerprint(request: str, metadata: dict[str, MetadataValue] | None) -> str:
    """A digest of a job as it will run (its GenerationRequest as JSON: model resolved, template rendered,
    defaults applied) and of its metadata (key order aside), to recognise a resubmission of the same job."""
    body = request.encode()
    if metadata is not None:
        body += b"\0" + orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()[:32]


class Limits(BaseModel):
    """Size caps applied while validating a JobCreate (passed as validation context)."""

    max_prompt_chars: int
    max_messages: int
    max_tokens: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The caps of MAX_PROMPT_CHARS, MAX_MESSAGES and MAX_TOKENS_LIMIT: every route's, from here."""
        return cls(
            max_prompt_chars=settings.MAX_PROMPT_CHARS,
            max_messages=settings.MAX_MESSAGES,
            max_tokens=settings.MAX_TOKENS_LIMIT,
        )

    def check(self, job: JobCreate) -> None:
        chars = len(job.prompt) if job.prompt is not None else sum(len(m.content) for m in job.messages or ())
        if chars > self.max_prompt_chars:
            raise ValueError(f"prompt has {chars} characters, over the limit of {self.max_prompt_chars}")
        if job.messages is not None and len(job.messages) > self.max_messages:
            raise ValueError(f"{len(job.messages)} messages, over the limit of {self.max_messages}")
        if job.params.max_tokens is not None and job.params.max_tokens > self.max_tokens:
            raise ValueError(f"params.max_tokens={job.params.max_tokens} is over the limit of {self.max_tokens}")


class GenerationRequest(BaseModel):
    """What a worker needs to run a job, stored in the job record as JSON (written by `api.jobs.request_json`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None = None
    seed: int | None = None


class Usage(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int
    total_tokens: int | None = None


class JobResult(BaseModel):
    text: str
    finish_reason: str | None
    usage: Usage


class JobError(BaseModel):
    type: ErrorType
    message: str


class WebhookState(BaseModel):
    """A job's webhook and how its delivery goes."""

    url: str
    events: list[str]
    delivery: dict[str, Any] | None = Field(
        None, description="Written by the delivery process: status (pending, delivered, failed), attempts, ..."
    )


class Job(BaseModel):
    """A job as clients see it."""

    id: str
    model: str
    status: JobStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: JobError | None = None
    metadata: dict[str, MetadataValue] | None = None
    priority: int = 0
    queue_position: int | None = Field(
        None,
        description="While the job is queued (`GET /v1/jobs/{id}`): the jobs of its model that will start before "
        "it, 0 when it is next; null otherwise.",
    )
    webhook: WebhookState | None = None
    estimated_start_at: datetime | None = Field(
        None,
        description="While the job is queued: when it should start, from its position and the jobs its model "
        "finished per second lately; null otherwise, or before the model has finished any job.",
    )


class JobRecord(TypedDict, total=False):
    """A job's record as Redis keeps it (`keys.job`, a hash), as HGETALL gives it: every value a string, times in ms
    since the epoch. The truth about a job; `public_job` makes its public `Job` of it.

    A plain dict at runtime (no validation on the polling path): the type is for mypy. Written by the scripts of
    shared/lua/: submit.lua (the fields every record has, and those of its submission), start.lua (a run),
    requeue.lua (a run handed back), finish.lua and cancel.lua (its end), webhook_outcome.lua (its webhook's
    delivery). `tests/unit/test_store.py` checks that the records the scripts write have no field left out here.
    """

    # ---- every record (submit.lua) ----
    id: Required[str]
    model: Required[str]
    status: Required[str]
    """A `JobStatus`."""
    arq: Required[str]
    """Its arq job id (its queue entry): a fresh one each time it is queued again."""
    hash: Required[str]
    """Its `fingerprint`: tells a resubmission of the same job."""
    created_at: Required[str]
    cost: Required[str]
    """Tokens reserved at submission (prompt estimated, plus max_tokens), settled by its usage when it ends."""
    weight: Required[str]
    """The client's fair-share weight when it was submitted."""
    day: Required[str]
    """The UTC day (YYYYMMDD) whose `tokens_per_day` its cost is reserved against."""
    rank: Required[str]
    """Its score in its client's indexes (`api.jobs.RANK_SLOTS`)."""
    request: str
    """Its GenerationRequest as JSON; dropped once it has succeeded, and for a batch's job once it has ended."""
    # ---- some submissions ----
    metadata: str
    """JSON."""
    priority: str
    """Absent for 0."""
    index: str
    """Its index scopes besides its model's (`api.jobs.index_scopes`)."""
    webhook: str
    """Its WebhookSpec as JSON."""
    template: str
    """Its template's tag (`template_tag`)."""
    batch: str
    """The key of the batch it belongs to (`keys.batch`)."""
    attempt_log: str
    """A JSON line per attempt that did not end it with its answer (`AttemptRecord`)."""
    # ---- runs (start.lua, requeue.lua) ----
    attempts: str
    run: str
    """The fencing token of its current run: only grows."""
    started_at: str
    worker: str
    place: str
    """Its score in the model's queue when it was taken: where it goes back if handed back."""
    not_before: str
    """When handed back with a delay: no worker takes it before (ms)."""
    # ---- its end (finish.lua, cancel.lua) ----
    finished_at: str
    result: str
    """A JobResult as JSON."""
    error: str
    """A JobError as JSON."""
    provenance: str
    """What produced its answer (`StoredProvenance`), JSON."""
    activity: str
    """Its entry id in its model's activity stream (`keys.activity`)."""
    webhook_delivery: str
    """The delivery state of its webhook (JSON), written by the delivery process."""


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso_time(ms: int | str | None) -> str | None:
    """ISO 8601 in UTC, to the ms, of a record's timestamp (ms since the epoch); None for none."""
    if ms is None or ms == "":
        return None
    return _iso_of(str(ms))


@functools.lru_cache(maxsize=4096)
def _iso_of(ms: str) -> str:
    """ISO 8601 in UTC, to the ms, of a record's timestamp (ms since the epoch), with strftime: half the time of
    datetime's. Remembered: the jobs of an array share their `created_at`, and polled jobs their dates."""
    since_epoch = int(ms)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since_epoch // 1000)) + f".{since_epoch % 1000:03d}Z"


def public_job(record: JobRecord) -> dict[str, Any]:
    """The public JSON of a job from its Redis record, without a pydantic round trip (polling is hot)."""
    return {
        "id": record["id"],
        "model": record["model"],
        "status": record["status"],
        "attempts": int(record.get("attempts", 0)),
        "created_at": iso_time(record["created_at"]),
        "started_at": iso_time(record.get("started_at")),
        "finished_at": iso_time(record.get("finished_at")),
        "result": orjson.loads(record["result"]) if "result" in record else None,
        "error": orjson.loads(record["error"]) if "error" in record else None,
        "metadata": orjson.loads(record["metadata"]) if "metadata" in record else None,
        "priority": int(record.get("priority", 0)),
        "webhook": _webhook(record) if "webhook" in record else None,
    }


def _webhook(record: JobRecord) -> dict[str, Any]:
    webhook: dict[str, Any] = orjson.loads(record["webhook"])
    webhook["delivery"] = orjson.loads(record["webhook_delivery"]) if "webhook_delivery" in record else None
    return webhook
