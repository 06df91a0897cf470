"""`python -m bench.batch_upload [--lines N]`: upload a batch input file of N chat requests (50,000 by
default: BATCH_MAX_LINES), then validate and queue it, and print how long each step took and the Redis
memory it took (INFO memory used_memory before and after).

Our own redis-server and one API process; no worker, so that every job stays queued and is counted.
"""

from __future__ import annotations

import argparse
import time

import httpx
import orjson

from bench.common import AUTH, MODEL, Processes, bench_redis, poll, stack_env, sync

QUESTION = (
    "Bonjour, j'ai fait ma demande de carte grise il y a trois semaines sur le site de l'ANTS et je n'ai "
    "toujours rien reçu. Le suivi indique « en cours d'instruction ». Que dois-je faire ? Question n°{}"
)


def input_file(lines: int) -> bytes:
    """`lines` chat requests of about 400 bytes each, as a client would write them."""
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"question-{index}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": QUESTION.format(index)}],
                    "max_tokens": 256,
                },
            }
        )
        + b"\n"
        for index in range(lines)
    )


def used_memory(info: dict[str, object]) -> int:
    return int(str(info["used_memory"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_upload", description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000, help="requests in the file (50000)")
    args = parser.parse_args(argv)
    data = input_file(args.lines)
    with Processes("batch-upload") as processes:
        redis_url = processes.redis()
        # No simulator: nothing runs; the URL is never called.
        api_url = processes.api(stack_env(redis_url, "http://127.0.0.1:9", BATCH_MAX_LINES=args.lines))
        redis = bench_redis(redis_url)
        with httpx.Client(base_url=api_url, headers=AUTH, timeout=600) as api:
            before = used_memory(sync(redis.info("memory")))
            began = time.monotonic()
            response = api.post("/v1/files", files={"file": ("input.jsonl", data)}, data={"purpose": "batch"})
            uploaded = time.monotonic()
            response.raise_for_status()
            file_id = response.json()["id"]
            after_upload = used_memory(sync(redis.info("memory")))

            batch = api.post(
                "/v1/batches",
                json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            ).json()
            poll(lambda: api.get(f"/v1/batches/{batch['id']}").json()["status"] != "validating", 600, "validated")
            queued = time.monotonic()
            batch = api.get(f"/v1/batches/{batch['id']}").json()
            after_queue = used_memory(sync(redis.info("memory")))
            keys = int(sync(redis.dbsize()))
    assert batch["status"] == "in_progress", batch
    mib = 2**20
    print(f"input file: {args.lines} requests, {len(data) / mib:.1f} MiB")
    print(f"upload (POST /v1/files): {uploaded - began:.2f} s ({len(data) / mib / (uploaded - began):.0f} MiB/s)")
    print(f"validate and queue (POST /v1/batches until in_progress): {queued - uploaded:.2f} s")
    print(f"Redis used_memory: {before / mib:.1f} MiB before, {after_upload / mib:.1f} MiB after the upload,")
    print(f"  {after_queue / mib:.1f} MiB once queued ({keys} keys)")
    print(f"  the file: {(after_upload - before) / mib:.1f} MiB")
    jobs = after_queue - after_upload
    print(f"  the queued jobs: {jobs / mib:.1f} MiB, {jobs / args.lines:.0f} bytes per job")


if __name__ == "__main__":
    main()
