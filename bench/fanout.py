"""Fan-out: 1,000 SSE subscribers on one API process following 100 jobs at once.

Each phase: a fresh API process (our Redis, the simulator with 20 ms per token), --fanout-jobs jobs of
max_tokens --fanout-max-tokens submitted while no worker runs, so that they wait in the queue; then the
subscribers (bench/sse_clients.py, --fanout-clients separate processes of raw asyncio connections)
connect, --fanout-per-job per job, and once all of them have their answer's head a worker is started:
every job starts at once and every token event is live. The lag of a token event is the time a
subscriber received it minus the time the worker sent its stream entry (the ms of its stream id; one clock).
Meanwhile CLIENT LIST is read every 200 ms: the most Redis connections named spp-api* (the API
process's pools) seen at once, checked against the API process's own TCP sockets to Redis
(/proc/<pid>/fd and /proc/<pid>/net/tcp). Complete: the subscribers whose token texts add up to the
`done` job's result. Also measured: the lag of the `done` events (the API reads the job record for each
subscriber's `done`), the Redis calls of the API (INFO commandstats), the lag per 250 ms of the run
(details: lag_timeline_ms: window start, events, lag p50, lag p99; api_sched_timeline: window start, the
API's CPU % and run-queue wait %), and CPU and run-queue wait of every process with the machine's busy %
(bench/sched.py). Baseline: the same with one subscriber per job.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import (
    AUTH,
    CpuMeter,
    Figure,
    Processes,
    Result,
    bench_redis,
    command_calls,
    percentile,
    stack_env,
    sync,
)
from bench.sched import SchedMeter, SchedSampler
from bench.submission import job_body
from stack.processes import Service

NAME = "fanout"
SIM = {"prefill_ms": 0, "ms_per_token": 100}
"""One token per 100 ms, as many stream entries as tokens with STREAM_FLUSH_MS=100: the event rate of a
real model (10 entries per second per job, whatever its token rate) for a fraction of the worker's and
the simulator's CPU, which share the machine with the API."""
MAX_CONNECTIONS, LAG_TARGET_MS = 5, 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--fanout-jobs", type=int, default=100, help="jobs followed at once (100)")
    group.add_argument("--fanout-per-job", type=int, default=10, help="subscribers per job (10)")
    group.add_argument("--fanout-max-tokens", type=int, default=20, help="max_tokens of each job (20: 2 s)")
    group.add_argument("--fanout-clients", type=int, default=2, help="subscriber processes (2)")


