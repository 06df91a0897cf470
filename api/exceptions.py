"""The few errors of albert-spp's domain, raised by the API's stores; api/errors.py maps each to its HTTP answer."""

from __future__ import annotations


class SppError(Exception):
    """Base class: the message is meant for the client."""


class JobNotFound(SppError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class UnknownModel(SppError):
    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(f"unknown model {model!r}; known models: {', '.join(known)}")
        self.model = model
        self.known = known


class JobConflict(SppError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with id {job_id!r} already exists with a different body")
        self.job_id = job_id


class JobFinished(SppError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} has already finished: {status}")
        self.job_id = job_id
        self.status = status


class JobNotRetryable(SppError):
    """Only a failed or cancelled job runs again under its id; not one still queued or running, nor a succeeded
    one, nor one of a batch."""

    def __init__(self, job_id: str, status: str) -> None:
        if status == "batch":
            why = "it belongs to a batch (create a new batch for its requests)"
        else:
            why = f"it is {status}; only failed or cancelled jobs can be retried"
        super().__init__(f"job {job_id!r} cannot be retried: {why}")
        self.job_id = job_id
        self.status = status


class FilterRequired(SppError):
    """A request over many jobs that names none of them."""


def _number(value: float) -> str:
    """A figure of a message: whole numbers in full (bytes, tokens), others as short as they go."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class LimitReached(SppError):
    """A request that would pass a limit, refused whole: answered 429 with the limit's name and value, the usage and
    what the request asked, and Retry-After: `retry_after` when known, else estimated by api/errors.py for a limit
    on queued jobs (`model` names the queue that must drain), else 1 second."""

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        value: float,
        usage: float,
        requested: float,
        model: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.usage = usage
        self.requested = requested
        self.model = model
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {"limit": self.limit, "value": self.value, "usage": self.usage, "requested": self.requested}


class QueueFull(LimitReached):
    """The model's queue holds `limit` jobs of the submission's kind: `setting` (MAX_QUEUE_DEPTH for interactive
    jobs, MAX_BATCH_QUEUE_DEPTH for batch jobs) names the limit."""

    def __init__(self, model: str, setting: str, limit: int, usage: int = 0, requested: int = 0) -> None:
        kind = "batch" if setting == "MAX_BATCH_QUEUE_DEPTH" else "interactive"
        super().__init__(
            f"the queue of model {model!r} is full: {setting}={limit} {kind} jobs, {usage} queued or running, "
            f"{requested} more asked; retry later",
            limit=setting,
            value=limit,
            usage=usage,
            requested=requested,
            model=model,
        )


class QuotaExceeded(LimitReached):
    """A request would take a client past one of its limits (its policy, shared/policy.py); `what` is the limit's
    unit in the message."""

    def __init__(
        self,
        limit: str,
        value: float,
        usage: float,
        requested: float,
        *,
        what: str,
        retry_after: int | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(
            f"quota exceeded: this client's {limit} is {_number(value)} {what}; it has {_number(usage)} and this "
            f"request asks {_number(requested)} more",
            limit=limit,
            value=value,
            usage=usage,
            requested=requested,
            model=model,
            retry_after=retry_after,
        )


class PriorityNotAllowed(SppError):
    """A job's priority is above the client's max_priority: answered 422."""

    def __init__(self, index: int | None, priority: int, max_priority: int) -> None:
        where = f"item {index}: " if index is not None else ""
        super().__init__(f"{where}priority {priority} is above this client's max_priority={max_priority}")


class StoreUnavailable(SppError):
    def __init__(self) -> None:
        super().__init__("the job store (Redis) is unavailable; retry later")


class FileNotFound(SppError):
    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file with id {file_id!r}")
        self.file_id = file_id


class FileTooLarge(SppError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is over the limit of BATCH_MAX_BYTES={limit} bytes")
        self.limit = limit


class BadFileRequest(SppError):
    """An upload that is not a multipart form with a `file` and `purpose=batch`, or a file unfit for its use."""


class BatchNotFound(SppError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch with id {batch_id!r}")
        self.batch_id = batch_id


class BatchFinished(SppError):
    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"batch {batch_id!r} has already ended: {status}")
        self.batch_id = batch_id
        self.status = status
