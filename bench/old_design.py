"""The distance to the replaced API's design: one listener thread on a Redis pub/sub channel.

The old API handed each request to a single thread subscribed to a channel, which called the
model server synchronously, one request at a time, and stored the answer in a Redis key.
`python -m bench.old_design --redis-url U --sim-url S --channel C [--model M]` runs that listener;
`measure()` publishes the jobs and waits for their answers.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import httpx
import orjson
import redis
from redis.asyncio import Redis as AsyncRedis

from bench.arq_defaults import completion_body
from bench.common import MODEL, apoll

ANSWER = "old:answer:"


def listen(client: redis.Redis, sim_url: str, channel: str, model: str = MODEL, api_key: str | None = None) -> None:
    """The listener thread: for each message, POST to the model server, wait, store the answer."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    with httpx.Client(timeout=120) as http:
        for message in pubsub.listen():
            job = orjson.loads(message["data"])
            response = http.post(
                f"{sim_url}/v1/completions",
                content=completion_body(job["prompt"], job["max_tokens"], stream=False, model=model),
                headers=headers,
            )
            response.raise_for_status()
            answer = {"text": response.json()["choices"][0]["text"], "finished": time.time()}
            client.set(ANSWER + job["id"], orjson.dumps(answer), ex=3600)


async def measure(
    redis_url: str, channel: str, prompts: list[str], max_tokens: int, within: float = 300
) -> dict[str, Any]:
    """Publish one job per prompt; throughput from the first publish to the last stored answer."""
    client = AsyncRedis.from_url(redis_url, client_name="bench")
    try:

        async def listening() -> bool:
            subscribed: list[tuple[bytes, int]] = await client.pubsub_numsub(channel)
            return bool(subscribed and subscribed[0][1] > 0)

        await apoll(listening, 30, "old design listener subscribed")
        ids = [f"job-{index}" for index in range(len(prompts))]
        began = time.time()
        for job_id, prompt in zip(ids, prompts, strict=True):
            message = {"id": job_id, "prompt": prompt, "max_tokens": max_tokens}
            await client.publish(channel, orjson.dumps(message))
        keys = [ANSWER + job_id for job_id in ids]

        async def answered() -> bool:
            return bool(await client.exists(*keys) == len(keys))

        await apoll(answered, within, "old design answers", 0.1)
        answers = [orjson.loads(raw) for raw in await client.mget(keys)]
    finally:
        await client.aclose()
    last = max(float(answer["finished"]) for answer in answers)
    return {"jobs": len(ids), "seconds": last - began, "req_s": len(ids) / (last - began)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.old_design", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--sim-url", required=True)
    parser.add_argument("--channel", default="old:requests")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY"), help="(default: $BENCH_API_KEY)")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url, client_name="old-design")
    listen_args = (client, args.sim_url, args.channel, args.model, args.api_key)
    listener = threading.Thread(target=listen, args=listen_args, name="listener")
    listener.start()
    listener.join()


if __name__ == "__main__":
    main()
