"""Generation jobs: submit (one or an array), read, follow as Server-Sent Events, cancel."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from api.body import invalid, one_or_many_schema, parse_one_or_many
from api.deps import JOB_ID_PARAMETER, HubDep, OwnerDep, StoreDep, caller_of, job_id_of, owner_of, resources
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


def _parse_submission(raw: bytes, settings: Settings) -> tuple[list[JobCreate], bool]:
    """Validate a job or an array of jobs; errors name the field (and the item's index)."""
    limits = Limits(
        max_prompt_chars=settings.MAX_PROMPT_CHARS,
        max_messages=settings.MAX_MESSAGES,
        max_tokens=settings.MAX_TOKENS_LIMIT,
    )
    jobs, many = parse_one_or_many(
        raw,
        JobCreate,
        max_items=settings.MAX_JOBS_PER_REQUEST,
        limit_name="MAX_JOBS_PER_REQUEST",
        context={"limits": limits},
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
    jobs, many = _parse_submission(await request.body(), state["settings"])
    submitted = await state["store"].submit(caller.owner, jobs, policy=caller.policy)
    if many:
        return JSONResponse([public_job(item.record) for item in submitted], status_code=202)
    item = submitted[0]
    return JSONResponse(public_job(item.record), status_code=202 if item.created else 200)


@router.get(
    "/{job_id}", response_model=Job, responses={404: {"description": "Unknown job"}}, openapi_extra=JOB_ID_PARAMETER
)
async def get_job(request: Request) -> Response:
    """The job's status, and its result or error once finished."""
    job_id = job_id_of(request)
    return JSONResponse(public_job(await resources(request)["store"].get(await owner_of(request), job_id)))


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
            "description": "`token` events ({text}), `reset` events ({attempt}) when an attempt starts over, "
            "then one `done` event carrying the finished job.",
        },
        404: {"description": "Unknown job"},
    },
)
async def job_events(
    job_id: JobIdPath,
    store: StoreDep,
    hub: HubDep,
    owner: OwnerDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
) -> EventStream:
    """Follow the job as Server-Sent Events: the tokens so far, then live ones, then the finished job."""
    record = await store.get(owner, job_id)
    after = "0-0"
    if last_event_id:
        try:
            after = checked_stream_id(last_event_id)
        except ValueError as exc:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("header", "last-event-id"), "msg": str(exc)}]
            ) from None
    stream = keys.stream(keys.key_id(owner, job_id))
    if JobStatus(record["status"]).finished and not await store.redis.exists(stream):
        # The stream outlived STREAM_TTL: replay the whole text as one chunk.
        return _sse(_replay_finished(public_job(record)))

    async def done_frame(event: StreamEvent) -> bytes:
        return sse_frame("done", event.id, public_job(await store.get(owner, job_id)))

    async def events() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(hub.follow_frames(stream, done_frame, after)) as frames:
            async for chunk in frames:
                yield chunk or b": keep-alive\n\n"

    return _sse(events())


async def _replay_finished(job: dict[str, Any]) -> AsyncIterator[bytes]:
    if job["result"] is not None:
        yield sse_frame("token", "0-1", {"text": job["result"]["text"]})
    yield sse_frame("done", "0-2", job)


def _sse(body: AsyncIterator[bytes]) -> EventStream:
    return EventStream(body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
