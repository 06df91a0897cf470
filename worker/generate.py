"""The job function: one attempt at one generation, from the job record to the stored result.

Every outcome is written to the job record, never left to arq: arq only delivers key ids. A job given back
to the queue (a retry, a shutdown) moves to a fresh arq job id (requeue.lua), so generate returns normally
and arq's own bookkeeping of the old id cannot touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as redis_errors

from shared.models import ErrorType, GenerationRequest, JobError, JobResult, now_ms
from shared.provenance import StoredProvenance
from shared.retries import PERSIST_FIRST_DELAY, PERSIST_MAX_DELAY, REDIS_PATIENCE
from shared.streams import next_id
from worker.arq_adapter import arq_job_id, run_again
from worker.backends import BackendError, BackendRejected, Delta, request_id
from worker.context import Running, WorkerContext
from worker.jobs import Chunk, Started
from worker.provenance import CARD_WAIT, Trace

logger = logging.getLogger(__name__)

T = TypeVar("T")

REDIS_WRITE_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.OutOfMemoryError)
"""What a Redis write raises while Redis restarts or is unreachable (the client already retried a few times), or
while it refuses writes past its maxmemory (OOM, policy noeviction; a script is refused before its first write):
an outage too, waited out the same way, never a failure of the job."""


async def persist(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again through a Redis outage for up to REDIS_PATIENCE seconds (shared/retries.py).

    Every store write is safe to send twice (a command whose reply was lost may have run): the scripts are
    fenced by the run, and each append carries its own stream id, which Redis refuses a second time.
    """
    deadline = time.monotonic() + REDIS_PATIENCE
    delay = PERSIST_FIRST_DELAY
    while True:
        try:
            return await call()
        except REDIS_WRITE_ERRORS:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(2 * delay, PERSIST_MAX_DELAY)


class AttemptLost(Exception):
    """This run no longer owns the job: it was cancelled, or another worker took it."""


class TokenWriter:
    """Coalesces tokens into one stream entry per STREAM_FLUSH_MS; the first token goes out at once.

    The windows are slots of one clock (multiples of STREAM_FLUSH_MS), the same for every job: a decode step
    of the model server that gives a token to every running job makes them all flush in the same event-loop
    turn, and `ChunkWriter` writes their chunks in one call.
    """

    def __init__(self, spp: WorkerContext, kid: str, run: int) -> None:
        self._spp, self._kid, self._run = spp, kid, run
        self._window = spp.settings.STREAM_FLUSH_MS / 1000
        self._buffer: list[str] = []
        self._slot = -1.0
        """The window of the last flush: time.monotonic() // STREAM_FLUSH_MS."""
        self._last_id: str | None = None
        """The stream id of the run's last chunk written: the next one's id must be above it."""
        self._pending: tuple[str, str] | None = None
        """A chunk (id, text) whose write failed (or lost its reply): sent again as it is, before the rest."""
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def add(self, text: str) -> None:
        self.parts.append(text)
        self._buffer.append(text)
        now = time.monotonic()
        slot = now // self._window if self._window else now  # STREAM_FLUSH_MS=0: every token
        if slot != self._slot:
            self._slot = slot
            try:
                await self.flush()
            except REDIS_WRITE_ERRORS as exc:
                # Redis is away: the generation goes on, and its tokens wait for the next flush.
                logger.debug("job %s: tokens kept for later, Redis unavailable (%s)", self._kid, exc)

    async def flush(self) -> None:
        """Write the buffered tokens as the run's next chunk; on a Redis error, they are kept."""
        if self._pending is None:
            if not self._buffer:
                return
            self._pending = (next_id(self._last_id, now_ms()), "".join(self._buffer))
            self._buffer.clear()
        entry_id, text = self._pending
        written = await self._spp.chunks.append(Chunk(self._kid, self._run, text, entry_id))
        self._pending = None
        if written is None:
            raise AttemptLost
        self._last_id = written
        if self._buffer:  # tokens that came while the pending chunk waited for Redis
            await self.flush()

    async def settle(self) -> str:
        """Write a chunk still pending after a Redis error; returns the tail to write with the final record."""
        if self._pending is not None:
            await persist(self.flush)
        return self.take_tail()

    def take_tail(self) -> str:
        """The unflushed text, to be written together with the final record."""
        tail = "".join(self._buffer)
        self._buffer.clear()
        return tail


