"""Where the latency of one job goes: `python -m bench.timeline [--jobs 100]`.

Not one of the benchmarks of `python -m bench`: a diagnostic for them. It runs the `latency`
setup (simulator without delays, max_tokens=5, one job at a time) with a MONITOR connection on
Redis, whose timestamps (microseconds, same clock as ours) place each job's Redis commands
between the moment its POST was sent and the moment its `done` event arrived. The Lua scripts
are told apart by their SHA1 (shared/lua/*.lua). Each stage is reported as p50 and p90 in ms.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
from importlib import resources

import uvloop

from bench import latency
from bench.commands import Monitor
from bench.common import Processes, percentile
from shared.scripts import script_source

STAGES = [
    ("POST sent -> submit script", "client", "submit", "API: HTTP, auth, validation, dependencies"),
    ("submit -> arq poll", "submit", "poll", "worker woken by pub/sub, arq's ZRANGEBYSCORE"),
    ("arq poll -> start script", "poll", "start", "arq: WATCH/EXISTS/ZSCORE/MULTI/PSETEX/EXEC, job fetch"),
    ("start -> first token appended", "start", "append", "HTTP request to the simulator, first token"),
    ("first token -> finish script", "append", "finish", "rest of the stream, result stored"),
    ("finish -> `done` received", "finish", "done", "API: stream reader wakes, HGETALL, SSE frame"),
    ("total (client)", "client", "done", ""),
]


def script_names() -> dict[str, str]:
    """SHA1 of each Lua script of the store (as EVALSHA names it) -> script name."""
    names: dict[str, str] = {}
    for path in resources.files("shared").joinpath("lua").iterdir():
        if path.name.endswith(".lua"):
            name = path.name.removesuffix(".lua")
            names[hashlib.sha1(script_source(name).encode()).hexdigest()] = name
    return names


def timeline(lines: list[tuple[float, str, str, str]], stamps: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Per stage, the durations in ms of every job whose events were all found."""
    scripts = script_names()
    events: list[tuple[float, str]] = []
    for at, client, command, argument in lines:
        if client == "lua":
            continue
        if command == "evalsha":
            events.append((at, scripts.get(argument, "?")))
        elif command == "zrangebyscore":
            events.append((at, "poll"))
    events.sort()
    times = [at for at, _ in events]
    durations: dict[str, list[float]] = {name: [] for name, *_ in STAGES}
    for posted, done in stamps:
        found: dict[str, float] = {"client": posted, "done": done}
        for index in range(bisect.bisect_left(times, posted), bisect.bisect_right(times, done)):
            at, name = events[index]
            if name == "poll" and "submit" not in found:
                continue  # an idle poll before the job existed
            found.setdefault(name, at)
        if all(stage in found for _, *pair, _ in STAGES for stage in pair):
            for name, start, end, _ in STAGES:
                durations[name].append(1000 * (found[end] - found[start]))
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with Processes("timeline") as processes:
        sim_url = processes.sim(**latency.SIM)
        stack = processes.stack(sim_url)
        monitor = Monitor(stack.redis_url, record=True)
        monitor.start()
        monitor.ready.wait(10)
        stamps: list[tuple[float, float]] = []
        try:
            uvloop.run(latency.measure(stack.api_url, sim_url, args.jobs, args.warmup, 5, stamps))
        finally:
            monitor.stop()
    durations = timeline(monitor.lines, stamps)
    complete = len(durations["total (client)"])
    print(f"{complete} of {len(stamps)} jobs with every stage found (MONITOR on: each command costs a bit more)")
    width = max(len(name) for name, *_ in STAGES)
    print(f"  {'stage'.ljust(width)}  p50 ms  p90 ms  what")
    for name, _, _, what in STAGES:
        values = durations[name]
        if values:
            print(f"  {name.ljust(width)}  {percentile(values, 50):6.2f}  {percentile(values, 90):6.2f}  {what}")


if __name__ == "__main__":
    main()
