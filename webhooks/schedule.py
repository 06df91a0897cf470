"""When a failed delivery is tried again: Standard Webhooks' schedule (WEBHOOK_RETRY_SCHEDULE, after a first attempt
at once), with jitter, within WEBHOOK_RETRY_HOURS of the first attempt."""

from __future__ import annotations

import random
from collections.abc import Sequence

JITTER = 0.1
"""Each delay is lengthened by up to this share, drawn at random: receivers that failed together are not all called
again in the same instant (the specification recommends jitter)."""


def retry_delay(failed_attempts: int, delays: Sequence[float], rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failed_attempts`-th failed attempt (1 for the first) before the next one: the
    schedule's delay of that rank, its last one past its end, lengthened by up to JITTER (none without `rng`)."""
    base = delays[min(failed_attempts, len(delays)) - 1]
    return base * (1 + JITTER * rng.random()) if rng is not None else base


def next_attempt_ms(
    failed_attempts: int,
    first_attempt_ms: int,
    now_ms: int,
    delays: Sequence[float],
    window_hours: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> int | None:
    """When the next attempt is due (ms), or None when the event is given up: the schedule's delay (at least the
    receiver's Retry-After, when it sent one) from now, if that falls within `window_hours` of the first attempt."""
    delay = retry_delay(failed_attempts, delays, rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    due = now_ms + round(delay * 1000)
    return due if due <= first_attempt_ms + window_hours * 3_600_000 else None


def attempts_within(delays: Sequence[float], window_hours: float) -> int:
    """The most attempts an event gets (first included) when every one fails as fast as it can: what the schedule
    allows within the window, jitter aside."""
    attempts, elapsed = 1, 0.0
    while True:
        elapsed += retry_delay(attempts, delays)
        if elapsed > window_hours * 3600:
            return attempts
        attempts += 1
