"""Everything albert-spp does with arq, in one module.

arq runs each worker's loop: it reads the head of the model's queue (a sorted set of arq job ids, scored by
run time), runs each job's function in a task under a semaphore of `max_jobs` slots with a timeout, reads the
job's definition and counts its tries before the run (one transaction), handles SIGINT/SIGTERM and records
its health. albert-spp does the rest itself, in its own scripts: a submission writes the queue entries
(submit.lua, not arq's `enqueue_job`); `start_jobs` takes jobs with take.lua (fair share, clients' caps and
priorities), which writes arq's in-progress keys and job definitions; the job record holds the state, the
attempts and the outcome (`keep_result=0`: arq stores no result); the heartbeat renews the in-progress keys
of running jobs; the sweeper hands back the jobs of dead workers under fresh arq job ids (requeue.lua).

The script that ends a run (finish.lua, requeue.lua) also deletes arq's keys of its arq job id, so the
transaction arq runs after each job (`finish_job`: five commands) is skipped for a job whose end is written:
arq's bookkeeping is then one transaction per job, at its start.

This leans on names arq does not document (`_poll_iteration`, `start_jobs`, `run_job`'s `finish_job`, the
semaphore and counters of `Worker`, `aborting_tasks`, `job_tasks`, its key prefixes and its definition
format): tests/unit/test_arq_contract.py pins each one, so that an arq upgrade fails there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from arq import Retry
from arq.connections import RedisSettings
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.worker import Worker, func
from redis import exceptions as redis_errors

from shared.connection import REDIS_ERRORS
from shared.retries import ARQ_CONN_RETRIES, ARQ_CONN_RETRY_DELAY, ARQ_CONN_TIMEOUT, REDIS_PATIENCE
from shared.settings import Settings

logger = logging.getLogger(__name__)

JOB_FUNCTION = "generate"
"""The name of the arq function every job runs (worker/generate.py), in the job definitions take.lua writes."""

Take = Callable[[list[str], int], Awaitable[list[tuple[str, float]]]]
"""Takes jobs among candidate arq job ids for that many free slots: (arq job id, score) of each job taken."""


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings, made to survive Redis outages (arq's worker dies on its first error)."""
    if settings.sentinels:
        arq_settings = RedisSettings(
            host=settings.sentinels,
            sentinel=True,
            sentinel_master=settings.REDIS_SENTINEL_MASTER,
            password=settings.REDIS_PASSWORD,
            database=settings.REDIS_DB,
        )
    else:
        arq_settings = RedisSettings.from_dsn(settings.redis_url)
    arq_settings.conn_retries = ARQ_CONN_RETRIES
    arq_settings.conn_timeout = int(ARQ_CONN_TIMEOUT)
    arq_settings.conn_retry_delay = int(ARQ_CONN_RETRY_DELAY)
    arq_settings.retry_on_error = [redis_errors.ConnectionError, redis_errors.TimeoutError, OSError]
    return arq_settings


def arq_job_id(ctx: dict[str, Any]) -> str:
    """The arq job id of the run, from arq's context of a job."""
    job_id: str = ctx["job_id"]
    return job_id


def run_again(defer_s: float) -> Exception:
    """What a job function raises for arq to run the same arq job again after `defer_s` seconds, uncounted
    by albert-spp (its record never said the run started)."""
    return Retry(defer=defer_s)


class ArqWorker(Worker):
    """An arq worker of one queue whose jobs are taken by `take` and run by `function`, with what arq lacks:
    wake-up on `wake()` instead of idle polling, a graceful stop, survival of Redis outages, and its
    bookkeeping after a job skipped when albert-spp's script already did it (`settled`)."""

    def __init__(
        self,
        *,
        settings: Settings,
        queue: str,
        function_name: str,
        function: WorkerCoroutine,
        take: Take,
        health_check_key: str,
        on_startup: StartupShutdown,
        on_shutdown: StartupShutdown,
    ) -> None:
        self.settings = settings
        self._take = take
        self._wake = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self.settled: set[str] = set()
        """arq job ids whose end albert-spp's script wrote, with arq's keys (see the module's docstring)."""
        super().__init__(
            functions=[func(function, name=function_name)],
            queue_name=queue,
            redis_settings=redis_settings(settings),
            on_startup=on_startup,
            on_shutdown=on_shutdown,
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
            health_check_key=health_check_key,
        )
        # arq keeps a job's in-progress key for job_timeout + 10 s, and no worker takes the job meanwhile:
        # a few heartbeats instead, kept alive by our heartbeat while the job runs, so that a job taken by a
        # worker that died before starting it is taken again within seconds.
        self.in_progress_timeout_s = settings.in_progress_lease

    @property
    def aborting(self) -> set[str]:
        """arq job ids cancelled on purpose, as opposed to by a shutdown: arq's own `aborting_tasks`."""
        return self.aborting_tasks

    def wake(self) -> None:
        """Poll the queue now: a job was announced, or a slot freed."""
        self._wake.set()

    async def _poll_iteration(self) -> None:
        """arq's poll, but an idle worker sleeps until woken (or WORKER_IDLE_POLL passes)."""
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
        """Take jobs among `job_ids` (the head of the queue) with `take`, in one script that applies the clients'
        caps and priorities (arq's own start_jobs takes them one by one, with four round trips each), and run
        them. A Redis error gives the slot back (arq's keeps it: each outage would leave the worker one job short,
        until it took none)."""
        if not job_ids:
            return
        await self.sem.acquire()  # a free slot, as arq waits for one
        try:
            taken = await self._take([job_id.decode() for job_id in job_ids], self.max_jobs - self.job_counter)
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

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's bookkeeping after a run, skipped when albert-spp's script already removed the job's queue entry
        and arq's keys (its end written: finish.lua, requeue.lua)."""
        if job_id in self.settled:
            self.settled.discard(job_id)
            return
        await super().finish_job(
            job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
        )

    def stop_job(self, job_id: str) -> bool:
        """Cancel the running task of arq job `job_id` on purpose: arq then finishes it instead of running it
        again. False when no such task runs."""
        task = self.job_tasks.get(job_id)
        if task is None or task.done():
            return False
        self.aborting_tasks.add(job_id)
        task.cancel()
        return True

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
