"""The job function: one attempt at one generation, from the job record to the stored result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from arq import Retry

from shared.models import JobError, JobResult
from worker.backends import BackendError, BackendRejected, Delta
from worker.context import WorkerContext

logger = logging.getLogger(__name__)


class AttemptLost(Exception):
    """This run no longer owns the job: it was cancelled, or another worker took it."""


class TokenWriter:
    """Coalesces tokens into one stream entry per STREAM_FLUSH_MS; the first token goes out at once."""

    def __init__(self, spp: WorkerContext, kid: str, run: int) -> None:
        self._spp, self._kid, self._run = spp, kid, run
        self._window = spp.settings.STREAM_FLUSH_MS / 1000
        self._buffer: list[str] = []
        self._last_flush = 0.0
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def add(self, text: str) -> None:
        self.parts.append(text)
        self._buffer.append(text)
        now = time.monotonic()
        if now - self._last_flush >= self._window:
            self._last_flush = now
            await self.flush()

    async def flush(self) -> None:
        if self._buffer:
            chunk = "".join(self._buffer)
            self._buffer.clear()
            if not await self._spp.store.append(self._kid, self._run, chunk):
                raise AttemptLost

    def take_tail(self) -> str:
        """The unflushed text, to be written together with the final record."""
        tail = "".join(self._buffer)
        self._buffer.clear()
        return tail


def backoff_delay(first: float, attempt: int) -> float:
    """Exponential backoff with jitter: between half and all of `first * 2**(attempt-1)` seconds."""
    return float(random.uniform(0.5, 1.0) * first * 2 ** (attempt - 1))


async def generate(ctx: dict[str, Any], kid: str) -> None:
    """Run one attempt of job `kid`; every outcome is recorded in the job record, never raised to arq."""
    spp: WorkerContext = ctx["spp"]
    store, settings, model = spp.store, spp.settings, spp.model
    arq_id: str = ctx["job_id"]
    started = await store.start(kid, arq_id, model, spp.worker_id)
    if started is None:
        logger.info("job %s skipped: no longer queued", kid)
        return
    attempt, run, request = started.attempt, started.run, started.request
    log_args = (kid, model, attempt)
    logger.info("job %s model=%s attempt=%d started", *log_args)
    began = time.monotonic()
    writer = TokenWriter(spp, kid, run)
    result: JobResult | None = None
    spp.runs[kid], spp.arq_ids[kid] = run, arq_id
    try:
        async with (
            asyncio.timeout(settings.BACKEND_TIMEOUT),
            contextlib.aclosing(spp.client.stream(request, f"{kid}:{run}")) as events,
        ):
            async for event in events:
                if isinstance(event, Delta):
                    await writer.add(event.text)
                else:
                    result = JobResult(text=writer.text, finish_reason=event.finish_reason, usage=event.usage)
        if result is None:
            raise RuntimeError("the model client ended without a final event")
        stored = await store.finish(kid, model, run, result, tail=writer.take_tail())
        outcome = "succeeded" if stored else "discarded (run lost)"
        logger.info("job %s model=%s attempt=%d %s in %.3fs", *log_args, outcome, time.monotonic() - began)
    except AttemptLost:
        logger.info("job %s model=%s attempt=%d stopped: cancelled or taken over", *log_args)
    except asyncio.CancelledError:
        if arq_id not in spp.aborting:
            # A shutdown, not a cancellation: give the job back without counting the attempt.
            await asyncio.shield(store.requeue(kid, model, run, refund=True))
            logger.info("job %s model=%s attempt=%d handed back on shutdown", *log_args)
        raise
    except (BackendError, TimeoutError) as exc:
        kind = exc.kind if isinstance(exc, BackendError) else "timeout"
        message = str(exc) or f"no result within BACKEND_TIMEOUT={settings.BACKEND_TIMEOUT}s"
        if isinstance(exc, BackendRejected) or attempt >= settings.JOB_MAX_ATTEMPTS:
            await store.finish(kid, model, run, JobError(type=kind, message=message))
            logger.warning("job %s model=%s attempt=%d failed: %s", *log_args, kind)
            return
        delay = backoff_delay(settings.RETRY_BACKOFF, attempt)
        if await store.requeue(kid, model, run, refund=False):
            logger.warning("job %s model=%s attempt=%d %s, retry in %.2fs", *log_args, kind, delay)
            raise Retry(defer=delay) from exc
    except Exception as exc:
        logger.exception("job %s model=%s attempt=%d crashed", *log_args)
        message = f"internal error: {type(exc).__name__}: {exc}"
        await store.finish(kid, model, run, JobError(type="internal", message=message))
    finally:
        spp.runs.pop(kid, None)
        spp.arq_ids.pop(kid, None)
