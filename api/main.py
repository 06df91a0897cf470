"""The FastAPI application: `create_app()` wires routes, errors and the lifespan that owns Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.auth import KeyRing
from api.deps import State
from api.limits import BodySizeLimit, RateLimiter
from api.responses import JSONResponse
from api.routes import health, jobs, legacy, models
from api.streams import StreamHub
from shared.connection import redis_client
from shared.settings import Settings, get_settings
from shared.store import JobStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        keyring = KeyRing(settings)
        redis = redis_client(settings, "spp-api")
        hub = StreamHub(redis_client(settings, "spp-api-streams", single_connection=True), redis)
        await hub.start()
        try:
            yield State(
                settings=settings,
                store=JobStore(redis, settings),
                hub=hub,
                keyring=keyring,
                limiter=RateLimiter(redis, settings),
            )
        finally:
            await hub.stop()
            await redis.aclose()

    app = FastAPI(
        title="albert-spp",
        version=settings.APP_VERSION,
        summary="Generation jobs answered by large language models, through Redis and per-model workers.",
        root_path=settings.API_ROOT_PATH,
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES)
    if settings.cors_origins:
        # Credentials only with an explicit list of origins, never with the '*' wildcard.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(legacy.router)
    app.include_router(health.router)
    return app
