"""Whether a process was slow or starved: CPU time and run-queue wait from the scheduler, and the machine's load.

/proc/<pid>/task/*/schedstat gives, per thread, the time on a CPU and the time spent runnable but waiting
for one (nanoseconds); /proc/stat gives the busy time of all cores. A process that is late while its
run-queue wait is high was starved by the others (on this 2-core machine: the rest of the stack, and
whatever else runs there); one that is late while on a CPU all the time is saturated by its own work.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting) of every thread of `pid` so far."""
    running = waiting = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue  # a thread that just ended
        running += int(fields[0])
        waiting += int(fields[1])
    return running / 1e9, waiting / 1e9


def machine_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) of all cores so far, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICKS, sum(fields[:8]) / _TICKS


class SchedMeter:
    """Between `start()` and `stop()`: each process's CPU and run-queue wait (% of the window), the
    machine's busy % (of all its cores) and what processes other than `pids` used (% of one core)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, tuple[float, float]] = {}
        self._machine = (0.0, 0.0)
        self._began = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._before = {name: schedstat(pid) for name, pid in self.pids.items()}
        self._machine = machine_busy()

    def stop(self) -> dict[str, object]:
        wall = time.monotonic() - self._began
        busy, total = machine_busy()
        result: dict[str, object] = {
            "seconds": round(wall, 2),
            "machine_busy_pct": round(100 * (busy - self._machine[0]) / max(1e-9, total - self._machine[1]), 1),
        }
        cpu, wait = {}, {}
        ours = 0.0
        for name, pid in self.pids.items():
            try:
                running, waiting = schedstat(pid)
            except OSError:
                continue  # it ended
            ours += running - self._before[name][0]
            cpu[name] = round(100 * (running - self._before[name][0]) / wall, 1)
            wait[name] = round(100 * (waiting - self._before[name][1]) / wall, 1)
        result["cpu_pct"], result["runqueue_wait_pct"] = cpu, wait
        # What the rest of the machine used meanwhile (other processes, the kernel), in % of one core.
        result["others_pct"] = round(100 * max(0.0, busy - self._machine[0] - ours) / wall, 1)
        return result


class SchedSampler(threading.Thread):
    """Every `interval` seconds, (wall-clock ms, CPU s, run-queue wait s) of `pid`: where a process ran flat
    out, or waited for a CPU, during a run. `timeline()` turns the samples into % per window."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="sched-sampler", daemon=True)
        self._pid, self._interval = pid, interval
        self._halt = threading.Event()
        self.samples: list[tuple[float, float, float]] = []

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                running, waiting = schedstat(self._pid)
            except OSError:
                return
            self.samples.append((1000 * time.time(), running, waiting))
            self._halt.wait(self._interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def timeline(self, origin_ms: float, window_ms: int = 250) -> list[list[int]]:
        """[window start ms from `origin_ms`, CPU %, run-queue wait %] for each window with two samples."""
        buckets: dict[int, list[tuple[float, float, float]]] = {}
        for sample in self.samples:
            buckets.setdefault(int((sample[0] - origin_ms) // window_ms), []).append(sample)
        rows = []
        for index in sorted(buckets):
            first, last = buckets[index][0], buckets[index][-1]
            wall = (last[0] - first[0]) / 1000
            if wall > 0:
                cpu = round(100 * (last[1] - first[1]) / wall)
                rows.append([index * window_ms, cpu, round(100 * (last[2] - first[2]) / wall)])
        return rows
