"""Every mapping from an error to its HTTP answer, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request

from api.auth import Unauthorized
from api.limits import RateLimited
from api.responses import JSONResponse
from shared.connection import REDIS_ERRORS
from shared.errors import (
    JobConflict,
    JobFinished,
    JobNotFound,
    QueueFull,
    SppError,
    StoreUnavailable,
    UnknownModel,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"

_STATUS: dict[type[SppError], int] = {
    Unauthorized: 401,
    JobNotFound: 404,
    UnknownModel: 404,
    JobConflict: 409,
    JobFinished: 409,
    QueueFull: 429,
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
    if isinstance(exc, RateLimited):
        return _error_response(429, str(exc), retry_after=str(exc.retry_after))
    return _error_response(_STATUS.get(type(exc), 400), str(exc), extra=extra)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    return _error_response(503, str(StoreUnavailable()))


def install(app: FastAPI) -> None:
    app.add_exception_handler(SppError, _spp_error)
    for error in REDIS_ERRORS:
        app.add_exception_handler(error, _redis_error)
