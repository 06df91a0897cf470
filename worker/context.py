"""What the job function needs, built once per worker process (arq's `ctx["spp"]`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from shared.metrics import WorkerMetrics
from shared.settings import Settings
from worker.backends import ModelClient
from worker.chunks import ChunkWriter
from worker.jobs import WorkerJobStore


class Running(NamedTuple):
    run: int
    arq_id: str


@dataclass
class WorkerContext:
    settings: Settings
    model: str
    worker_id: str
    store: WorkerJobStore
    client: ModelClient
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    runs: dict[str, Running] = field(default_factory=dict)
    """Every job this worker runs now, by key id: its run for the heartbeat, its arq job id to stop it."""
    aborting: set[str] = field(default_factory=set)
    """arq job ids cancelled on purpose, as opposed to by a shutdown (worker/arq_adapter.py)."""
    settled: set[str] = field(default_factory=set)
    """arq job ids whose end the job's script wrote with arq's keys: arq's own bookkeeping is skipped for them
    (worker/arq_adapter.py)."""
    chunks: ChunkWriter = field(init=False)
    """Writes the token chunks of every running job, those of one event-loop turn together."""

    def __post_init__(self) -> None:
        self.chunks = ChunkWriter(self.store)
