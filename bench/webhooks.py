"""Webhooks (issue 15): every job's end delivered despite a failing, restarting receiver, within the specification's
retries, and fast while the receiver is up.

The whole path: jobs submitted through the API (arrays, --webhooks-rate jobs a second) with a webhook, run by a
worker against the simulator (1 ms prefill, 1 ms a token, 2 tokens), their ends written by finish.lua to the events
stream, delivered by `python -m webhooks` to a receiver process of its own on 127.0.0.1 (bench/webhook_receiver.py:
it verifies each signature with the `standardwebhooks` package and records each delivery before answering).

1. baseline: --webhooks-baseline jobs, the receiver never failing: end of job -> delivery, p50.
2. measured: --webhooks-jobs jobs; the receiver answers 500 to 20 % of the deliveries at random, and is stopped
   (SIGTERM) for --webhooks-down seconds then started again, twice, at a third and at two thirds of the submission.
   Retries follow the specification's schedule 1,000 times faster (5 ms, 0.3 s, 1.8 s, 7.2 s, 18 s, then every 36 s)
   for 180 s from the first attempt: ten attempts, the specification's example schedule.
Targets: every job's event delivered; no event sent more than ten times; p50 from a job's end (its payload's
`timestamp`) to its delivery <= 50 ms for the jobs that ended while the receiver was up.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import orjson
import redis

from bench.common import AUTH, Figure, Processes, Result, percentile, poll, sync
from shared import keys
from stack.processes import Service, free_port, http_ok, wait_until
from webhooks.schedule import attempts_within

NAME = "webhooks"
SIM = {"prefill_ms": 1, "ms_per_token": 1}
DELAYS = "0.005,0.3,1.8,7.2,18,36"
"""Standard Webhooks' schedule after its first attempt (5 s, 5 min, 30 min, 2 h, 5 h, 10 h), 1,000 times faster."""
WINDOW_HOURS = 0.05
SETTINGS = {
    "MAX_QUEUE_DEPTH": "0",
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "WEBHOOK_RETRY_SCHEDULE": DELAYS,
    "WEBHOOK_RETRY_HOURS": str(WINDOW_HOURS),
    "WEBHOOK_TIMEOUT": "5",
}
SPEC_ATTEMPTS = 10
"""Attempts of the specification's example schedule (at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h)."""
FAIL_RATE = 0.2
LATENCY_TARGET_MS = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--webhooks-jobs", type=int, default=10_000, help="jobs of the measured run (10,000)")
    group.add_argument("--webhooks-baseline", type=int, default=500, help="jobs of the baseline (500)")
    group.add_argument("--webhooks-rate", type=int, default=500, help="jobs submitted a second (500)")
    group.add_argument("--webhooks-down", type=float, default=1.0, help="seconds the receiver is down, twice (1)")


class Receiver:
    """The receiver process, restartable on its port; its deliveries are read from its file."""

    def __init__(self, processes: Processes, secret: str) -> None:
        self.processes = processes
        self.secret = secret
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = processes.dir / "deliveries.jsonl"
        self.service: Service | None = None
        self.down: list[tuple[float, float]] = []
        """(stopped, answering again) in ms, of each restart."""

    def start(self, fail_rate: float) -> None:
        args = ["bench.webhook_receiver", "--port", str(self.port), "--secret", self.secret]
        args += ["--fail-rate", str(fail_rate), "--out", str(self.out)]
        self.service = self.processes.python("receiver", args)
        wait_until(lambda: http_ok(f"{self.url}/health"), 15, "the receiver", self.service.process)

    def restart(self, down: float, fail_rate: float) -> None:
        assert self.service is not None
        stopped = time.time() * 1000
        self.service.stop()
        time.sleep(down)
        self.start(fail_rate)
        self.down.append((stopped, time.time() * 1000))

    def deliveries(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines() if line.endswith(b"}")]


