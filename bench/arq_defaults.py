"""The distance to plain arq: a worker with arq's default settings calling the simulator.

`python -m bench.arq_defaults` runs the worker (settings from BENCH_REDIS_URL and BENCH_SIM_URL, and for
another model server than our simulator BENCH_MODEL and BENCH_API_KEY);
`measure()` is the client side: arq's own `create_pool().enqueue_job`, then the jobs' results.
Everything not named here is arq's default: poll_delay 0.5 s, max_jobs 10, pickle, keep_result 1 h.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import orjson
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import result_key_prefix
from arq.jobs import Job
from arq.worker import run_worker

from bench.common import MODEL, apoll

HEALTH_CHECK = "arq:queue:health-check"
"""Written by an arq worker of the default queue at its first poll."""


def completion_body(prompt: str, max_tokens: int, *, stream: bool, model: str = MODEL) -> bytes:
    """The body albert-spp's worker sends to /v1/completions (worker/backends.py), for a default job."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "top_p": 1.0,
        "stream": stream,
        "prompt": prompt,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


async def complete(ctx: dict[str, Any], prompt: str, max_tokens: int) -> str:
    """The job: stream a completion from the simulator as albert-spp's worker does, return its text."""
    http: httpx.AsyncClient = ctx["http"]
    parts: list[str] = []
    url = ctx["sim_url"] + "/v1/completions"
    body = completion_body(prompt, max_tokens, stream=True, model=ctx["model"])
    headers = {"Accept": "text/event-stream", "Content-Type": "application/json", **ctx["headers"]}
    async with http.stream("POST", url, content=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            for choice in orjson.loads(data).get("choices") or ():
                parts.append(choice.get("text") or "")
    return "".join(parts)


async def _startup(ctx: dict[str, Any]) -> None:
    ctx["http"] = httpx.AsyncClient(timeout=120)
    ctx["sim_url"] = os.environ["BENCH_SIM_URL"]
    ctx["model"] = os.environ.get("BENCH_MODEL", MODEL)
    key = os.environ.get("BENCH_API_KEY")
    ctx["headers"] = {"Authorization": f"Bearer {key}"} if key else {}


async def _shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


class WorkerSettings:
    functions = [complete]  # noqa: RUF012 (arq reads class attributes)
    on_startup = _startup
    on_shutdown = _shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


async def enqueue(pool: ArqRedis, prompts: list[str], max_tokens: int) -> list[Job]:
    jobs = [await pool.enqueue_job("complete", prompt, max_tokens) for prompt in prompts]
    return [job for job in jobs if job is not None]  # None: a duplicate id, which random ids never are


async def measure(redis_url: str, prompts: list[str], max_tokens: int, within: float = 300) -> dict[str, Any]:
    """Enqueue one job per prompt; throughput from the first enqueue to the last finish arq recorded."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:

        async def worker_up() -> bool:
            return bool(await pool.exists(HEALTH_CHECK))

        await apoll(worker_up, 30, "arq worker started", 0.1)
        began = time.time()
        jobs = await enqueue(pool, prompts, max_tokens)
        results_keys = [result_key_prefix + job.job_id for job in jobs]

        async def finished() -> bool:
            return bool(await pool.exists(*results_keys) == len(results_keys))

        await apoll(finished, within, "arq jobs", 0.2)
        results = [await job.result_info() for job in jobs]
    finally:
        await pool.aclose()
    failed = sum(1 for result in results if result is None or not result.success)
    last = max(result.finish_time.timestamp() for result in results if result is not None)
    return {"jobs": len(jobs), "failed": failed, "seconds": last - began, "req_s": len(jobs) / (last - began)}


def main() -> None:
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
