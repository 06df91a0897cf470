"""The API's job store: submissions stored and queued, records read, jobs cancelled.

Each is one round trip: submit.lua stores and queues a whole submission (all of its jobs, or none), cancel.lua ends
a job; reads are HGETALLs. The workers' side of the same records is `worker.jobs.WorkerJobStore`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import anyio
import orjson
from redis.asyncio import Redis

from api.exceptions import (
    JobConflict,
    JobFinished,
    JobNotFound,
    JobNotRetryable,
    PriorityNotAllowed,
    QueueFull,
    QuotaExceeded,
)
from api.multiplex import SharedConnection
from api.stored import over_stored_bytes
from shared import keys
from shared.models import JobCreate, JobRecord, JobStatus, fingerprint, now_ms
from shared.policy import ClientPolicy, default_policy
from shared.settings import Settings
from shared.store import BATCH_BAND, INTERACTIVE_BAND, JobStoreBase
from shared.templates import render_prompt, template_tag
from shared.webhooks import WebhookSpec

PRIORITY_STEP = 2**44
"""How far apart two priorities are in a client's queue (`keys.client_queue`), scored by fair-share tag minus
priority × step: far more than the tags of a client's queued jobs ever span (tokens over weight)."""

RANK_SLOTS = 1024
"""A job's rank (its score in its client's indexes, keys.index) is its creation time in ms × RANK_SLOTS plus its
place in its submission modulo RANK_SLOTS: the jobs of an array keep their order, and ranks stay exact in a
double (2**53) until the year 2248."""

TOKENS_KEY_TTL = 3 * 86_400
"""Seconds a client's daily token count is kept: its day, and long enough for the jobs of the day to settle."""


def depth_range(*, background: bool) -> tuple[str, str]:
    """The scores (ZCOUNT's min and max) of the model's queue entries that count against the limit of a
    submission: interactive jobs (MAX_QUEUE_DEPTH) or batch jobs (MAX_BATCH_QUEUE_DEPTH).

    Counted from the queue itself, so no counter has to be kept in step by every script that moves a job.
    An entry stays in the queue while its job runs (arq removes it when the job ends): running jobs count.
    """
    return (str(BATCH_BAND), "+inf") if background else ("-inf", f"({BATCH_BAND}")


