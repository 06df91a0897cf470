"""The workers' job store: jobs taken from their queue, run, ended, handed back; the sweeper's and the reaper's
passes.

Each is one script call, fenced by the job's run: a worker that lost its job can no longer write to it. The API's
side of the same records is `api.jobs.ApiJobStore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.models import ErrorType, GenerationRequest, JobError, JobResult, JobStatus, now_ms
from shared.settings import Settings
from shared.store import BATCH_BAND, INTERACTIVE_BAND, JobStoreBase
from worker.arq_adapter import JOB_FUNCTION

SWEEP_BATCH = 1000
"""Jobs one sweep hands back at most (the next sweep takes the rest)."""

ACTIVITY_LENGTH = 20_000
"""Finished jobs kept per model in its activity stream (about), for the dashboard's recent figures."""

REAP_BATCH = 1000
"""Expired jobs one call of reap.lua erases at most."""


class Chunk(NamedTuple):
    """Tokens of a run, to append to its job's stream as entry `entry_id` (see `WorkerJobStore.append`)."""

    kid: str
    run: int
    text: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class Started:
    attempt: int
    """The public attempt number (retries count, shutdowns do not)."""
    run: int
    """The fencing token of this run: every later write of the worker must present it."""
    request: GenerationRequest
    created_at: int
    """When the job was submitted (ms since the epoch)."""


