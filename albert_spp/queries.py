"""What both clients send: job bodies, arrays split to the server's limit, filters as query parameters."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from urllib.parse import quote

from albert_spp.models import JobRequest, Message, MetadataValue, Params, WebhookRequest

MAX_JOBS_PER_REQUEST = 1000
"""The server's default MAX_JOBS_PER_REQUEST: the most jobs `submit_many` sends in one request."""

Query = list[tuple[str, str]]
Time = datetime | int | float | str


def job_path(job_id: str, *rest: str) -> str:
    return "/".join(("/v1/jobs", quote(job_id, safe=""), *rest))


def job_body(
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    model: str | None = None,
    template: str | None = None,
    params: Params | None = None,
    id: str | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    priority: int | None = None,
    webhook: WebhookRequest | None = None,
) -> JobRequest:
    """A `POST /v1/jobs` body of the given fields (those left out take the server's defaults)."""
    body: JobRequest = {}
    if id is not None:
        body["id"] = id
    if model is not None:
        body["model"] = model
    if prompt is not None:
        body["prompt"] = prompt
    if template is not None:
        body["template"] = template
    if messages is not None:
        body["messages"] = list(messages)
    if params:
        body["params"] = params
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if priority is not None:
        body["priority"] = priority
    if webhook is not None:
        body["webhook"] = webhook
    return body


def chunks(jobs: Iterable[JobRequest | str], size: int) -> Iterator[list[JobRequest]]:
    """`jobs` (a bare string is a prompt) in lists of at most `size`, read lazily."""
    if size < 1:
        raise ValueError(f"max_jobs_per_request must be at least 1, not {size}")
    bodies = (JobRequest(prompt=job) if isinstance(job, str) else job for job in jobs)
    while chunk := list(itertools.islice(bodies, size)):
        yield chunk


def metadata_text(value: MetadataValue) -> str:
    """A metadata value as the server's filters match it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def time_text(value: Time) -> str:
    """A time as the server's filters take it: ISO 8601, or unix seconds."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def filters(batch: str | None = None, metadata: Mapping[str, MetadataValue] | None = None) -> Query:
    query: Query = [("batch", batch)] if batch is not None else []
    query += [(f"metadata.{key}", metadata_text(value)) for key, value in (metadata or {}).items()]
    return query


def list_query(
    *,
    limit: int | None = None,
    after: str | None = None,
    status: str | Iterable[str] | None = None,
    model: str | None = None,
    batch: str | None = None,
    created_after: Time | None = None,
    created_before: Time | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> Query:
    """The query of `GET /v1/jobs`; `status` may name several."""
    query: Query = []
    if limit is not None:
        query.append(("limit", str(limit)))
    if after is not None:
        query.append(("after", after))
    statuses = [status] if isinstance(status, str) else list(status or ())
    query += [("status", str(item)) for item in statuses]
    if model is not None:
        query.append(("model", model))
    if created_after is not None:
        query.append(("created_after", time_text(created_after)))
    if created_before is not None:
        query.append(("created_before", time_text(created_before)))
    return query + filters(batch, metadata)


def erase_query(batch: str | None, metadata: Mapping[str, MetadataValue] | None) -> Query:
    query = filters(batch, metadata)
    if not query:
        raise ValueError("delete_where needs a filter: metadata, batch or both")
    return query
