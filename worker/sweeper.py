"""The sweeper: gives back to the queue the running jobs whose worker stopped heartbeating them.

Every worker of a model runs one, every WORKER_HEARTBEAT seconds: a job whose heartbeat deadline (three
heartbeats ahead, `Settings.worker_lease`) has passed is handed back at once (requeue.lua, atomic per job,
so that two sweepers never hand back the same run twice), and the model's workers are woken to take it.
Its attempt counts: a job whose worker keeps dying fails once JOB_MAX_ATTEMPTS are spent.

After losing Redis the sweeper waits for a lease and a heartbeat before sweeping again: deadlines went
by while nobody could beat, and the live workers must first have had the time to beat their jobs again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shared.connection import REDIS_ERRORS
from shared.settings import Settings
from shared.store import JobStore

logger = logging.getLogger(__name__)


async def sweep_forever(store: JobStore, settings: Settings, model: str) -> None:
    """Hand back the model's abandoned jobs, every WORKER_HEARTBEAT seconds, until cancelled."""
    settle = settings.worker_lease + settings.WORKER_HEARTBEAT
    reachable_since: float | None = None
    while True:
        await asyncio.sleep(settings.WORKER_HEARTBEAT)
        try:
            if reachable_since is None or time.monotonic() - reachable_since < settle:
                await store.redis.ping()
                reachable_since = reachable_since or time.monotonic()
                continue
            swept = await store.sweep(model)
        except REDIS_ERRORS as exc:
            if reachable_since is not None:
                logger.warning("sweeper paused, Redis unavailable: %s", exc)
            reachable_since = None
            continue
        if swept:
            logger.warning("%d job(s) of %s handed back to the queue: their worker stopped", len(swept), model)