def _log(level: int, spp: WorkerContext, kid: str, attempt: int, event: str, what: str, **facts: Any) -> None:
    """One line per job transition; its facts are fields of the JSON log line (never the prompt)."""
    extra = {"event": event, "job": kid, "model": spp.model, "attempt": attempt, **facts}
    details = "".join(f" {key}={value}" for key, value in facts.items())
    logger.log(level, "job %s model=%s attempt=%d %s%s", kid, spp.model, attempt, what, details, extra=extra)


def backoff_delay(first: float, attempt: int) -> float:
    """Exponential backoff with jitter: between half and all of `first * 2**(attempt-1)` seconds."""
    return float(random.uniform(0.5, 1.0) * first * 2 ** (attempt - 1))


async def generate(ctx: dict[str, Any], kid: str) -> None:
    """Run one attempt of job `kid`; every outcome is recorded in the job record, none is raised to arq but
    a start that Redis could not record (arq then runs the same arq job again)."""
    spp: WorkerContext = ctx["spp"]
    store, model = spp.store, spp.model
    arq_id = arq_job_id(ctx)
    try:
        started = await persist(lambda: store.start(kid, arq_id, model, spp.worker_id))
    except REDIS_WRITE_ERRORS as exc:
        # Not started: arq keeps this arq job queued (the one outcome it does not finish).
        logger.warning("job %s not started, Redis unavailable: %s", kid, exc)
        raise run_again(spp.settings.WORKER_HEARTBEAT) from exc
    if started is None:
        logger.info("job %s skipped: no longer queued", kid)
        return
    spp.runs[kid] = Running(started.run, arq_id)
    try:
        await _attempt(spp, kid, arq_id, started)
    except REDIS_WRITE_ERRORS as exc:
        logger.warning(
            "job %s model=%s attempt=%d left to the sweeper, Redis unavailable: %s", kid, model, started.attempt, exc
        )
    finally:
        spp.runs.pop(kid, None)


