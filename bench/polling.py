"""Polling: `GET /v1/jobs/{id}` against `GET /health` of the same uvicorn process; Redis commands per read.

--poll-jobs finished jobs (simulator without delays, max_tokens 100: answers of ~500 bytes) are made
first, then the worker is stopped, so that only the API and Redis run. The load generator
(bench/loadgen.py, a separate process, 32 keep-alive connections, closed loop) alternates GET /health and
GET /v1/jobs/{id} (cycling through the ids) for --poll-rounds rounds of --poll-seconds; reported: the round
whose ratio is the median, with the CPU of the API, Redis and the generator. Commands per read: the INFO
total_commands_processed delta over one more run of each load divided by the requests it sent (our own
INFO subtracted), and a MONITOR count over --poll-monitored sequential reads, by connection name and
command (MONITOR slows Redis: not during the load). With wrk installed, the two loads are also run with
wrk.

Informative: the same with rate limiting on (RATE_LIMIT set very high, so that nothing is refused, as
in staging and prod where it is on by default), on a second API process; GET /health is not limited.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import orjson
import uvloop

from bench import loadgen
from bench.commands import CommandMeter
from bench.common import (
    AUTH,
    CpuMeter,
    Figure,
    Processes,
    Result,
    bench_redis,
    command_calls,
    model_load,
    own_command_overhead,
    poll,
)
from bench.http import Connection
from bench.loadgen import Load
from bench.submission import add_compare_arguments, compare, job_body

NAME = "polling"
SIM = {"prefill_ms": 0, "ms_per_token": 0}
RATIO_TARGET = 0.7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    add_compare_arguments(group, "poll", "GET")
    group.add_argument("--poll-jobs", type=int, default=500, help="finished jobs read in turn (500)")
    group.add_argument("--poll-monitored", type=int, default=500, help="sequential reads counted by MONITOR (500)")
    group.add_argument("--poll-no-rate-limit", action="store_true", help="skip the run with RATE_LIMIT on")


def make_jobs(api_url: str, count: int, max_tokens: int = 100) -> list[str]:
    """`count` jobs submitted in arrays and run to their end; their ids."""
    ids: list[str] = []
    with httpx.Client(base_url=api_url, timeout=60, headers=AUTH) as http:
        for start in range(0, count, 500):
            body = [job_body(index, max_tokens) for index in range(start, min(count, start + 500))]
            response = http.post("/v1/jobs", content=orjson.dumps(body))
            response.raise_for_status()
            ids += [job["id"] for job in response.json()]
        poll(lambda: model_load(http) == (0, 0), 120, "jobs to poll")
        sample = http.get(f"/v1/jobs/{ids[0]}").json()
    if sample["status"] != "succeeded":
        raise RuntimeError(f"job {ids[0]}: {sample['status']}")
    return ids


def with_commands(redis_url: str, measure: Any) -> tuple[dict[str, Any], float]:
    """`measure()` (a load run), and the Redis commands executed per request during it."""
    client = bench_redis(redis_url)
    try:
        own = own_command_overhead(client)
        before, _ = command_calls(client)
        result: dict[str, Any] = measure()
        after, _ = command_calls(client)
    finally:
        client.close()
    # The load's warm-up and the requests after the window are counted too: divide by all requests sent.
    return result, (after - before - own) / max(1, result["sent"])


async def sequential_reads(api_url: str, ids: list[str], count: int) -> None:
    connection = Connection.to(api_url, AUTH)
    try:
        for index in range(count):
            await connection.request("GET", f"/v1/jobs/{ids[index % len(ids)]}")
    finally:
        await connection.close()


def run(args: argparse.Namespace) -> Result:
    connections, seconds = args.poll_connections, args.poll_seconds
    details: dict[str, Any] = {}
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        with Processes(NAME) as stack_processes:
            stack = stack_processes.stack(sim_url)
            ids = make_jobs(stack.api_url, args.poll_jobs)
            stack.worker.stop()
            processes.close()  # the simulator too: only the API and Redis run from here
            details["answer_bytes"] = len(httpx.get(f"{stack.api_url}/v1/jobs/{ids[0]}", headers=AUTH).content)
            meter = {"api": stack.api, "redis": stack_processes.services[0]}
            health = Load("GET", ["/health"], AUTH)
            reads = Load("GET", [f"/v1/jobs/{job_id}" for job_id in ids], AUTH)
            try:
                load = compare(stack.api_url, health, reads, meter, connections, seconds, args.poll_rounds, wrk=False)
                # One more of each with the Redis commands counted (INFO), then wrk.
                counted = {}
                for kind, what in (("health", health), ("read", reads)):
                    result, per_request = with_commands(
                        stack.redis_url,
                        lambda what=what: loadgen.run(stack.api_url, what, CpuMeter(meter), connections, seconds, 1.0),
                    )
                    counted[kind] = {"rps": result["rps"], "commands_per_request": round(per_request, 3)}
                details["commands_during_load"] = counted
                wrk_baseline = loadgen.run_wrk(stack.api_url, health, CpuMeter(meter), connections, seconds)
                if wrk_baseline is not None:
                    wrk_reads = loadgen.run_wrk(stack.api_url, reads, CpuMeter(meter), connections, seconds)
                    load["wrk"] = {"baseline": wrk_baseline, "measured": wrk_reads}
                # MONITOR: which commands, from which connection, per read (after the requests wrk left in flight).
                time.sleep(1)
                commands = CommandMeter(stack.redis_url)
                commands.start()
                uvloop.run(sequential_reads(stack.api_url, ids, args.poll_monitored))
                details["monitor"] = commands.stop(args.poll_monitored)
                if not args.poll_no_rate_limit:
                    limited_env = {**stack.env, "RATE_LIMIT": "1000000000", "RATE_LIMIT_BURST": "1000000000"}
                    limited_url = stack_processes.api(limited_env)
                    meter = {"api": stack_processes.services[-1], "redis": stack_processes.services[0]}
                    details["rate_limited"] = compare(
                        limited_url, health, reads, meter, connections, seconds, 1, wrk=False
                    )
            finally:
                health.close()
                reads.close()
    details["load"] = load
    health_rps, read_rps = load["baseline_rps"], load["measured_rps"]
    monitor = details["monitor"]
    figures = [
        Figure("GET /health (baseline)", "req/s", health_rps),
        Figure(
            "GET /v1/jobs/{id}",
            "req/s",
            read_rps,
            health_rps,
            "health",
            f"ratio >= {RATIO_TARGET}",
            read_rps / health_rps >= RATIO_TARGET,
        ),
    ]
    if "wrk" in load:
        wrk_health, wrk_read = load["wrk"]["baseline"]["rps"], load["wrk"]["measured"]["rps"]
        figures.append(
            Figure(
                "GET /v1/jobs/{id} (wrk)",
                "req/s",
                wrk_read,
                wrk_health,
                "health, wrk",
                f"ratio >= {RATIO_TARGET}",
                wrk_read / wrk_health >= RATIO_TARGET,
            )
        )
    figures += [
        Figure(
            "Redis commands sent per read (MONITOR)",
            "cmd",
            monitor["sent_per_job"],
            target="== 1",
            met=round(monitor["sent_per_job"], 2) == 1,
        ),
        Figure(
            "Redis commands executed per read, under load (INFO)",
            "cmd",
            counted["read"]["commands_per_request"],
            counted["health"]["commands_per_request"],
            "per health request",
            "== 1",
            round(counted["read"]["commands_per_request"], 2) == 1,
        ),
    ]
    if "rate_limited" in details:
        limited = details["rate_limited"]
        figures.append(
            Figure(
                "GET /v1/jobs/{id}, RATE_LIMIT on (informative)",
                "req/s",
                limited["measured_rps"],
                limited["baseline_rps"],
                "health, same process",
            )
        )
    options = {
        "seconds": seconds,
        "rounds": args.poll_rounds,
        "connections": connections,
        "jobs": args.poll_jobs,
        "monitored": args.poll_monitored,
        "sim": SIM,
    }
    return Result(NAME, figures, options, details)
