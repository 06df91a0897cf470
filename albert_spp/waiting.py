"""Waiting for jobs: the pause between two looks, the time left, and what `wait_all` has seen so far."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from albert_spp.models import Job, JobStatus
from albert_spp.progress import Counts, Progress

RECONNECT_CAP = 5.0
"""Seconds, at most, between two tries to reopen a dropped event stream."""


class Backoff:
    """Pauses between two looks: `start` seconds, `factor` times longer each time, at most `cap`."""

    def __init__(self, start: float = 0.05, factor: float = 1.5, cap: float = 2.0) -> None:
        self.start, self.factor, self.cap = start, factor, cap
        self.current = start

    def next(self) -> float:
        pause = self.current
        self.current = min(self.current * self.factor, self.cap)
        return pause

    def reset(self) -> None:
        self.current = self.start


def reconnect_pause(failures: int) -> float:
    """Seconds before the `failures`-th try in a row to reopen an event stream: 0.1, 0.2, 0.4... up to 5."""
    return float(min(0.1 * 2 ** (failures - 1), RECONNECT_CAP))


class Deadline:
    """`timeout` seconds from now (None: never)."""

    def __init__(self, timeout: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.at = None if timeout is None else clock() + timeout

    def pause(self, wanted: float) -> float:
        """`wanted`, or less when the deadline comes first; 0 once it has passed."""
        return wanted if self.at is None else max(min(wanted, self.at - self.clock()), 0.0)

    @property
    def passed(self) -> bool:
        return self.at is not None and self.clock() >= self.at


class Tally:
    """The jobs `wait_all` waits for: those finished so far, those still pending, and the progress line on
    `progress` (True: stderr; False or None: none)."""

    def __init__(self, ids: Iterable[str], progress: bool | TextIO | None = True) -> None:
        self.ids = list(ids)
        self.pending = list(dict.fromkeys(self.ids))
        self.finished: dict[str, Job] = {}
        stream = sys.stderr if progress is True else progress or None
        self.progress = Progress(stream) if stream is not None else None

    def record(self, jobs: Iterable[Job]) -> bool:
        """Note the jobs looked at; whether any of them had finished."""
        ended = {job.id: job for job in jobs if job.status.finished}
        self.finished |= ended
        if ended:
            self.pending = [job_id for job_id in self.pending if job_id not in ended]
        self.show()
        return bool(ended)

    def show(self) -> None:
        if self.progress is None:
            return
        succeeded = sum(job.status is JobStatus.SUCCEEDED for job in self.finished.values())
        failed = len(self.finished) - succeeded
        status = "in_progress" if self.pending else "completed"
        self.progress.update(Counts(status, len(self.finished) + len(self.pending), succeeded, failed))

    def jobs(self) -> list[Job]:
        """The finished jobs, in the order of the ids given."""
        return [self.finished[job_id] for job_id in self.ids]

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
