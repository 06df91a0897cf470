"""A job's Server-Sent Events (`GET /v1/jobs/{id}/events`) as typed events.

The stream sends `queued` events (no id) while the job waits, `token` events with text, a `reset` event when an
attempt starts over (the text before it belongs to a failed attempt), then one `done` event with the finished
job. Every event but `queued` has an id: sent back as `Last-Event-ID`, the stream resumes after it, so that a
dropped connection loses and repeats nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from albert_spp.models import Job


@dataclass(frozen=True, slots=True)
class Queued:
    """The job waits: `queue_position` jobs of its model start before it."""

    queue_position: int | None
    estimated_start_at: datetime | None


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The job's attempt `attempt` starts over: discard the text received so far."""

    id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Done:
    id: str
    job: Job


Event = Queued | Token | Reset | Done


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as sent: its type, its id (None when it has none) and its data."""

    event: str
    id: str | None
    data: str


class SseParser:
    """Frames of an SSE body fed a line at a time (without line ends): comments skipped, `data` lines joined."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.event = "message"
        self.event_id: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> Frame | None:
        """The frame that `line` ends (an empty line), else None."""
        if not line:
            frame = Frame(self.event, self.event_id, "\n".join(self.data)) if self.data or self.event_id else None
            self._clear()
            return frame
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self.event = value
            elif name == "data":
                self.data.append(value)
            elif name == "id":
                self.event_id = value
        return None


def frames(lines: Iterable[str]) -> Iterator[Frame]:
    parser = SseParser()
    for line in lines:
        frame = parser.feed(line)
        if frame is not None:
            yield frame


def event_of(frame: Frame) -> Event | None:
    """The typed event of a frame; None for a type this client does not know (a newer server's)."""
    data = json.loads(frame.data) if frame.data else {}
    if frame.event == "token":
        return Token(frame.id or "", data["text"])
    if frame.event == "reset":
        return Reset(frame.id or "", int(data["attempt"]))
    if frame.event == "done":
        return Done(frame.id or "", Job.model_validate(data))
    if frame.event == "queued":
        start = data.get("estimated_start_at")
        return Queued(data.get("queue_position"), datetime.fromisoformat(start) if start else None)
    return None
