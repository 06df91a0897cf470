"""The worker of one model: on top of the arq adapter (worker/arq_adapter.py), the job store and model client,
wake-up on enqueue and cancellation through the model's pub/sub channels, heartbeats of running jobs and a
sweeper of the jobs of dead workers (worker/sweeper.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from aiohttp import web

from shared import keys
from shared.connection import REDIS_ERRORS, redis_client
from shared.settings import Settings
from worker.arq_adapter import JOB_FUNCTION, ArqWorker
from worker.backends import ModelClient
from worker.context import WorkerContext
from worker.generate import generate
from worker.jobs import WorkerJobStore
from worker.metrics_server import serve_metrics
from worker.sweeper import sweep_forever

logger = logging.getLogger(__name__)


class ModelWorker(ArqWorker):
    """An arq worker pinned to one model's queue."""

    _store: WorkerJobStore
    """The worker's job store, opened at startup."""

    def __init__(self, settings: Settings, model: str) -> None:
        if model not in settings.models:
            raise ValueError(f"model {model!r} is not in LLM_TABLE ({', '.join(settings.models)})")
        self.model = model
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._background: list[asyncio.Task[None]] = []
        self._metrics_server: web.AppRunner | None = None
        super().__init__(
            settings=settings,
            queue=keys.queue(model),
            function_name=JOB_FUNCTION,
            function=generate,
            take=self._take_jobs,
            health_check_key=f"{keys.queue(model)}:health-check:{self.worker_id}",
            on_startup=self._startup,
            on_shutdown=self._shutdown,
        )

    async def _startup(self, ctx: dict[str, Any]) -> None:
        redis = redis_client(self.settings, "spp-worker", max_connections=self.settings.WORKER_MAX_JOBS + 8)
        client = ModelClient(self.settings, self.model)
        self._store = WorkerJobStore(redis, self.settings)
        ctx["spp"] = WorkerContext(
            settings=self.settings,
            model=self.model,
            worker_id=self.worker_id,
            store=self._store,
            client=client,
            aborting=self.aborting,
            settled=self.settled,
        )
        if self.settings.WORKER_METRICS_PORT:
            self._metrics_server = await serve_metrics(
                ctx["spp"].metrics, self.settings.WORKER_METRICS_HOST, self.settings.WORKER_METRICS_PORT
            )
        self._background = [
            asyncio.create_task(self._listen(ctx["spp"])),
            asyncio.create_task(self._beat(ctx["spp"])),
            asyncio.create_task(sweep_forever(ctx["spp"].store, self.settings, self.model)),
        ]
        logger.info("worker %s serving model %s", self.worker_id, self.model)

    async def _shutdown(self, ctx: dict[str, Any]) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        spp: WorkerContext = ctx["spp"]
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
        await spp.client.aclose()
        await spp.store.redis.aclose()

    async def _take_jobs(self, candidates: list[str], slots: int) -> list[tuple[str, float]]:
        return await self._store.take(
            self.model,
            candidates,
            slots,
            lease_ms=int(self.in_progress_timeout_s * 1000),
            definition_ttl_ms=int(self.job_timeout_s * 1000),
        )

    def abort(self, spp: WorkerContext, kid: str) -> None:
        """Stop a running job on purpose (cancelled, or replaced by the sweeper)."""
        running = spp.runs.get(kid)
        if running is not None and self.stop_job(running.arq_id):
            logger.info("job %s stopped: cancelled or replaced", kid)

    async def _listen(self, spp: WorkerContext) -> None:
        """Wake on new jobs and stop cancelled ones, from the model's pub/sub channels."""
        wake, cancel = keys.wake_channel(self.model), keys.cancel_channel(self.model)
        while True:
            pubsub = spp.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(wake, cancel)
                self.wake()  # jobs may have arrived while we were not listening
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["channel"] == wake:
                        self.wake()
                    else:
                        self.abort(spp, message["data"])
            except REDIS_ERRORS as exc:
                logger.warning("pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _beat(self, spp: WorkerContext) -> None:
        """Heartbeat of the worker and its running jobs; stops jobs whose record stopped saying running."""
        while True:
            runs = {kid: running.run for kid, running in spp.runs.items()}
            try:
                for kid in await spp.store.heartbeat(self.model, self.worker_id, runs):
                    running = spp.runs.get(kid)
                    if running is not None and running.run == runs[kid]:  # not a run that ended meanwhile
                        self.abort(spp, kid)
            except REDIS_ERRORS as exc:
                logger.warning("heartbeat failed: %s", exc)
            except Exception:
                # A heartbeat that stopped for good would let the sweeper take every job of this worker.
                logger.exception("heartbeat failed")
            await asyncio.sleep(self.settings.WORKER_HEARTBEAT)
