"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import PUBLIC, SettingsDep, StoreDep
from api.responses import JSONResponse
from shared.connection import REDIS_ERRORS

router = APIRouter(tags=["health"])


@router.get("/health", openapi_extra=PUBLIC)
async def health(settings: SettingsDep) -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": settings.APP_VERSION}


@router.get("/ready", openapi_extra=PUBLIC, responses={503: {"description": "Redis is unreachable"}})
async def ready(store: StoreDep) -> JSONResponse:
    """The process can serve requests: Redis answers."""
    try:
        await store.redis.ping()
    except REDIS_ERRORS as exc:
        return JSONResponse(
            {"status": "unavailable", "detail": f"Redis: {exc}"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready"})
