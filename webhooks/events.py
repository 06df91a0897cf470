"""A webhook event as the delivery process handles it: read from the events stream or from the retries, and the
Standard Webhooks payload it is delivered with, built from the job's (or batch's) record at each attempt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from shared import keys
from shared.batches import public_batch
from shared.models import JobRecord, public_job

BATCH_PREFIX = f"{keys.PREFIX}:batch:"


@dataclass(slots=True)
class Event:
    """One end of a job (`job` the key id) or of a batch (`batch` its Redis key), to deliver."""

    msg_id: str
    """Its `webhook-id`, the same at every attempt: `msg_` and the events stream's entry id."""
    event: str
    at: int
    """When the job or batch ended (ms): the payload's `timestamp`."""
    job: str | None = None
    batch: str | None = None
    attempts: int = 0
    first_attempt: int = 0
    """When its first attempt was made (ms; 0 before): the retries stop WEBHOOK_RETRY_HOURS after it."""
    entry: str | None = None
    """Its stream entry id while it is pending in the consumer group (not yet acknowledged); None once it is a
    retry."""

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> Event:
        """An event of the stream: fields `k` (job key id) or `b` (batch key), `e`, `t`; ValueError if malformed."""
        if "e" not in fields or "t" not in fields or ("k" in fields) == ("b" in fields):
            raise ValueError(f"webhook event {entry_id} is malformed: {sorted(fields)}")
        return cls(
            msg_id=f"msg_{entry_id}",
            event=fields["e"],
            at=int(fields["t"]),
            job=fields.get("k"),
            batch=fields.get("b"),
            entry=entry_id,
        )

    @classmethod
    def from_state(cls, msg_id: str, state: str) -> Event:
        """An event taken from the retries (`state`: the JSON of `state`)."""
        data = orjson.loads(state)
        return cls(
            msg_id=msg_id,
            event=data["e"],
            at=data["t"],
            job=data.get("k"),
            batch=data.get("b"),
            attempts=data["n"],
            first_attempt=data["f"],
        )

    def state(self) -> str:
        """What the retries keep of the event (its stream entry is gone by then)."""
        target = {"k": self.job} if self.job is not None else {"b": self.batch}
        return orjson.dumps(
            {**target, "e": self.event, "t": self.at, "n": self.attempts, "f": self.first_attempt}
        ).decode()

    @property
    def record_key(self) -> str:
        """The Redis key of its job's (or batch's) record."""
        return keys.job(self.job) if self.job is not None else str(self.batch)

    @property
    def owner(self) -> str:
        """Its client: the owner part of the job's key id or of the batch's key."""
        if self.job is not None:
            return keys.split_key_id(self.job)[0]
        return str(self.batch).removeprefix(BATCH_PREFIX).partition(":")[0]

    @property
    def type(self) -> str:
        """Its Standard Webhooks `type`: `job.<event>` or `batch.<event>`."""
        return f"{'job' if self.job is not None else 'batch'}.{self.event}"


def iso_ms(ms: int) -> str:
    """ISO 8601 in UTC to the millisecond, as the API writes its dates."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_of(record: dict[str, str]) -> dict[str, Any] | None:
    """The record's `webhook` ({"url", "events"}), or None when it has none (or an unreadable one)."""
    try:
        spec = orjson.loads(record["webhook"]) if record.get("webhook") else None
    except orjson.JSONDecodeError:
        return None
    return spec if isinstance(spec, dict) and isinstance(spec.get("url"), str) else None


def payload(event: Event, record: dict[str, str]) -> bytes:
    """The body of a delivery: `{"type", "timestamp", "data"}`, `data` being the job as `GET /v1/jobs/{id}` shows it
    (its webhook without the delivery state, which this delivery is changing), or the batch's OpenAI object."""
    data: Any = None
    if event.job is not None:
        data = public_job(cast(JobRecord, record))  # a job event's record is a job's
        if isinstance(data.get("webhook"), dict):
            data["webhook"] = {key: value for key, value in data["webhook"].items() if key != "delivery"}
    else:
        data = public_batch(record)
    return orjson.dumps({"type": event.type, "timestamp": iso_ms(event.at), "data": data})
