"""The token stream protocol: what a job's Redis stream holds and how clients see it.

Each stream entry has two fields: `t`, the event type, and `d`, its data:
- `token`: `d` is a chunk of generated text (tokens coalesced over STREAM_FLUSH_MS);
- `reset`: `d` is the number of the attempt starting over; text before it belongs to a failed attempt;
- `done`: `d` is the job's final status; nothing follows it.
The entry's Redis id is the event id clients resume from (`Last-Event-ID`). The worker gives its `token`
entries their ids (`next_id`: its clock, in ms), so that Redis refuses a chunk sent twice; every other entry,
and a chunk behind the run's `reset` (the worker's clock behind Redis's), gets an id from Redis's clock.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any


class EventType(enum.StrEnum):
    TOKEN = "token"
    RESET = "reset"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    type: EventType
    data: str


def parse_entries(entries: list[Any]) -> list[StreamEvent]:
    """Events from the `(id, {field: value})` pairs redis-py returns for XRANGE and XREAD."""
    return [StreamEvent(entry_id, EventType(fields["t"]), fields.get("d", "")) for entry_id, fields in entries]


_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_ID_PART_LIMIT = 2**64


def checked_stream_id(value: str) -> str:
    """`value`, a stream id from outside (a client's `Last-Event-ID`), if Redis takes it: `<ms>-<seq>` or a bare
    `<ms>` (its `-0`), ASCII digits, each part below 2**64; else ValueError. `stream_id`'s `int()` would let
    through what Redis refuses (`1_0`, `+1`, 21 digits, 2**64), which it would then refuse after the answer began."""
    match = _STREAM_ID.fullmatch(value)
    if match is None or any(int(part) >= _ID_PART_LIMIT for part in match.groups("0")):
        raise ValueError(f"Last-Event-ID must be an event id, <ms>-<seq> (each part below 2**64), not {value[:64]!r}")
    return value


def stream_id(value: str) -> tuple[int, int]:
    """A stream id that Redis gave (or `checked_stream_id` passed) as a comparable pair: fast, not strict."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def next_id(last: str | None, now_ms: int) -> str:
    """The id of a run's next `token` entry: `now_ms`, kept above `last`, the id of the run's previous one."""
    if last is not None:
        ms, seq = stream_id(last)
        if now_ms <= ms:
            return f"{ms}-{seq + 1}"
    return f"{now_ms}-0"
