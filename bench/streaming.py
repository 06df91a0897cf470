"""Streaming: what token streaming costs in Redis commands, and how late the first token reaches a subscriber.

Simulator of the saturation shape (--prefill-ms 200 --ms-per-token 20), jobs of max_tokens 20: 0.2 s to
the first token, then 0.38 s of tokens.
- Commands per job: --streaming-jobs jobs counted as in `commands` (INFO for the commands executed,
  Lua-internal ones included; MONITOR for the commands sent), with STREAM_FLUSH_MS=100 (the default:
  tokens written every 100 ms) against the baseline STREAM_FLUSH_MS=100000 (a window longer than the
  job: the first token is written at once, as always, and the rest only with the final record). Two
  stacks (one Redis each, the same simulator), counted alternately for --streaming-rounds rounds;
  medians. arq's own commands (its pool's connections are unnamed) vary from run to run with the
  timing of its polls, which re-examine the running jobs still in its queue: the figures without them
  show what streaming itself adds. Also the stream entries per job (XLEN). Both stacks run with
  WORKER_HEARTBEAT=60 s: the heartbeat costs 3 commands per running job and tick, the same with and without
  streaming, but the 200 jobs run together for 0.58 s, so a 1 s tick fell in one round and not in the next,
  moving that round by 3 commands a job: more than the difference measured. Per-second traffic is
  `latency`'s idle figure.
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
from bench.common import AUTH, Figure, Processes, Result, Stack, median, percentile, sync
from bench.http import Connection
from bench.throughput import prompts

NAME = "streaming"
SIM = {"prefill_ms": 200, "ms_per_token": 20}
NO_STREAMING_MS = 100_000
HEARTBEAT_S = 60
RATIO_TARGET, TTFT_TARGET_MS = 1.2, 60.0
KINDS = ("sent_per_job", "executed_per_job", "own_sent_per_job", "own_executed_per_job")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--streaming-jobs", type=int, default=200, help="jobs counted per setting (200)")
    group.add_argument("--streaming-max-tokens", type=int, default=20, help="max_tokens of the counted jobs (20)")
    group.add_argument("--streaming-rounds", type=int, default=3, help="counted runs per setting, medians (3)")
    group.add_argument("--ttft-samples", type=int, default=50, help="first-token measurements, after 5 warm-up (50)")
    group.add_argument("--ttft-max-tokens", type=int, default=5, help="max_tokens of those jobs (5)")


def counted(stack: Stack, texts: list[str], max_tokens: int) -> dict[str, Any]:
    """Commands per job of one run of `texts` on `stack`, also without arq's own pool (unnamed connections)."""
    meter = CommandMeter(stack.redis_url)
    uvloop.run(commands._run_albert(stack.api_url, meter, texts, max_tokens))
    result = meter.result
    own = sum(count for name, count in result["sent_per_job_by_connection"].items() if name.startswith("spp-"))
    result["own_sent_per_job"] = round(own, 2)
    result["own_executed_per_job"] = round(own + result["in_scripts_per_job"], 2)
    return result


def stream_entries(stack: Stack) -> float:
    """Mean XLEN of the streams in the stack's Redis (`done` included)."""
    client = stack.redis()
    try:
        lengths = [int(sync(client.xlen(key))) for key in client.scan_iter(match="spp:stream:*", count=1000)]
    finally:
        client.close()
    return round(sum(lengths) / len(lengths), 2)


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
    settings = {"streaming": 100, "no_streaming": NO_STREAMING_MS}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        stacks = {
            name: processes.stack(sim_url, STREAM_FLUSH_MS=flush, WORKER_HEARTBEAT=HEARTBEAT_S)
            for name, flush in settings.items()
        }
        for stack in stacks.values():  # warm-up: Lua scripts loaded, connections open
            uvloop.run(commands._run_albert(stack.api_url, CommandMeter(stack.redis_url), texts[:50], max_tokens))
        for number in range(args.streaming_rounds):
            for name, stack in stacks.items():
                runs[name].append(counted(stack, texts, max_tokens))
            print(
                f"  round {number + 1}: "
                + "; ".join(
                    f"STREAM_FLUSH_MS={settings[name]}: {runs[name][-1]['sent_per_job']:.2f} sent, "
                    f"{runs[name][-1]['executed_per_job']:.2f} executed per job "
                    f"(without arq's pool: {runs[name][-1]['own_sent_per_job']:.2f} / "
                    f"{runs[name][-1]['own_executed_per_job']:.2f})"
                    for name in settings
                ),
                flush=True,
            )
        entries = {name: stream_entries(stack) for name, stack in stacks.items()}
        samples = uvloop.run(
            first_tokens(stacks["streaming"].api_url, sim_url, args.ttft_samples, 5, args.ttft_max_tokens)
        )
    ttft = {
        kind: {q: round(percentile(values, float(q[1:])), 2) for q in ("p50", "p90", "p99")}
        for kind, values in samples.items()
    }
    figures: list[Figure] = []
    medians = {name: {kind: median([run[kind] for run in runs[name]]) for kind in KINDS} for name in settings}
    for kind, label, target in (
        ("sent_per_job", "Redis commands sent per job", True),
        ("executed_per_job", "Redis commands executed per job", True),
        ("own_executed_per_job", "  of which albert-spp's (not arq's pool)", False),
    ):
        measured, base = medians["streaming"][kind], medians["no_streaming"][kind]
        figures.append(
            Figure(
                label,
                "cmd/job",
                measured,
                base,
                "no streaming",
                f"ratio <= {RATIO_TARGET}" if target else "",
                measured / base <= RATIO_TARGET if target else None,
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
    details = {"medians": medians, "stream_entries_per_job": entries, "runs": runs, "first_token_ms": ttft}
    options = {
        "jobs": args.streaming_jobs,
        "rounds": args.streaming_rounds,
        "max_tokens": max_tokens,
        "ttft_samples": args.ttft_samples,
        "ttft_max_tokens": args.ttft_max_tokens,
        "flush_ms": [100, NO_STREAMING_MS],
        "sim": SIM,
    }
    return Result(NAME, figures, options, details)