class WorkerJobStore(JobStoreBase):
    """Job state in Redis for a worker: take, start, append, finish, requeue, heartbeat, and the sweeper's passes."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self._take = self._script("take")
        self._start = self._script("start")
        self._append = self._script("append")
        self._finish = self._script("finish")
        self._requeue = self._script("requeue")
        self._heartbeat = self._script("heartbeat")
        self._reap = self._script("reap")

    async def take(
        self, model: str, candidates: list[str], slots: int, *, lease_ms: int, definition_ttl_ms: int
    ) -> list[tuple[str, float]]:
        """take.lua: up to `slots` of the model's queued jobs among `candidates` (arq job ids, head of the queue
        first), marked in progress for `lease_ms` with arq's definition written. Returns their (arq job id,
        score)."""
        reply: list[str] = await self._take(
            keys=[keys.queue(model), keys.running(model), keys.virtual_clock(model)],
            args=[
                now_ms(),
                slots,
                lease_ms,
                definition_ttl_ms,
                JOB_FUNCTION,
                keys.arq_in_progress(""),
                keys.arq_job(""),
                keys.job(""),
                keys.client(""),
                keys.client_queue(model, ""),
                BATCH_BAND,
                INTERACTIVE_BAND,
                BATCH_BAND,
                *candidates,
            ],
        )
        return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def start(self, kid: str, arq_id: str, model: str, worker_id: str) -> Started | None:
        """Mark the job running for a new attempt; None when it must not run (anymore)."""
        now = now_ms()
        deadline = now + int(self.settings.worker_lease * 1000)
        reply = await self._start(
            keys=[keys.job(kid), keys.stream(kid), keys.running(model), keys.queue(model)],
            args=[now, worker_id, deadline, kid, arq_id, keys.index_prefix("")],
        )
        if not reply:
            return None
        request = GenerationRequest.model_validate_json(reply[2])
        return Started(attempt=int(reply[0]), run=int(reply[1]), request=request, created_at=int(reply[3]))

    async def append(self, kid: str, run: int, text: str, entry_id: str) -> str | None:
        """Append tokens to the stream as entry `entry_id`; returns the entry's id (Redis's own if the worker's
        clock is behind the stream), None when this run no longer owns the job.

        `entry_id` is `streams.next_id` of the run's previous chunk, so that the chunk is written once even if
        sent again; or `*` (Redis's clock, not safe to resend) when no id of the worker's follows in the run:
        that id could fall below it, and its chunk be taken for a resend.
        """
        return (await self.append_many([Chunk(kid, run, text, entry_id)]))[0]

    async def append_many(self, chunks: list[Chunk]) -> list[str | None]:
        """`append` of several chunks (of different jobs) in one call; their results in the same order."""
        job_keys = [key for chunk in chunks for key in (keys.job(chunk.kid), keys.stream(chunk.kid))]
        args = [value for chunk in chunks for value in (chunk.run, chunk.text, chunk.entry_id)]
        written: list[str | None] = await self._append(keys=job_keys, args=args)
        return written

    async def finish(
        self,
        kid: str,
        model: str,
        run: int,
        outcome: JobResult | JobError,
        tail: str = "",
        *,
        provenance: str = "",
        attempt: str = "",
    ) -> bool:
        """Store the attempt's result or error, and close the stream (after `tail`, unflushed tokens).

        `provenance` (JSON) is what produced the answer, kept in the record; `attempt` (JSON) is the attempt's line
        of the record's `attempt_log`."""
        succeeded = isinstance(outcome, JobResult)
        status, field = (JobStatus.SUCCEEDED, "result") if succeeded else (JobStatus.FAILED, "error")
        used = 0
        if isinstance(outcome, JobResult):
            used = (outcome.usage.prompt_tokens or 0) + outcome.usage.completion_tokens
        return bool(
            await self._finish(
                keys=[keys.job(kid), keys.stream(kid), keys.running(model), keys.activity(model)],
                args=[
                    run,
                    status.value,
                    field,
                    outcome.model_dump_json(),
                    now_ms(),
                    self.settings.RESULT_TTL,
                    self.settings.STREAM_TTL,
                    kid,
                    tail,
                    ACTIVITY_LENGTH,
                    used,
                    keys.client_jobs(""),
                    keys.tokens("", "").removesuffix(":"),
                    keys.virtual_finish(model),
                    keys.queue(model),
                    provenance,
                    attempt,
                    keys.index_prefix(""),
                    keys.expiring(),
                    keys.webhook_events(),
                    self._ended_record_ttl,
                    keys.arq_job(""),
                    keys.arq_in_progress(""),
                    keys.arq_retry(""),
                ],
            )
        )

    async def requeue(
        self, kid: str, model: str, run: int, *, refund: bool, delay: float = 0.0, attempt: str = ""
    ) -> bool:
        """Give this run's job back to the queue, in its place, to run again after `delay` seconds (0: at once);
        `refund` un-counts the attempt (a shutdown, not a failure). `attempt` (JSON) is the ended attempt's line
        of the record's `attempt_log`."""
        handed = await self._hand_back(model, "run", {kid: (run, attempt)}, refund=refund, delay=delay)
        return bool(handed)

    async def sweep(self, model: str) -> list[str]:
        """Hand back the model's running jobs whose heartbeat deadline passed (their worker died or lost
        Redis for longer than WORKER_HEARTBEAT × 3); the attempt counts. Returns their key ids."""
        expired: list[str] = await self.redis.zrangebyscore(keys.running(model), "-inf", now_ms(), 0, SWEEP_BATCH)
        if not expired:
            return []
        lost = orjson.dumps({"error": {"type": ErrorType.WORKER_LOST}, "ended_at": now_ms()}).decode()
        return await self._hand_back(model, "expired", dict.fromkeys(expired, (0, lost)), refund=False, delay=0.0)

    async def _hand_back(
        self, model: str, mode: str, runs: dict[str, tuple[int, str]], *, refund: bool, delay: float
    ) -> list[str]:
        """requeue.lua: each job of `runs` (key id: (run, attempt log line)) moves to a fresh arq job id in the
        model's queue."""
        now = now_ms()
        args: list[str | int] = [
            mode,
            now,
            "1" if refund else "0",
            now + int(delay * 1000) if delay > 0 else 0,
            keys.arq_job(""),
            keys.arq_in_progress(""),
            keys.arq_retry(""),
            keys.wake_channel(model),
            keys.client_queue(model, ""),
            BATCH_BAND,
            keys.index_prefix(""),
        ]
        for kid, (run, attempt) in runs.items():
            args += [kid, run, keys.arq_id(kid), attempt]
        handed: list[str] = await self._requeue(
            keys=[keys.running(model), keys.queue(model), *(keys.job(kid) for kid in runs)], args=args
        )
        return handed

    async def reap(self) -> int:
        """Erase the finished jobs whose RESULT_TTL has passed, with their index entries (reap.lua), REAP_BATCH a
        call until none is left. Returns how many were due."""
        due = total = REAP_BATCH
        while due == REAP_BATCH:
            due = await self._reap(
                keys=[keys.expiring()],
                args=[now_ms(), REAP_BATCH, keys.job(""), keys.stream(""), keys.index_prefix(""), keys.activity("")],
            )
            total += due
        return total - REAP_BATCH

    async def heartbeat(self, model: str, worker_id: str, runs: dict[str, int]) -> list[str]:
        """Record that the worker and its runs (key id: run) are alive; returns the key ids it must stop."""
        now = now_ms()
        deadline = now + int(self.settings.worker_lease * 1000)
        in_progress = int(self.settings.in_progress_lease * 1000)
        pairs = [value for kid, run in runs.items() for value in (kid, run)]
        stale: list[str] = await self._heartbeat(
            keys=[keys.workers(model), keys.running(model), *(keys.job(kid) for kid in runs)],
            args=[now, worker_id, deadline, keys.arq_in_progress(""), in_progress, *pairs],
        )
        return stale
