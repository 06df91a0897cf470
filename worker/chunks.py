"""The token chunks of a worker's jobs, written to Redis together: one script call for all the chunks flushed in
the same turn of the event loop, instead of one call each.

A model server's decode step gives a token to every running sequence at once, and the jobs' coalescing windows
are aligned on one clock (`TokenWriter`), so the chunks of all the running jobs of a worker are flushed in the
same turn: 256 jobs streaming cost Redis 10 calls a second, not 2,560.
"""

from __future__ import annotations

import asyncio

from worker.jobs import Chunk, WorkerJobStore


class ChunkWriter:
    def __init__(self, store: WorkerJobStore) -> None:
        self._store = store
        self._chunks: list[Chunk] = []
        self._waiters: list[asyncio.Future[str | None]] = []
        self._writing: set[asyncio.Task[None]] = set()

    async def append(self, chunk: Chunk) -> str | None:
        """`WorkerJobStore.append` of `chunk`, sent with the other chunks of this turn; raises what that call raises."""
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if not self._chunks:  # the first of this turn: the call goes once every job of the turn has added its own
            task = asyncio.create_task(self._write())
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)
        self._chunks.append(chunk)
        self._waiters.append(waiter)
        return await waiter

    async def _write(self) -> None:
        chunks, waiters = self._chunks, self._waiters
        self._chunks, self._waiters = [], []
        try:
            written = await self._store.append_many(chunks)
        except asyncio.CancelledError:
            for waiter in waiters:
                waiter.cancel()
            raise
        except Exception as exc:  # every caller gets the call's failure, as its own call would
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter, entry_id in zip(waiters, written, strict=True):
            if not waiter.done():
                waiter.set_result(entry_id)
