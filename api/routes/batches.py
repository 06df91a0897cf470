"""Batches (the OpenAI Batch API): every request of an uploaded file becomes a job of this system."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from api.batch_format import CompletionWindow
from api.body import invalid, object_schema, parse_one_or_many
from api.deps import BatchesDep, CallerDep, OwnerDep, SettingsDep
from api.openai_shapes import Endpoint
from api.responses import JSONResponse
from shared.batches import BatchStatus, public_batch
from shared.models import StringMetadata, WebhookState
from shared.webhooks import BatchWebhookSpec, allowed_hosts_context, signing_secret

router = APIRouter(prefix="/v1/batches", tags=["batches"])

BatchIdPath = Annotated[str, Path(max_length=100, description="The batch's id.")]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(description="An uploaded file (`POST /v1/files`, `purpose=batch`).")
    endpoint: Endpoint = Field(description="Every line's `url`.")
    completion_window: CompletionWindow = Field(
        description='Only "24h", as OpenAI: the batch then expires with its unfinished requests cancelled.'
    )
    metadata: StringMetadata | None = Field(
        None, max_length=16, description="Strings of at most 512 characters, 8 KiB in all (as compact JSON)."
    )
    webhook: BatchWebhookSpec | None = Field(
        None, description="Called (Standard Webhooks, `batch.<event>`, the batch as `data`) when the batch ends."
    )


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int = Field(description="Failed or cancelled requests.")


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    webhook: WebhookState | None = Field(None, description="The batch's webhook and its delivery, if it has one.")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def shown(record: dict[str, str]) -> dict[str, Any]:
    """The batch object (OpenAI's), with its webhook and that webhook's delivery when it has one."""
    batch = public_batch(record)
    if record.get("webhook"):
        webhook: dict[str, Any] = orjson.loads(record["webhook"])
        delivery = record.get("webhook_delivery")
        batch["webhook"] = webhook | {"delivery": orjson.loads(delivery) if delivery else None}
    return batch


@router.post(
    "",
    response_model=BatchObject,
    openapi_extra=object_schema(BatchCreate),
    responses={
        404: {"description": "Unknown input file"},
        429: {
            "description": "The client has `max_active_batches` unfinished batches, or the batch would take it past "
            "its `max_stored_bytes` (the body names the limit, its value and the client's usage); nothing is stored"
        },
    },
)
async def create_batch(request: Request, caller: CallerDep, batches: BatchesDep, settings: SettingsDep) -> JSONResponse:
    """Create a batch: answered `validating`; the whole input is then validated (any problem: `failed`, with
    `errors` naming the lines, and nothing queued), then every request is queued (`in_progress`)."""
    context = allowed_hosts_context(settings.webhook_allowed_hosts)
    items, many = await parse_one_or_many(
        await request.body(), BatchCreate, max_items=1, limit_name="one object", context=context
    )
    if many:
        raise invalid((), "expected a JSON object, not an array", "model_type")
    body, owner, policy = items[0], caller.owner, caller.policy
    secret = signing_secret(policy, owner, settings) if body.webhook is not None else ""
    record = await batches.create(
        owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata, policy, body.webhook, secret
    )
    # After the answer, still inside the request: a graceful shutdown waits for it.
    task = BackgroundTask(batches.process, owner, record["id"], policy)
    return JSONResponse(shown(record), background=task)


@router.get("", response_model=BatchList)
async def list_batches(
    owner: OwnerDep,
    batches: BatchesDep,
    after: Annotated[str | None, Query(max_length=100, description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    """The caller's batches, newest first, a page at a time."""
    records, has_more = await batches.page(owner, after, limit)
    data = [shown(record) for record in records]
    first_id, last_id = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return JSONResponse(
        {"object": "list", "data": data, "first_id": first_id, "last_id": last_id, "has_more": has_more}
    )


@router.get("/{batch_id}", response_model=BatchObject, responses={404: {"description": "Unknown batch"}})
async def retrieve_batch(batch_id: BatchIdPath, owner: OwnerDep, batches: BatchesDep) -> JSONResponse:
    """The batch: status, request counts, and its output and error files once it has ended."""
    return JSONResponse(shown(await batches.get(owner, batch_id)))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchObject,
    responses={404: {"description": "Unknown batch"}, 409: {"description": "The batch has already ended"}},
)
async def cancel_batch(batch_id: BatchIdPath, owner: OwnerDep, batches: BatchesDep) -> JSONResponse:
    """Cancel a batch: `cancelling` at once, `cancelled` when its last unfinished request is cancelled."""
    status = await batches.cancel(owner, batch_id)
    task = BackgroundTask(batches.cancel_jobs, owner, batch_id) if status == BatchStatus.CANCELLING else None
    return JSONResponse(shown(await batches.get(owner, batch_id)), background=task)
