"""Prometheus metrics of this API process, and the per-model queue gauges read from Redis."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import PUBLIC, SettingsDep, StoreDep
from api.responses import JSONResponse
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


class MetricsPort:
    """With API_METRICS_PORT, the API listens on two sockets (api/__main__.py): there `/metrics` only, and on
    API_PORT everything but `/metrics`. Each is refused on the other's with a 404."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_metrics_port = server is not None and server[1] == self.port
            if on_metrics_port != (scope["path"] == "/metrics"):
                where = f"on API_METRICS_PORT={self.port}" if on_metrics_port else "here: see API_METRICS_PORT"
                await JSONResponse({"detail": f"not served {where}"}, status_code=404)(scope, receive, send)
                return
        await self.app(scope, receive, send)
