"""Jobs as a resource: a client's jobs listed, counted and erased through its indexes (keys.index).

Every job is in one status set of each of its scopes: its model's, its batch's, one per metadata pair. A page
merges the status sets of one scope (or of every model) newest first (list.lua); a count is their ZCARD; an
erasure walks them. No SCAN of the keyspace, and a page's work is bounded whatever the filters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from redis.asyncio import Redis

from api.jobs import RANK_SLOTS, ApiJobStore
from shared import keys
from shared.models import JobRecord, JobStatus
from shared.scripts import load_script
from shared.settings import Settings

STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
STATUS_NAMES: tuple[str, ...] = tuple(status.value for status in STATUSES)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)

MAX_PAGE = 1000
"""The largest `limit` of a page."""

LOOKS_PER_JOB = 10
"""A page looks at most at this many index entries per job asked (at least `MIN_LOOKS`): a selective filter that
the chosen scope does not answer (a second metadata pair, a model within a batch) gives a shorter page and a cursor,
never an unbounded walk."""
MIN_LOOKS = 1000

ERASE_CHUNK = 500
"""Jobs erased per script call: a call holds Redis for about a millisecond."""

CURSOR_SEPARATOR = "~"
"""Between a cursor's rank and job id: no job id contains it (shared.models.JOB_ID_PATTERN)."""


@dataclass(frozen=True)
class JobFilter:
    """Which of a client's jobs a listing, a count or an erasure is about; every field narrows (AND)."""

    statuses: tuple[JobStatus, ...] = STATUSES
    model: str | None = None
    batch: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    created_after: int | None = None
    """ms since the epoch, inclusive."""
    created_before: int | None = None
    """ms since the epoch, exclusive."""

    def scopes(self) -> list[str]:
        """The scopes the jobs must be in, besides their model's: the batch's, then one per metadata pair."""
        found = [keys.batch_scope(self.batch)] if self.batch else []
        return found + [keys.metadata_scope(key, value) for key, value in self.metadata]


NO_FILTER = JobFilter()
"""Every job of the client."""


@dataclass
class Page:
    jobs: list[JobRecord] = field(default_factory=list)
    more: bool = False
    cursor: str | None = None
    """`after` of the next page, when `more`."""


class Plan(NamedTuple):
    """How a filter is read: the status sets merged, and what each job found there must also match."""

    sets: list[str]
    model: str
    """'' when the sets answer it."""
    scopes: list[str]
    """The scopes the sets do not answer."""


def parse_cursor(after: str) -> tuple[int, str]:
    """The rank and job id of a cursor (`Page.cursor`); ValueError for anything else."""
    rank, separator, job_id = after.partition(CURSOR_SEPARATOR)
    if not separator or not rank.isdigit() or not job_id:
        raise ValueError("not a cursor of this API: pass the `next_after` of the previous page")
    return int(rank), job_id