def utc_day(ms: int) -> str:
    """The UTC day (YYYYMMDD) of a time in ms since the epoch: the period of `tokens_per_day`."""
    return time.strftime("%Y%m%d", time.gmtime(ms // 1000))


CHARS_PER_TOKEN = 4
"""Characters per prompt token in a job's cost, before its real usage is known: about right for French and
English text with the tokenizers of current models."""


class BatchClosed(Exception):
    """A batch's jobs were offered once it no longer takes any (cancelling or past its time): none was stored."""

    def __init__(self, batch_key: str, status: str | None) -> None:
        super().__init__(f"batch {batch_key!r} takes no more jobs: {status}")
        self.status = status


class Prepared(NamedTuple):
    """A validated submission made ready to store: its model, its GenerationRequest as JSON, and its cost."""

    model: str
    request: str
    cost: int
    """Tokens: the prompt's (estimated from its characters) and `max_tokens`. It orders the fair queue, and is
    reserved against `tokens_per_day` until the job's real usage settles it."""
    digest: str
    """The job's `fingerprint` (its request and metadata), which tells a resubmission of the same job."""
    metadata: str
    """Its metadata as JSON; '' for none."""
    scopes: str
    """Its index scopes besides its model's (`index_scopes`)."""


def request_json(job: JobCreate, settings: Settings, batch_id: str | None = None) -> Prepared:
    """The model of a validated submission, the GenerationRequest its worker runs as JSON (model resolved,
    template rendered, defaults applied, None left out), its cost, its fingerprint, its metadata as JSON and its
    index scopes (`index_scopes`, with `batch_id`).

    Written as a dict rather than through the pydantic model, which took 4 µs a job, a tenth of the time of
    an array of 1,000 in Python; tests read it back as a GenerationRequest (which forbids unknown fields).
    """
    params = job.params
    model = job.model or settings.default_model
    fields: dict[str, Any] = {"model": model}
    if job.template is not None and job.prompt is not None:
        content = render_prompt(job.template, job.prompt)
        fields["messages"] = [{"role": "user", "content": content}]
        chars = len(content)
    elif job.prompt is not None:
        fields["prompt"] = job.prompt
        chars = len(job.prompt)
    else:
        fields["messages"] = [{"role": message.role, "content": message.content} for message in job.messages or ()]
        chars = sum(len(message.content) for message in job.messages or ())
    max_tokens = fields["max_tokens"] = params.max_tokens or settings.DEFAULT_MAX_TOKENS
    fields["temperature"] = params.temperature
    fields["top_p"] = params.top_p
    if params.stop is not None:
        fields["stop"] = params.stop
    if params.seed is not None:
        fields["seed"] = params.seed
    request = orjson.dumps(fields).decode()
    return Prepared(
        model,
        request,
        -(-chars // CHARS_PER_TOKEN) + max_tokens,
        fingerprint(request, job.metadata),
        "" if job.metadata is None else orjson.dumps(job.metadata).decode(),
        index_scopes(job, batch_id),
    )


# Submissions with more prompt characters than this are prepared in a worker thread. Rendering a template with its
# acronym expansion costs up to ~35 ns a character (docs/PERFORMANCE.md), ~2 ms here; below, the ~50 µs thread hop
# would cost the small submissions of the benchmarked path more than it saves.
OFF_LOOP_PROMPT_CHARS = 65_536
# A metadata pair costs about as much as this many prompt characters: its index scope's SHA-256, its part of the
# metadata JSON and of the fingerprint, ~2 µs (1,000 jobs at the caps, 32 pairs each, held the loop ~100 ms).
CHARS_PER_METADATA_PAIR = 64


def preparation_work(jobs: list[JobCreate]) -> int:
    """The work of `request_json` over `jobs`, in prompt characters (see CHARS_PER_METADATA_PAIR)."""
    return sum(len(job.prompt or "") + CHARS_PER_METADATA_PAIR * len(job.metadata or ()) for job in jobs)


async def request_jsons(jobs: list[JobCreate], settings: Settings, batch_id: str | None = None) -> list[Prepared]:
    """`request_json` of each job; in a worker thread for a large submission, so that the event loop keeps serving
    every other request meanwhile (150 prompts of 200,000 characters held it up to a second)."""
    if preparation_work(jobs) <= OFF_LOOP_PROMPT_CHARS:
        return [request_json(job, settings, batch_id) for job in jobs]
    return await anyio.to_thread.run_sync(_prepare_yielding, jobs, settings, batch_id)


def _prepare_yielding(jobs: list[JobCreate], settings: Settings, batch_id: str | None) -> list[Prepared]:
    """`request_json` of each job, giving the GIL away after each: a CPU-bound thread otherwise keeps the event loop
    waiting for the interpreter's switch interval at each of its turns (20 to 60 ms gaps measured with 1,000
    prompts of 32,000 characters)."""
    prepared = []
    for job in jobs:
        prepared.append(request_json(job, settings, batch_id))
        time.sleep(0)
    return prepared


def index_scopes(job: JobCreate, batch_id: str | None) -> str:
    """The index scopes of a job besides its model's (keys.index), as its record's `index` field keeps them:
    its batch, then a scope per metadata pair, space-separated; '' for none."""
    scopes = [keys.batch_scope(batch_id)] if batch_id else []
    if job.metadata:
        scopes += [keys.metadata_scope(key, value) for key, value in job.metadata.items()]
    return " ".join(scopes)


def _record(flat: list[Any]) -> JobRecord:
    """The record of an HGETALL's flat reply (field, value, field, value...)."""
    return cast(JobRecord, dict(zip(flat[::2], flat[1::2], strict=True)))


class Entry(NamedTuple):
    """A job as submit.lua stores it: a prepared submission, or a retried job's record."""

    job_id: str
    model: str
    request: str
    cost: int
    digest: str
    metadata: str
    """JSON; '' for none."""
    priority: int
    scopes: str
    """Its index scopes besides its model's (`index_scopes`)."""
    webhook: str
    """Its WebhookSpec as JSON; '' for none."""
    template: str
    """Its template's tag (`template_tag`); '' for none."""


@dataclass(frozen=True, slots=True)
class Submitted:
    record: JobRecord
    created: bool
    """False: the job existed already with the same body (a resubmission), and `record` is its own."""


class ApiJobStore(JobStoreBase):
    """Job state in Redis for the API: submit, retry, read and cancel jobs; the queues' figures."""

    def __init__(
        self, redis: Redis, settings: Settings, *, on_created: Callable[[str, int], None] | None = None
    ) -> None:
        super().__init__(redis, settings)
        self._on_created = on_created
        """Called with (model, number of jobs) for the jobs a submission created: the API's metrics."""
        self.default_policy = default_policy(settings)
        """The policy of a submission that names none (the CLIENT_* settings)."""
        self.shared = SharedConnection(redis)
        """The hot commands of the API (get, submit, the rate limit) share one pipelined connection, opened at
        their first use."""
        self._submit = self._script("submit")
        self._cancel = self._script("cancel")

    async def aclose(self) -> None:
        """Close the store's shared connection (not the client it was given)."""
        await self.shared.aclose()

    async def submit(
        self,
        owner: str,
        jobs: list[JobCreate],
        *,
        policy: ClientPolicy | None = None,
        replace: bool = False,
        background: bool = False,
        batch_key: str = "",
        batch_id: str | None = None,
        default_webhook: WebhookSpec | None = None,
        webhook_secret: str = "",
    ) -> list[Submitted]:
        """Store and queue the jobs of one client in one round trip: all of them, or none (conflict, full queue,
        a limit of the client's `policy`, by default the CLIENT_* settings).

        An id resubmitted with the same body returns the existing job. With another body it is a
        conflict, unless `replace` (the old API's behaviour): then the old job is stopped and replaced.
        `background` jobs (batches) run after every interactive job of the model. Each kind has its own
        limit per model, against which the other kind does not count: MAX_QUEUE_DEPTH for interactive
        jobs, MAX_BATCH_QUEUE_DEPTH for batch jobs; only interactive jobs count against the client's
        `max_queued_jobs`. `batch_key` (`keys.batch`) is stored in every record (its `batch`); the jobs of
        batch `batch_id` are indexed under it. A job without a webhook gets `default_webhook` (the client's);
        `webhook_secret`, the client's signing secret, is stored for the delivery process when a job has one.
        """
        policy = policy or self.default_policy
        for index, job in enumerate(jobs):
            if job.priority > policy.max_priority:
                raise PriorityNotAllowed(index if len(jobs) > 1 else None, job.priority, policy.max_priority)
        prepared = await request_jsons(jobs, self.settings, batch_id)
        default_hook = "" if default_webhook is None else default_webhook.model_dump_json()
        entries = [
            Entry(
                job.id or keys.new_job_id(),
                model,
                request,
                cost,
                digest,
                metadata,
                job.priority,
                scopes,
                default_hook if job.webhook is None else job.webhook.model_dump_json(),
                "" if job.template is None else template_tag(job.template),
            )
            for job, (model, request, cost, digest, metadata, scopes) in zip(jobs, prepared, strict=True)
        ]
        large = sum(len(item.request) + len(item.metadata) for item in prepared) > OFF_LOOP_PROMPT_CHARS
        mode = "replace" if replace else "keep"
        return await self._store(owner, entries, policy, mode, background, batch_key, webhook_secret, large)

    async def retry(self, owner: str, job_id: str, *, policy: ClientPolicy | None = None) -> JobRecord:
        """Run a failed or cancelled job again under its id, as it was submitted (its request, template version,
        metadata, priority and webhook), against the client's limits of now. Returns its record."""
        record = await self.get(owner, job_id)
        if record["status"] not in (JobStatus.FAILED, JobStatus.CANCELLED) or "batch" in record:
            raise JobNotRetryable(job_id, "batch" if "batch" in record else record["status"])
        entry = Entry(
            job_id,
            record["model"],
            record["request"],
            int(record.get("cost", 0)),
            record["hash"],
            record.get("metadata", ""),
            int(record.get("priority", 0)),
            record.get("index", ""),
            record.get("webhook", ""),
            record.get("template", ""),
        )
        (stored,) = await self._store(owner, [entry], policy or self.default_policy, "retry", False, "", "", False)
        # As submit.lua wrote it (not read again: a worker may have started it since), with what a retry keeps.
        retried = stored.record
        retried["created_at"], retried["rank"] = record["created_at"], record["rank"]
        if "attempt_log" in record:
            retried["attempt_log"] = record["attempt_log"]
        return retried

    async def _store(
        self,
        owner: str,
        entries: list[Entry],
        policy: ClientPolicy,
        mode: str,
        background: bool,
        batch_key: str,
        webhook_secret: str,
        large: bool,
    ) -> list[Submitted]:
        """submit.lua on prepared jobs (`mode`: keep, replace or retry); raises the error of a refusal."""
        now = now_ms()
        day = utc_day(now)
        if background:
            setting, max_depth = "MAX_BATCH_QUEUE_DEPTH", self.settings.MAX_BATCH_QUEUE_DEPTH
        else:
            setting, max_depth = "MAX_QUEUE_DEPTH", self.settings.MAX_QUEUE_DEPTH
        secret = webhook_secret if any(entry.webhook for entry in entries) else ""
        args: list[str | int | float] = [
            now,
            max_depth,
            *depth_range(background=background),
            owner,
            mode,
            "batch" if background else "interactive",
            BATCH_BAND if background else INTERACTIVE_BAND,
            policy.weight,
            0 if background else policy.max_queued_jobs,
            policy.max_running_jobs,
            policy.tokens_per_day,
            keys.tokens(owner, day),
            TOKENS_KEY_TTL,
            day,
            keys.job(""),
            keys.queue(""),
            keys.running(""),
            keys.stream(""),
            keys.arq_job(""),
            keys.cancel_channel(""),
            keys.wake_channel(""),
            keys.virtual_clock(""),
            keys.virtual_finish(""),
            keys.client_queue("", "").removesuffix(":"),
            PRIORITY_STEP,
            keys.client(owner),
            keys.client_jobs(owner),
            policy.max_stored_bytes,
            keys.stored(owner),
            # A job's metadata lives until RESULT_TTL after it ends: charged as if it ended by its deadline.
            now + int((self.settings.JOB_DEADLINE + self.settings.RESULT_TTL) * 1000),
            keys.index_prefix(""),
            keys.expiring(),
            secret,
            # The fields stored in every record besides a job's own: their number, then name and value.
            *((1, "batch", batch_key) if batch_key else (0,)),
        ]
        records: list[str] = []
        fresh: list[JobRecord] = []
        created_at = str(now)
        for place, entry in enumerate(entries):
            kid = keys.key_id(owner, entry.job_id)
            arq_id = keys.arq_id(kid)
            records.append(keys.job(kid))
            args += [kid, arq_id, entry.model, entry.digest, entry.request, entry.metadata, entry.cost, entry.priority]
            args += [entry.scopes, entry.webhook, entry.template]
            record: JobRecord = {
                "id": entry.job_id,
                "model": entry.model,
                "status": JobStatus.QUEUED.value,
                "arq": arq_id,
                "request": entry.request,
                "hash": entry.digest,
                "created_at": created_at,
                "cost": str(entry.cost),
                "weight": str(policy.weight),
                "day": day,
                "rank": str(now * RANK_SLOTS + place % RANK_SLOTS),
            }
            if entry.priority:
                record["priority"] = str(entry.priority)
            if entry.metadata:
                record["metadata"] = entry.metadata
            if entry.scopes:
                record["index"] = entry.scopes
            if entry.webhook:
                record["webhook"] = entry.webhook
            if entry.template:
                record["template"] = entry.template
            if batch_key:
                record["batch"] = batch_key
            fresh.append(record)
        reply = await self.shared.evalsha(self._submit, records, args, pack_off_loop=large)
        if reply[0] == "conflict":
            raise JobConflict(keys.split_key_id(reply[1])[1])
        if reply[0] == "closed":
            raise BatchClosed(batch_key, reply[1] or None)
        if reply[0] == "state":
            raise JobNotRetryable(keys.split_key_id(reply[1])[1], reply[2] or "unknown")
        if reply[0] == "full":
            raise QueueFull(reply[1].removeprefix(keys.queue("")), setting, max_depth, int(reply[2]), int(reply[3]))
        if reply[0] == "quota" and reply[1] == "max_stored_bytes":
            raise over_stored_bytes(policy, int(reply[3]), int(reply[4]), int(reply[5]) if reply[5] else None, now)
        if reply[0] == "quota":
            raise self._quota(reply[1], int(reply[2]), int(reply[3]), int(reply[4]), now, fresh)
        submitted = [
            Submitted(record=_record(existing), created=False) if existing else Submitted(record, created=True)
            for record, existing in zip(fresh, reply[1:], strict=True)
        ]
        if self._on_created is not None:
            for model, count in Counter(item.record["model"] for item in submitted if item.created).items():
                self._on_created(model, count)
        return submitted

    @staticmethod
    def _quota(limit: str, value: int, usage: int, asked: int, now: int, fresh: list[JobRecord]) -> QuotaExceeded:
        """The error of a submission that submit.lua refused for one of the client's limits."""
        if limit == "tokens_per_day":
            until_midnight = 86_400 - (now // 1000) % 86_400
            return QuotaExceeded(limit, value, usage, asked, what="tokens (UTC day)", retry_after=until_midnight)
        models = Counter(record["model"] for record in fresh)
        model = models.most_common(1)[0][0] if models else None
        return QuotaExceeded(limit, value, usage, asked, what="interactive jobs queued or running", model=model)

    async def get(self, owner: str, job_id: str) -> JobRecord:
        """The job's record, through the shared connection (polling's path); JobNotFound when it has none."""
        flat = await self.shared.execute("HGETALL", keys.job(keys.key_id(owner, job_id)))
        if not flat:
            raise JobNotFound(job_id)
        return _record(flat)

    async def get_many(self, owner: str, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of `job_ids` (None where unknown), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(keys.key_id(owner, job_id)))
            records: list[dict[str, str]] = await pipe.execute()
        return cast(list[JobRecord | None], [record or None for record in records])

    async def cancel(self, owner: str, job_id: str) -> JobRecord:
        """Cancel a queued or running job; a running one's worker is told through pub/sub."""
        kid = keys.key_id(owner, job_id)
        record = await self.get(owner, job_id)
        now = now_ms()
        outcome = await self._cancel_job(kid, record["model"], now=now)
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome != "ok":
            raise JobFinished(job_id, outcome)
        # What cancel.lua wrote (status, finish time; a batch's job's request dropped), without reading it again.
        if "batch" in record:
            record.pop("request", None)
        record["status"], record["finished_at"] = JobStatus.CANCELLED.value, str(now)
        return record

    async def cancel_many(self, owner: str, jobs: list[tuple[str, str]]) -> None:
        """Cancel jobs given as (job id, model) in one round trip; finished and unknown ones are left as they are."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, model in jobs:
                await self._cancel_job(keys.key_id(owner, job_id), model, pipe)
            await pipe.execute()

    async def _cancel_job(self, kid: str, model: str, client: Redis | None = None, *, now: int | None = None) -> Any:
        """Run cancel.lua on one job (queued in `client` when it is a pipeline)."""
        return await self._cancel(
            keys=[keys.job(kid), keys.stream(kid), keys.queue(model), keys.running(model)],
            args=[
                now if now is not None else now_ms(),
                self.settings.RESULT_TTL,
                self.settings.STREAM_TTL,
                kid,
                keys.cancel_channel(model),
                keys.arq_job(""),
                keys.client_jobs(""),
                keys.tokens("", "").removesuffix(":"),
                keys.client_queue(model, ""),
                keys.virtual_finish(model),
                keys.index_prefix(""),
                keys.expiring(),
                keys.webhook_events(),
                self._ended_record_ttl,
            ],
            client=client,
        )

    async def batch_depths(self, models: list[str]) -> dict[str, int]:
        """The batch jobs (queued or running) of each model, against MAX_BATCH_QUEUE_DEPTH, in one round trip."""
        low, high = depth_range(background=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zcount(keys.queue(model), low, high)
            counts: list[int] = await pipe.execute()
        return dict(zip(models, counts, strict=True))

    async def model_stats(self, models: list[str]) -> dict[str, dict[str, int]]:
        """Queue depth, running jobs and live workers of each model, in one round trip."""
        live_since = now_ms() - int(self.settings.worker_lease * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zcard(keys.queue(model))
                pipe.zcard(keys.running(model))
                pipe.zcount(keys.workers(model), live_since, "+inf")
            replies = await pipe.execute()
        stats = {}
        for index, model in enumerate(models):
            queued, running, workers = replies[3 * index : 3 * index + 3]
            stats[model] = {"queued": max(0, queued - running), "running": running, "workers": workers}
        return stats
