"""Submission: `POST /v1/jobs` against `GET /health` of the same uvicorn process, then arrays of 1,000 jobs.

One API process (`python -m api`), our own Redis, no worker: every job stays queued (MAX_QUEUE_DEPTH
raised so that none is refused). The load generator (bench/loadgen.py, a separate process, 32 keep-alive
connections, closed loop like wrk) alternates GET /health and POST /v1/jobs (one job, a ~300-byte
question, a new job each time) for --submit-rounds rounds of --submit-seconds each (after 1 s of warm-up
each); reported: the round whose ratio is the median.
CPU of the API, Redis and the generator are measured during each window: the API at ~100 % of a core and
the generator well below shows that the server, not the client, sets the pace. With wrk installed, the
same two loads are also run with wrk (1 thread) as a cross-check.

Arrays: --arrays POSTs of --array-jobs jobs each, one at a time, against a second API process started
with bench/timed_api.py (`python -m api` plus a Server-Timing header: the time inside the application).
Reported: that server time, the time seen by the client on loopback (an upper bound), the API's CPU time
for the request (/proc schedstat of its main thread) and the submit script's own time in Redis (SLOWLOG).
Baseline: the same number of jobs submitted one per request at the POST rate measured above.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import loadgen
from bench.common import (
    API_KEY,
    AUTH,
    CpuMeter,
    Figure,
    Processes,
    Result,
    bench_redis,
    percentile,
    stack_env,
    sync,
)
from bench.loadgen import Load
from stack.processes import Service, free_port, http_ok, wait_until

NAME = "submission"
NO_MODEL_SERVER = "http://127.0.0.1:9"  # no worker runs: the model server is never called
QUESTION = (
    "Bonjour, j'ai fait ma demande de carte grise il y a trois semaines sur le site de l'ANTS et je n'ai "
    "toujours rien reçu. Le suivi indique « en cours d'instruction ». Que dois-je faire ? Question n°{}"
)
RATIO_TARGET, ARRAY_TARGET_MS = 0.5, 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    add_compare_arguments(group, "submit", "POST")
    group.add_argument("--array-jobs", type=int, default=1000, help="jobs per array (1000: MAX_JOBS_PER_REQUEST)")
    group.add_argument("--arrays", type=int, default=20, help="arrays measured, after 3 of warm-up (20)")
    group.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check even if wrk is installed")


def job_body(index: int, max_tokens: int = 20) -> dict[str, Any]:
    return {"prompt": QUESTION.format(index), "params": {"max_tokens": max_tokens}}


def api_env(redis_url: str, **settings: str | int) -> dict[str, str]:
    """The API's environment when no worker runs: nothing is refused for a full queue."""
    return stack_env(redis_url, NO_MODEL_SERVER, MAX_QUEUE_DEPTH=10**9, **settings)


def add_compare_arguments(group: argparse._ArgumentGroup, prefix: str, measured: str) -> None:
    """--<prefix>-seconds, -rounds and -connections: the options of `compare`, the same for every benchmark."""
    group.add_argument(f"--{prefix}-seconds", type=float, default=3.0, help="seconds measured per load (3)")
    group.add_argument(
        f"--{prefix}-rounds",
        type=int,
        default=7,
        help=f"health/{measured} rounds, the median ratio reported (7: this machine's speed drifts within seconds)",
    )
    group.add_argument(f"--{prefix}-connections", type=int, default=32, help="connections of the generator (32)")


