"""Continuous batching: a bounded set of running sequences, the rest waiting, paced token output."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sim.stats import Stats

# With no delay configured, hand the loop back every this many tokens so one long request never
# starves the others (sending a chunk does not yield by itself).
_YIELD_EVERY = 8


class Scheduler:
    """Admits at most max_num_seqs requests at once, like vLLM's --max-num-seqs; others queue FIFO.

    A cancellation while waiting or running (the client went away) frees the slot at once and
    counts the request as aborted.
    """

    def __init__(self, max_num_seqs: int, stats: Stats) -> None:
        self._slots = asyncio.Semaphore(max_num_seqs)
        self._stats = stats

    @asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        stats = self._stats
        stats.waiting[model] += 1
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            stats.aborted += 1
            raise
        finally:
            stats.waiting[model] -= 1
        stats.running[model] += 1
        try:
            yield
        except asyncio.CancelledError:
            stats.aborted += 1
            raise
        finally:
            stats.running[model] -= 1
            self._slots.release()


class Pacer:
    """Absolute token deadlines from the admission time: token i is due at t0 + start + i * per_token.

    Deadlines do not drift when the loop is late under load: a late token is sent at once and
    the next one keeps its original deadline.
    """

    __slots__ = ("_loop", "_per_token", "_start")

    def __init__(self, start_delay_s: float, per_token_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time() + start_delay_s
        self._per_token = per_token_s

    async def until(self, index: int) -> None:
        """Wait until token `index` (0-based) is due."""
        delay = self._start + index * self._per_token - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif index % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)
