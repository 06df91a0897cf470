"""The shapes of the OpenAI Batch API: input lines into jobs, job records into output and error lines, and
the batch object's ids (see ../shared/reference/openai-batch.md; the batch object is shared/batches.py).

Pure functions, without Redis: api/batches.py does the storage.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from typing import Any, Literal, NamedTuple

import orjson

from api import json_pieces
from api.openai_shapes import Endpoint, OpenAIError, completion_object, parse_request
from shared.batches import BatchStatus
from shared.models import JobCreate, JobError, JobResult, JobStatus, Limits

MAX_CUSTOM_ID_CHARS = 512
CompletionWindow = Literal["24h"]
"""`completion_window`: only OpenAI's "24h". A longer window would keep a batch's jobs queued, and its index in
Redis, for as long (a "9999h" batch was accepted once)."""


_GENERATED_FILE = re.compile(r"^file-(batch-[0-9a-f]{24})-(output|errors)$")


def new_batch_id() -> str:
    return f"batch-{uuid.uuid4().hex[:24]}"


def batch_job_id(batch_id: str, index: int) -> str:
    """The job of the batch's request `index` (from 0, blank lines aside)."""
    return f"{batch_id}-{index:06d}"


def parse_generated_file_id(file_id: str) -> tuple[str, str] | None:
    """(batch id, kind) of a generated file's id; None for any other id."""
    match = _GENERATED_FILE.match(file_id)
    return (match[1], match[2]) if match else None


class LineError(Exception):
    """A problem of one input line, reported in the batch's `errors`."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def entry(self, line: int | None) -> dict[str, Any]:
        return {"code": self.code, "line": line, "message": self.message, "param": self.param}


def parse_line(
    raw: bytes, endpoint: Endpoint, models: Collection[str], limits: Limits, job_id: str | None = None
) -> tuple[str, JobCreate]:
    """The custom_id and the job `job_id` (its metadata names the custom_id) of one input line.

    Raises LineError naming the problem and the field.
    """
    try:
        line = json_pieces.loads(raw)  # a line of BATCH_MAX_LINE_BYTES (4 MiB) would hold the GIL up to 0.3 s at once
    except orjson.JSONDecodeError as exc:
        raise LineError("invalid_json_line", f"the line is not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise LineError("invalid_json_line", "the line is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS:
        message = f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters"
        raise LineError("invalid_custom_id", message, "custom_id")
    if line.get("method") != "POST":
        raise LineError("invalid_method", f"method must be 'POST', not {line.get('method')!r}", "method")
    if line.get("url") != endpoint:
        message = f"url {line.get('url')!r} is not the batch's endpoint {endpoint.value!r}"
        raise LineError("invalid_url", message, "url")
    body = line.get("body")
    if isinstance(body, dict) and body.get("stream"):
        raise LineError("invalid_request", "stream is not supported in a batch", "body.stream")
    try:
        request = parse_request(endpoint, body, models=models, limits=limits, job_id=job_id)
    except OpenAIError as exc:
        code = "model_not_found" if exc.status == 404 else "invalid_request"
        raise LineError(code, exc.message, f"body.{exc.param}" if exc.param else "body") from None
    return custom_id, request.job.model_copy(update={"metadata": {"custom_id": custom_id}})


class CheckedLine(NamedTuple):
    """A request line of a batch input file, checked: its custom_id and model, or its problem."""

    number: int
    custom_id: str
    model: str | None
    error: LineError | None


def check_lines(
    lines: list[tuple[int, bytes]], endpoint: Endpoint, models: Collection[str], limits: Limits, max_bytes: int
) -> list[CheckedLine]:
    """`parse_line` of each (line number, line) but blank ones, longer ones than `max_bytes` refused unread.

    Pure CPU: batch validation runs it in a worker thread, a group of lines at a time (see BatchStore._validate).
    """
    checked: list[CheckedLine] = []
    for number, raw in lines:
        if len(raw) > max_bytes:
            message = f"the line is over the limit of BATCH_MAX_LINE_BYTES={max_bytes} bytes"
            checked.append(CheckedLine(number, "", None, LineError("line_too_long", message)))
        elif raw.strip():
            try:
                custom_id, job = parse_line(raw, endpoint, models, limits)
            except LineError as error:
                checked.append(CheckedLine(number, "", None, error))
            else:
                checked.append(CheckedLine(number, custom_id, job.model, None))
    return checked


# ---- output -------------------------------------------------------------------------------------------

JOB_FIELDS = ("status", "model", "created_at", "result", "error", "metadata")
"""The fields of a job record that its output or error line needs."""


def _line(job_id: str, record: Mapping[str, str], response: Any, error: Any) -> bytes:
    custom_id = orjson.loads(record["metadata"]).get("custom_id") if record.get("metadata") else None
    line = {"id": f"batch_req_{job_id}", "custom_id": custom_id, "response": response, "error": error}
    return orjson.dumps(line) + b"\n"


def output_line(endpoint: Endpoint, job_id: str, record: Mapping[str, str]) -> bytes:
    """The output line of a succeeded job: its completion as the endpoint answers it."""
    result = JobResult.model_validate_json(record["result"])
    body = completion_object(endpoint, job_id, record["model"], int(record["created_at"]) // 1000, result)
    return _line(job_id, record, {"status_code": 200, "request_id": job_id, "body": body}, None)


def error_line(job_id: str, record: Mapping[str, str], batch_status: str) -> bytes:
    """The error-file line of a failed or cancelled job; a cancelled one says why (`batch_status`)."""
    if record["status"] == JobStatus.FAILED:
        error = JobError.model_validate_json(record["error"])
        code, message = str(error.type), error.message
    elif batch_status == BatchStatus.EXPIRED:
        code, message = "batch_expired", "the batch expired before this request was processed"
    elif batch_status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        code, message = "batch_cancelled", "the batch was cancelled before this request was processed"
    else:
        code, message = "request_cancelled", "this request was cancelled (DELETE /v1/jobs)"
    return _line(job_id, record, None, {"code": code, "message": message})
