"""The retry schedule of failed deliveries (webhooks/schedule.py): Standard Webhooks' delays, with jitter, within
WEBHOOK_RETRY_HOURS of the first attempt, and the receiver's Retry-After."""

from __future__ import annotations

import random

import pytest

from tests.unit.conftest import make_settings
from webhooks.schedule import JITTER, attempts_within, next_attempt_ms, retry_delay

DELAYS = make_settings().webhook_retry_delays
HOUR = 3_600_000


def test_the_default_schedule_is_the_specifications() -> None:
    """Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ..."""
    assert [retry_delay(failed, DELAYS) for failed in range(1, 9)] == [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
        36000,
    ]


def test_24_hours_give_seven_attempts() -> None:
    """0, 5 s, 5 min 5 s, 35 min 5 s, 2 h 35, 7 h 35, 17 h 35; the next (27 h 35) is past the window."""
    assert attempts_within(DELAYS, 24) == 7
    assert attempts_within(DELAYS, 28) == 8
    assert attempts_within(DELAYS, 0.002) == 2


def test_the_retries_stop_at_the_window() -> None:
    first = 1_000_000
    now = first
    due_times = []
    for failed in range(1, 20):
        due = next_attempt_ms(failed, first, now, DELAYS, 24)
        if due is None:
            break
        due_times.append(due)
        now = due
    assert len(due_times) == 6, "six retries after the first attempt"
    assert due_times[-1] - first == (5 + 300 + 1800 + 7200 + 18000 + 36000) * 1000
    assert all(due - first <= 24 * HOUR for due in due_times)


def test_jitter_only_lengthens_a_little() -> None:
    rng = random.Random(7)
    delays = [retry_delay(2, DELAYS, rng) for _ in range(1000)]
    assert min(delays) >= 300
    assert max(delays) <= 300 * (1 + JITTER)
    assert len(set(delays)) > 900


def test_retry_after_is_a_floor() -> None:
    assert next_attempt_ms(1, 0, 0, DELAYS, 24, retry_after=60) == 60_000
    assert next_attempt_ms(1, 0, 0, DELAYS, 24, retry_after=1) == 5_000
    assert next_attempt_ms(1, 0, 0, DELAYS, 24, retry_after=25 * 3600) is None


@pytest.mark.parametrize(("raw", "delays"), [("1", (1.0,)), (" 0.05, 2,10 ", (0.05, 2.0, 10.0))])
def test_the_schedule_setting(raw: str, delays: tuple[float, ...]) -> None:
    settings = make_settings(WEBHOOK_RETRY_SCHEDULE=raw)
    assert settings.webhook_retry_delays == delays
    assert retry_delay(10, settings.webhook_retry_delays) == delays[-1]


@pytest.mark.parametrize("raw", ["", "5,", "five", "-1", "5;300"])
def test_a_malformed_schedule_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_RETRY_SCHEDULE"):
        make_settings(WEBHOOK_RETRY_SCHEDULE=raw)
