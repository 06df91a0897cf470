"""Every mapping from an error to its HTTP answer, in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from redis.exceptions import OutOfMemoryError

from api.auth import Unauthorized
from api.deps import resources, route_path
from api.exceptions import (
    BadFileRequest,
    BatchFinished,
    BatchNotFound,
    FileNotFound,
    FileTooLarge,
    FilterRequired,
    JobConflict,
    JobFinished,
    JobNotFound,
    JobNotRetryable,
    LimitReached,
    PriorityNotAllowed,
    QueueFull,
    QuotaExceeded,
    SppError,
    StoreUnavailable,
    UnknownModel,
)
from api.limits import Throttled
from api.openai_shapes import OpenAIError
from api.responses import JSONResponse
from shared.connection import REDIS_ERRORS

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"
REDIS_FULL_RETRY_AFTER_SECONDS = "30"
"""Retry-After of a write refused by Redis's maxmemory: memory comes back as results expire or are deleted, or
when an operator acts, not within a second; retrying sooner only adds load."""
REDIS_FULL = "Redis is out of memory (maxmemory): retry later"
OPENAI_FILE_ROUTES = ("/v1/files", "/v1/batches")

_STATUS: dict[type[SppError], int] = {
    Unauthorized: 401,
    JobNotFound: 404,
    UnknownModel: 404,
    JobConflict: 409,
    JobFinished: 409,
    JobNotRetryable: 409,
    FilterRequired: 422,
    BadFileRequest: 400,
    FileNotFound: 404,
    BatchNotFound: 404,
    BatchFinished: 409,
    FileTooLarge: 413,
    QueueFull: 429,
    QuotaExceeded: 429,
    PriorityNotAllowed: 422,
    StoreUnavailable: 503,
}


def _error_response(
    status: int, detail: str, *, retry_after: str = RETRY_AFTER_SECONDS, extra: dict[str, object] | None = None
) -> JSONResponse:
    headers = {"Retry-After": retry_after} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse({"detail": detail, **(extra or {})}, status_code=status, headers=headers)


async def _spp_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SppError)
    extra: dict[str, object] = {"known_models": exc.known} if isinstance(exc, UnknownModel) else {}
    if isinstance(exc, Throttled):
        return _error_response(429, str(exc), retry_after=str(exc.retry_after), extra=exc.limit)
    status = _STATUS.get(type(exc), 400)
    retry_after = RETRY_AFTER_SECONDS
    if isinstance(exc, LimitReached):
        extra |= exc.body()
        retry_after = await _retry_after(request, exc)
    if route_path(request.scope).startswith(OPENAI_FILE_ROUTES):
        # The `openai` client shows only the message of OpenAI's shape: both shapes are given.
        extra["error"] = {"message": str(exc), "type": type(exc).__name__, "param": None, "code": status}
    return _error_response(status, str(exc), retry_after=retry_after, extra=extra)


async def _retry_after(request: Request, exc: LimitReached) -> str:
    """Retry-After of a limit reached: when the limit should have room (known, or estimated), else 1 second."""
    seconds = exc.retry_after if exc.retry_after is not None else await _until_room(request, exc)
    return str(max(1, seconds)) if seconds is not None else RETRY_AFTER_SECONDS


async def _until_room(request: Request, exc: LimitReached) -> int | None:
    """Seconds until enough jobs of the model have finished to make room for the refused submission, at the
    model's measured rate (api/estimate.py): for a limit on queued jobs (a full queue, or the client's
    `max_queued_jobs`), which names its model. None otherwise, or when the rate is unknown."""
    model = exc.model
    if model is None or not (isinstance(exc, QueueFull) or exc.limit == "max_queued_jobs"):
        return None
    excess = exc.usage + exc.requested - exc.value
    try:
        return await resources(request)["estimator"].seconds_until_room(model, excess)
    except REDIS_ERRORS as error:
        logger.warning("could not estimate when the queue of model %s has room: %s", model, error)
        return None


async def _openai_error(request: Request, exc: Exception) -> JSONResponse:
    """The OpenAI-compatible routes answer in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`; a
    limit reached is its cause (`raise ... from`), for its Retry-After."""
    assert isinstance(exc, OpenAIError)
    headers = None
    if exc.status in (429, 503):
        limit = exc.__cause__
        retry_after = await _retry_after(request, limit) if isinstance(limit, LimitReached) else None
        headers = {"Retry-After": retry_after or RETRY_AFTER_SECONDS}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    return _error_response(503, str(StoreUnavailable()))


async def _redis_full(request: Request, exc: Exception) -> JSONResponse:
    """Redis refused a write past its maxmemory (policy noeviction; redis-py raises OutOfMemoryError for the `OOM`
    error reply, a script's too): nothing of it was stored, since Redis refuses a script at its first write. Both
    shapes are given, so that the OpenAI-compatible routes' clients show the message too."""
    logger.warning("Redis out of memory during %s %s: %s", request.method, request.url.path, exc)
    error = {"message": REDIS_FULL, "type": "redis_out_of_memory", "param": None, "code": 503}
    return _error_response(503, REDIS_FULL, retry_after=REDIS_FULL_RETRY_AFTER_SECONDS, extra={"error": error})


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    SppError: _spp_error,
    OpenAIError: _openai_error,
    **dict.fromkeys(REDIS_ERRORS, _redis_error),
    OutOfMemoryError: _redis_full,
}


def install(app: FastAPI) -> None:
    for error, handler in _HANDLERS.items():
        app.add_exception_handler(error, handler)


async def answer(request: Request, exc: Exception) -> Response:
    """The answer to `exc` raised before the routes (api/authenticate.py), by the handler a route's would have:
    that of its class or of the nearest class it derives from, as Starlette picks."""
    for kind in type(exc).__mro__:
        handler = _HANDLERS.get(kind)
        if handler is not None:
            return await handler(request, exc)
    raise exc
