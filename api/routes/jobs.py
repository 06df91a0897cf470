"""Generation jobs: submit (one or an array), read, follow as Server-Sent Events, cancel."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from api.body import invalid, one_or_many_schema, parse_one_or_many
from api.deps import (
    JOB_ID_PARAMETER,
    CallerDep,
    HubDep,
    OwnerDep,
    StoreDep,
    caller_of,
    job_id_of,
    owner_of,
    resources,
)
from api.leases import Lease
from api.responses import JSONResponse
from api.streams import EventStream, sse_frame
from shared import keys
from shared.errors import UnknownModel
from shared.models import JOB_ID_PATTERN, Job, JobCreate, JobStatus, Limits, public_job
from shared.settings import Settings
from shared.streams import StreamEvent, checked_stream_id
from shared.templates import template_names

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id.")]


async def _parse_submission(raw: bytes, settings: Settings) -> tuple[list[JobCreate], bool]:
    """Validate a job or an array of jobs (off the loop when large); errors name the field (and the item's index)."""
    limits = Limits(
        max_prompt_chars=settings.MAX_PROMPT_CHARS,
        max_messages=settings.MAX_MESSAGES,
        max_tokens=settings.MAX_TOKENS_LIMIT,
    )
    jobs, many = await parse_one_or_many(
        raw,
        JobCreate,
        max_items=settings.MAX_JOBS_PER_REQUEST,
        limit_name="MAX_JOBS_PER_REQUEST",
        context={"limits": limits},
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
    state, caller = resources(request), await caller_of(request)
    jobs, many = await _parse_submission(await request.body(), state["settings"])
    submitted = await state["store"].submit(caller.owner, jobs, policy=caller.policy)
    if many:
        return JSONResponse([public_job(item.record) for item in submitted], status_code=202)
    item = submitted[0]
    return JSONResponse(public_job(item.record), status_code=202 if item.created else 200)


@router.get(
    "/{job_id}", response_model=Job, responses={404: {"description": "Unknown job"}}, openapi_extra=JOB_ID_PARAMETER
)
async def get_job(request: Request) -> Response:
    """The job's status, and its result or error once finished; while it is queued, its place in the queue and
    when it should start."""
    job_id = job_id_of(request)
    state, owner = resources(request), await owner_of(request)
    record = await state["store"].get(owner, job_id)
    job = public_job(record)
    if record["status"] == JobStatus.QUEUED:
        job["queue_position"], job["estimated_start_at"] = await state["estimator"].queue_fields(
            keys.key_id(owner, job_id), record
        )
    else:
        job["queue_position"] = job["estimated_start_at"] = None
    return JSONResponse(job)


@router.delete(
    "/{job_id}",
    response_model=Job,
    responses={404: {"description": "Unknown job"}, 409: {"description": "The job has already finished"}},
)
async def cancel_job(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    """Cancel a queued job at once, or a running one (its request to the model server is closed)."""
    return JSONResponse(public_job(await store.cancel(owner, job_id)))


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
    return EventStream(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, on_close=lease.release)
