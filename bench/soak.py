"""`python -m bench.soak`: thousands of jobs through the API and two workers while workers are killed and
Redis restarts, then a check that nothing was lost and nothing doubled.

Everything runs on 127.0.0.1, with its files and process logs in a temporary directory (kept): redis-server
(append-only file, as in production), the vLLM simulator with a few injected faults (--error-rate,
--cut-rate), the workers (WORKER_HEARTBEAT=--heartbeat, 0.5 s: a dead worker's jobs are handed back after
about 2 s) and the API. Jobs are submitted at --rate per second; meanwhile, every few seconds, one chaos
action: a worker killed with SIGKILL (restarted once its jobs run elsewhere) or Redis stopped and started
again, up to --kills and --redis-restarts actions. Then every accepted job is checked (bench/soak_check.py):

- lost: accepted (202, or 200 for a resubmission after a lost answer) but not finished at the end;
- doubled: its stream holds more than one `done` entry: it was finished twice (finish.lua writes the
  record and the `done` entry in one step, so a second finish of any run would show there);
- garbled: the tokens after the stream's last `reset` differ from the stored result (an attempt's
  tokens glued to another's, or a chunk written twice);
- failed: counted by cause; causes it injected (a fault on every attempt, a worker killed under every
  attempt) are expected, any other is not.

For each kill it prints the time until all the killed worker's running jobs were handed back, and until
they all ran again on another worker (or had finished). The exit status is 1 when anything was lost,
doubled or garbled, or failed for a cause not injected.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx
import redis

from bench.soak_check import FINISHED, check, print_report, seconds_text
from shared import keys
from stack.processes import Service, free_port, start_python, start_redis, wait_until

MODEL = "soak/model"
AUTH = {"Authorization": "Bearer soak"}


@dataclass
class Recovery:
    """One SIGKILL of a worker and how long its running jobs took to run again."""

    orphans: int
    handed_back: float | None = None
    """Seconds from the kill until none of its jobs said `running` on the dead worker."""
    running_again: float | None = None
    """Seconds from the kill until each was running on another worker, or finished."""


@dataclass
class Chaos:
    kills: list[Recovery] = field(default_factory=list)
    redis_downtimes: list[float] = field(default_factory=list)


class Cluster:
    """The processes under test, each restartable."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.dir = workdir
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = start_redis(self.redis_port, workdir / "redis", appendonly=True, log=self._log("redis"))
        sim_port = free_port()
        faults = ["--error-rate", str(args.error_rate), "--cut-rate", str(args.cut_rate), "--fault-seed", "1"]
        sim_args = ["sim", "--port", str(sim_port), "--model", MODEL, "--ms-per-token", "10", *faults]
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        self.sim = start_python(
            "sim",
            [*sim_args, "--log-level", "warning"],
            env={},
            log=self._log("sim"),
            ready_url=f"{self.sim_url}/health",
        )
        self.env = {
            "ENV": "dev",
            "REDIS_URL": self.redis_url,
            "LLM_TABLE": json.dumps([[MODEL, self.sim_url]]),
            "LOG_LEVEL": "INFO",
            "WORKER_HEARTBEAT": str(args.heartbeat),
            "WORKER_MAX_JOBS": str(args.worker_max_jobs),
            "JOB_MAX_ATTEMPTS": "3",
            "RETRY_BACKOFF": "0.2",
            "STREAM_FLUSH_MS": "50",
            "MAX_QUEUE_DEPTH": "0",
        }
        self.workers = [self._worker() for _ in range(args.workers)]
        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.api = start_python(
            "api",
            ["api"],
            env={**self.env, "API_PORT": str(api_port)},
            log=self._log("api"),
            ready_url=f"{self.api_url}/health",
        )

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def _worker(self) -> Service:
        return start_python("worker", ["worker", "--model", MODEL], env=self.env, log=self._log("workers"))

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_connect_timeout=1, socket_timeout=5)

    def restart_worker(self, index: int) -> None:
        self.workers[index] = self._worker()

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis = start_redis(self.redis_port, self.dir / "redis", appendonly=True, log=self._log("redis"))

    def close(self) -> None:
        for service in [self.api, *self.workers, self.sim, self.redis]:
            service.stop()


def worker_id(service: Service) -> str:
    return f"{socket.gethostname()}:{service.pid}"


def submit(api_url: str, count: int, rate: float, accepted: list[str], done: threading.Event) -> None:
    """Submit `count` jobs in arrays of 10 at `rate` jobs per second; an array refused (503 while Redis
    restarts) or unanswered is sent again as it is: the same ids, so nothing is queued twice."""
    rng = random.Random(2)
    with httpx.Client(base_url=api_url, headers=AUTH, timeout=10) as http:
        began = time.monotonic()
        for first in range(0, count, 10):
            ids = [f"soak-{n}" for n in range(first, min(first + 10, count))]
            jobs = [{"id": i, "prompt": f"Question {i}", "params": {"max_tokens": rng.randint(20, 150)}} for i in ids]
            while True:
                try:
                    if http.post("/v1/jobs", json=jobs).status_code in (200, 202):
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            accepted.extend(ids)
            time.sleep(max(0.0, began + (first + 10) / rate - time.monotonic()))
    done.set()


