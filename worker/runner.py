"""The arq worker of one model, with what arq lacks: wake-up on enqueue instead of idle polling,
heartbeats of running jobs and a sweeper of the jobs of dead workers (worker/sweeper.py), cancellation
through the job record, a graceful stop, and survival of Redis outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import orjson
from aiohttp import web
from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis import exceptions as redis_errors

from shared import keys
from shared.connection import REDIS_ERRORS, redis_client
from shared.retries import ARQ_CONN_RETRIES, ARQ_CONN_RETRY_DELAY, ARQ_CONN_TIMEOUT, REDIS_PATIENCE
from shared.settings import Settings
from worker.backends import ModelClient
from worker.context import WorkerContext
from worker.generate import generate
from worker.jobs import JOB_FUNCTION, WorkerJobStore
from worker.metrics_server import serve_metrics
from worker.sweeper import sweep_forever

logger = logging.getLogger(__name__)


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings, made to survive Redis outages (arq's worker dies on its first error)."""
    if settings.sentinels:
        redis_settings = RedisSettings(
            host=settings.sentinels,
            sentinel=True,
            sentinel_master=settings.REDIS_SENTINEL_MASTER,
            password=settings.REDIS_PASSWORD,
            database=settings.REDIS_DB,
        )
    else:
        redis_settings = RedisSettings.from_dsn(settings.redis_url)
    redis_settings.conn_retries = ARQ_CONN_RETRIES
    redis_settings.conn_timeout = int(ARQ_CONN_TIMEOUT)
    redis_settings.conn_retry_delay = int(ARQ_CONN_RETRY_DELAY)
    redis_settings.retry_on_error = [redis_errors.ConnectionError, redis_errors.TimeoutError, OSError]
    return redis_settings


class ModelWorker(Worker):
    """An arq worker pinned to one model's queue."""

    _store: WorkerJobStore
    """The worker's job store, opened at startup."""

    def __init__(self, settings: Settings, model: str) -> None:
        if model not in settings.models:
            raise ValueError(f"model {model!r} is not in LLM_TABLE ({', '.join(settings.models)})")
        self.settings = settings
        self.model = model
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._metrics_server: web.AppRunner | None = None
        self._stopping: asyncio.Task[None] | None = None
        super().__init__(
            functions=[func(generate, name=JOB_FUNCTION)],
            queue_name=keys.queue(model),
            redis_settings=arq_redis_settings(settings),
            on_startup=self._startup,
            on_shutdown=self._shutdown,
            max_jobs=settings.WORKER_MAX_JOBS,
            # A deadline per attempt is enforced in the job function; this is only arq's backstop (its
            # Redis writes may wait for Redis at the start and at the end of the attempt).
            job_timeout=settings.BACKEND_TIMEOUT + 2 * REDIS_PATIENCE + 60,
            keep_result=0,
            poll_delay=0,
            max_tries=1_000_000,
            allow_abort_jobs=False,
            job_serializer=orjson.dumps,
            job_deserializer=orjson.loads,
            health_check_key=f"{keys.queue(model)}:health-check:{self.worker_id}",
        )
        # arq keeps a job's in-progress key for job_timeout + 10 s, and no worker takes the job meanwhile:
        # a few heartbeats instead, kept alive by our heartbeat while the job runs, so that a job taken by a
        # worker that died before starting it is taken again within seconds.
        self.in_progress_timeout_s = settings.in_progress_lease

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
            aborting=self.aborting_tasks,
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
        if not self.allow_pick_jobs:
            # Stopping: arq's loop (poll_delay=0) would spin without ever yielding to the running jobs.
            await asyncio.sleep(self.settings.WORKER_IDLE_POLL)
        elif self._jobs_started() == before:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.WORKER_IDLE_POLL)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Take jobs among `job_ids` (the head of the queue) in one script, take.lua, that applies the clients'
        caps and priorities (arq's own start_jobs takes them one by one, with four round trips each), and run
        them. A Redis error gives the slot back (arq's keeps it: each outage would leave the worker one job short,
        until it took none)."""
        if not job_ids:
            return
        await self.sem.acquire()  # a free slot, as arq waits for one
        try:
            taken = await self._store.take(
                self.model,
                [job_id.decode() for job_id in job_ids],
                self.max_jobs - self.job_counter,
                lease_ms=int(self.in_progress_timeout_s * 1000),
                definition_ttl_ms=int(self.job_timeout_s * 1000),
            )
        except BaseException:
            self.sem.release()
            raise
        if not taken:
            self.sem.release()
            return
        for index, (job_id, score) in enumerate(taken):
            if index:
                await self.sem.acquire()  # free: at most max_jobs - job_counter were taken
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(score)))
            task.add_done_callback(self._job_done)
            self.tasks[job_id] = task

    def _job_done(self, _: asyncio.Task[None]) -> None:
        """A job of this worker ended: its slot is free, to fill at once from the queue (a full worker does not poll,
        and nothing else would wake it before WORKER_IDLE_POLL), with a job a client's cap may have held back too."""
        self._release_sem_dec_counter_on_complete()
        self._wake.set()

    def handle_sig(self, signum: signal.Signals) -> None:
        """SIGTERM or SIGINT: stop taking jobs, let the running ones finish for up to WORKER_SHUTDOWN_GRACE
        seconds, then stop; jobs still running go back to the queue without counting the attempt (generate.py)
        and the other workers are woken to take them. A second signal stops at once."""
        if self._stopping is not None or not any(not task.done() for task in self.tasks.values()):
            super().handle_sig(signum)
            return
        running = sum(not task.done() for task in self.tasks.values())
        grace = self.settings.WORKER_SHUTDOWN_GRACE
        logger.info("stopping on %s: %d running job(s) get %gs to finish", signum.name, running, grace)
        self.allow_pick_jobs = False
        self._stopping = asyncio.create_task(self._drain(signum))

    async def _drain(self, signum: signal.Signals) -> None:
        """Wait for the running jobs, up to the grace period, then stop as arq does (cancelling the rest)."""
        running = [task for task in self.tasks.values() if not task.done()]
        if running:  # no job is taken meanwhile: allow_pick_jobs is off
            await asyncio.wait(running, timeout=self.settings.WORKER_SHUTDOWN_GRACE)
        super().handle_sig(signum)

    def abort(self, spp: WorkerContext, kid: str) -> None:
        """Stop a running job on purpose: arq then finishes it instead of running it again."""
        running = spp.runs.get(kid)
        task = self.job_tasks.get(running.arq_id) if running is not None else None
        if running is not None and task is not None and not task.done():
            logger.info("job %s stopped: cancelled or replaced", kid)
            self.aborting_tasks.add(running.arq_id)
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
