"""Generation jobs: submit (one or an array), read, follow as Server-Sent Events, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter, ValidationError

from api.deps import HubDep, OwnerDep, SettingsDep, StoreDep
from api.responses import JSONResponse
from shared import keys
from shared.errors import UnknownModel
from shared.models import JOB_ID_PATTERN, Job, JobCreate, JobStatus, Limits, public_job
from shared.settings import Settings
from shared.streams import EventType, stream_id

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id.")]
_JOBS = TypeAdapter(list[JobCreate])
_SUBMIT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/JobCreate"},
                        {"type": "array", "items": {"$ref": "#/components/schemas/JobCreate"}},
                    ]
                }
            }
        },
    }
}


def _parse_submission(raw: bytes, settings: Settings) -> tuple[list[JobCreate], bool]:
    """Validate a job or an array of jobs; errors name the field (and the item's index)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}", "input": None}]
        ) from None
    many = isinstance(data, list)
    if many and len(data) > settings.MAX_JOBS_PER_REQUEST:
        msg = f"{len(data)} jobs in one request, over the limit of MAX_JOBS_PER_REQUEST={settings.MAX_JOBS_PER_REQUEST}"
        raise RequestValidationError([{"type": "too_long", "loc": ("body",), "msg": msg, "input": None}])
    if many and not data:
        raise RequestValidationError([{"type": "too_short", "loc": ("body",), "msg": "empty array", "input": []}])
    limits = Limits(
        max_prompt_chars=settings.MAX_PROMPT_CHARS,
        max_messages=settings.MAX_MESSAGES,
        max_tokens=settings.MAX_TOKENS_LIMIT,
    )
    try:
        jobs = (
            _JOBS.validate_python(data, context={"limits": limits})
            if many
            else [JobCreate.model_validate(data, context={"limits": limits})]
        )
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None
    seen: dict[str, int] = {}
    for index, job in enumerate(jobs):
        if job.model is not None and job.model not in settings.models:
            raise UnknownModel(job.model, settings.models)
        if job.id is not None:
            if job.id in seen:
                msg = f"id {job.id!r} appears twice, at items {seen[job.id]} and {index}"
                raise RequestValidationError([{"type": "value_error", "loc": ("body", index, "id"), "msg": msg}])
            seen[job.id] = index
    return jobs, many


@router.post(
    "",
    status_code=202,
    response_model=Job | list[Job],
    openapi_extra=_SUBMIT_SCHEMA,
    responses={
        200: {"description": "The job already existed with the same body: nothing new was queued."},
        404: {"description": "Unknown model"},
        409: {"description": "The id exists with a different body"},
    },
)
async def submit_jobs(request: Request, settings: SettingsDep, store: StoreDep, owner: OwnerDep) -> Response:
    """Queue a job, or an array of jobs stored in one round trip."""
    jobs, many = _parse_submission(await request.body(), settings)
    submitted = await store.submit(owner, jobs)
    if many:
        return JSONResponse([public_job(item.record) for item in submitted], status_code=202)
    item = submitted[0]
    return JSONResponse(public_job(item.record), status_code=202 if item.created else 200)


@router.get("/{job_id}", response_model=Job, responses={404: {"description": "Unknown job"}})
async def get_job(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    """The job's status, and its result or error once finished."""
    return JSONResponse(public_job(await store.get(owner, job_id)))


@router.delete(
    "/{job_id}",
    response_model=Job,
    responses={404: {"description": "Unknown job"}, 409: {"description": "The job has already finished"}},
)
async def cancel_job(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    """Cancel a queued job at once, or a running one (its request to the model server is closed)."""
    return JSONResponse(public_job(await store.cancel(owner, job_id)))


def _frame(event: str, event_id: str, data: Any) -> bytes:
    return b"event: %s\nid: %s\ndata: %s\n\n" % (event.encode(), event_id.encode(), orjson.dumps(data))


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
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
) -> StreamingResponse:
    """Follow the job as Server-Sent Events: the tokens so far, then live ones, then the finished job."""
    record = await store.get(owner, job_id)
    after = "0-0"
    if last_event_id:
        try:
            stream_id(last_event_id)
        except ValueError:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("header", "last-event-id"), "msg": "not a stream event id"}]
            ) from None
        after = last_event_id
    stream = keys.stream(keys.key_id(owner, job_id))
    if JobStatus(record["status"]).finished and not await store.redis.exists(stream):
        # The stream outlived STREAM_TTL: replay the whole text as one chunk.
        return _sse(_replay_finished(public_job(record)))

    async def events() -> AsyncIterator[bytes]:
        async for event in hub.follow(stream, after):
            if event is None:
                yield b": keep-alive\n\n"
            elif event.type is EventType.DONE:
                yield _frame("done", event.id, public_job(await store.get(owner, job_id)))
            elif event.type is EventType.RESET:
                yield _frame("reset", event.id, {"attempt": int(event.data)})
            else:
                yield _frame("token", event.id, {"text": event.data})

    return _sse(events())


async def _replay_finished(job: dict[str, Any]) -> AsyncIterator[bytes]:
    if job["result"] is not None:
        yield _frame("token", "0-1", {"text": job["result"]["text"]})
    yield _frame("done", "0-2", job)


def _sse(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
