"""Latency of one job at a time, and the Redis traffic of an idle worker.

Latency: a simulator without delays (--prefill-ms 0 --ms-per-token 0), max_tokens=5, one job at a
time: POST /v1/jobs, then follow GET /v1/jobs/{id}/events until its `done` event. Two figures:
- server: finished_at - created_at of the job record (ms resolution);
- client: POST sent -> `done` event received.
Baseline: a direct non-streaming request to the simulator, interleaved with the jobs (one direct
request, then one job) so that both see the same machine noise.

Idle traffic: a dedicated redis-server with only one worker connected, no jobs; commands per second
from INFO total_commands_processed (which counts commands run inside Lua scripts too), minus our
own INFO calls. Baseline: an idle arq worker with arq's defaults (poll_delay 0.5 s), measured the same way.

With --backend (another OpenAI-compatible server, e.g. real vLLM) the jobs and the direct requests go to
that server, with its model name and key. Its generation time is then part of every figure, so the ms
targets (set for the delay-free simulator) are not applied: compare with the direct p50 instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

import orjson
import uvloop

from bench.arq_defaults import completion_body
from bench.common import (
    AUTH,
    Figure,
    ModelServer,
    Processes,
    Result,
    bench_redis,
    command_calls,
    model_server,
    own_command_overhead,
    percentile,
    poll,
    stack_env,
    sync,
    wait_worker,
)
from bench.http import Connection

NAME = "latency"
SIM = {"prefill_ms": 0, "ms_per_token": 0}
P50_TARGET_MS, P99_TARGET_MS, IDLE_TARGET = 10.0, 30.0, 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--latency-jobs", type=int, default=200, help="jobs measured, one at a time (200)")
    group.add_argument("--warmup", type=int, default=20, help="jobs run before measuring (20)")
    group.add_argument("--latency-max-tokens", type=int, default=5, help="max_tokens of each job (5)")
    group.add_argument("--idle-seconds", type=float, default=10.0, help="idle traffic window (10 s; 0 skips)")


def _timestamp(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


async def measure(
    api_url: str,
    sim_url: str,
    count: int,
    warmup: int,
    max_tokens: int,
    stamps: list[tuple[float, float]] | None = None,
    server: ModelServer | None = None,
) -> dict[str, list[float]]:
    """Latency samples in ms: `direct`, `client`, `server`, `pickup` and `run`, one per measured job.

    `stamps`, when given, receives the wall-clock times (POST sent, `done` received) of each measured job.
    `server` names the model and key of `sim_url` when it is not our simulator.
    """
    server = server or ModelServer()
    api, sim = Connection.to(api_url, AUTH), Connection.to(sim_url, server.headers)
    samples: dict[str, list[float]] = {"direct": [], "client": [], "server": [], "pickup": [], "run": []}
    try:
        for index in range(warmup + count):
            prompt = f"Question {index} : combien de départements compte la France ?"
            body = completion_body(prompt, max_tokens, stream=False, model=server.model)
            began = time.perf_counter()
            await sim.request("POST", "/v1/completions", body)
            direct = time.perf_counter() - began

            job = orjson.dumps({"prompt": prompt, "params": {"max_tokens": max_tokens}})
            wall = time.time()
            began = time.perf_counter()
            submitted = orjson.loads((await api.request("POST", "/v1/jobs", job)).body)
            done_at = 0.0
            events = b""
            async for piece in api.stream("GET", f"/v1/jobs/{submitted['id']}/events"):
                events += piece
                if not done_at and b"event: done" in events:
                    done_at = time.perf_counter()
            if not done_at:
                raise RuntimeError(f"job {submitted['id']}: the event stream ended without `done`")
            final = orjson.loads(events.split(b"event: done", 1)[1].split(b"data: ", 1)[1].split(b"\n", 1)[0])
            if final["status"] != "succeeded":
                raise RuntimeError(f"job {submitted['id']} ended {final['status']}: {final.get('error')}")
            if index >= warmup:
                if stamps is not None:
                    stamps.append((wall, wall + done_at - began))
                samples["direct"].append(1000 * direct)
                samples["client"].append(1000 * (done_at - began))
                created, started = _timestamp(final["created_at"]), _timestamp(final["started_at"])
                finished = _timestamp(final["finished_at"])
                samples["server"].append(1000 * (finished - created))
                samples["pickup"].append(1000 * (started - created))
                samples["run"].append(1000 * (finished - started))
    finally:
        await api.close()
        await sim.close()
    return samples


def _idle_rate(processes: Processes, start: Any, seconds: float) -> dict[str, Any]:
    """Commands per second on a dedicated Redis to which only what `start(redis_url)` starts is connected."""
    redis_url = processes.redis()
    client = bench_redis(redis_url)
    try:
        own = own_command_overhead(client)  # before anything else is connected
        start(redis_url)
        time.sleep(2.0)  # past start-up
        ours = client.client_id()
        clients: list[dict[str, Any]] = sync(client.client_list())
        connections = [c for c in clients if int(c["id"]) != ours]
        before, calls_before = command_calls(client)
        began = time.monotonic()
        time.sleep(seconds)
        after, calls_after = command_calls(client)
        elapsed = time.monotonic() - began
    finally:
        client.close()
    per_command = {
        name: round((calls_after[name] - calls_before.get(name, 0)) / elapsed, 2)
        for name in sorted(calls_after, key=lambda name: calls_before.get(name, 0) - calls_after[name])
        if name != "info" and calls_after[name] > calls_before.get(name, 0)
    }
    names: dict[str, int] = {}
    for connection in connections:
        label = connection["name"] or "(no name: arq's pool)"
        names[label] = names.get(label, 0) + 1
    return {
        "commands_per_s": (after - before - own) / elapsed,
        "seconds": round(elapsed, 2),
        "own_commands_subtracted": own,
        "per_command_per_s": per_command,
        "connections": names,
        "last_commands": sorted({str(c["cmd"]) for c in connections}),
    }


def run(args: argparse.Namespace) -> Result:
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    server = model_server(args)
    if server.external:
        details["model server"] = server.describe()
        details["skipped"] = ["the ms targets (set for the delay-free simulator): compare with direct p50"]
    with Processes(NAME) as processes:
        sim_url = processes.model_server(server, **SIM)
        with Processes(NAME) as stack_processes:
            stack = stack_processes.stack(sim_url, model=server.model, api_key=server.api_key)
            samples = uvloop.run(
                measure(stack.api_url, sim_url, args.latency_jobs, args.warmup, args.latency_max_tokens, server=server)
            )
        direct_p50, direct_p99 = percentile(samples["direct"], 50), percentile(samples["direct"], 99)
        details["direct_ms"] = {"p50": round(direct_p50, 2), "p99": round(direct_p99, 2)}
        for kind in ("server", "client"):
            p50, p99 = percentile(samples[kind], 50), percentile(samples[kind], 99)
            details[f"{kind}_ms"] = {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(max(samples[kind]), 2)}
            p50_target, p99_target = ("", "") if server.external else ("<= 10 ms", "<= 30 ms")
            p50_met, p99_met = (None, None) if server.external else (p50 <= P50_TARGET_MS, p99 <= P99_TARGET_MS)
            figures.append(
                Figure(f"{kind} p50 submit->succeeded", "ms", p50, direct_p50, "direct p50", p50_target, p50_met)
            )
            figures.append(
                Figure(f"{kind} p99 submit->succeeded", "ms", p99, direct_p50, "direct p50", p99_target, p99_met)
            )
        for stage in ("pickup", "run"):  # created -> started (queue and worker wake-up), started -> finished
            details[f"{stage}_ms"] = {q: round(percentile(samples[stage], float(q[1:])), 2) for q in ("p50", "p99")}
        if args.idle_seconds > 0:

            def start_worker(redis_url: str) -> None:
                env = stack_env(redis_url, sim_url, server.model, server.api_key)
                wait_worker(redis_url, processes.worker(env, server.model), model=server.model)

            def start_arq(redis_url: str) -> None:
                env = {"BENCH_REDIS_URL": redis_url, "BENCH_SIM_URL": sim_url}
                service = processes.python("arq-worker", ["bench.arq_defaults"], env=env)
                client = bench_redis(redis_url)
                try:
                    poll(lambda: bool(client.exists("arq:queue:health-check")), 30, "arq worker started", 0.1)
                finally:
                    client.close()
                assert service.alive()

            ours = _idle_rate(processes, start_worker, args.idle_seconds)
            arq = _idle_rate(processes, start_arq, args.idle_seconds)
            details["idle_worker"], details["idle_arq_defaults"] = ours, arq
            rate = ours["commands_per_s"]
            figures.append(
                Figure(
                    "idle worker Redis traffic",
                    "cmd/s",
                    rate,
                    arq["commands_per_s"],
                    "arq defaults idle",
                    "<= 20 cmd/s",
                    rate <= IDLE_TARGET,
                )
            )
    options = {
        "jobs": args.latency_jobs,
        "warmup": args.warmup,
        "max_tokens": args.latency_max_tokens,
        "idle_seconds": args.idle_seconds,
    }
    options |= {"backend": server.describe()} if server.external else {"sim": SIM}
    return Result(NAME, figures, options, details)
