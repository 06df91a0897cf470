"""Throughput: jobs through API, Redis and one worker, against a direct client of the same simulator.

Simulator: --max-num-seqs 64 --prefill-ms 200 --ms-per-token 20, max_tokens=20 per job, so one
request lasts ~0.58 s and the simulator's ceiling is 64 / 0.58 ~ 110 req/s. 2,000 jobs (--jobs) as the
issue asks: ~19 s per side.
- direct (baseline): 64 concurrent streaming requests to /v1/completions, the same prompts;
- pipeline: the jobs submitted as arrays, throughput = jobs / (first submit -> last finished_at);
- arq defaults and the old pub/sub design, on fewer jobs, for the distance travelled.
Direct and pipeline alternate for --rounds rounds; the medians are reported.

With --backend (another OpenAI-compatible server, e.g. real vLLM) everything runs against that server
instead, with its model name and key; only the model server's CPU is not measured (not our process).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import orjson
import uvloop

from bench import arq_defaults, old_design
from bench.common import (
    AUTH,
    CpuMeter,
    Figure,
    ModelServer,
    Processes,
    Result,
    Stack,
    median,
    model_load,
    model_server,
    poll,
)
from bench.http import Connection

NAME = "throughput"
SIM = {"max_num_seqs": 64, "prefill_ms": 200, "ms_per_token": 20}
REFERENCE = {"direct": 92.0, "old design": 1.7, "arq defaults": 10.0}  # req/s, from the issue, same machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--jobs", type=int, default=2000, help="jobs of the pipeline and of the direct client (2000)")
    group.add_argument("--chunk", type=int, default=100, help="jobs per POST /v1/jobs (100)")
    group.add_argument("--concurrency", type=int, default=64, help="requests in flight of the direct client (64)")
    group.add_argument("--max-tokens", type=int, default=20, help="max_tokens of each job (20)")
    group.add_argument("--rounds", type=int, default=1, help="direct/pipeline rounds, medians reported (1)")
    group.add_argument("--arq-jobs", type=int, default=200, help="jobs for arq defaults (200; 0 skips)")
    group.add_argument("--old-jobs", type=int, default=60, help="jobs for the old pub/sub design (60; 0 skips)")


def prompts(count: int) -> list[str]:
    return [
        f"Question {index} : quelle est la capitale administrative de la région numéro {index} ?"
        for index in range(count)
    ]


# ---- baseline: a direct client of the simulator --------------------------------------------------


async def direct(
    sim_url: str, texts: list[str], concurrency: int, max_tokens: int, server: ModelServer | None = None
) -> dict[str, Any]:
    """`concurrency` keep-alive connections streaming completions until every prompt is answered."""
    server = server or ModelServer()
    bodies = [arq_defaults.completion_body(text, max_tokens, stream=True, model=server.model) for text in texts]
    pending = iter(bodies)
    incomplete = 0

    async def client() -> None:
        nonlocal incomplete
        connection = Connection.to(sim_url, server.headers)
        try:
            for body in pending:  # shared: each body is taken by exactly one client
                tail = b""
                async for piece in connection.stream("POST", "/v1/completions", body):
                    tail = piece
                if not tail.endswith(b"data: [DONE]\n\n"):
                    incomplete += 1
        finally:
            await connection.close()

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(bodies)))))
    seconds = time.perf_counter() - began
    return {
        "jobs": len(bodies),
        "incomplete": incomplete,
        "seconds": seconds,
        "req_s": len(bodies) / seconds,
        "client_cpu_pct": round(100 * (time.process_time() - cpu) / seconds, 1),
    }


# ---- the pipeline: API, Redis, worker ------------------------------------------------------------


def _ms(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


async def fetch_jobs(api_url: str, ids: list[str], concurrency: int = 8) -> list[dict[str, Any]]:
    """GET every job, `concurrency` at a time."""
    pending = iter(ids)
    jobs: list[dict[str, Any]] = []

    async def fetch() -> None:
        connection = Connection.to(api_url, AUTH)
        try:
            for job_id in pending:
                jobs.append(orjson.loads((await connection.request("GET", f"/v1/jobs/{job_id}")).body))
        finally:
            await connection.close()

    await asyncio.gather(*(fetch() for _ in range(concurrency)))
    return jobs


def pipeline(
    stack: Stack, texts: list[str], chunk: int, max_tokens: int, meter: CpuMeter | None = None, within: float = 300
) -> dict[str, Any]:
    """Submit the jobs as arrays, watch /v1/models until nothing is queued or running, then read every job.

    `meter`, when given, is stopped once the jobs are done, before they are read.
    """
    with httpx.Client(base_url=stack.api_url, timeout=60, headers=AUTH) as http:
        ids: list[str] = []
        began = time.time()
        for start in range(0, len(texts), chunk):
            body = [{"prompt": text, "params": {"max_tokens": max_tokens}} for text in texts[start : start + chunk]]
            response = http.post("/v1/jobs", content=orjson.dumps(body), headers={"Content-Type": "application/json"})
            response.raise_for_status()
            ids += [job["id"] for job in response.json()]
        submitted = time.time()
        poll(lambda: model_load(http) == (0, 0), within, "pipeline jobs")
        seen = time.time()
        cpu = meter.stop() if meter is not None else {}
        cpu_ms = {name: round(1000 * used / len(ids), 2) for name, used in (meter.seconds if meter else {}).items()}
    jobs = uvloop.run(fetch_jobs(stack.api_url, ids))
    finished = [_ms(job["finished_at"]) for job in jobs if job["finished_at"]]
    last = max(finished)
    return {
        "jobs": len(ids),
        "succeeded": sum(1 for job in jobs if job["status"] == "succeeded"),
        "submit_s": submitted - began,
        "seconds": last - began,
        "seen_done_s": seen - began,
        "req_s": len(ids) / (last - began),
        "cpu_pct": cpu,
        "cpu_ms_per_job": cpu_ms,
    }


# ---- the benchmark -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    server = model_server(args)

    def reference(name: str) -> str:
        """The issue's figure, measured against the simulator: no reference for another server."""
        return "" if server.external else f"issue: {REFERENCE[name]:g}"

    texts = prompts(args.jobs)
    rounds: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    if server.external:
        details["model server"] = server.describe()
        details["skipped"] = ["the model server's CPU (not a process of ours)", "the issue's reference figures"]
    with Processes(NAME) as processes:
        sim_url = processes.model_server(server, **SIM)
        with Processes(NAME) as stack_processes:
            stack = stack_processes.stack(sim_url, model=server.model, api_key=server.api_key)
            # Warm-up: connections, lazy imports, Lua scripts loaded.
            uvloop.run(direct(sim_url, prompts(args.concurrency), args.concurrency, args.max_tokens, server))
            pipeline(stack, prompts(args.concurrency), args.chunk, args.max_tokens)
            services = {"worker": stack.worker, "api": stack.api, "redis": stack_processes.services[0]}
            if not server.external:
                services = {"sim": processes.services[0], **services}
            for number in range(args.rounds):
                meter = CpuMeter(services)
                meter.start()
                direct_run = uvloop.run(direct(sim_url, texts, args.concurrency, args.max_tokens, server))
                direct_run["cpu_pct"] = meter.stop()
                direct_run["cpu_ms_per_job"] = {k: round(1000 * v / len(texts), 2) for k, v in meter.seconds.items()}
                meter.start()
                pipeline_run = pipeline(stack, texts, args.chunk, args.max_tokens, meter)
                rounds.append({"round": number + 1, "direct": direct_run, "pipeline": pipeline_run})
                print(
                    f"  round {number + 1}: direct {direct_run['req_s']:.1f} req/s, "
                    f"pipeline {pipeline_run['req_s']:.1f} req/s "
                    f"({pipeline_run['succeeded']}/{pipeline_run['jobs']} succeeded); "
                    f"CPU % of a core during the pipeline: {pipeline_run['cpu_pct']}",
                    flush=True,
                )
        details["rounds"] = rounds
        details["pipeline_cpu_ms_per_job"] = {
            name: median([r["pipeline"]["cpu_ms_per_job"][name] for r in rounds]) for name in services
        }
        direct_rate = median([r["direct"]["req_s"] for r in rounds])
        pipeline_rate = median([r["pipeline"]["req_s"] for r in rounds])
        figures = [
            Figure("direct client (baseline)", "req/s", direct_rate, reference=reference("direct")),
            Figure(
                "pipeline API+Redis+worker",
                "req/s",
                pipeline_rate,
                direct_rate,
                "direct",
                "ratio >= 0.95",
                pipeline_rate / direct_rate >= 0.95,
            ),
        ]
        if args.arq_jobs or args.old_jobs:
            server_env = {"BENCH_MODEL": server.model} | ({"BENCH_API_KEY": server.api_key} if server.api_key else {})
            with Processes(NAME) as others:
                redis_url = others.redis()
                some = texts[: args.arq_jobs]
                if some:
                    env = {"BENCH_REDIS_URL": redis_url, "BENCH_SIM_URL": sim_url, "LOG_LEVEL": "WARNING"}
                    worker = others.python("arq-worker", ["bench.arq_defaults"], env=env | server_env)
                    arq_run = uvloop.run(arq_defaults.measure(redis_url, some, args.max_tokens))
                    worker.stop()
                    details["arq_defaults"] = arq_run
                    figures.append(
                        Figure(
                            "arq defaults (distance)",
                            "req/s",
                            arq_run["req_s"],
                            direct_rate,
                            "direct",
                            reference=reference("arq defaults"),
                        )
                    )
                some = texts[: args.old_jobs]
                if some:
                    channel = "old:requests"
                    listener = [
                        "bench.old_design",
                        "--redis-url",
                        redis_url,
                        "--sim-url",
                        sim_url,
                        "--channel",
                        channel,
                        "--model",
                        server.model,
                    ]
                    others.python("old-design", listener, env=server_env)
                    old_run = uvloop.run(old_design.measure(redis_url, channel, some, args.max_tokens))
                    details["old_design"] = old_run
                    figures.append(
                        Figure(
                            "old pub/sub design (distance)",
                            "req/s",
                            old_run["req_s"],
                            direct_rate,
                            "direct",
                            reference=reference("old design"),
                        )
                    )
    options = {name: getattr(args, name) for name in ("jobs", "chunk", "concurrency", "max_tokens", "rounds")}
    options |= {"arq_jobs": args.arq_jobs, "old_jobs": args.old_jobs}
    options |= {"backend": server.describe()} if server.external else {"sim": SIM}
    return Result(NAME, figures, options, details)
