"""What the job function needs, built once per worker process (arq's `ctx["spp"]`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.metrics import WorkerMetrics
from shared.settings import Settings
from shared.store import JobStore
from worker.backends import ModelClient


@dataclass
class WorkerContext:
    settings: Settings
    model: str
    worker_id: str
    store: JobStore
    client: ModelClient
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    runs: dict[str, int] = field(default_factory=dict)
    """Key id → run of every job this worker runs now, for the heartbeat."""
    arq_ids: dict[str, str] = field(default_factory=dict)
    """Key id → arq job id of every job this worker runs now, to stop it."""
    aborting: set[str] = field(default_factory=set)
    """arq job ids cancelled on purpose, as opposed to by a shutdown: arq's own `aborting_tasks` set."""
