"""The arq worker of one model, with what arq lacks: wake-up on enqueue instead of idle polling,
heartbeats of running jobs, and cancellation through the job record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import orjson
from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis import exceptions as redis_errors

from shared import keys
from shared.connection import REDIS_ERRORS, redis_client
from shared.settings import Settings
from shared.store import JOB_FUNCTION, JobStore
from worker.backends import ModelClient
from worker.context import WorkerContext
from worker.generate import generate

logger = logging.getLogger(__name__)


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings, made to survive Redis outages (arq's worker dies on its first error)."""
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    redis_settings.conn_retries = 30
    redis_settings.retry_on_error = [redis_errors.ConnectionError, redis_errors.TimeoutError, OSError]
    return redis_settings


class ModelWorker(Worker):
    """An arq worker pinned to one model's queue."""

    def __init__(self, settings: Settings, model: str) -> None:
        if model not in settings.models:
            raise ValueError(f"model {model!r} is not in LLM_TABLE ({', '.join(settings.models)})")
        self.settings = settings
        self.model = model
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        super().__init__(
            functions=[func(generate, name=JOB_FUNCTION)],
            queue_name=keys.queue(model),
            redis_settings=arq_redis_settings(settings),
            on_startup=self._startup,
            on_shutdown=self._shutdown,
            max_jobs=settings.WORKER_MAX_JOBS,
            # A deadline per attempt is enforced in the job function; this is only arq's backstop.
            job_timeout=settings.BACKEND_TIMEOUT + 60,
            keep_result=0,
            poll_delay=0,
            max_tries=1_000_000,
            allow_abort_jobs=False,
            job_serializer=orjson.dumps,
            job_deserializer=orjson.loads,
            health_check_key=f"{keys.queue(model)}:health-check:{self.worker_id}",
        )

    async def _startup(self, ctx: dict[str, Any]) -> None:
        redis = redis_client(self.settings, "spp-worker", max_connections=self.settings.WORKER_MAX_JOBS + 8)
        client = ModelClient(self.settings, self.model)
        ctx["spp"] = WorkerContext(
            settings=self.settings,
            model=self.model,
            worker_id=self.worker_id,
            store=JobStore(redis, self.settings),
            client=client,
            aborting=self.aborting_tasks,
        )
        self._background = [
            asyncio.create_task(self._listen(ctx["spp"])),
            asyncio.create_task(self._beat(ctx["spp"])),
        ]
        logger.info("worker %s serving model %s", self.worker_id, self.model)

    async def _shutdown(self, ctx: dict[str, Any]) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        spp: WorkerContext = ctx["spp"]
        await spp.client.aclose()
        await spp.store.redis.aclose()

    async def _poll_iteration(self) -> None:
        """arq's poll, but an idle worker sleeps until a job is announced (or WORKER_IDLE_POLL passes)."""
        self._wake.clear()
        before = self._jobs_started()
        try:
            await super()._poll_iteration()
        except REDIS_ERRORS as exc:
            # arq lets this end the worker; a worker must outlive a Redis outage.
            logger.warning("Redis unavailable (%s); polling again in %.1fs", exc, self.settings.WORKER_IDLE_POLL)
            await asyncio.sleep(self.settings.WORKER_IDLE_POLL)
            return
        if self._jobs_started() == before and self.allow_pick_jobs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.WORKER_IDLE_POLL)

    def abort(self, spp: WorkerContext, kid: str) -> None:
        """Stop a running job on purpose: arq then finishes it instead of running it again."""
        arq_id = spp.arq_ids.get(kid)
        task = self.job_tasks.get(arq_id) if arq_id is not None else None
        if arq_id is not None and task is not None and not task.done():
            logger.info("job %s stopped: cancelled or replaced", kid)
            self.aborting_tasks.add(arq_id)
            task.cancel()

    async def _listen(self, spp: WorkerContext) -> None:
        """Wake on new jobs and stop cancelled ones, from the model's pub/sub channels."""
        wake, cancel = keys.wake_channel(self.model), keys.cancel_channel(self.model)
        while True:
            pubsub = spp.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(wake, cancel)
                self._wake.set()  # jobs may have arrived while we were not listening
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["channel"] == wake:
                        self._wake.set()
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
            try:
                for kid in await spp.store.heartbeat(self.model, self.worker_id, dict(spp.runs)):
                    self.abort(spp, kid)
            except REDIS_ERRORS as exc:
                logger.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.WORKER_HEARTBEAT)