def submit_paced(api: httpx.Client, hook: str, count: int, rate: int, prefix: str) -> list[str]:
    """`count` jobs with the webhook, in arrays of a tenth of `rate`, one array every 0.1 s."""
    ids: list[str] = []
    per_tick = max(1, rate // 10)
    began = time.monotonic()
    for start in range(0, count, per_tick):
        tick = [f"{prefix}-{index}" for index in range(start, min(count, start + per_tick))]
        jobs = [
            {"id": job_id, "prompt": "Où en est ma demande ?", "params": {"max_tokens": 2}, "webhook": {"url": hook}}
            for job_id in tick
        ]
        response = api.post("/v1/jobs", content=orjson.dumps(jobs))
        response.raise_for_status()
        ids += tick
        pause = began + (start // per_tick + 1) * 0.1 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return ids


def first_deliveries(deliveries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The first 2xx delivery of each job."""
    found: dict[str, dict[str, Any]] = {}
    for delivery in sorted(deliveries, key=lambda item: item["at"]):
        if delivery["status"] == 200 and delivery["job"] not in found:
            found[delivery["job"]] = delivery
    return found


def wait_delivered(receiver: Receiver, ids: list[str], within: float) -> None:
    wanted = set(ids)
    poll(lambda: wanted <= first_deliveries(receiver.deliveries()).keys(), within, "every event delivered", 0.5)


def run(args: argparse.Namespace) -> Result:
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        stack = processes.stack(sim_url, **SETTINGS)
        processes.python("webhooks", ["webhooks"], stack.env)
        with httpx.Client(base_url=stack.api_url, headers=AUTH, timeout=60) as api:
            receiver = Receiver(processes, api.get("/v1/webhooks/secret").json()["secret"])
            receiver.start(0.0)
            hook = f"{receiver.url}/hook"
            baseline_ids = submit_paced(api, hook, args.webhooks_baseline, args.webhooks_rate, "baseline")
            wait_delivered(receiver, baseline_ids, 60)
            httpx.post(f"{receiver.url}/control", json={"fail_rate": FAIL_RATE}).raise_for_status()
            submission_seconds = args.webhooks_jobs / args.webhooks_rate
            restarts = threading.Thread(
                target=_restart_twice, args=(receiver, submission_seconds, args.webhooks_down), daemon=True
            )
            began = time.monotonic()
            restarts.start()
            ids = submit_paced(api, hook, args.webhooks_jobs, args.webhooks_rate, "measured")
            restarts.join()
            wait_delivered(receiver, ids, WINDOW_HOURS * 3600 + 60)
            delivered_in = time.monotonic() - began
            client = stack.redis()
            stats = {name: int(value) for name, value in sync(client.hgetall(keys.webhook_stats())).items()}
            recorded = _recorded_attempts(client)
        deliveries = receiver.deliveries()
    return _result(args, deliveries, recorded, ids, baseline_ids, receiver.down, stats, delivered_in)


def _recorded_attempts(client: redis.Redis) -> dict[str, int]:
    """Each measured job's attempts as the delivery process recorded them (`webhook_delivery`): those that never
    reached the receiver (down) included."""
    names = list(client.scan_iter(match=keys.job("*:measured-*"), count=1000))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(name, "webhook_delivery")
        states = pipe.execute()
    return {
        str(name).rpartition(":")[2]: orjson.loads(state)["attempts"]
        for name, state in zip(names, states, strict=True)
        if state
    }


def _restart_twice(receiver: Receiver, submission_seconds: float, down: float) -> None:
    began = time.monotonic()
    for third in (1, 2):
        time.sleep(max(0.0, began + third * submission_seconds / 3 - time.monotonic()))
        receiver.restart(down, FAIL_RATE)


def _result(
    args: argparse.Namespace,
    deliveries: list[dict[str, Any]],
    recorded: dict[str, int],
    ids: list[str],
    baseline_ids: list[str],
    down: list[tuple[float, float]],
    stats: dict[str, int],
    seconds: float,
) -> Result:
    firsts = first_deliveries(deliveries)
    attempts: Counter[str] = Counter(delivery["job"] for delivery in deliveries)
    successes: defaultdict[str, int] = defaultdict(int)
    for delivery in deliveries:
        successes[delivery["job"]] += delivery["status"] == 200
    baseline = [firsts[job]["at"] - firsts[job]["end"] for job in baseline_ids if job in firsts]
    measured = [firsts[job] for job in ids if job in firsts]
    up = [item["at"] - item["end"] for item in measured if not any(a <= item["end"] <= b for a, b in down)]
    every = [item["at"] - item["end"] for item in measured]
    most = max(attempts[job] for job in ids)
    most_recorded = max(recorded.values(), default=0)
    delivered = sum(job in firsts for job in ids)
    p50_up, p50_baseline = statistics.median(up), statistics.median(baseline)
    figures = [
        Figure("events delivered", "jobs", delivered, target=f"= {len(ids)}", met=delivered == len(ids)),
        Figure(
            "most deliveries of one event (received)",
            "attempts",
            most,
            target=f"<= {SPEC_ATTEMPTS}",
            met=most <= SPEC_ATTEMPTS,
            reference=f"the schedule allows {attempts_within([float(d) for d in DELAYS.split(',')], WINDOW_HOURS)}",
        ),
        Figure(
            "most attempts at one event, as recorded",
            "attempts",
            most_recorded,
            target=f"<= {SPEC_ATTEMPTS}",
            met=most_recorded <= SPEC_ATTEMPTS and len(recorded) == len(ids),
            reference="connections refused included",
        ),
        Figure(
            "end of job -> delivery, p50, receiver up",
            "ms",
            p50_up,
            baseline=p50_baseline,
            baseline_name="receiver never failing",
            target=f"<= {LATENCY_TARGET_MS:g} ms",
            met=p50_up <= LATENCY_TARGET_MS,
        ),
        Figure("end of job -> delivery, p95, receiver up", "ms", percentile(up, 95)),
        Figure("end of job -> delivery, p50, all jobs", "ms", statistics.median(every)),
        Figure("end of job -> delivery, p99, all jobs", "ms", percentile(every, 99)),
        Figure("events delivered twice (2xx)", "events", sum(count > 1 for count in successes.values())),
        Figure(
            "invalid signatures",
            "deliveries",
            sum(not delivery["valid"] for delivery in deliveries),
            target="= 0",
            met=all(delivery["valid"] for delivery in deliveries),
        ),
    ]
    histogram = Counter(attempts[job] for job in ids)
    details = {
        "deliveries": len(deliveries),
        "attempts_per_event": {str(key): histogram[key] for key in sorted(histogram)},
        "failed_answers": sum(delivery["status"] != 200 for delivery in deliveries),
        "receiver_down_ms": [round(b - a) for a, b in down],
        "jobs_ended_while_down": len(measured) - len(up),
        "delivery_process_counters": stats,
        "seconds_to_last_delivery": round(seconds, 1),
    }
    options = {
        "jobs": args.webhooks_jobs,
        "baseline_jobs": args.webhooks_baseline,
        "rate": args.webhooks_rate,
        "down_s": args.webhooks_down,
        "fail_rate": FAIL_RATE,
        "schedule": DELAYS,
        "window_hours": WINDOW_HOURS,
        "sim": SIM,
    }
    return Result(NAME, figures, options, details)
