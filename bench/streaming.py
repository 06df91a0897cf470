"""Streaming: what token streaming costs in Redis commands, and how late the first token reaches a subscriber.

Simulator of the saturation shape (--prefill-ms 200 --ms-per-token 20), jobs of max_tokens 20: 0.2 s to
the first token, then 0.38 s of tokens.
- Commands per job: --streaming-jobs jobs counted as in `commands` (INFO for the commands executed,
  Lua-internal ones included; MONITOR for the commands sent), with STREAM_FLUSH_MS=100 (the default:
  tokens written every 100 ms) against the baseline STREAM_FLUSH_MS=100000 (a window longer than the
  job: the first token is written at once, as always, and the rest only with the final record). Also
  the stream entries per job (XLEN).
- Time to first token: --ttft-samples times, one after the other, a direct streaming request to the
  simulator (the worker's body; time to its first chunk: the baseline), then a job (POST /v1/jobs, then
  GET /v1/jobs/{id}/events on the same connection: POST sent -> first `token` event); max_tokens
  --ttft-max-tokens.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
import uvloop

from bench import commands
from bench.arq_defaults import completion_body
from bench.commands import CommandMeter
from bench.common import AUTH, Figure, Processes, Result, bench_redis, percentile, sync
from bench.http import Connection
from bench.throughput import prompts

NAME = "streaming"
SIM = {"prefill_ms": 200, "ms_per_token": 20}
NO_STREAMING_MS = 100_000
RATIO_TARGET, TTFT_TARGET_MS = 1.2, 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--streaming-jobs", type=int, default=200, help="jobs counted per setting (200)")
    group.add_argument("--streaming-max-tokens", type=int, default=20, help="max_tokens of the counted jobs (20)")
    group.add_argument("--ttft-samples", type=int, default=50, help="first-token measurements, after 5 warm-up (50)")
    group.add_argument("--ttft-max-tokens", type=int, default=5, help="max_tokens of those jobs (5)")


def count(sim_url: str, flush_ms: int, texts: list[str], max_tokens: int) -> dict[str, Any]:
    """Commands per job with STREAM_FLUSH_MS=`flush_ms`, on a stack of its own."""
    with Processes(NAME) as processes:
        stack = processes.stack(sim_url, STREAM_FLUSH_MS=flush_ms)
        uvloop.run(commands._run_albert(stack.api_url, CommandMeter(stack.redis_url), texts[:50], max_tokens))
        meter = CommandMeter(stack.redis_url)
        uvloop.run(commands._run_albert(stack.api_url, meter, texts, max_tokens))
        client = bench_redis(stack.redis_url)
        try:
            lengths = [int(sync(client.xlen(key))) for key in client.scan_iter(match="spp:stream:*", count=1000)]
        finally:
            client.close()
    result = meter.result
    result["stream_entries_per_job"] = round(sum(lengths) / len(lengths), 2)  # `done` included
    return result


async def first_tokens(api_url: str, sim_url: str, count: int, warmup: int, max_tokens: int) -> dict[str, list[float]]:
    """Time to first token in ms: `direct` (the simulator's own) and `sse` (a subscriber of a job), interleaved."""
    api, sim = Connection.to(api_url, AUTH), Connection.to(sim_url)
    samples: dict[str, list[float]] = {"direct": [], "sse": []}
    try:
        for index in range(warmup + count):
            prompt = f"Question {index} : combien de départements compte la France ?"
            began = time.perf_counter()
            direct = 0.0
            async for piece in sim.stream("POST", "/v1/completions", completion_body(prompt, max_tokens, stream=True)):
                if not direct and b"data: {" in piece:
                    direct = time.perf_counter() - began
            job = orjson.dumps({"prompt": prompt, "params": {"max_tokens": max_tokens}})
            began = time.perf_counter()
            submitted = orjson.loads((await api.request("POST", "/v1/jobs", job)).body)
            sse = 0.0
            async for piece in api.stream("GET", f"/v1/jobs/{submitted['id']}/events"):
                if not sse and b"event: token" in piece:
                    sse = time.perf_counter() - began
            if not (direct and sse):
                raise RuntimeError(f"job {submitted['id']}: no first token (direct {direct}, sse {sse})")
            if index >= warmup:
                samples["direct"].append(1000 * direct)
                samples["sse"].append(1000 * sse)
    finally:
        await api.close()
        await sim.close()
    return samples


def run(args: argparse.Namespace) -> Result:
    texts = prompts(args.streaming_jobs)
    max_tokens = args.streaming_max_tokens
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        streaming = count(sim_url, 100, texts, max_tokens)
        print(
            f"  STREAM_FLUSH_MS=100: {streaming['sent_per_job']:.2f} sent, {streaming['executed_per_job']:.2f} "
            f"executed per job, {streaming['stream_entries_per_job']} stream entries",
            flush=True,
        )
        baseline = count(sim_url, NO_STREAMING_MS, texts, max_tokens)
        print(
            f"  STREAM_FLUSH_MS={NO_STREAMING_MS}: {baseline['sent_per_job']:.2f} sent, "
            f"{baseline['executed_per_job']:.2f} executed per job, "
            f"{baseline['stream_entries_per_job']} stream entries",
            flush=True,
        )
        with Processes(NAME) as stack_processes:
            stack = stack_processes.stack(sim_url)
            samples = uvloop.run(first_tokens(stack.api_url, sim_url, args.ttft_samples, 5, args.ttft_max_tokens))
    ttft = {
        kind: {q: round(percentile(values, float(q[1:])), 2) for q in ("p50", "p90", "p99")}
        for kind, values in samples.items()
    }
    figures: list[Figure] = []
    for kind in ("sent", "executed"):
        measured, base = streaming[f"{kind}_per_job"], baseline[f"{kind}_per_job"]
        figures.append(
            Figure(
                f"Redis commands {kind} per job, streaming",
                "cmd/job",
                measured,
                base,
                "no streaming",
                f"ratio <= {RATIO_TARGET}",
                measured / base <= RATIO_TARGET,
            )
        )
    direct_p50, sse_p50 = ttft["direct"]["p50"], ttft["sse"]["p50"]
    figures += [
        Figure(
            "first token, SSE subscriber p50",
            "ms",
            sse_p50,
            direct_p50,
            "direct p50",
            f"<= direct + {TTFT_TARGET_MS:g} ms",
            sse_p50 <= direct_p50 + TTFT_TARGET_MS,
        ),
        Figure("first token, SSE subscriber p99", "ms", ttft["sse"]["p99"], ttft["direct"]["p99"], "direct p99"),
    ]
    details = {"streaming": streaming, "no_streaming": baseline, "first_token_ms": ttft}
    options = {
        "jobs": args.streaming_jobs,
        "max_tokens": max_tokens,
        "ttft_samples": args.ttft_samples,
        "ttft_max_tokens": args.ttft_max_tokens,
        "flush_ms": [100, NO_STREAMING_MS],
        "sim": SIM,
    }
    return Result(NAME, figures, options, details)