def measure_kill(client: redis.Redis, dead: str, began: float, timeout: float = 60) -> Recovery:
    """The running jobs of worker `dead` (killed at `began`), followed until they all run elsewhere."""
    running = cast(list[str], client.zrange(keys.running(MODEL), 0, -1))
    orphans = [kid for kid, state in zip(running, _states(client, running), strict=True) if state == ("running", dead)]
    recovery = Recovery(len(orphans))
    while time.monotonic() - began < timeout:
        states = _states(client, orphans)
        if recovery.handed_back is None and ("running", dead) not in states:
            recovery.handed_back = time.monotonic() - began
        if all(status in FINISHED or (status, worker != dead) == ("running", True) for status, worker in states):
            recovery.running_again = time.monotonic() - began
            return recovery
        time.sleep(0.02)
    return recovery


def _states(client: redis.Redis, kids: list[str]) -> list[tuple[str | None, str | None]]:
    """(status, worker) of each job."""
    with client.pipeline(transaction=False) as pipe:
        for kid in kids:
            pipe.hmget(keys.job(kid), ["status", "worker"])
        return [(status, worker) for status, worker in pipe.execute()]


def chaos(cluster: Cluster, args: argparse.Namespace, finished: threading.Event) -> Chaos:
    """Kill workers and restart Redis at random moments until the budgets are spent or the jobs are done."""
    rng = random.Random(args.seed)
    actions = ["kill"] * args.kills + ["redis"] * args.redis_restarts
    rng.shuffle(actions)
    report = Chaos()
    client = cluster.client()
    for action in actions:
        if finished.wait(rng.uniform(1.5, 4)):
            break
        if action == "kill":
            index = rng.randrange(len(cluster.workers))
            victim = cluster.workers[index]
            dead = worker_id(victim)
            victim.kill()
            recovery = measure_kill(client, dead, time.monotonic())
            report.kills.append(recovery)
            back, again = seconds_text(recovery.handed_back), seconds_text(recovery.running_again)
            print(
                f"  killed {dead}: {recovery.orphans} running job(s), back after {back}, running after {again}",
                flush=True,
            )
            cluster.restart_worker(index)
        else:
            down = rng.uniform(0.5, 2.0)
            cluster.stop_redis()
            time.sleep(down)  # the outage itself
            cluster.start_redis()
            report.redis_downtimes.append(down)
            print(f"  Redis restarted after {down:.1f}s down", flush=True)
    return report


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="spp-soak-"))
    cluster = Cluster(args, workdir)
    ok = False
    try:
        client = cluster.client()
        wait_until(lambda: client.zcard(keys.workers(MODEL)) >= args.workers, 30, "workers registered")
        accepted: list[str] = []
        submitted = threading.Event()
        began = time.monotonic()
        submitter = threading.Thread(target=submit, args=(cluster.api_url, args.jobs, args.rate, accepted, submitted))
        submitter.start()
        print(f"soak: {args.jobs} jobs at {args.rate:g}/s, {args.workers} workers, logs in {workdir}", flush=True)
        done = chaos(cluster, args, submitted)
        submitter.join()
        report = check(cluster.client(), accepted, MODEL, timeout=args.timeout)
        print_report(report, done.kills, done.redis_downtimes, time.monotonic() - began, cluster.sim_url)
        ok = report.ok
    finally:
        cluster.close()
    print(f"process logs in {workdir}")
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    cli.add_argument("--jobs", type=int, default=3000)
    cli.add_argument("--rate", type=float, default=60.0, help="jobs submitted per second")
    cli.add_argument("--workers", type=int, default=2)
    cli.add_argument("--worker-max-jobs", type=int, default=128, help="WORKER_MAX_JOBS of the workers")
    cli.add_argument("--kills", type=int, default=6, help="workers killed with SIGKILL, at most")
    cli.add_argument("--redis-restarts", type=int, default=3, help="Redis restarts, at most")
    cli.add_argument("--error-rate", type=float, default=0.02, help="simulator: requests answered HTTP 500")
    cli.add_argument("--cut-rate", type=float, default=0.02, help="simulator: streams cut halfway")
    cli.add_argument("--heartbeat", type=float, default=0.5, help="WORKER_HEARTBEAT of the workers")
    cli.add_argument("--timeout", type=float, default=300, help="seconds to wait for the last jobs")
    cli.add_argument("--seed", type=int, default=1, help="of the chaos schedule")
    return cli


def main() -> None:
    raise SystemExit(run(parser().parse_args()))


if __name__ == "__main__":
    main()