async def _attempt(spp: WorkerContext, kid: str, arq_id: str, started: Started) -> None:
    """The started attempt, to its stored outcome: a result, a failure, or the job back in the queue."""
    store, settings, model = spp.store, spp.settings, spp.model
    attempt, run = started.attempt, started.run
    log_args = (kid, model, attempt)
    if attempt > settings.JOB_MAX_ATTEMPTS:
        # Retries stop at the last attempt: only the sweeper goes past it, after each worker running it died.
        message = (
            f"the worker running attempt {attempt - 1} stopped (killed, crashed or cut off from Redis), "
            f"and JOB_MAX_ATTEMPTS={settings.JOB_MAX_ATTEMPTS} attempts were made"
        )
        error = JobError(type=ErrorType.WORKER_LOST, message=message)
        _settled(spp, arq_id, await persist(lambda: store.finish(kid, model, run, error, provenance=_unsent(spp))))
        _failed(spp, kid, attempt, ErrorType.WORKER_LOST, 0.0)
        return
    if attempt > 1 and now_ms() > started.created_at + settings.JOB_DEADLINE * 1000:
        message = f"JOB_DEADLINE={settings.JOB_DEADLINE:g}s passed since the job was created: no attempt {attempt}"
        error = JobError(type=ErrorType.DEADLINE, message=message)
        _settled(spp, arq_id, await persist(lambda: store.finish(kid, model, run, error, provenance=_unsent(spp))))
        _failed(spp, kid, attempt, ErrorType.DEADLINE, 0.0)
        return
    trace = Trace(started_at=now_ms())
    queue_ms = max(0, trace.started_at - started.created_at)
    spp.metrics.started.labels(model).inc()
    spp.metrics.queue_seconds.labels(model).observe(queue_ms / 1000)
    sent_as = request_id(kid, run)
    _log(logging.INFO, spp, kid, attempt, "job_started", "started", queue_ms=queue_ms, request_id=sent_as)
    began = time.monotonic()
    spp.metrics.running.labels(model).inc()
    writer = TokenWriter(spp, kid, run)
    try:
        result = await _stream(spp, sent_as, started.request, writer, trace)
        tail = await writer.settle()
        # No attempt line: the record and the provenance hold the succeeded attempt's (shared/provenance.py).
        provenance = await _provenance(spp, trace)
        stored = await persist(lambda: store.finish(kid, model, run, result, tail=tail, provenance=provenance))
        _settled(spp, arq_id, stored)
        seconds = time.monotonic() - began
        if stored:
            spp.metrics.succeeded.labels(model).inc()
            spp.metrics.generation_seconds.labels(model).observe(seconds)
            if seconds > 0:
                spp.metrics.tokens_per_second.labels(model).observe(result.usage.completion_tokens / seconds)
        _log(
            logging.INFO,
            spp,
            kid,
            attempt,
            "job_finished",
            "finished",
            status="succeeded" if stored else "discarded",
            duration_ms=round(seconds * 1000),
            completion_tokens=result.usage.completion_tokens,
        )
    except AttemptLost:
        _log(logging.INFO, spp, kid, attempt, "job_stopped", "stopped: cancelled or taken over")
    except asyncio.CancelledError:
        if arq_id not in spp.aborting:
            # A shutdown, not a cancellation: give the job back without counting the attempt.
            try:
                line = trace.line(attempt, run, "shutdown")
                _settled(spp, arq_id, await asyncio.shield(store.requeue(kid, model, run, refund=True, attempt=line)))
                _log(logging.INFO, spp, kid, attempt, "job_handed_back", "handed back on shutdown")
            except REDIS_WRITE_ERRORS as exc:
                logger.warning("job %s model=%s attempt=%d left to the sweeper: %s", *log_args, exc)
        raise
    except (BackendError, TimeoutError) as exc:
        await _retry_or_fail(spp, kid, arq_id, started, exc, time.monotonic() - began, trace)
    except REDIS_WRITE_ERRORS:
        raise  # not a failure of the job: generate() leaves it to the sweeper
    except Exception as exc:
        logger.exception("job %s model=%s attempt=%d crashed", *log_args)
        # The traceback is in the worker's log; the client learns only that the fault is ours.
        error = JobError(type=ErrorType.INTERNAL, message=f"internal error of the worker ({type(exc).__name__})")
        provenance, line = await _provenance(spp, trace), trace.line(attempt, run, "failed", ErrorType.INTERNAL)
        written = await persist(lambda: store.finish(kid, model, run, error, provenance=provenance, attempt=line))
        _settled(spp, arq_id, written)
        _failed(spp, kid, attempt, ErrorType.INTERNAL, time.monotonic() - began)
    finally:
        spp.metrics.running.labels(model).dec()


async def _stream(
    spp: WorkerContext, sent_as: str, request: GenerationRequest, writer: TokenWriter, trace: Trace
) -> JobResult:
    """The generation from the model server (asked under request id `sent_as`), its tokens written to the job's
    stream as they come; `trace` learns what answered."""
    result: JobResult | None = None
    async with (
        asyncio.timeout(spp.settings.BACKEND_TIMEOUT),
        contextlib.aclosing(spp.client.stream(request, sent_as, trace)) as events,
    ):
        asked = time.monotonic()
        async for event in events:
            if isinstance(event, Delta):
                if not writer.parts:
                    waited = time.monotonic() - asked
                    trace.first_token_ms = round(waited * 1000)
                    spp.metrics.first_token_seconds.labels(spp.model).observe(waited)
                await writer.add(event.text)
            else:
                result = JobResult(text=writer.text, finish_reason=event.finish_reason, usage=event.usage)
    if result is None:
        raise RuntimeError("the model client ended without a final event")
    return result


