"""The FastAPI application: `create_app()` wires routes, errors and the lifespan that owns Redis."""

from __future__ import annotations

import gc
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.auth import KeyRing
from api.authenticate import Authenticate
from api.batches import BatchStore
from api.body import AbortedBodies, add_components
from api.deps import State
from api.docs import install_docs
from api.estimate import Estimator
from api.files import FileStore
from api.jobs import ApiJobStore
from api.leases import StreamLeases
from api.limits import AuthFailures, BodyLimits, RateLimiter
from api.listing import JobIndex
from api.observability import RequestMetrics, report_redis_memory
from api.queue_events import QueueWatch
from api.responses import JSONResponse
from api.routes import batches, dashboard, files, health, jobs, legacy, metrics, models, usage, webhooks
from api.routes import openai as openai_compatible
from api.routes import provenance as job_provenance
from api.routes.metrics import MetricsPort
from api.streams import StreamHub
from shared.connection import redis_client
from shared.metrics import ApiMetrics
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether `host` (API_HOST) is a loopback address: 127.0.0.0/8, ::1 or `localhost`."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def open_access_refusal(settings: Settings) -> str | None:
    """Why the API must not start with these settings: open access (ENV=dev or unittest accept any API key)
    on an address other machines reach. None when it may: API_HOST is a loopback address, or the API listens
    in a container whose port is published on a loopback address only, which API_PUBLISHED_HOST declares
    (docker-compose.yml sets it to the address it publishes on). The workers listen on no API_HOST: only the
    API checks it, not Settings."""
    if not settings.open_access or is_loopback(settings.API_HOST):
        return None
    if settings.API_PUBLISHED_HOST and is_loopback(settings.API_PUBLISHED_HOST):
        return None
    published = f" published on API_PUBLISHED_HOST={settings.API_PUBLISHED_HOST}" if settings.API_PUBLISHED_HOST else ""
    return (
        f"ENV={settings.ENV} accepts any API key; it may only be reached on a loopback address, not "
        f"API_HOST={settings.API_HOST}{published}: set ENV=staging or prod with API_KEYS_FILE/API_KEYS"
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    api_metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        if settings.open_access:
            ignored = (
                " (API_KEYS_FILE/API_KEYS are not checked)"
                if settings.API_KEYS_FILE or settings.API_KEYS.strip()
                else ""
            )
            logger.warning(
                "ENV=%s accepts any API key%s: open access, for development on a loopback address only; "
                "set ENV=staging or prod to require keys",
                settings.ENV,
                ignored,
            )
        keyring = KeyRing(settings)
        redis = redis_client(settings, "spp-api", max_connections=settings.API_REDIS_CONNECTIONS)
        await report_redis_memory(redis)
        hub = StreamHub(redis_client(settings, "spp-api-streams", single_connection=True), redis)
        await hub.start()
        # Files' bytes go through a client that does not decode them.
        file_bytes = redis_client(settings, "spp-api-files", decode=False)
        store = ApiJobStore(
            redis, settings, on_created=lambda model, count: api_metrics.submitted.labels(model).inc(count)
        )
        file_store = FileStore(redis, file_bytes, settings)
        batch_store = BatchStore(store, file_store)
        batch_store.start()
        estimator = Estimator(redis, store.shared)
        queue_watch = QueueWatch(estimator)
        leases = StreamLeases(redis)
        await leases.start()
        # What exists now (modules, schemas, routes, clients) lives as long as the process: a full garbage
        # collection no longer scans it, 40 ms a time with the array of 1,000 jobs that set one off.
        gc.freeze()
        try:
            yield State(
                settings=settings,
                store=store,
                index=JobIndex(redis, store, settings),
                hub=hub,
                keyring=keyring,
                limiter=RateLimiter(store.shared),
                auth_failures=AuthFailures(store.shared, settings.AUTH_FAILURES_PER_MINUTE),
                metrics=api_metrics,
                files=file_store,
                batches=batch_store,
                estimator=estimator,
                queue_watch=queue_watch,
                leases=leases,
            )
        finally:
            await queue_watch.stop()
            await leases.stop()
            await batch_store.stop()
            await store.aclose()
            await hub.stop()
            await file_bytes.aclose()
            await redis.aclose()

    app = FastAPI(
        title="albert-spp",
        version=settings.APP_VERSION,
        summary="Generation jobs answered by large language models, through Redis and per-model workers.",
        root_path=settings.API_ROOT_PATH,
        docs_url=None,  # api/docs.py serves them, without a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.API_DOCS else None,
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    errors.install(app)
    if settings.API_DOCS:
        install_docs(app)
    # Innermost first: authentication runs after the body limits and metrics, before any route.
    app.add_middleware(Authenticate, routes=app.router.routes)
    app.add_middleware(AbortedBodies)
    app.add_middleware(BodyLimits, settings=settings)
    app.add_middleware(RequestMetrics, metrics=api_metrics)
    if settings.API_METRICS_PORT:
        app.add_middleware(MetricsPort, port=settings.API_METRICS_PORT)
    if settings.cors_origins:
        # Credentials only with an explicit list of origins, never with the '*' wildcard.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    # Busiest first: FastAPI tries the routers in this order, ~4 µs each, on every request.
    app.include_router(jobs.router)
    app.include_router(job_provenance.router)
    app.include_router(health.router)
    app.include_router(openai_compatible.router)
    app.include_router(legacy.router)
    app.include_router(models.router)
    app.include_router(usage.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(dashboard.router)
    app.include_router(metrics.router)
    _complete_openapi(app)
    return app


def _complete_openapi(app: FastAPI) -> None:
    """Add to OpenAPI what FastAPI cannot see: the schemas of the bodies the routes parse themselves (one
    item or an array), and the API key, which api/authenticate.py checks before the routes."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = add_components(generate())
            schema["components"]["securitySchemes"] = {
                "APIKey": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <API key>`"}
            }
            schema["security"] = [{"APIKey": []}]  # but for the routes marked `PUBLIC`
            for operations in schema["paths"].values():
                for operation in operations.values():
                    if operation.get("security") != []:
                        operation["responses"].setdefault("401", {"description": "Missing or invalid API key"})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