class JobIndex:
    """A client's jobs through its indexes, for the API's routes."""

    def __init__(self, redis: Redis, store: ApiJobStore, settings: Settings) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self._list = load_script(redis, "list")
        self._erase = load_script(redis, "erase")
        self._count = load_script(redis, "count")

    async def _plan(self, owner: str, where: JobFilter) -> Plan:
        """Read the smallest of the filter's scopes (a batch's, a metadata pair's, the model's when one of those is
        also asked; sized by one count when there are several), and check the others on each job's record."""
        scopes = where.scopes()
        if not scopes:
            models = [where.model] if where.model else self.settings.models
            return Plan(
                [keys.index(owner, keys.model_scope(model), status) for model in models for status in where.statuses],
                "",
                [],
            )
        candidates = scopes + ([keys.model_scope(where.model)] if where.model else [])
        if len(candidates) > 1:
            sizes = await self._sizes(owner, candidates, where.statuses)
            chosen = min(range(len(candidates)), key=sizes.__getitem__)
        else:
            chosen = 0
        scope = candidates[chosen]
        model = "" if scope == keys.model_scope(where.model or "") else where.model or ""
        others = [other for position, other in enumerate(scopes) if position != chosen]
        return Plan([keys.index(owner, scope, status) for status in where.statuses], model, others)

    async def _sizes(self, owner: str, scopes: list[str], statuses: tuple[JobStatus, ...]) -> list[int]:
        """How many jobs of each scope are in `statuses`."""
        sets = [keys.index(owner, scope, status) for scope in scopes for status in statuses]
        replies: list[int] = await self.store.shared.evalsha(self._count, sets, [])
        width = len(statuses)
        return [sum(replies[position * width : (position + 1) * width]) for position in range(len(scopes))]

    async def page(self, owner: str, where: JobFilter, limit: int, after: str | None = None) -> Page:
        """Up to `limit` of the client's jobs matching `where`, newest first, after the cursor `after`."""
        plan = await self._plan(owner, where)
        high = "+inf" if where.created_before is None else str(where.created_before * RANK_SLOTS - 1)
        low = "-inf" if where.created_after is None else str(where.created_after * RANK_SLOTS)
        member = ""
        if after is not None:
            rank, member = parse_cursor(after)
            high = str(rank)
        reply: list[Any] = await self._list(
            keys=plan.sets,
            args=[
                limit,
                high,
                low,
                member,
                max(MIN_LOOKS, limit * LOOKS_PER_JOB),
                keys.job(keys.key_id(owner, "")),
                plan.model,
                " ".join(plan.scopes),
            ],
        )
        jobs = cast(list[JobRecord], [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in reply[3:]])
        more = bool(reply[0])
        cursor = f"{int(float(reply[1]))}{CURSOR_SEPARATOR}{reply[2]}" if more else None
        return Page(jobs, more, cursor)

    async def counts(self, owner: str, where: JobFilter) -> dict[str, dict[str, int]]:
        """{scope label: {status: jobs}}: per model without a batch or metadata filter (labels: the models), else
        of the filter's first scope (label ''): ZCARDs in one script call over the store's shared connection."""
        scopes = where.scopes()
        if scopes:
            labelled = [("", scopes[0])]
        else:
            models = [where.model] if where.model else self.settings.models
            labelled = [(model, keys.model_scope(model)) for model in models]
        sets = [keys.index(owner, scope, status) for _, scope in labelled for status in STATUS_NAMES]
        replies: list[int] = await self.store.shared.evalsha(self._count, sets, [])
        width = len(STATUS_NAMES)
        return {
            label: dict(zip(STATUS_NAMES, replies[position * width : (position + 1) * width], strict=True))
            for position, (label, _) in enumerate(labelled)
        }

    async def erase(self, owner: str, job_ids: list[str]) -> tuple[int, list[str]]:
        """Erase the client's finished jobs among `job_ids` (records, streams, index entries); returns how many
        were erased, and the ids of those that have not finished (left as they are)."""
        if not job_ids:
            return 0, []
        erased, active = await self._erase(
            keys=[keys.expiring()],
            args=[
                keys.job(""),
                keys.stream(""),
                keys.index_prefix(""),
                keys.activity(""),
                *(keys.key_id(owner, job_id) for job_id in job_ids),
            ],
        )
        return int(erased), [keys.split_key_id(kid)[1] for kid in active]

    async def erase_where(self, owner: str, where: JobFilter) -> int:
        """Cancel, then erase, every job of the client in `where`'s scope (a batch or a metadata pair) that
        matches the rest of it; returns how many were erased."""
        plan = await self._plan(owner, where)
        erased = 0
        for key in plan.sets:
            status = key.rpartition(":")[2]
            skipped: set[str] = set()
            while True:
                members: list[str] = await self.redis.zrange(key, 0, ERASE_CHUNK - 1 + len(skipped))
                chunk = [member for member in members if member not in skipped]
                if not chunk:
                    break
                matching, gone = await self._matching(owner, chunk, plan)
                if gone:
                    await self.redis.zrem(key, *gone)
                skipped.update(set(chunk) - set(matching) - set(gone))
                if status in ACTIVE and matching:
                    await self.store.cancel_many(owner, list(matching.items()))
                count, active = await self.erase(owner, list(matching))
                erased += count
                skipped.update(active)  # not cancelled: left as it is rather than looked at again
        return erased

    async def _matching(self, owner: str, job_ids: list[str], plan: Plan) -> tuple[dict[str, str], list[str]]:
        """{job id: model} of the jobs among `job_ids` that also match what the plan's sets do not answer, and the
        ids whose record is gone."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(keys.key_id(owner, job_id)), ["model", "index"])
            rows: list[list[str | None]] = await pipe.execute()
        matching: dict[str, str] = {}
        gone: list[str] = []
        for job_id, (model, index) in zip(job_ids, rows, strict=True):
            if model is None:
                gone.append(job_id)
            elif (not plan.model or model == plan.model) and set((index or "").split()).issuperset(plan.scopes):
                matching[job_id] = model
        return matching, gone
