"""The batch object of the OpenAI Batch API, as the API answers it and the webhook deliverer sends it
(a batch's record in Redis is written by api/batches.py; see ../shared/reference/openai-batch.md)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import orjson


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


WITH_RESULTS = frozenset({BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})
"""Ended statuses whose batch has output and error files."""


def generated_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output (`kind` 'output') or error ('errors') file: made from the batch's jobs on demand."""
    return f"file-{batch_id}-{kind}"


_TIMES = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def _seconds(record: Mapping[str, str], field: str) -> int | None:
    value = record.get(field)
    return int(value) // 1000 if value else None


def public_batch(record: Mapping[str, str]) -> dict[str, Any]:
    """The OpenAI batch object of a batch hash (times in Unix seconds)."""
    batch_id, status = record["id"], record["status"]
    completed, failed = int(record.get("completed", 0)), int(record.get("failed", 0)) + int(record.get("cancelled", 0))
    ended = status in WITH_RESULTS
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": record["endpoint"],
        "errors": orjson.loads(record["errors"]) if record.get("errors") else None,
        "input_file_id": record["input_file_id"],
        "completion_window": record["completion_window"],
        "status": status,
        "output_file_id": generated_file_id(batch_id, "output") if ended else None,
        "error_file_id": generated_file_id(batch_id, "errors") if ended and failed else None,
        "created_at": _seconds(record, "created_at"),
        **{field: _seconds(record, field) for field in _TIMES},
        "request_counts": {"total": int(record.get("total", 0)), "completed": completed, "failed": failed},
        "metadata": orjson.loads(record["metadata"]) if record.get("metadata") else None,
    }


def ended_at(record: Mapping[str, str]) -> int | None:
    """Unix seconds of when the batch ended (None while it runs)."""
    return _seconds(record, f"{record['status']}_at") if record["status"] in WITH_RESULTS else None
