"""Batches (the OpenAI Batch API) in Redis: create, validate and queue, read, list, cancel, expire, and the
output and error files made from the batch's jobs.

A batch is one hash (`keys.batch`): reading it is one HGETALL whatever its size. Each request of its
input becomes a job `<batch id>-<index>` of the owner, queued as a background job, whose record names
the batch: finish.lua and cancel.lua count it in the batch's counters as it ends and end the batch
with its last job. The other status changes are batch.lua's, atomic with those counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection
from typing import Any

import anyio
import orjson

from api.batch_format import (
    JOB_FIELDS,
    CheckedLine,
    LineError,
    batch_job_id,
    check_lines,
    error_line,
    new_batch_id,
    output_line,
    parse_generated_file_id,
    parse_line,
)
from api.exceptions import BatchFinished, BatchNotFound, FileNotFound, QueueFull, QuotaExceeded
from api.files import FileStore
from api.jobs import ApiJobStore, BatchClosed
from api.openai_shapes import Endpoint
from api.stored import over_stored_bytes
from shared import keys
from shared.batches import WITH_RESULTS, BatchStatus, ended_at
from shared.models import ACTIVE_STATES, JobCreate, JobStatus, Limits, now_ms
from shared.policy import ClientPolicy
from shared.scripts import load_script
from shared.webhooks import BatchWebhookSpec

logger = logging.getLogger(__name__)

SUBMIT_CHUNK = 1000
"""Jobs stored and queued per round trip (one submit.lua call)."""
PAGE = 500
"""Job records read per round trip while walking a batch's jobs."""
MAX_ERRORS = 100
"""Validation problems reported in a failed batch's `errors`; validation stops there."""
EXPIRY_POLL_SECONDS = 1.0
EXPIRY_CLAIM = 100
"""Batches past their time that one API process claims at once."""
EXPIRY_LEASE_MS = 60_000
"""How long a claimed batch is left to its API process before another one expires it again."""
VALIDATE_GROUP_BYTES = 1 << 20
"""Bytes of input lines checked at once, in a worker thread, while validating a batch."""
YIELD_AFTER_SECONDS = 0.005
"""Seconds of validation on the event loop after which it lets the loop serve other requests."""


