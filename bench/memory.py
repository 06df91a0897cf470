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

Then the cost of the job indexes of issue 15 (keys.index, keys.expiring), same run: every `spp:idx:*` set and
`spp:expiring` are deleted and used_memory read again; their bytes per indexed job (each finished job is in one
status set of its model and in the expiring set) give the ratio per-job memory / (per-job memory - index bytes per
job), target <= 1.15. Informative: the record fields issue 15 added (`rank`, `activity`, `index`, `attempt_log`,
`provenance`, `template`, `webhook`, `webhook_delivery`) are taken out of every record too (each record rewritten
without them, so that its hash table shrinks as well), and the ratio against what is left (the records and indexes
of before issue 15) is shown.
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
from shared import keys

NAME = "memory"
SIM = {"prefill_ms": 0, "ms_per_token": 2, "max_num_seqs": 1024}
SLACK = 2048
INDEX_RATIO_TARGET = 1.15
NEW_FIELDS = ("rank", "activity", "index", "attempt_log", "provenance", "template", "webhook", "webhook_delivery")
"""The record fields issue 15 added (its index rank, activity stream entry, index scopes, attempts, provenance,
template tag, webhook and its delivery)."""


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


def drop_indexes(client: redis.Redis) -> dict[str, int]:
    """Delete every job index set (`spp:idx:*`) and the set of expiring jobs: the bytes they took (used_memory
    before and after, DEL being synchronous), how many keys, entries and expiring jobs they held."""
    names = [str(key) for key in client.scan_iter(match=keys.index_prefix("") + "*", count=5000)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zcard(name)
    entries = sum(pipe.execute()) if names else 0
    expiring = int(sync(client.zcard(keys.expiring())))
    before = memory(client)["used_memory"]
    for start in range(0, len(names), 1000):
        client.delete(*names[start : start + 1000])
    client.delete(keys.expiring())
    after = memory(client)["used_memory"]
    return {"bytes": before - after, "index_keys": len(names), "index_entries": entries, "expiring": expiring}


def drop_new_fields(client: redis.Redis) -> dict[str, int]:
    """Rewrite every job record without NEW_FIELDS (deleted, then written anew with the rest and its TTL: HDEL would
    leave the hash table sized for the fields it had); the bytes this freed and the records."""
    records = [str(key) for key in client.scan_iter(match=keys.job("*"), count=5000)]
    before = memory(client)["used_memory"]
    for start in range(0, len(records), 1000):
        chunk = records[start : start + 1000]
        read = client.pipeline(transaction=False)
        for record in chunk:
            read.hgetall(record)
            read.pttl(record)
        replies = read.execute()
        write = client.pipeline(transaction=False)
        for record, fields, ttl in zip(chunk, replies[::2], replies[1::2], strict=True):
            kept = {name: value for name, value in fields.items() if name not in NEW_FIELDS}
            write.delete(record)
            if not kept:  # expired meanwhile
                continue
            write.hset(record, mapping=kept)
            if ttl > 0:
                write.pexpire(record, ttl)
        write.execute()
    after = memory(client)["used_memory"]
    return {"bytes": before - after, "records": len(records)}


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
        indexes = drop_indexes(client)
        fields = drop_new_fields(client)
        client.close()
    count = len(ids)
    texts = {job["id"]: job["result"]["text"] for job in jobs if job["status"] == "succeeded"}
    prompts = {job_id: job_body(index)["prompt"] for index, job_id in enumerate(ids) if job_id in texts}
    payload = sum(len(prompts[i].encode()) + len(text.encode()) for i, text in texts.items()) / len(texts)
    finished = (final["used_memory"] - start["used_memory"]) / count
    with_streams = (end["used_memory"] - start["used_memory"]) / count
    limit = 2 * payload + SLACK
    left = kinds.get("spp:stream", 0)
    index_per_job = indexes["bytes"] / max(1, indexes["expiring"])
    fields_per_job = fields["bytes"] / max(1, fields["records"])
    index_ratio = finished / (finished - index_per_job)
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
        Figure(
            "job indexes per finished job (spp:idx:*, spp:expiring)",
            "B",
            index_per_job,
            reference=f"{indexes['index_entries']} index entries, {indexes['expiring']} expiring jobs",
        ),
        Figure(
            "Redis memory per finished job, with the indexes",
            "B",
            finished,
            finished - index_per_job,
            "without them",
            f"ratio <= {INDEX_RATIO_TARGET}",
            index_ratio <= INDEX_RATIO_TARGET,
        ),
        Figure(
            "Redis memory per finished job, against before issue 15 (informative)",
            "B",
            finished,
            finished - index_per_job - fields_per_job,
            "no indexes, no new fields",
            reference=f"new record fields {fields_per_job:.0f} B a job ({', '.join(NEW_FIELDS)})",
        ),
    ]
    details = {
        "start": start,
        "curve": curve,
        "end": end,
        "after_stream_ttl": final,
        "expired_within_s": round(expired_after, 1),
        "keys_by_kind": dict(kinds),
        "indexes": indexes,
        "new_fields": fields,
        "mean_answer_bytes": round(sum(len(t.encode()) for t in texts.values()) / len(texts)),
        "mean_prompt_bytes": round(sum(len(prompts[i].encode()) for i in texts) / len(texts)),
    }
    options = {"jobs": args.memory_jobs, "step": step, "max_tokens": max_tokens, "stream_ttl": ttl, "sim": SIM}
    return Result(NAME, figures, options, details)
