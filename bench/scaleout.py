"""Scale out: throughput with 1, 2 and 4 worker processes of one model, against a simulator with room to spare.

Simulator --max-num-seqs 1024, no prefill, 5 ms per token; jobs of max_tokens --scale-max-tokens (20: 0.1 s
each), so that the simulator could run ~10,000 jobs/s and the workers, the API and Redis are what limits.
One stack (Redis, API, a worker), then more workers of the same model; for each count (--workers, default
1 2 4): a warm-up array, then --scale-jobs jobs submitted as arrays of 500, throughput = jobs / (first POST
sent -> last finished_at) as in `throughput`, and the CPU of every process meanwhile (% of one core; the
machine has os.cpu_count() cores) with the machine's busy % and each process's run-queue wait
(bench/sched.py), and the Redis commands executed per job (INFO; the final reads of the jobs included).
Baseline: one worker. Informative: a direct client of the simulator (256 streaming
requests at once, same jobs) shows the simulator's own capacity on this machine.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvloop

from bench.common import MODEL, CpuMeter, Figure, Processes, Result, Stack, command_calls, poll, sync
from bench.sched import SchedMeter
from bench.throughput import direct, pipeline, prompts
from shared import keys
from stack.processes import Service

NAME = "scaleout"
SIM = {"max_num_seqs": 1024, "prefill_ms": 0, "ms_per_token": 5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--scale-jobs", type=int, default=2000, help="jobs per worker count (2000)")
    group.add_argument("--scale-max-tokens", type=int, default=20, help="max_tokens of each job (20)")
    group.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts, ascending (1 2 4)")
    group.add_argument("--scale-direct", type=int, default=256, help="concurrency of the direct client (256; 0 skips)")


class Metered(CpuMeter):
    """CpuMeter, plus the scheduler's figures (bench/sched.py) of the same processes over the same window."""

    def __init__(self, services: dict[str, Service]) -> None:
        super().__init__(services)
        self.sched = SchedMeter({name: service.pid for name, service in services.items()} | {"bench": os.getpid()})
        self.scheduler: dict[str, Any] = {}

    def start(self) -> None:
        super().start()
        self.sched.start()

    def stop(self) -> dict[str, float]:
        percent = super().stop()
        self.scheduler = self.sched.stop()
        return percent


def run(args: argparse.Namespace) -> Result:
    texts = prompts(args.scale_jobs)
    points: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        sim = processes.services[-1]
        if args.scale_direct:
            uvloop.run(direct(sim_url, prompts(256), args.scale_direct, args.scale_max_tokens))  # warm-up
            meter = CpuMeter({"sim": sim})
            meter.start()
            details["direct"] = uvloop.run(direct(sim_url, texts, args.scale_direct, args.scale_max_tokens))
            details["direct"]["cpu_pct"] = meter.stop()
            print(f"  direct client: {details['direct']['req_s']:.0f} req/s, CPU % {details['direct']['cpu_pct']}")
        with Processes(NAME) as stack_processes:
            stack: Stack = stack_processes.stack(sim_url)
            workers = [stack.worker]
            client = stack.redis()
            for count in args.workers:
                while len(workers) < count:
                    workers.append(stack_processes.worker(stack.env))
                registered = lambda count=count: int(sync(client.zcard(keys.workers(MODEL)))) >= count  # noqa: E731
                poll(registered, 30, f"{count} workers")
                pipeline(stack, prompts(500), 500, args.scale_max_tokens)  # warm-up of the new workers
                services = {"api": stack.api, "redis": stack_processes.services[0], "sim": sim}
                services |= {f"worker {index + 1}": worker for index, worker in enumerate(workers)}
                metered = Metered(services)
                total_before, calls_before = command_calls(client)
                metered.start()
                result = pipeline(stack, texts, 500, args.scale_max_tokens, metered)
                total_after, calls_after = command_calls(client)  # the jobs' reads by `pipeline` included
                calls = {name: calls_after[name] - calls_before.get(name, 0) for name in calls_after}
                result["redis_commands_per_job"] = round((total_after - total_before) / len(texts), 1)
                result["redis_top_commands_per_job"] = {
                    name: round(count / len(texts), 2)
                    for name, count in sorted(calls.items(), key=lambda item: -item[1])[:8]
                }
                cpu = result["cpu_pct"]
                result["workers"] = count
                result["workers_cpu_pct"] = round(sum(v for k, v in cpu.items() if k.startswith("worker")), 1)
                result["sched"] = metered.scheduler
                points.append(result)
                print(
                    f"  {count} worker(s): {result['req_s']:.0f} jobs/s ({result['succeeded']}/{result['jobs']} "
                    f"succeeded), {result['redis_commands_per_job']} Redis commands per job; "
                    f"CPU % workers {result['workers_cpu_pct']} {cpu}; machine busy "
                    f"{metered.scheduler['machine_busy_pct']} %, run-queue wait % "
                    f"{metered.scheduler['runqueue_wait_pct']}, other processes {metered.scheduler['others_pct']} %",
                    flush=True,
                )
            client.close()
    base = points[0]["req_s"]
    figures = [
        Figure(
            f"{point['workers']} worker(s)" + (" (baseline)" if index == 0 else ""),
            "jobs/s",
            point["req_s"],
            None if index == 0 else base,
            "" if index == 0 else f"{points[0]['workers']} worker(s)",
            reference=f"workers CPU {point['workers_cpu_pct']:.0f} %, machine busy "
            f"{point['sched']['machine_busy_pct']:.0f} %, others {point['sched']['others_pct']:.0f} %",
        )
        for index, point in enumerate(points)
    ]
    if "direct" in details:
        figures.append(
            Figure(
                "direct client of the simulator (capacity)",
                "req/s",
                details["direct"]["req_s"],
                base,
                f"{points[0]['workers']} worker(s)",
            )
        )
    details["points"] = points
    options = {"jobs": args.scale_jobs, "max_tokens": args.scale_max_tokens, "workers": args.workers, "sim": SIM}
    return Result(NAME, figures, options, details)
