"""What produced an answer, as the worker learns it: one `Trace` per attempt (filled in by `ModelClient.stream`),
written as the attempt's line of the record's `attempt_log` (but for a success) and, at the job's end, as its
`provenance` (shared/provenance.py).

The model id and weights come from what each server of a model says it serves (`GET /v1/models`): a replica is
asked at most once per CARD_TTL seconds, alongside a generation rather than before it, and again after it failed
(a server that restarted may have loaded other weights). Never an extra request per job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from shared.models import ErrorType, now_ms
from shared.provenance import AttemptError, AttemptOutcome, AttemptRecord, StoredProvenance

logger = logging.getLogger(__name__)

CARD_TTL = 60.0
"""Seconds a replica's answer is used before it is asked again: a bound on how stale a revision can be when the
server changed its weights without the worker seeing it fail."""

CARD_WAIT = 1.0
"""Seconds the end of a job waits for its replica's card still on its way (a generation shorter than the question)."""


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A model as a server's /v1/models lists it."""

    id: str
    root: str | None = None
    """vLLM: the weights loaded (a path or a Hugging Face repository), which the served name may hide."""
    parent: str | None = None
    """vLLM: the base model of an adapter (LoRA)."""


def card_of(listing: Any, model: str) -> ModelCard | None:
    """The entry of `model` in a /v1/models answer, else its only entry (a server serving one model under another
    name); None when it lists neither."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        return None
    cards = [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
    entry = next((card for card in cards if card["id"] == model), cards[0] if len(cards) == 1 else None)
    if entry is None:
        return None
    root, parent = entry.get("root"), entry.get("parent")
    return ModelCard(
        entry["id"], root if isinstance(root, str) and root else None, parent if isinstance(parent, str) else None
    )


@dataclass(slots=True)
class _Asked:
    task: asyncio.Task[ModelCard | None]
    at: float


class ModelCards:
    """The cards of a model's replicas (by their rank), each fetched in the background when missing or stale.

    `fetch` answers None rather than raise when the server cannot tell (down, no such route, an unreadable answer).
    """

    def __init__(
        self,
        fetch: Callable[[int], Coroutine[Any, Any, ModelCard | None]],
        ttl: float = CARD_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch, self._ttl, self._clock = fetch, ttl, clock
        self._asked: dict[int, _Asked] = {}
        self._running: set[asyncio.Task[ModelCard | None]] = set()
        """Every question on its way, forgotten ones included: the event loop keeps only weak references."""

    def refresh(self, replica: int) -> None:
        """Ask `replica` for its card unless an answer younger than CARD_TTL is at hand or on its way."""
        asked = self._asked.get(replica)
        now = self._clock()
        if asked is not None and now - asked.at < self._ttl:
            return
        task = asyncio.create_task(self._fetch(replica))
        self._running.add(task)
        task.add_done_callback(self._ended)
        self._asked[replica] = _Asked(task, now)

    def forget(self, replica: int) -> None:
        """The replica failed: its next use asks again. A question still on its way is left to end by itself."""
        self._asked.pop(replica, None)

    async def get(self, replica: int, wait: float) -> ModelCard | None:
        """The replica's card, waiting up to `wait` seconds for a question on its way; None when unknown."""
        asked = self._asked.get(replica)
        if asked is None:
            return None
        task = asked.task
        if not task.done():
            await asyncio.wait([task], timeout=wait)
        if not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def _ended(self, task: asyncio.Task[ModelCard | None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("asking a model server for its models failed: %r", exc, exc_info=exc)

    async def aclose(self) -> None:
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._asked.clear()


@dataclass(slots=True)
class Trace:
    """What one attempt learned about what answered it."""

    started_at: int
    """ms since the epoch."""
    replica: int | None = None
    """The rank of the replica asked; None until a request is sent."""
    sampling: dict[str, Any] | None = None
    """The generation parameters of the request body, as sent."""
    served_model: str | None = None
    system_fingerprint: str | None = None
    first_token_ms: int | None = None

    def read_chunk(self, chunk: dict[str, Any]) -> None:
        """Take the model id (and system fingerprint) a streamed chunk reports."""
        model, fingerprint = chunk.get("model"), chunk.get("system_fingerprint")
        if isinstance(model, str) and model:
            self.served_model = model
        if isinstance(fingerprint, str) and fingerprint:
            self.system_fingerprint = fingerprint

    def line(self, attempt: int, run: int, outcome: AttemptOutcome, error: ErrorType | None = None) -> str:
        """The attempt's line of the record's `attempt_log`, as it ends now; `error` is the error's type."""
        return AttemptRecord(
            attempt=attempt,
            run=run,
            replica=self.replica,
            started_at=self.started_at,
            ended_at=now_ms(),
            outcome=outcome,
            error=AttemptError(type=error) if error else None,
            first_token_ms=self.first_token_ms,
        ).stored()

    def provenance(self, model: str, card: ModelCard | None, app_version: str) -> str:
        """The `provenance` of a job of `model`, this being its last attempt; `card` is its replica's."""
        return StoredProvenance(
            served_model=self.served_model or (card.id if card else None),
            model_revision=card.root if card else None,
            model_parent=card.parent if card else None,
            replica=self.replica,
            sampling=self.sampling,
            system_fingerprint=self.system_fingerprint,
            first_token_ms=self.first_token_ms,
            app_version=app_version,
        ).stored(model)
