"""What the two job stores share: the API's (`api.jobs.ApiJobStore`: submit, read, cancel) and the workers'
(`worker.jobs.WorkerJobStore`: take, run, end, hand back).

Each state change is one Lua script of shared/lua/, so a record, its queue entry and its stream never disagree,
and each costs one round trip. The job record (`keys.job`, a `JobRecord`) is the truth; arq only carries key ids.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.scripts import load_script
from shared.settings import Settings

INTERACTIVE_BAND = -(2**48)
"""The score of virtual time 0 among a model's interactive jobs. A queued job's score is its tier's band plus its
fair-share tag (submit.lua), so that every interactive job runs before any batch job, and both bands stay below
any time in ms: arq takes a job once its score is past. Tags grow by tokens over weights: they would take
centuries to cross into the next band. Doubles are exact to 1/16 here."""
BATCH_BAND = -(2**47)
"""The score of virtual time 0 among a model's batch jobs; also where the interactive band ends."""

REAP_GRACE = 86_400
"""Seconds a finished job's record outlives RESULT_TTL by its own TTL: the reaper (reap.lua) erases it, index
entries included, at RESULT_TTL; the TTL only frees a deployment that runs no worker."""


class JobStoreBase:
    """A job store on a Redis client: the client, the settings, and the scripts of shared/lua/ it runs."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    def _script(self, name: str) -> AsyncScript:
        """shared/lua/`name`.lua, registered on the store's client."""
        return load_script(self.redis, name)

    @property
    def _ended_record_ttl(self) -> int:
        """The TTL (s) of an ended job's record (cancel.lua, finish.lua): RESULT_TTL and the reaper's grace."""
        return self.settings.RESULT_TTL + REAP_GRACE