def compare(
    api_url: str,
    baseline: Load,
    measured: Load,
    meter: dict[str, Service],
    connections: int,
    seconds: float,
    rounds: int,
    *,
    wrk: bool,
) -> dict[str, Any]:
    """Alternate the two loads for `rounds` rounds (then once each with wrk); the rounds, and the rates of the
    round whose ratio is the median (the lower middle one for an even number of rounds)."""
    runs: list[dict[str, Any]] = []
    for number in range(rounds):
        pair = {}
        for kind, load in (("baseline", baseline), ("measured", measured)):
            pair[kind] = loadgen.run(api_url, load, CpuMeter(meter), connections, seconds, 1.0)
            if pair[kind]["ok"] != pair[kind]["requests"]:
                raise RuntimeError(f"{load.method} {load.paths[0]}: statuses {pair[kind]['statuses']}")
        print(
            f"  round {number + 1}: {baseline.method} {baseline.paths[0]} {pair['baseline']['rps']:.0f} req/s, "
            f"{measured.method} {measured.paths[0][:40]} {pair['measured']['rps']:.0f} req/s; "
            f"CPU % (baseline / measured): "
            + ", ".join(
                f"{name} {pair['baseline']['cpu_pct'][name]}/{pair['measured']['cpu_pct'][name]}" for name in meter
            )
            + f", generator {pair['baseline']['client_cpu_pct']}/{pair['measured']['client_cpu_pct']}",
            flush=True,
        )
        runs.append(pair)
    # The round of the median ratio: its two rates come from the same minute of this noisy machine.
    ratios = [run["measured"]["rps"] / run["baseline"]["rps"] for run in runs]
    middle = runs[ratios.index(sorted(ratios)[(len(ratios) - 1) // 2])]
    result: dict[str, Any] = {
        "rounds": runs,
        "ratios": [round(ratio, 3) for ratio in ratios],
        "baseline_rps": middle["baseline"]["rps"],
        "measured_rps": middle["measured"]["rps"],
    }
    if wrk:
        wrk_baseline = loadgen.run_wrk(api_url, baseline, CpuMeter(meter), connections, seconds)
        if wrk_baseline is not None:
            wrk_measured = loadgen.run_wrk(api_url, measured, CpuMeter(meter), connections, seconds)
            assert wrk_measured is not None
            result["wrk"] = {"baseline": wrk_baseline, "measured": wrk_measured}
            print(f"  wrk: {wrk_baseline['rps']:.0f} / {wrk_measured['rps']:.0f} req/s", flush=True)
    return result


# ---- arrays --------------------------------------------------------------------------------------


def schedstat_ms(pid: int) -> float:
    """CPU time of the process's main thread so far, in ms (nanosecond resolution, unlike /proc/<pid>/stat)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e6


async def post_timed(url: str, path: str, body: bytes) -> tuple[float, float, int, int]:
    """POST on a new connection: (client ms, server ms from Server-Timing, status, answer bytes)."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        began = time.perf_counter()
        writer.write(head.encode() + body)
        raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = re.search(r"\r\ncontent-length: *(\d+)", raw)
        answer = await reader.readexactly(int(length.group(1)) if length else 0)
        client_ms = 1000 * (time.perf_counter() - began)
        timing = re.search(r"\r\nserver-timing: *app;dur=([\d.]+)", raw)
        if timing is None:
            raise RuntimeError(f"no Server-Timing header: {raw[:300]!r}")
        return client_ms, float(timing.group(1)), int(raw[9:12]), len(answer)
    finally:
        writer.close()
        await writer.wait_closed()


def arrays(processes: Processes, redis_url: str, jobs: int, count: int, warmup: int = 3) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = processes.python("timed-api", ["bench.timed_api"], {**api_env(redis_url), "API_PORT": str(port)})
    wait_until(lambda: http_ok(f"{url}/health"), 30, "timed API", service.process)
    redis = bench_redis(redis_url)
    samples: dict[str, list[float]] = {"server_ms": [], "client_ms": [], "cpu_ms": [], "redis_script_ms": []}
    sizes: tuple[int, int] = (0, 0)
    try:
        redis.config_set("slowlog-log-slower-than", 0)
        redis.config_set("slowlog-max-len", 1024)
        for number in range(warmup + count):
            body = orjson.dumps([job_body(number * jobs + index) for index in range(jobs)])
            redis.slowlog_reset()
            cpu = schedstat_ms(service.pid)
            client_ms, server_ms, status, answer = uvloop.run(post_timed(url, "/v1/jobs", body))
            cpu = schedstat_ms(service.pid) - cpu
            if status != 202:
                raise RuntimeError(f"array of {jobs} jobs: HTTP {status}")
            entries: list[dict[str, Any]] = sync(redis.slowlog_get(1024))
            commands = [(e["command"], e["duration"]) for e in entries]  # the command is bytes, whatever decoding
            script_us = [us for command, us in commands if bytes(command).lower().startswith(b"evalsha")]
            if number >= warmup:
                samples["server_ms"].append(server_ms)
                samples["client_ms"].append(client_ms)
                samples["cpu_ms"].append(cpu)
                samples["redis_script_ms"].append(sum(script_us) / 1000)
                sizes = (len(body), answer)
        redis.config_set("slowlog-log-slower-than", 10_000)
    finally:
        redis.close()
        service.stop()
    result: dict[str, Any] = {
        name: {"p50": round(percentile(values, 50), 2), "p90": round(percentile(values, 90), 2), "max": max(values)}
        for name, values in samples.items()
    }
    result["request_bytes"], result["answer_bytes"] = sizes
    return result


# ---- the benchmark -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    connections, seconds = args.submit_connections, args.submit_seconds
    health = Load("GET", ["/health"], AUTH)
    post = Load("POST", ["/v1/jobs"], AUTH, orjson.dumps(job_body(0)))
    try:
        with Processes(NAME) as processes:
            redis_url = processes.redis()
            redis_service = processes.services[-1]
            api_url = processes.api(api_env(redis_url))
            meter = {"api": processes.services[-1], "redis": redis_service}
            load = compare(api_url, health, post, meter, connections, seconds, args.submit_rounds, wrk=not args.no_wrk)
            array = arrays(processes, redis_url, args.array_jobs, args.arrays)
    finally:
        health.close()
        post.close()
    health_rps, post_rps = load["baseline_rps"], load["measured_rps"]
    singles_ms = 1000 * args.array_jobs / post_rps
    server_ms, client_ms = array["server_ms"]["p50"], array["client_ms"]["p50"]
    figures = [
        Figure("GET /health (baseline)", "req/s", health_rps),
        Figure(
            "POST /v1/jobs, one job",
            "req/s",
            post_rps,
            health_rps,
            "health",
            f"ratio >= {RATIO_TARGET}",
            post_rps / health_rps >= RATIO_TARGET,
        ),
    ]
    if "wrk" in load:
        wrk_health, wrk_post = load["wrk"]["baseline"]["rps"], load["wrk"]["measured"]["rps"]
        figures += [
            Figure(
                "POST /v1/jobs, one job (wrk)",
                "req/s",
                wrk_post,
                wrk_health,
                "health, wrk",
                f"ratio >= {RATIO_TARGET}",
                wrk_post / wrk_health >= RATIO_TARGET,
            )
        ]
    figures += [
        Figure(
            f"array of {args.array_jobs}: server time p50",
            "ms",
            server_ms,
            singles_ms,
            f"{args.array_jobs} single POSTs",
            f"<= {ARRAY_TARGET_MS:g} ms",
            server_ms <= ARRAY_TARGET_MS,
        ),
        Figure(
            f"array of {args.array_jobs}: client time p50 (upper bound)",
            "ms",
            client_ms,
            singles_ms,
            f"{args.array_jobs} single POSTs",
            f"<= {ARRAY_TARGET_MS:g} ms",
            client_ms <= ARRAY_TARGET_MS,
        ),
    ]
    options = {
        "seconds": seconds,
        "rounds": args.submit_rounds,
        "connections": connections,
        "array_jobs": args.array_jobs,
        "arrays": args.arrays,
        "post_body_bytes": len(post.body or b""),
    }
    return Result(NAME, figures, options, {"load": load, "arrays": array})