def _settled(spp: WorkerContext, arq_id: str, written: bool) -> bool:
    """Note a run's end `written` by its script (finish.lua, requeue.lua), which deleted arq's keys of `arq_id`
    too: arq's bookkeeping after the run is then skipped (worker/arq_adapter.py). Returns `written`."""
    if written:
        spp.settled.add(arq_id)
    return written


def _unsent(spp: WorkerContext) -> str:
    """The provenance of a job failed before its attempt sent any request (nor has a line in the attempt log)."""
    return StoredProvenance(app_version=spp.settings.APP_VERSION).stored(spp.model)


async def _provenance(spp: WorkerContext, trace: Trace) -> str:
    """The job's provenance, its attempt `trace` being its last: with its replica's card, if it comes in time."""
    card = None if trace.replica is None else await spp.client.cards.get(trace.replica, CARD_WAIT)
    return trace.provenance(spp.model, card, spp.settings.APP_VERSION)


def _failed(spp: WorkerContext, kid: str, attempt: int, kind: ErrorType, seconds: float, reason: str = "") -> None:
    """Count and log a failed job; `reason` is the internal message (where it failed), for the log only."""
    spp.metrics.failed.labels(spp.model, kind).inc()
    facts: dict[str, Any] = {"reason": reason[:500]} if reason else {}
    _log(
        logging.WARNING,
        spp,
        kid,
        attempt,
        "job_finished",
        "finished",
        status="failed",
        error_type=kind,
        duration_ms=round(seconds * 1000),
        **facts,
    )


async def _retry_or_fail(
    spp: WorkerContext,
    kid: str,
    arq_id: str,
    started: Started,
    exc: BackendError | TimeoutError,
    seconds: float,
    trace: Trace,
) -> None:
    """After a failed attempt: back to the queue after a backoff, or `failed` with the reason (a 4xx, the last
    attempt, or JOB_DEADLINE passed before the next one could start)."""
    store, settings, model = spp.store, spp.settings, spp.model
    attempt, run = started.attempt, started.run
    kind = exc.kind if isinstance(exc, BackendError) else ErrorType.TIMEOUT
    attempt_error = kind
    spp.metrics.backend_errors.labels(model, kind).inc()
    message = str(exc) or f"no result within BACKEND_TIMEOUT={settings.BACKEND_TIMEOUT:g}s"
    internal = exc.internal if isinstance(exc, BackendError) else message
    if not isinstance(exc, BackendRejected) and attempt < settings.JOB_MAX_ATTEMPTS:
        delay = backoff_delay(settings.RETRY_BACKOFF, attempt)
        if now_ms() + delay * 1000 <= started.created_at + settings.JOB_DEADLINE * 1000:
            line = trace.line(attempt, run, "retry", attempt_error)
            requeued = await persist(lambda: store.requeue(kid, model, run, refund=False, delay=delay, attempt=line))
            if _settled(spp, arq_id, requeued):
                spp.metrics.retried.labels(model).inc()
                _log(
                    logging.WARNING,
                    spp,
                    kid,
                    attempt,
                    "job_retry",
                    f"will be retried: {internal[:300]}",
                    error_type=kind,
                    retry_in_s=round(delay, 2),
                )
            return
        kind, message = (
            ErrorType.DEADLINE,
            f"JOB_DEADLINE={settings.JOB_DEADLINE:g}s passed, after attempt {attempt}: {message}",
        )
    error = JobError(type=kind, message=message)
    provenance, line = await _provenance(spp, trace), trace.line(attempt, run, "failed", attempt_error)
    written = await persist(lambda: store.finish(kid, model, run, error, provenance=provenance, attempt=line))
    _settled(spp, arq_id, written)
    _failed(spp, kid, attempt, kind, seconds, internal)
