"""Memory: Redis memory per finished job, against the bytes of its prompt and answer.

Our own Redis (AOF on), one worker, one API, STREAM_TTL=--stream-ttl (5 s: a finished job's token stream
expires 5 s after its end instead of an hour). --memory-jobs jobs (a ~300-byte question each, max_tokens
--memory-max-tokens; simulator without prefill, 2 ms per token, so that each stream has several entries)
are submitted in arrays of --memory-step and run to their end, array after array; after each array INFO
memory `used_memory` (and `used_memory_dataset`) and the keys are printed: the growth curve. Then a sample
of records and of the streams still alive is measured with MEMORY USAGE, and once STREAM_TTL has passed
and every stream has expired, used_memory is read again: the memory of a finished job. Baseline: the
bytes of the job's prompt and answer (UTF-8), from a sample of the jobs; target: at most twice those
plus 2 KiB. A warm-up array runs first and the start is taken once its streams have expired.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import redis
import uvloop

from bench.common import AUTH, Figure, Processes, Result, model_load, poll, sync
from bench.submission import job_body
from bench.throughput import fetch_jobs

NAME = "memory"
SIM = {"prefill_ms": 0, "ms_per_token": 2, "max_num_seqs": 1024}
SLACK = 2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--memory-jobs", type=int, default=10_000, help="jobs run (10000)")
    group.add_argument("--memory-step", type=int, default=1000, help="jobs per array, one curve point each (1000)")
    group.add_argument("--memory-max-tokens", type=int, default=100, help="max_tokens of each job (100)")
    group.add_argument("--stream-ttl", type=int, default=5, help="STREAM_TTL of the stack, seconds (5)")


def memory(client: redis.Redis) -> dict[str, int]:
    info: dict[str, Any] = sync(client.info("memory"))
    keyspace: dict[str, Any] = sync(client.info("keyspace"))
    db = keyspace.get("db0", {"keys": 0, "expires": 0})
    return {
        "used_memory": int(info["used_memory"]),
        "used_memory_dataset": int(info["used_memory_dataset"]),
        "keys": int(db["keys"]),
        "expiring_keys": int(db["expires"]),
    }


def key_kinds(client: redis.Redis) -> Counter[str]:
    """Keys by prefix (`spp:job`, `spp:stream`, `arq:job`, ...)."""
    kinds: Counter[str] = Counter()
    for key in client.scan_iter(count=5000):
        kinds[":".join(str(key).split(":", 2)[:2])] += 1
    return kinds


def streams_left(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match="spp:stream:*", count=5000))


def usage(client: redis.Redis, pattern: str, sample: int = 50) -> float:
    """Mean MEMORY USAGE (exact: SAMPLES 0) of up to `sample` keys matching `pattern`; 0 when none."""
    found = []
    for key in client.scan_iter(match=pattern, count=5000):
        found.append(key)
        if len(found) >= sample:
            break
    sizes = [int(sync(client.memory_usage(key, samples=0))) for key in found]
    return sum(sizes) / len(sizes) if sizes else 0.0


def submit(http: httpx.Client, first: int, count: int, max_tokens: int) -> list[str]:
    body = [job_body(index, max_tokens) for index in range(first, first + count)]
    response = http.post("/v1/jobs", content=orjson.dumps(body))
    response.raise_for_status()
    ids = [job["id"] for job in response.json()]
    poll(lambda: model_load(http) == (0, 0), 300, f"jobs {first}..{first + count}", 0.1)
    return ids


def run(args: argparse.Namespace) -> Result:
    max_tokens, step, ttl = args.memory_max_tokens, args.memory_step, args.stream_ttl
    curve: list[dict[str, Any]] = []
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        stack = processes.stack(sim_url, STREAM_TTL=ttl)
        client = stack.redis()
        with httpx.Client(base_url=stack.api_url, headers=AUTH, timeout=120) as http:
            submit(http, -step, step, max_tokens)  # warm-up: connections, scripts, the allocator's first pages
            poll(lambda: streams_left(client) == 0, ttl + 30, "warm-up streams expired", 0.5)
            start = memory(client)
            began = time.monotonic()
            ids: list[str] = []
            for first in range(0, args.memory_jobs, step):
                ids += submit(http, first, min(step, args.memory_jobs - first), max_tokens)
                point = memory(client) | {"jobs": len(ids), "seconds": round(time.monotonic() - began, 1)}
                point["per_job"] = round((point["used_memory"] - start["used_memory"]) / len(ids))
                curve.append(point)
                print(
                    f"  {point['jobs']:>6} jobs ({point['seconds']:5.1f} s): used_memory "
                    f"{point['used_memory'] / 2**20:7.2f} MiB, {point['per_job']:5d} B per job so far, "
                    f"{point['keys']} keys",
                    flush=True,
                )
            end = memory(client)
            record_bytes, stream_bytes = usage(client, "spp:job:*"), usage(client, "spp:stream:*")
            alive = streams_left(client)
        jobs = uvloop.run(fetch_jobs(stack.api_url, ids[-200:]))
        wait_began = time.monotonic()
        poll(lambda: streams_left(client) == 0, ttl + 60, "streams expired", 0.5)
        expired_after = time.monotonic() - wait_began
        final = memory(client)
        kinds = key_kinds(client)
        client.close()
    count = len(ids)
    texts = {job["id"]: job["result"]["text"] for job in jobs if job["status"] == "succeeded"}
    prompts = {job_id: job_body(index)["prompt"] for index, job_id in enumerate(ids) if job_id in texts}
    payload = sum(len(prompts[i].encode()) + len(text.encode()) for i, text in texts.items()) / len(texts)
    finished = (final["used_memory"] - start["used_memory"]) / count
    with_streams = (end["used_memory"] - start["used_memory"]) / count
    limit = 2 * payload + SLACK
    left = kinds.get("spp:stream", 0)
    print(
        f"  after STREAM_TTL ({expired_after:.1f} s more): used_memory {final['used_memory'] / 2**20:.2f} MiB, "
        f"{finished:.0f} B per job; keys {dict(kinds)}",
        flush=True,
    )
    figures = [
        Figure("prompt + answer of a job (baseline)", "B", payload),
        Figure(
            "Redis memory per finished job, streams expired",
            "B",
            finished,
            payload,
            "prompt + answer",
            f"<= 2x + {SLACK} B",
            finished <= limit,
        ),
        Figure(
            "Redis memory per job at the end of the run",
            "B",
            with_streams,
            payload,
            "prompt + answer",
            reference=f"{alive} streams alive (last {ttl} s)",
        ),
        Figure("MEMORY USAGE of a finished job's record", "B", record_bytes, payload, "prompt + answer"),
        Figure("MEMORY USAGE of a stream before it expires", "B", stream_bytes, payload, "prompt + answer"),
        Figure("streams left after STREAM_TTL", "streams", left, target="== 0", met=left == 0),
    ]
    details = {
        "start": start,
        "curve": curve,
        "end": end,
        "after_stream_ttl": final,
        "expired_within_s": round(expired_after, 1),
        "keys_by_kind": dict(kinds),
        "mean_answer_bytes": round(sum(len(t.encode()) for t in texts.values()) / len(texts)),
        "mean_prompt_bytes": round(sum(len(prompts[i].encode()) for i in texts) / len(texts)),
    }
    options = {"jobs": args.memory_jobs, "step": step, "max_tokens": max_tokens, "stream_ttl": ttl, "sim": SIM}
    return Result(NAME, figures, options, details)
