"""The few errors of albert-spp's domain; api/errors.py maps each to its HTTP answer."""

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


class QueueFull(SppError):
    """The model's queue holds `limit` jobs of the submission's kind: `setting` (MAX_QUEUE_DEPTH for interactive
    jobs, MAX_BATCH_QUEUE_DEPTH for batch jobs) names the limit."""

    def __init__(self, model: str, setting: str, limit: int) -> None:
        kind = "batch" if setting == "MAX_BATCH_QUEUE_DEPTH" else "interactive"
        super().__init__(f"the queue of model {model!r} is full: {setting}={limit} {kind} jobs; retry later")
        self.model = model
        self.setting = setting
        self.limit = limit


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
