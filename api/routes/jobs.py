"""Generation jobs: submit (one or an array), list, count, read, follow as Server-Sent Events, cancel, retry,
erase."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.body import invalid, one_or_many_schema, parse_one_or_many
from api.deps import (
    CallerDep,
    HubDep,
    OwnerDep,
    StoreDep,
    caller_of,
    owner_of,
    resources,
)
from api.exceptions import FilterRequired, JobFinished, UnknownModel
from api.leases import Lease
from api.listing import MAX_PAGE, NO_FILTER, STATUS_NAMES, STATUSES, JobFilter, JobIndex, parse_cursor
from api.responses import JSONResponse
from api.streams import SSE_HEADERS, EventStream, sse_frame
from shared import keys
from shared.models import JOB_ID_PATTERN, Job, JobCreate, JobStatus, Limits, public_job
from shared.settings import Settings
from shared.streams import StreamEvent, checked_stream_id
from shared.templates import template_names
from shared.webhooks import allowed_hosts_context, job_webhook, signing_secret

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id.")]

RESERVED_IDS = frozenset({"stats"})
"""Job ids a submission may not take: the paths of other routes under /v1/jobs/."""

METADATA_PREFIX = "metadata."
FILTER_PARAMETERS = frozenset({"status", "model", "batch", "created_after", "created_before"})


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool = Field(description="Whether another page may follow: pass `next_after` as `after` to read it.")
    next_after: str | None = Field(description="The cursor of the next page (opaque), null on the last one.")
    first_id: str | None
    last_id: str | None


class StatusCounts(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class JobStats(BaseModel):
    object: Literal["job.stats"] = "job.stats"
    total: int
    counts: StatusCounts
    models: dict[str, StatusCounts] | None = Field(
        description="Per model (of LLM_TABLE), without a batch or metadata filter; null with one."
    )


class JobDeleted(BaseModel):
    id: str
    object: Literal["job.deleted"] = "job.deleted"
    deleted: bool


class JobsDeleted(BaseModel):
    object: Literal["job.deleted_list"] = "job.deleted_list"
    deleted: int = Field(description="How many jobs were erased (running and queued ones cancelled first).")


def _query_error(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": message, "input": None}])


def _ms(name: str, value: str | None) -> int | None:
    """A time of the query (ISO 8601, or seconds since the epoch) in ms."""
    if value is None:
        return None
    try:
        return int(float(value) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _query_error(name, f"{value!r} is neither an ISO 8601 time nor seconds since the epoch") from None
    if moment.tzinfo is None:
        raise _query_error(name, f"{value!r} has no time zone: add Z or an offset")
    return int(moment.timestamp() * 1000)


def _job_filter(request: Request, settings: Settings, *, allowed: frozenset[str]) -> JobFilter:
    """The filter of a listing, a count or an erasure from its query: `allowed` parameters, `metadata.<key>` ones
    (exact values, ANDed); any other is refused, so that a misspelt filter never widens an erasure."""
    query = request.query_params
    for name in query:
        if name not in allowed and not name.startswith(METADATA_PREFIX) and name not in ("limit", "after"):
            raise _query_error(name, f"unknown parameter; known: {', '.join(sorted(allowed))}, metadata.<key>")
    metadata: list[tuple[str, str]] = []
    for name, value in query.multi_items():
        if name.startswith(METADATA_PREFIX):
            key = name.removeprefix(METADATA_PREFIX)
            if not key or len(key) > 64:
                raise _query_error(name, "a metadata key has 1 to 64 characters")
            metadata.append((key, value))
    statuses = STATUSES
    if "status" in allowed and query.getlist("status"):
        try:
            statuses = tuple(dict.fromkeys(JobStatus(value) for value in query.getlist("status")))
        except ValueError:
            known = ", ".join(status.value for status in STATUSES)
            raise _query_error("status", f"unknown status in {query.getlist('status')}; known: {known}") from None
    model = query.get("model")
    if model is not None and model not in settings.models:
        raise UnknownModel(model, settings.models)
    return JobFilter(
        statuses=statuses,
        model=model,
        batch=query.get("batch"),
        metadata=tuple(metadata),
        created_after=_ms("created_after", query.get("created_after")),
        created_before=_ms("created_before", query.get("created_before")),
    )


StatusQuery = Annotated[
    list[JobStatus] | None, Query(description="Only jobs in these statuses (repeat the parameter for several).")
]


async def _parse_submission(raw: bytes, settings: Settings) -> tuple[list[JobCreate], bool]:
    """Validate a job or an array of jobs (off the loop when large); errors name the field (and the item's index)."""
    limits = Limits.of(settings)
    jobs, many = await parse_one_or_many(
        raw,
        JobCreate,
        max_items=settings.MAX_JOBS_PER_REQUEST,
        limit_name="MAX_JOBS_PER_REQUEST",
        context={"limits": limits, **allowed_hosts_context(settings.webhook_allowed_hosts)},
        max_lengths={"messages": settings.MAX_MESSAGES},
    )
    seen: dict[str, int] = {}
    known_templates = template_names()
    for index, job in enumerate(jobs):
        loc: tuple[int, ...] = (index,) if many else ()
        if job.model is not None and job.model not in settings.models:
            raise UnknownModel(job.model, settings.models)
        if job.template is not None and job.template not in known_templates:
            raise invalid((*loc, "template"), f"unknown template {job.template!r}; known: {', '.join(known_templates)}")
        if job.id is not None:
            if job.id in RESERVED_IDS:
                raise invalid((*loc, "id"), f"{job.id!r} is reserved: GET /v1/jobs/{job.id} is another route")
            if job.id in seen:
                raise invalid((*loc, "id"), f"id {job.id!r} appears twice, at items {seen[job.id]} and {index}")
            seen[job.id] = index
    return jobs, many


@router.post(
    "",
    status_code=202,
    response_model=Job | list[Job],
    openapi_extra=one_or_many_schema(JobCreate),
    responses={
        200: {"description": "The job already existed with the same body: nothing new was queued."},
        404: {"description": "Unknown model"},
        409: {"description": "The id exists with a different body"},
        422: {"description": "Invalid job, or a priority above the client's max_priority"},
        429: {
            "description": "A limit: the model's queue (MAX_QUEUE_DEPTH), or the client's max_queued_jobs or "
            "tokens_per_day (the body names it, its value and the client's usage), or its rate limit"
        },
    },
)
async def submit_jobs(request: Request) -> Response:
    """Queue a job, or an array of jobs stored in one round trip."""
    state, caller = resources(request), caller_of(request)
    settings = state["settings"]
    jobs, many = await _parse_submission(await request.body(), settings)
    submitted = await state["store"].submit(
        caller.owner,
        jobs,
        policy=caller.policy,
        default_webhook=job_webhook(None, caller.policy),
        webhook_secret=signing_secret(caller.policy, caller.owner, settings),
    )
    if many:
        return JSONResponse([public_job(item.record) for item in submitted], status_code=202)
    item = submitted[0]
    return JSONResponse(public_job(item.record), status_code=202 if item.created else 200)


@router.get("", response_model=JobList, responses={404: {"description": "Unknown model"}})
async def list_jobs(
    request: Request,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Jobs per page.")] = 100,
    after: Annotated[str | None, Query(description="`next_after` of the previous page.")] = None,
    status: StatusQuery = None,
    model: Annotated[str | None, Query(description="Only jobs of this model.")] = None,
    batch: Annotated[str | None, Query(description="Only the jobs of this batch.")] = None,
    created_after: Annotated[str | None, Query(description="ISO 8601 or seconds since the epoch; inclusive.")] = None,
    created_before: Annotated[str | None, Query(description="ISO 8601 or seconds since the epoch; exclusive.")] = None,
) -> Response:
    """The caller's jobs, newest first, a page at a time; `metadata.<key>=<value>` keeps only jobs whose metadata
    has that value (as text; several are ANDed). Paging while jobs are added never repeats nor skips a job that
    existed when paging began."""
    state = resources(request)
    where = _job_filter(request, state["settings"], allowed=FILTER_PARAMETERS)
    if after is not None:
        try:
            parse_cursor(after)
        except ValueError as exc:
            raise _query_error("after", str(exc)) from None
    page = await state["index"].page(caller.owner, where, limit, after)
    data = [public_job(record) for record in page.jobs]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "has_more": page.more,
            "next_after": page.cursor,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


STATS_PARAMETERS: dict[str, Any] = {
    "parameters": [
        {
            "name": "batch",
            "in": "query",
            "required": False,
            "description": "Only the jobs of this batch.",
            "schema": {"type": "string", "title": "Batch"},
        }
    ]
}
"""`openapi_extra` of the stats route, which reads its query itself (`_job_filter`)."""


@router.get(
    "/stats",
    response_model=JobStats,
    responses={422: {"description": "Two filters, or an unknown parameter"}},
    openapi_extra=STATS_PARAMETERS,
)
async def job_stats(request: Request) -> Response:
    """How many of the caller's jobs are in each status, per model; or of one batch, or of one
    `metadata.<key>=<value>` pair. One script of a few ZCARDs: cheap enough to poll every second.

    The query is read by `_job_filter` rather than declared: a dashboard polls this route, and FastAPI's
    parameter and dependency machinery was most of its cost."""
    state, owner = resources(request), owner_of(request)
    where = _job_filter(request, state["settings"], allowed=frozenset({"batch"})) if request.query_params else NO_FILTER
    if len(where.scopes()) > 1:
        raise _query_error("batch", "at most one filter: a batch or one metadata pair")
    counts = await state["index"].counts(owner, where)
    totals = {name: sum(row[name] for row in counts.values()) for name in STATUS_NAMES}
    return JSONResponse(
        {
            "object": "job.stats",
            "total": sum(totals.values()),
            "counts": totals,
            "models": None if where.scopes() else counts,
        }
    )


@router.delete(
    "",
    response_model=JobsDeleted,
    responses={422: {"description": "No filter, or an unknown parameter"}},
)
async def erase_jobs(
    request: Request,
    caller: CallerDep,
    batch: Annotated[str | None, Query(description="The jobs of this batch.")] = None,
) -> Response:
    """Erase every job of the caller matching the filters (at least one: a batch, `metadata.<key>=<value>`):
    queued and running ones are cancelled first; records, token streams and index entries are deleted."""
    state = resources(request)
    where = _job_filter(request, state["settings"], allowed=frozenset({"batch", "status", "model"}))
    if not where.scopes():
        raise FilterRequired("give at least one filter: batch=<id> or metadata.<key>=<value>")
    erased = await state["index"].erase_where(caller.owner, where)
    return JSONResponse({"object": "job.deleted_list", "deleted": erased})


@router.get("/{job_id}", response_model=Job, responses={404: {"description": "Unknown job"}})
async def get_job(request: Request, job_id: JobIdPath) -> Response:
    """The job's status, and its result or error once finished; while it is queued, its place in the queue and
    when it should start."""
    state, owner = resources(request), owner_of(request)
    record = await state["store"].get(owner, job_id)
    position = estimate = None
    if record["status"] == JobStatus.QUEUED:
        position, estimate = await state["estimator"].queue_fields(keys.key_id(owner, job_id), record)
        if position is None:  # it left the queue since it was read: a queued job is shown with its place
            record = await state["store"].get(owner, job_id)
    job = public_job(record)
    job["queue_position"], job["estimated_start_at"] = position, estimate
    return JSONResponse(job)


@router.delete(
    "/{job_id}",
    response_model=Job | JobDeleted,
    responses={404: {"description": "Unknown job"}},
)
async def cancel_or_erase_job(request: Request, job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    """Cancel a queued job at once, or a running one (its request to the model server is closed): answers the
    job. Erase a finished one (record, token stream, index entries): answers `{"id", "deleted": true}`."""
    try:
        return JSONResponse(public_job(await store.cancel(owner, job_id)))
    except JobFinished:
        pass
    index: JobIndex = resources(request)["index"]
    erased, _ = await index.erase(owner, [job_id])
    if not erased:  # retried since: it runs again
        return JSONResponse(public_job(await store.cancel(owner, job_id)))
    return JSONResponse({"id": job_id, "object": "job.deleted", "deleted": True})


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=Job,
    responses={
        404: {"description": "Unknown job"},
        409: {"description": "The job is queued, running or succeeded, or belongs to a batch"},
        429: {"description": "A limit of the client or of the model's queue, as for a submission"},
    },
)
async def retry_job(job_id: JobIdPath, store: StoreDep, caller: CallerDep) -> Response:
    """Run a failed or cancelled job again under its id, as it was submitted: attempts start again from 0, its
    event stream starts again with a `reset` event."""
    record = await store.retry(caller.owner, job_id, policy=caller.policy)
    return JSONResponse(public_job(record), status_code=202)


@router.get(
    "/{job_id}/events",
    response_class=EventStream,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`queued` events ({queue_position, estimated_start_at}, without an id) while the job "
            "waits, when its position changes; `token` events ({text}), `reset` events ({attempt}) when an attempt "
            "starts over, then one `done` event carrying the finished job.",
        },
        404: {"description": "Unknown job"},
        429: {"description": "The client already holds its max_streams open event streams (or its rate limit)"},
    },
)
async def job_events(
    request: Request,
    job_id: JobIdPath,
    store: StoreDep,
    hub: HubDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> EventStream:
    """Follow the job as Server-Sent Events: its place in the queue while it waits, the tokens so far, then live
    ones, then the finished job."""
    owner, state = caller.owner, resources(request)
    record = await store.get(owner, job_id)
    after = "0-0"
    if last_event_id:
        try:
            after = checked_stream_id(last_event_id)
        except ValueError as exc:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("header", "last-event-id"), "msg": str(exc)}]
            ) from None
    kid = keys.key_id(owner, job_id)
    stream = keys.stream(kid)
    # A finished job whose stream outlived STREAM_TTL: its whole text is replayed as one chunk.
    replay = JobStatus(record["status"]).finished and not await store.redis.exists(stream)
    lease = await state["leases"].acquire(owner, caller.policy.max_streams)
    if replay:
        return _sse(_replay_finished(public_job(record)), lease)

    async def done_frame(event: StreamEvent) -> bytes:
        return sse_frame("done", event.id, public_job(await store.get(owner, job_id)))

    watch = None
    if record["status"] == JobStatus.QUEUED:
        watch = functools.partial(state["queue_watch"].follow, kid, record["model"], record["arq"])

    async def events() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(hub.follow_frames(stream, done_frame, after, watch=watch)) as frames:
            async for chunk in frames:
                yield chunk or b": keep-alive\n\n"

    return _sse(events(), lease)


async def _replay_finished(job: dict[str, Any]) -> AsyncIterator[bytes]:
    if job["result"] is not None:
        yield sse_frame("token", "0-1", {"text": job["result"]["text"]})
    yield sse_frame("done", "0-2", job)


def _sse(body: AsyncIterator[bytes], lease: Lease) -> EventStream:
    return EventStream(body, headers=SSE_HEADERS, on_close=lease.release)
