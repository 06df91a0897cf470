"""Files (the OpenAI Files API): batch input files, and the output and error files of batches."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.batch_format import parse_generated_file_id
from api.deps import BatchesDep, CallerDep, FilesDep, OwnerDep
from api.exceptions import BadFileRequest
from api.files import public_file
from api.responses import JSONResponse

router = APIRouter(prefix="/v1/files", tags=["files"])

FileIdPath = Annotated[str, Path(max_length=100, description="The file's id.")]

_UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL, a request per line."},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int | None
    expires_at: int | None
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"
    status_details: None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


@router.post(
    "",
    response_model=FileObject,
    openapi_extra=_UPLOAD_FORM,
    responses={
        400: {"description": "Not a form with a `file` and `purpose=batch`"},
        408: {"description": "No byte of the body for BODY_IDLE_TIMEOUT seconds"},
        413: {"description": "Over BATCH_MAX_BYTES"},
        429: {
            "description": "The client's `max_uploads` uploads are in progress, or the file would take it past its "
            "`max_stored_bytes` (the body names the limit, its value and the client's usage)"
        },
    },
)
async def upload_file(request: Request, caller: CallerDep, files: FilesDep) -> JSONResponse:
    """Upload a batch input file (multipart: `file`, `purpose=batch`); it is kept FILE_TTL seconds."""
    content_type = request.headers.get("content-type", "")
    meta = await files.upload(caller.owner, content_type, request.stream(), caller.policy)
    return JSONResponse(public_file(meta))


@router.get("/{file_id}", response_model=FileObject, responses={404: {"description": "Unknown file"}})
async def retrieve_file(file_id: FileIdPath, owner: OwnerDep, files: FilesDep, batches: BatchesDep) -> JSONResponse:
    """The file object; a batch's output or error file exists once the batch has ended."""
    if parse_generated_file_id(file_id):
        return JSONResponse(await batches.generated_file(owner, file_id))
    return JSONResponse(public_file(await files.get(owner, file_id)))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {"description": "Unknown file"}},
)
async def file_content(file_id: FileIdPath, owner: OwnerDep, files: FilesDep, batches: BatchesDep) -> StreamingResponse:
    """The file's bytes, streamed: an uploaded file as it was sent, a batch's output or error file as JSONL."""
    if parse_generated_file_id(file_id):
        batch, kind = await batches.generated(owner, file_id)
        return StreamingResponse(batches.generated_lines(owner, batch, kind), media_type="application/jsonl")
    await files.get(owner, file_id)
    return StreamingResponse(files.chunks(owner, file_id), media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted, responses={404: {"description": "Unknown file"}})
async def delete_file(file_id: FileIdPath, owner: OwnerDep, files: FilesDep) -> JSONResponse:
    """Delete an uploaded file, which frees its bytes of the client's `max_stored_bytes` (a batch already created
    from it is not affected)."""
    if parse_generated_file_id(file_id):
        raise BadFileRequest("a batch's output and error files expire with the batch; they cannot be deleted")
    await files.delete(owner, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
