"""`GET /metrics` of a worker (WORKER_METRICS_PORT) or of the webhooks' delivery process (WEBHOOK_METRICS_PORT), 0:
none, served from the process's event loop."""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web

from shared.metrics import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)


class Exposition(Protocol):
    def render(self) -> bytes:
        """The metrics in Prometheus's text format."""
        ...


async def serve_metrics(metrics: Exposition, host: str, port: int) -> web.AppRunner | None:
    """Start the metrics endpoint; None (and a warning) when the port cannot be bound: a process without
    metrics still does its work."""

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        logger.warning("no metrics endpoint: cannot listen on %s:%d (%s)", host, port, exc)
        await runner.cleanup()
        return None
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return runner