class BatchStore:
    """Batches of each owner, their jobs through the job store, their input through the file store."""

    def __init__(self, store: ApiJobStore, files: FileStore) -> None:
        self.store = store
        self.files = files
        self.redis = store.redis
        self.settings = store.settings
        self._move_script = load_script(self.redis, "batch")
        self._create_script = load_script(self.redis, "batch_create")
        self._claim_script = load_script(self.redis, "batch_claim")
        self._expiry: asyncio.Task[None] | None = None

    async def _move(self, owner: str, batch_id: str, operation: str, argument: str | int = "") -> str | None:
        """Run one operation of batch.lua; the batch's status afterwards (None if it does not exist)."""
        args = (operation, now_ms(), self.settings.RESULT_TTL, argument)
        status: str | None = await self._move_script(keys=[keys.batch(owner, batch_id)], args=args)
        return status

    # ---- create, validate, queue ----------------------------------------------------------------------

    async def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: Endpoint,
        window: str,
        metadata: dict[str, str] | None,
        policy: ClientPolicy | None = None,
        webhook: BatchWebhookSpec | None = None,
        webhook_secret: str = "",
    ) -> dict[str, str]:
        """Record a batch as `validating`; `process` then validates and queues it. A batch with a `webhook` has its
        end delivered (batch_end.lua writes the event), signed with `webhook_secret`, the client's, which is kept for
        the delivery process.

        Refused (QuotaExceeded, nothing stored) when the client (`policy`, by default the CLIENT_* settings) has
        `max_active_batches` unfinished batches, or when the batch would take it past its `max_stored_bytes`: a
        batch is charged its input's bytes, which its jobs copy, until their records may expire (`expires_at` and
        RESULT_TTL; settled when it ends: batch_end.lua).
        """
        policy = policy or self.store.default_policy
        size = int((await self.files.get(owner, input_file_id))["bytes"])
        batch_id, now, hours = new_batch_id(), now_ms(), int(window.removesuffix("h"))
        expires_at = now + hours * 3_600_000
        record = {
            "id": batch_id,
            "endpoint": endpoint.value,
            "input_file_id": input_file_id,
            "completion_window": window,
            "status": BatchStatus.VALIDATING.value,
            "created_at": str(now),
            "expires_at": str(expires_at),
        }
        if metadata:
            record["metadata"] = orjson.dumps(metadata).decode()
        if webhook is not None:
            record["webhook"] = webhook.model_dump_json()
            record["webhook_stream"] = keys.webhook_events()
        # What batch_end.lua needs to settle the client's counts when the batch ends.
        accounts = {
            "client_batches": keys.client_batches(owner),
            "stored": keys.stored(owner),
            "charged": str(size),
            "charged_until": str(expires_at + self.settings.RESULT_TTL * 1000),
        }
        # Scored in microseconds, so that batches created in the same millisecond keep their order.
        args: list[str | int] = [
            now,
            batch_id,
            time.time_ns() // 1000,
            hours * 3600 + self.settings.RESULT_TTL + 3600,
            expires_at,
            keys.key_id(owner, batch_id),
            policy.max_active_batches,
            policy.max_stored_bytes,
            *(value for pair in (record | accounts).items() for value in pair),
        ]
        batch_keys = [
            keys.batch(owner, batch_id),
            keys.batches(owner),
            keys.active_batches(),
            keys.client_batches(owner),
            keys.stored(owner),
        ]
        outcome = await self._create_script(keys=batch_keys, args=args)
        if outcome[0] == "max_active_batches":
            limit = policy.max_active_batches
            raise QuotaExceeded(outcome[0], limit, outcome[1], 1, what="unfinished batches")
        if outcome[0] == "max_stored_bytes":
            raise over_stored_bytes(policy, outcome[1], size, outcome[2], now)
        if webhook is not None and webhook_secret:
            await self.redis.hset(keys.client(owner), "webhook_secret", webhook_secret)  # type: ignore[misc]
        return record

    async def process(self, owner: str, batch_id: str, policy: ClientPolicy | None = None) -> None:
        """Validate the batch's whole input, then queue every request as a job of the client of `policy` (by
        default the CLIENT_* settings), after `create` answered."""
        try:
            await self._process(owner, batch_id, policy or self.store.default_policy)
        except QueueFull as exc:
            # Another batch took the room between the check of `_process` and this batch's last chunk.
            logger.warning("batch %s failed: %s", batch_id, exc)
            await self._fail_queued(owner, batch_id, LineError("queue_full", str(exc), "model"))
        except QuotaExceeded as exc:  # a limit of the client's that its jobs count against
            logger.warning("batch %s failed: %s", batch_id, exc)
            await self._fail_queued(owner, batch_id, LineError("quota_exceeded", str(exc)))
        except Exception as exc:
            logger.exception("batch %s could not be queued", batch_id)
            await self._fail_queued(
                owner, batch_id, LineError("internal_error", f"the batch could not be queued: {exc}")
            )

    async def _fail_queued(self, owner: str, batch_id: str, problem: LineError) -> None:
        """Fail a batch whose queueing stopped midway, and cancel the jobs queued before."""
        # Its jobs are among the first `total` (set before the first was queued), which `fail` sets to 0.
        total = int(await self.redis.hget(keys.batch(owner, batch_id), "total") or 0)  # type: ignore[misc]
        status = await self._move(owner, batch_id, "fail", _errors_json([problem.entry(None)]))
        if status == BatchStatus.FAILED:
            await self.cancel_jobs(owner, batch_id, total)
        elif status in (BatchStatus.CANCELLING, BatchStatus.FINALIZING):  # it stays so until its jobs have ended
            await self._end_with_the_jobs_it_has(owner, batch_id, total)

    async def _process(self, owner: str, batch_id: str, policy: ClientPolicy) -> None:
        record = await self.get(owner, batch_id)
        endpoint, file_id = Endpoint(record["endpoint"]), record["input_file_id"]
        per_model, errors = await self._validate(owner, file_id, endpoint)
        if not errors and (full := await self._over_batch_limit(per_model)) is not None:
            errors = [full.entry(None)]
        if errors:
            await self._move(owner, batch_id, "fail", _errors_json(errors))
            return
        total = per_model.total()
        if await self._move(owner, batch_id, "total", total) != BatchStatus.VALIDATING:
            return  # cancelled or expired while validating: nothing was queued
        queued = await self._queue(owner, batch_id, file_id, endpoint, policy)
        if queued != total:  # the file was deleted meanwhile: the batch is what could be queued
            await self._move(owner, batch_id, "total", queued)
        if await self._move(owner, batch_id, "start") in (BatchStatus.CANCELLING, BatchStatus.FINALIZING):
            await self.cancel_jobs(owner, batch_id, queued)

    def _limits(self) -> Limits:
        return Limits.of(self.settings)

    async def _requests(self, owner: str, file_id: str) -> AsyncIterator[tuple[int, bytes]]:
        """(line number, line) of the input's requests: blank lines aside."""
        async for number, line in self.files.lines(owner, file_id):
            if line.strip():
                yield number, line

    async def _validate(
        self, owner: str, file_id: str, endpoint: Endpoint
    ) -> tuple[Counter[str], list[dict[str, Any]]]:
        """The number of requests of the input file per model, and its problems (at most MAX_ERRORS)."""
        settings, limits, models = self.settings, self._limits(), self.settings.models
        per_model: Counter[str] = Counter()
        try:
            size = int((await self.files.get(owner, file_id))["bytes"])
        except FileNotFound as exc:
            return per_model, [LineError("file_not_found", str(exc), "input_file_id").entry(None)]
        if size > settings.BATCH_MAX_BYTES:
            message = f"the file has {size} bytes, over the limit of BATCH_MAX_BYTES={settings.BATCH_MAX_BYTES}"
            return per_model, [LineError("file_too_large", message).entry(None)]
        errors: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        count = 0
        max_line = settings.BATCH_MAX_LINE_BYTES
        group: list[tuple[int, bytes]] = []
        group_bytes = 0
        check = functools.partial(check_lines, endpoint=endpoint, models=models, limits=limits, max_bytes=max_line)

        def tally(lines: list[CheckedLine]) -> bool:
            """Count the checked lines, in order; False once MAX_ERRORS problems are found."""
            nonlocal count
            for line in lines:
                error = line.error
                if error is None and line.custom_id in seen:
                    message = f"custom_id {line.custom_id!r} already appears on line {seen[line.custom_id]}"
                    error = LineError("duplicate_custom_id", message, "custom_id")
                count += error is None or error.code != "line_too_long"
                if error is not None:
                    errors.append(error.entry(line.number))
                    if len(errors) >= MAX_ERRORS:
                        return False
                    continue
                seen[line.custom_id] = line.number
                per_model[line.model or settings.default_model] += 1
            return True

        # Blank lines count against BATCH_MAX_LINES: a file of blank lines is read no further than one of requests.
        # The lines are checked in a worker thread, VALIDATE_GROUP_BYTES at a time: 50,000 lines took 15 s of CPU,
        # in slices of up to 0.3 s (a line of 4 MiB) on the event loop.
        began = time.perf_counter()
        async for number, raw in self.files.lines(owner, file_id, max_line):
            if time.perf_counter() - began > YIELD_AFTER_SECONDS:  # 50,000 blank lines take 50 ms to go through
                await asyncio.sleep(0)
                began = time.perf_counter()
            if number > settings.BATCH_MAX_LINES:
                if tally(await anyio.to_thread.run_sync(check, group)):
                    message = f"more than BATCH_MAX_LINES={settings.BATCH_MAX_LINES} lines (blank lines count)"
                    errors.append(LineError("too_many_lines", message).entry(number))
                group = []
                break
            group.append((number, raw))
            group_bytes += len(raw) + 1
            if group_bytes >= VALIDATE_GROUP_BYTES:
                lines, group, group_bytes = group, [], 0
                if not tally(await anyio.to_thread.run_sync(check, lines)):
                    break
        if group:
            tally(await anyio.to_thread.run_sync(check, group))
        if count == 0 and not errors:
            errors.append(LineError("empty_file", "the file has no request").entry(None))
        return per_model, errors

    async def _over_batch_limit(self, per_model: Counter[str]) -> LineError | None:
        """Why the batch's jobs do not fit in their models' queues (MAX_BATCH_QUEUE_DEPTH), or None.

        Checked before anything is queued, so that a batch is refused whole; submit.lua checks it again for each
        chunk, atomically, for batches queued at the same time (see `process`).
        """
        limit = self.settings.MAX_BATCH_QUEUE_DEPTH
        if limit <= 0:
            return None
        for model, depth in (await self.store.batch_depths(list(per_model))).items():
            if depth + per_model[model] > limit:
                message = (
                    f"the batch's {per_model[model]} requests for model {model!r} do not fit in its queue, which holds "
                    f"{depth} batch jobs, within MAX_BATCH_QUEUE_DEPTH={limit}; retry once some batches have ended"
                )
                return LineError("queue_full", message, "model")
        return None

    async def _queue(self, owner: str, batch_id: str, file_id: str, endpoint: Endpoint, policy: ClientPolicy) -> int:
        """Store and queue a job per request, SUBMIT_CHUNK per round trip, until the batch is cancelled or past
        its time (it then takes no more jobs); the number queued."""
        limits, models, batch_key = self._limits(), self.settings.models, keys.batch(owner, batch_id)
        chunk: list[JobCreate] = []
        queued = 0
        try:
            async for _, raw in self._requests(owner, file_id):
                chunk.append(parse_line(raw, endpoint, models, limits, batch_job_id(batch_id, queued + len(chunk)))[1])
                if len(chunk) == SUBMIT_CHUNK:
                    await self.store.submit(
                        owner, chunk, policy=policy, background=True, batch_key=batch_key, batch_id=batch_id
                    )
                    queued, chunk = queued + len(chunk), []
            if chunk:
                await self.store.submit(
                    owner, chunk, policy=policy, background=True, batch_key=batch_key, batch_id=batch_id
                )
        except BatchClosed:
            return queued
        return queued + len(chunk)

    # ---- read, list, cancel, expire -------------------------------------------------------------------

    async def get(self, owner: str, batch_id: str) -> dict[str, str]:
        record: dict[str, str] = await self.redis.hgetall(keys.batch(owner, batch_id))  # type: ignore[misc]
        if not record:
            raise BatchNotFound(batch_id)
        return record

    async def page(self, owner: str, after: str | None, limit: int) -> tuple[list[dict[str, str]], bool]:
        """Up to `limit` batches, newest first, after the batch `after`; and whether more follow."""
        index = keys.batches(owner)
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                return [], False
            start = rank + 1
        found: list[dict[str, str]] = []
        while len(found) <= limit:
            ids: list[str] = await self.redis.zrevrange(index, start, start + limit)
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(keys.batch(owner, batch_id))
                records: list[dict[str, str]] = await pipe.execute()
            dead = [batch_id for batch_id, record in zip(ids, records, strict=True) if not record]
            if dead:  # expired batches
                await self.redis.zrem(index, *dead)
            start += len(ids) - len(dead)
            found += [record for record in records if record]
        return found[:limit], len(found) > limit

    async def cancel(self, owner: str, batch_id: str) -> str:
        """Mark the batch cancelling (its jobs are then cancelled by `cancel_jobs`); its status afterwards."""
        status = await self._move(owner, batch_id, "cancel")
        if status is None:
            raise BatchNotFound(batch_id)
        if status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            raise BatchFinished(batch_id, status)
        return status

    async def _records(self, owner: str, job_ids: list[str], fields: Collection[str]) -> list[dict[str, str]]:
        """The `fields` of the jobs' records (those present), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(keys.key_id(owner, job_id)), list(fields))
            replies: list[list[str | None]] = await pipe.execute()
        return [{f: v for f, v in zip(fields, values, strict=True) if v is not None} for values in replies]

    async def cancel_jobs(self, owner: str, batch_id: str, total: int | None = None) -> int:
        """Cancel the unfinished jobs among the batch's first `total` (default: all), a page per two round trips;
        the number of those jobs whose record was found."""
        if total is None:
            total = int(await self.redis.hget(keys.batch(owner, batch_id), "total") or 0)  # type: ignore[misc]
        found = 0
        for start in range(0, total, PAGE):
            job_ids = [batch_job_id(batch_id, index) for index in range(start, min(total, start + PAGE))]
            records = await self._records(owner, job_ids, ("status", "model"))
            found += sum(1 for record in records if record)
            unfinished = [
                (job_id, record["model"])
                for job_id, record in zip(job_ids, records, strict=True)
                if record.get("status") in ACTIVE_STATES
            ]
            if unfinished:
                await self.store.cancel_many(owner, unfinished)
        return found

    async def _end_with_the_jobs_it_has(self, owner: str, batch_id: str, total: int | None = None) -> None:
        """Cancel the unfinished jobs of a batch cancelling or finalizing, which takes no more jobs: those found are
        all it has (its queueing may have stopped midway), so that it ends once they have."""
        found = await self.cancel_jobs(owner, batch_id, total)
        await self._move(owner, batch_id, "total", found)

    async def expire_due(self) -> None:
        """Expire the batches past their `expires_at` with work left, and cancel their unfinished jobs.

        Each is claimed for EXPIRY_LEASE_MS by one API process, which removes it once its jobs are cancelled; a
        batch whose process died meanwhile is claimed again when the lease ends (both steps can be redone).
        """
        now = now_ms()
        due: list[str] = await self._claim_script(
            keys=[keys.active_batches()], args=(now, now + EXPIRY_LEASE_MS, EXPIRY_CLAIM)
        )
        for member in due:
            owner, batch_id = keys.split_key_id(member)
            if await self._move(owner, batch_id, "expire") == BatchStatus.FINALIZING:
                await self._end_with_the_jobs_it_has(owner, batch_id)
            await self.redis.zrem(keys.active_batches(), member)

    async def _expire_forever(self) -> None:
        while True:
            try:
                await self.expire_due()
            except Exception as exc:
                logger.warning("batch expiry: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(EXPIRY_POLL_SECONDS)

    def start(self) -> None:
        """Start expiring batches, every EXPIRY_POLL_SECONDS, in the background."""
        self._expiry = asyncio.create_task(self._expire_forever(), name="batch-expiry")

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry

    # ---- output and error files -----------------------------------------------------------------------

    async def generated(self, owner: str, file_id: str) -> tuple[dict[str, str], str]:
        """The batch of a generated file and the kind of file; FileNotFound until the batch has results."""
        parsed = parse_generated_file_id(file_id)
        record: dict[str, str] = await self.redis.hgetall(keys.batch(owner, parsed[0])) if parsed else {}  # type: ignore[misc]
        if not parsed or not record or record["status"] not in WITH_RESULTS:
            raise FileNotFound(file_id)
        return record, parsed[1]

    async def generated_lines(self, owner: str, batch: dict[str, str], kind: str) -> AsyncIterator[bytes]:
        """The output (or error) lines of the batch's jobs, a page at a time, in request order.

        Jobs whose record has expired (RESULT_TTL after they ended) are left out.
        """
        endpoint, status, total = Endpoint(batch["endpoint"]), batch["status"], int(batch.get("total", 0))
        for start in range(0, total, PAGE):
            job_ids = [batch_job_id(batch["id"], index) for index in range(start, min(total, start + PAGE))]
            lines = []
            for job_id, record in zip(job_ids, await self._records(owner, job_ids, JOB_FIELDS), strict=True):
                job_status = record.get("status")
                if kind == "output" and job_status == JobStatus.SUCCEEDED:
                    lines.append(output_line(endpoint, job_id, record))
                elif kind == "errors" and job_status in (JobStatus.FAILED, JobStatus.CANCELLED):
                    lines.append(error_line(job_id, record, status))
            if lines:
                yield b"".join(lines)

    async def generated_file(self, owner: str, file_id: str) -> dict[str, Any]:
        """The file object of a generated file; its size is counted by making it (O(batch size))."""
        batch, kind = await self.generated(owner, file_id)
        size = 0
        async for chunk in self.generated_lines(owner, batch, kind):
            size += len(chunk)
        return {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": ended_at(batch),
            "expires_at": None,
            "filename": f"{batch['id']}_{kind}.jsonl",
            "purpose": "batch_output",
            "status": "processed",
            "status_details": None,
        }


def _errors_json(errors: list[dict[str, Any]]) -> str:
    return orjson.dumps({"object": "list", "data": errors}).decode()
