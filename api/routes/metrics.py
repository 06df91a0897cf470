"""Prometheus metrics of this API process, and the per-model queue gauges read from Redis."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import PUBLIC, SettingsDep, StoreDep
from shared.metrics import CONTENT_TYPE_LATEST, ApiMetrics

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, openapi_extra=PUBLIC, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, settings: SettingsDep, store: StoreDep) -> Response:
    """Prometheus text: HTTP requests, jobs submitted, each model's queue depth, running jobs and workers, and
    Redis's used memory and maxmemory."""
    registry: ApiMetrics = request.state.metrics
    for model, stats in (await store.model_stats(settings.models)).items():
        registry.queued.labels(model).set(stats["queued"])
        registry.running.labels(model).set(stats["running"])
        registry.workers.labels(model).set(stats["workers"])
    await registry.redis_memory(store.redis)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
