"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from api.deps import PUBLIC, StoreDep, resources
from api.responses import JSONResponse
from shared.connection import REDIS_ERRORS

router = APIRouter(tags=["health"])

logger = logging.getLogger(__name__)


@router.get("/health", openapi_extra=PUBLIC, response_model=dict[str, str])
async def health(request: Request) -> JSONResponse:
    """The process is up."""
    # The cheapest request of the process, without FastAPI's dependencies and serialization: probes call it
    # often, and it is the baseline of the request-rate ratios of docs/PERFORMANCE.md.
    return JSONResponse({"status": "ok", "version": resources(request)["settings"].APP_VERSION})


@router.get("/ready", openapi_extra=PUBLIC, responses={503: {"description": "Redis is unreachable"}})
async def ready(store: StoreDep) -> JSONResponse:
    """The process can serve requests: Redis answers. Anyone may ask, so the answer says no more than that:
    why Redis failed (its address among it) goes to the log."""
    try:
        await store.redis.ping()
    except REDIS_ERRORS as exc:
        logger.warning("not ready: Redis is unreachable: %s", exc)
        return JSONResponse({"status": "unavailable"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})