def redis_sockets(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to `port` on this machine."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


class ConnectionSampler(threading.Thread):
    """The API's Redis connections, every `interval` seconds: the most seen at once, in total and by name."""

    def __init__(self, redis_url: str, api_pid: int, interval: float = 0.2) -> None:
        super().__init__(name="connection-sampler", daemon=True)
        self._client = bench_redis(redis_url)
        self._port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
        self._pid = api_pid
        self._interval = interval
        self._halt = threading.Event()
        self.most = 0
        self.most_by_name: Counter[str] = Counter()
        self.most_sockets = 0
        self.samples = 0

    def sample(self) -> None:
        clients: list[dict[str, Any]] = sync(self._client.client_list())
        names = Counter(str(c["name"]) for c in clients if str(c["name"]).startswith("spp-api"))
        self.most = max(self.most, sum(names.values()))
        self.most_by_name |= names  # the larger count of each name
        self.most_sockets = max(self.most_sockets, redis_sockets(self._pid, self._port))
        self.samples += 1

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sample()
        self._client.close()


def phase(
    sim_url: str, redis_url: str, redis: Service, sim: Service, args: argparse.Namespace, per_job: int
) -> dict[str, Any]:
    """One run: fresh API, jobs queued, subscribers connected, then a worker; the figures."""
    env = stack_env(redis_url, sim_url, CLIENT_MAX_STREAMS=0)  # one client (key) holds all the subscribers
    with Processes(NAME) as processes:
        api_url = processes.api(env)
        api = processes.services[-1]
        sampler = ConnectionSampler(redis_url, api.pid)
        sampler.sample()
        idle = {"connections": sampler.most, "by_name": dict(sampler.most_by_name)}
        with httpx.Client(base_url=api_url, headers=AUTH, timeout=60) as http:
            body = [job_body(index, args.fanout_max_tokens) for index in range(args.fanout_jobs)]
            response = http.post("/v1/jobs", content=orjson.dumps(body))
            response.raise_for_status()
            ids = [job["id"] for job in response.json()]
        ids_file = processes.dir / f"ids-{per_job}"
        ids_file.write_text("\n".join(ids) + "\n")
        children: list[subprocess.Popen[bytes]] = []
        try:
            for part in range(args.fanout_clients):
                command = [sys.executable, "-m", "bench.sse_clients", "--url", api_url, "--ids-file", str(ids_file)]
                command += ["--per-job", str(per_job), "--part", str(part), "--parts", str(args.fanout_clients)]
                command += ["--output", str(processes.dir / f"clients-{per_job}-{part}.json")]
                children.append(subprocess.Popen(command, stdout=subprocess.PIPE))
            began = time.monotonic()
            for child in children:
                assert child.stdout is not None
                line = child.stdout.readline()
                if line.strip() != b"ready":
                    raise RuntimeError(f"SSE clients: {line!r} (exit {child.wait()})")
            connect_s = time.monotonic() - began
            time.sleep(0.5)  # the last subscriptions reach the stream reader
            counter = bench_redis(redis_url)
            _, calls_before = command_calls(counter)
            sampler.start()
            worker = processes.worker(env)
            services = {"api": api, "redis": redis, "sim": sim, "worker": worker}
            services |= {f"clients {index}": Service("clients", child) for index, child in enumerate(children)}
            meter = CpuMeter(services)
            sched = SchedMeter({name: service.pid for name, service in services.items()} | {"bench": os.getpid()})
            meter.start()
            sched.start()
            api_sampler = SchedSampler(api.pid)
            api_sampler.start()
            for child in children:
                assert child.stdout is not None
                if child.stdout.readline().strip() != b"done":
                    raise RuntimeError(f"SSE clients failed (exit {child.wait()})")
            cpu = meter.stop()
            scheduler = sched.stop()
            api_sampler.stop()
            sampler.stop()
            _, calls_after = command_calls(counter)
            counter.close()
            calls = {
                name: calls_after[name] - calls_before.get(name, 0)
                for name in ("hgetall", "xread", "xrange", "client|unblock", "evalsha")
                if name in calls_after
            }
            for child in children:
                child.wait(30)
            outputs = [processes.dir / f"clients-{per_job}-{part}.json" for part in range(len(children))]
            parts = [orjson.loads(output.read_bytes()) for output in outputs]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    received = sorted((at, lag) for part in parts for at, lag in part.pop("lags_ms"))
    lags = [lag for _, lag in received]
    done_lags = [lag for part in parts for lag in part.pop("done_lags_ms")]
    timeline = []  # per 250 ms since the first token event: events, lag p50 and p99
    for start in range(0, int(received[-1][0] - received[0][0]) + 1, 250):
        window = [lag for at, lag in received if start <= at - received[0][0] < start + 250]
        if window:
            timeline.append([start, len(window), round(percentile(window, 50)), round(percentile(window, 99))])
    return {
        "subscribers": sum(part["subscribers"] for part in parts),
        "complete": sum(part["complete"] for part in parts),
        "token_events": len(lags),
        "errors": sum(part["error_count"] for part in parts),
        "lag_ms": {q: round(percentile(lags, float(q[1:])), 1) for q in ("p50", "p90", "p99", "p100")},
        "done_lag_ms": {q: round(percentile(done_lags, float(q[1:])), 1) for q in ("p50", "p90", "p99", "p100")},
        "redis_calls": calls,
        "connect_s": round(connect_s, 2),
        "api_redis_connections": {
            "idle": idle,
            "most": sampler.most,
            "most_by_name": dict(sampler.most_by_name),
            "most_api_sockets_to_redis": sampler.most_sockets,
            "samples": sampler.samples,
        },
        "cpu_pct": cpu,
        "sched": scheduler,
        "lag_timeline_ms": timeline,
        "api_sched_timeline": api_sampler.timeline(received[0][0]),
        "clients": parts,
    }


def run(args: argparse.Namespace) -> Result:
    with Processes(NAME) as processes:
        sim_url = processes.sim(max_num_seqs=max(256, args.fanout_jobs), **SIM)
        sim = processes.services[-1]
        redis_url = processes.redis()
        redis = processes.services[-1]
        results = {}
        for label, per_job in (("baseline", 1), ("measured", args.fanout_per_job)):
            result = phase(sim_url, redis_url, redis, sim, args, per_job)
            results[label] = result
            print(
                f"  {result['subscribers']} subscribers: {result['complete']} complete, "
                f"{result['token_events']} token events, lag ms {result['lag_ms']}, "
                f"API Redis connections at most {result['api_redis_connections']['most']} "
                f"{result['api_redis_connections']['most_by_name']}; CPU % {result['cpu_pct']}; machine busy "
                f"{result['sched']['machine_busy_pct']} %, run-queue wait % {result['sched']['runqueue_wait_pct']}, "
                f"other processes {result['sched']['others_pct']} %",
                flush=True,
            )
    base, measured = results["baseline"], results["measured"]
    expected = args.fanout_jobs * args.fanout_per_job
    connections = measured["api_redis_connections"]
    figures = [
        Figure(
            "subscribers that received every token",
            "subscribers",
            measured["complete"],
            expected,
            "subscribers",
            f"== {expected}",
            measured["complete"] == expected,
        ),
        Figure(
            "API process Redis connections (most at once)",
            "conn",
            connections["most"],
            base["api_redis_connections"]["most"],
            f"{args.fanout_jobs} subscribers",
            f"<= {MAX_CONNECTIONS}",
            connections["most"] <= MAX_CONNECTIONS,
        ),
        Figure(
            "lag Redis -> subscriber p50",
            "ms",
            measured["lag_ms"]["p50"],
            base["lag_ms"]["p50"],
            f"{args.fanout_jobs} subscribers p50",
        ),
        Figure(
            "lag Redis -> subscriber p99",
            "ms",
            measured["lag_ms"]["p99"],
            base["lag_ms"]["p99"],
            f"{args.fanout_jobs} subscribers p99",
            f"< {LAG_TARGET_MS:g} ms",
            measured["lag_ms"]["p99"] < LAG_TARGET_MS,
        ),
        Figure(
            "lag Redis -> subscriber of `done` p99",
            "ms",
            measured["done_lag_ms"]["p99"],
            base["done_lag_ms"]["p99"],
            f"{args.fanout_jobs} subscribers p99",
        ),
    ]
    options = {
        "jobs": args.fanout_jobs,
        "per_job": args.fanout_per_job,
        "max_tokens": args.fanout_max_tokens,
        "clients": args.fanout_clients,
        "sim": SIM,
    }
    return Result(NAME, figures, options, {"baseline": base, "measured": measured})
