"""The sweeper: gives back to the queue the running jobs whose worker stopped heartbeating them.

Every worker of a model runs one, every WORKER_HEARTBEAT seconds: a job whose heartbeat deadline (three
heartbeats ahead, `Settings.worker_lease`) has passed is handed back at once (requeue.lua, atomic per job,
so that two sweepers never hand back the same run twice), and the model's workers are woken to take it.
Its attempt counts: a job whose worker keeps dying fails once JOB_MAX_ATTEMPTS are spent. It also reaps: finished
jobs whose RESULT_TTL has passed are erased with their index entries (`WorkerJobStore.reap`; any worker's will do).

Deadlines go by while nobody can beat: after losing Redis, the sweeper waits for a lease and a heartbeat
before sweeping again, so that the live workers first beat their jobs again; a sweeper that starts while
Redis itself has been up for less than that waits too.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shared.connection import REDIS_ERRORS
from shared.settings import Settings
from worker.jobs import WorkerJobStore

logger = logging.getLogger(__name__)


async def sweep_forever(store: WorkerJobStore, settings: Settings, model: str) -> None:
    """Hand back the model's abandoned jobs, every WORKER_HEARTBEAT seconds, until cancelled."""
    settle = settings.worker_lease + settings.WORKER_HEARTBEAT
    reachable_since: float | None = None
    """time.monotonic() since when the live workers can beat: unknown (None) until Redis answers."""
    starting = True
    while True:
        await asyncio.sleep(settings.WORKER_HEARTBEAT)
        try:
            if reachable_since is None:
                # At start, Redis has been answering the other workers since it started; after an outage of
                # ours, since it answers us again.
                info = await store.redis.info("server")
                up = int(info["uptime_in_seconds"]) if starting else 0
                reachable_since, starting = time.monotonic() - up, False
            if time.monotonic() - reachable_since < settle:
                continue
            swept = await store.sweep(model)
            reaped = await store.reap()
        except REDIS_ERRORS as exc:
            if reachable_since is not None:
                logger.warning("sweeper paused, Redis unavailable: %s", exc)
            reachable_since, starting = None, False
            continue
        except Exception:
            logger.exception("sweep failed")  # the next one may not: a sweeper must not end
            continue
        if swept:
            logger.warning("%d job(s) of %s handed back to the queue: their worker stopped", len(swept), model)
        if reaped:
            logger.info("%d finished job(s) erased: their RESULT_TTL has passed", reaped)
