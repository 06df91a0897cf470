"""The sweeper loop: it sweeps every heartbeat, and after losing Redis waits for live workers to beat again."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from redis import exceptions as redis_errors

from tests.unit.conftest import MODEL, make_settings
from worker.jobs import WorkerJobStore
from worker.sweeper import sweep_forever

pytestmark = pytest.mark.usefixtures("clean_env")


class Store:
    """What the sweeper uses of a WorkerJobStore, with Redis made to fail on demand."""

    def __init__(self, uptime: int = 0) -> None:
        self.uptime = uptime
        self.down = False
        self.answered: list[float] = []
        """When INFO answered."""
        self.sweeps: list[float] = []
        self.redis = self

    async def info(self, section: str) -> dict[str, Any]:
        self._answer()
        self.answered.append(time.monotonic())
        return {"uptime_in_seconds": self.uptime}

    async def sweep(self, model: str) -> list[str]:
        self._answer()
        self.sweeps.append(time.monotonic())
        return []

    def _answer(self) -> None:
        if self.down:
            raise redis_errors.ConnectionError("Connection refused")


async def run_for(store: Store, seconds: float, **settings: Any) -> None:
    task = asyncio.create_task(sweep_forever(cast(WorkerJobStore, store), make_settings(**settings), MODEL))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_sweeper_sweeps_every_heartbeat() -> None:
    store = Store(uptime=3600)

    await run_for(store, 0.5, WORKER_HEARTBEAT=0.02)

    assert store.sweeps[0] - store.answered[0] < 0.01, "Redis has been up for long: the live workers have beaten"
    assert len(store.sweeps) >= 10


async def test_a_sweeper_starting_with_redis_waits_for_the_workers_to_beat() -> None:
    store = Store(uptime=0)

    await run_for(store, 0.5, WORKER_HEARTBEAT=0.02)

    assert store.sweeps[0] - store.answered[0] >= 0.08, "not before a lease and a heartbeat (4 heartbeats)"


async def test_after_an_outage_the_sweeper_waits_before_sweeping_again() -> None:
    store = Store(uptime=3600)
    task = asyncio.create_task(sweep_forever(cast(WorkerJobStore, store), make_settings(WORKER_HEARTBEAT=0.02), MODEL))
    await asyncio.sleep(0.3)
    store.down = True
    await asyncio.sleep(0.1)
    store.down = False
    back = time.monotonic()
    store.sweeps.clear()
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert store.sweeps
    assert store.sweeps[0] - back >= 0.08, "not before a lease and a heartbeat (4 heartbeats) of Redis answering"
