"""Which server of a model gets the next request: replicas in turn, skipping for a while one that keeps failing.

A replica that failed REPLICA_MAX_FAILURES times in a row (connection refused, 5xx, cut stream, silence) is
skipped for REPLICA_COOLDOWN seconds; if it fails again once the cool-down is over, for twice as long, and
so on up to MAX_COOLDOWN_DOUBLINGS doublings. One success clears its record. A model with one server never
skips it, and when every replica is cooling down the one that comes back first is used: a request is never
refused here, the job's own retry budget decides when to give up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.settings import Backend, Settings

logger = logging.getLogger(__name__)

MAX_COOLDOWN_DOUBLINGS = 5
"""The cool-down grows up to REPLICA_COOLDOWN × 2**5 (5 min 20 s with the default 10 s)."""


@dataclass
class Replica:
    backend: Backend
    rank: int = 0
    """Its place among the model's servers in LLM_TABLE, 0 first: how provenance names it, without its URL."""
    failures: int = 0
    """Transient failures in a row."""
    trips: int = 0
    """Cool-downs in a row, each twice as long as the previous one."""
    skipped_until: float = 0.0
    """The clock's time (time.monotonic) until which the replica is skipped."""


class Replicas:
    """The servers of one model, used in turn."""

    def __init__(
        self, settings: Settings, backends: list[Backend], clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not backends:
            raise ValueError("a model needs at least one server")
        self.replicas = [Replica(backend, rank) for rank, backend in enumerate(backends)]
        self._clock = clock
        self._max_failures = settings.REPLICA_MAX_FAILURES
        self._cooldown = settings.REPLICA_COOLDOWN
        self._next = 0

    def pick(self) -> Replica:
        """The next replica in turn that is not cooling down, else the one whose cool-down ends first."""
        now = self._clock()
        count = len(self.replicas)
        for offset in range(count):
            replica = self.replicas[(self._next + offset) % count]
            if replica.skipped_until <= now:
                self._next = (self._next + offset + 1) % count
                return replica
        return min(self.replicas, key=lambda replica: replica.skipped_until)

    def succeeded(self, replica: Replica) -> None:
        """The server answered (a 4xx counts: the server is up, the request was wrong)."""
        if replica.trips:
            logger.info("model server %s answers again", replica.backend.public_url)
        replica.failures = replica.trips = 0
        replica.skipped_until = 0.0

    def failed(self, replica: Replica) -> None:
        """A transient failure; past REPLICA_MAX_FAILURES in a row the replica cools down, if it has siblings."""
        now = self._clock()
        if replica.skipped_until > now:
            return  # a request sent before the cool-down began: already counted in
        replica.failures += 1
        if len(self.replicas) == 1 or replica.failures < self._max_failures:
            return
        cooldown = self._cooldown * 2 ** min(replica.trips, MAX_COOLDOWN_DOUBLINGS)
        replica.trips += 1
        # One more failure after the cool-down starts the next, longer one.
        replica.failures = self._max_failures - 1
        replica.skipped_until = now + cooldown
        logger.warning("model server %s keeps failing: skipped for %.0fs", replica.backend.public_url, cooldown)
