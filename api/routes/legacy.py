"""The old Albert "Services Publics Plus" API's endpoints, same paths and shapes, on the job system.

- `POST /anonymize` queues one SPP generation per item, and answers the ids.
- `POST /prod/run/ditp-get-data` answers the generated answers.
- `GET /healthcheck` is the old liveness probe.

A failed generation never comes back as an answer (the old API returned error strings as answers):
for one id it is an HTTP 422 `{"detail": "Generation failed", ...}` that old clients treat as an
error; in an array its `generated_answer` is null and `status`/`error` say why.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.body import off_loop, one_or_many_schema, parse_items, parse_one_or_many, validation_error
from api.deps import PUBLIC, CallerDep, OwnerDep, SettingsDep, StoreDep
from api.responses import JSONResponse
from shared.models import GenerationParams, JobCreate, JobId, JobRecord, JobStatus, Limits
from shared.settings import Settings
from shared.webhooks import job_webhook, signing_secret

router = APIRouter(tags=["Services Publics Plus (old API)"])


def _id_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class AnonymizeItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: JobId | None = Field(None, description="The experience's id; a UUID is made when missing.")
    text: str = Field(min_length=1, description="The citizen's account of their experience.")

    _id = field_validator("id", mode="before")(_id_as_text)


class AnswerQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: JobId

    _id = field_validator("id", mode="before")(_id_as_text)


@router.post("/anonymize", openapi_extra=one_or_many_schema(AnonymizeItem))
async def anonymize(request: Request, settings: SettingsDep, store: StoreDep, caller: CallerDep) -> JSONResponse:
    """Queue the administration's answer to one experience, or to an array of them."""
    raw = await request.body()
    jobs, many = await off_loop(len(raw), functools.partial(_anonymize_jobs, raw, settings))
    submitted = await store.submit(
        caller.owner,
        jobs,
        policy=caller.policy,
        replace=True,
        default_webhook=job_webhook(None, caller.policy),
        webhook_secret=signing_secret(caller.policy, caller.owner, settings),
    )
    ids = [{"id": item.record["id"]} for item in submitted]
    return JSONResponse({"body": ids if many else ids[0]})


def _anonymize_jobs(raw: bytes, settings: Settings) -> tuple[list[JobCreate], bool]:
    """The SPP jobs of an `/anonymize` body, and whether it was an array."""
    limits = Limits.of(settings).model_copy(update={"max_messages": 1})  # one text, one message
    items, many = parse_items(raw, AnonymizeItem, settings.MAX_JOBS_PER_REQUEST, "MAX_JOBS_PER_REQUEST", None, {})
    params = GenerationParams(
        max_tokens=settings.SPP_MAX_TOKENS, temperature=settings.SPP_TEMPERATURE, top_p=settings.SPP_TOP_P
    )
    jobs = []
    for index, item in enumerate(items):
        try:
            job = {"id": item.id, "prompt": item.text, "template": settings.SPP_TEMPLATE, "params": params}
            jobs.append(JobCreate.model_validate(job, context={"limits": limits}))
        except ValidationError as exc:  # the text is over MAX_PROMPT_CHARS
            raise validation_error(exc, ("body", index, "text") if many else ("body", "text")) from None
    return jobs, many


def _answer(record: JobRecord | None, job_id: str) -> dict[str, Any]:
    """One id's entry: the answer text only when the job succeeded."""
    if record is None:
        return {"id": job_id, "status": None, "generated_answer": None}
    answer: dict[str, Any] = {"id": job_id, "status": record["status"], "generated_answer": None}
    if record["status"] == JobStatus.SUCCEEDED:
        answer["generated_answer"] = orjson.loads(record["result"])["text"]
    elif "error" in record:
        answer["error"] = orjson.loads(record["error"])
    return answer


@router.post(
    "/prod/run/ditp-get-data",
    openapi_extra=one_or_many_schema(AnswerQuery),
    responses={
        400: {"description": '`{"detail": "ID not found"}`: unknown, or not answered yet'},
        422: {"description": '`{"detail": "Generation failed", ...}`: there will be no answer; resubmit it'},
    },
)
async def get_answers(request: Request, settings: SettingsDep, store: StoreDep, owner: OwnerDep) -> JSONResponse:
    """The generated answer of one id, or of an array of ids (null where there is none)."""
    queries, many = await parse_one_or_many(
        await request.body(), AnswerQuery, max_items=settings.MAX_JOBS_PER_REQUEST, limit_name="MAX_JOBS_PER_REQUEST"
    )
    records = await store.get_many(owner, [query.id for query in queries])
    answers = [_answer(record, query.id) for record, query in zip(records, queries, strict=True)]
    if many:
        return JSONResponse({"body": answers})
    answer = answers[0]
    if answer["status"] in (None, JobStatus.QUEUED, JobStatus.RUNNING):
        return JSONResponse({"detail": "ID not found"}, status_code=400)
    if answer["status"] != JobStatus.SUCCEEDED:
        return JSONResponse({"detail": "Generation failed", **answer}, status_code=422)
    return JSONResponse({"body": {"generated_answer": answer["generated_answer"]}})


@router.get("/healthcheck", openapi_extra=PUBLIC)
async def healthcheck(settings: SettingsDep) -> dict[str, str]:
    """The old API's liveness probe."""
    return {"msg": "OK", "version": settings.APP_VERSION}
