"""Progress on stderr (`wait_all`, `albert-spp batch`): a line redrawn with `\\r` on a terminal, else a line every few
seconds."""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = 24


@dataclass(frozen=True)
class Counts:
    status: str
    total: int
    completed: int
    failed: int

    @property
    def finished(self) -> int:
        return self.completed + self.failed


def format_duration(seconds: float | None) -> str:
    """`M:SS` or `H:MM:SS`; `--:--` when unknown."""
    if seconds is None or seconds < 0 or seconds != seconds or seconds > 99 * 3600:
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(counts: Counts, rate: float | None, width: int = BAR_WIDTH) -> str:
    """`[#####-----]  45% 133 done, 2 failed / 300 | 12.3 req/s | 0:14 left | in_progress`."""
    fraction = min(counts.finished / counts.total, 1.0) if counts.total else 0.0
    filled = int(fraction * width)
    bar = "#" * filled + "-" * (width - filled)
    remaining = counts.total - counts.finished
    eta = 0.0 if counts.total and not remaining else (remaining / rate if rate else None)
    speed = f"{rate:.1f} req/s" if rate is not None else "-- req/s"
    return (
        f"[{bar}] {fraction:4.0%} {counts.completed} done, {counts.failed} failed / {counts.total}"
        f" | {speed} | {format_duration(eta)} left | {counts.status}"
    )


class RateMeter:
    """Finished requests per second over the last `window` seconds of samples."""

    def __init__(self, window: float = 20.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, finished: int) -> None:
        self.samples.append((now, finished))
        # Keep one sample older than the window, so that the rate spans the whole window.
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (start, first), (end, last) = self.samples[0], self.samples[-1]
        return (last - first) / (end - start) if end > start else None


class Progress:
    """Shows Counts on `stream`: one line redrawn in place on a terminal, else a line every `every` seconds
    (and at each change of status)."""

    def __init__(
        self,
        stream: TextIO,
        tty: bool | None = None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.every = every
        self.clock = clock
        self.meter = RateMeter()
        self.drawn = 0  # characters of the line on screen (terminal)
        self.printed_at: float | None = None
        self.status: str | None = None

    def update(self, counts: Counts) -> None:
        now = self.clock()
        if counts.total:  # none while validating: the rate starts with the requests
            self.meter.add(now, counts.finished)
        line = format_progress(counts, self.meter.rate())
        if self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns - 1
            line = line[:columns]
            self.stream.write("\r" + line + " " * max(self.drawn - len(line), 0))
            self.drawn = len(line)
        elif self.printed_at is None or now - self.printed_at >= self.every or counts.status != self.status:
            self.stream.write(line + "\n")
            self.printed_at = now
        self.status = counts.status
        self.stream.flush()

    def close(self) -> None:
        """End the line on a terminal, so that what follows starts on its own line."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = 0
