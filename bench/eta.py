"""ETA honesty: how near a queued job's `estimated_start_at` comes to when it really starts.

A stack with few worker slots (--eta-slots, WORKER_MAX_JOBS of its one worker) against the simulator (prefill
20 ms, 10 ms a token), jobs of 30 to 90 tokens (seeded): --eta-warmup jobs are run first, so that the model's
throughput has been measured, then --eta-jobs are queued in one array. Right after, each job is read once
(GET /v1/jobs/{id}, in turn): its `estimated_start_at` at that moment (t_read), kept for the jobs still queued.
Once all have run, each job's `started_at`. Reported: the median, over those jobs, of
|estimated - started| / (started - t_read), the error as a share of the wait; target <= 0.20. Informative: its
90th percentile, and the median of the signed error (positive: the estimate was late).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import time
from typing import Any

import httpx
import orjson

from bench.common import AUTH, Figure, Processes, Result, model_load, percentile, poll

NAME = "eta"
SIM = {"prefill_ms": 20, "ms_per_token": 10}
TARGET = 0.20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--eta-jobs", type=int, default=300, help="jobs queued at once, whose estimates are checked")
    group.add_argument("--eta-warmup", type=int, default=40, help="jobs run first, to measure the throughput (40)")
    group.add_argument("--eta-slots", type=int, default=8, help="generations the worker runs at once (8)")


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _jobs(count: int, rng: random.Random) -> bytes:
    return orjson.dumps(
        [
            {"prompt": f"Question {index} sur mes droits", "params": {"max_tokens": rng.randint(30, 90)}}
            for index in range(count)
        ]
    )


def _submit(http: httpx.Client, body: bytes) -> list[str]:
    response = http.post("/v1/jobs", content=body)
    response.raise_for_status()
    return [job["id"] for job in response.json()]


def _drain(http: httpx.Client) -> None:
    poll(lambda: model_load(http) == (0, 0), 600, "the queue drained", interval=0.2)


def measure(api_url: str, jobs: int, warmup: int) -> dict[str, Any]:
    """Each queued job's estimate when read and its real start, as (t_read, estimated, started, position)."""
    rng = random.Random(14)
    with httpx.Client(base_url=api_url, timeout=60, headers=AUTH) as http:
        _submit(http, _jobs(warmup, rng))
        _drain(http)
        ids = _submit(http, _jobs(jobs, rng))
        read: dict[str, tuple[float, float, int]] = {}
        unknown = 0
        for job_id in ids:
            job = http.get(f"/v1/jobs/{job_id}").json()
            now = time.time()
            if job["status"] != "queued":
                continue
            if job["estimated_start_at"] is None:
                unknown += 1
                continue
            read[job_id] = (now, _seconds(job["estimated_start_at"]), job["queue_position"])
        _drain(http)
        samples = []
        for job_id, (at, estimated, position) in read.items():
            started = http.get(f"/v1/jobs/{job_id}").json()["started_at"]
            samples.append((at, estimated, _seconds(started), position))
    return {"samples": samples, "not_queued": len(ids) - len(read) - unknown, "unknown": unknown}


def run(args: argparse.Namespace) -> Result:
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        stack = processes.stack(sim_url, WORKER_MAX_JOBS=args.eta_slots)
        measured = measure(stack.api_url, args.eta_jobs, args.eta_warmup)
    samples = measured["samples"]
    if not samples:
        raise RuntimeError("no queued job had an estimate")
    errors = [abs(estimated - started) / max(started - at, 1e-3) for at, estimated, started, _ in samples]
    signed = [(started - estimated) / max(started - at, 1e-3) for at, estimated, started, _ in samples]
    waits = [started - at for at, _, started, _ in samples]
    median_error = statistics.median(errors)
    figures = [
        Figure(
            "ETA error, median |estimated - started| / wait",
            "ratio",
            median_error,
            target=f"<= {TARGET}",
            met=median_error <= TARGET,
        ),
        Figure("ETA error, 90th percentile", "ratio", percentile(errors, 90)),
        Figure("ETA lateness, median (started - estimated) / wait", "ratio", statistics.median(signed)),
    ]
    details = {
        "queued_with_estimate": len(samples),
        "started_before_read": measured["not_queued"],
        "without_estimate": measured["unknown"],
        "wait_s": {"p50": round(statistics.median(waits), 2), "max": round(max(waits), 2)},
        "by_position": _by_position(samples),
    }
    options = {"jobs": args.eta_jobs, "warmup": args.eta_warmup, "slots": args.eta_slots, "sim": SIM}
    return Result(NAME, figures, options, details)


def _by_position(samples: list[tuple[float, float, float, int]]) -> dict[str, float]:
    """The median error of the jobs in each tenth of the queue, nearest the head first."""
    ordered = sorted(samples, key=lambda sample: sample[3])
    tenth = max(1, len(ordered) // 10)
    medians = {}
    for start in range(0, len(ordered), tenth):
        chunk = ordered[start : start + tenth]
        errors = [abs(estimated - started) / max(started - at, 1e-3) for at, estimated, started, _ in chunk]
        medians[f"{chunk[0][3]}-{chunk[-1][3]}"] = round(statistics.median(errors), 3)
    return medians
