"""What one Redis command costs the API's CPU on its two paths: `python -m bench.redis_client`.

Not one of the benchmarks of `python -m bench`: a diagnostic for `submission` and `polling`. On its own
redis-server, --callers concurrent tasks (32: the load generator's connections) read a job-sized hash
(`HGETALL` of 12 fields of 60 bytes) --commands times in all, through the API's redis-py client (pool of
API_REDIS_CONNECTIONS, commands packed by hiredis) and through the store's shared connection
(api/multiplex.py). Reported: CPU time of this process per command, best of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from api.multiplex import SharedConnection
from shared.connection import redis_client
from shared.settings import Settings
from stack.processes import free_port, start_redis


async def cpu_per_command(command: Callable[[], Awaitable[Any]], callers: int, commands: int, rounds: int) -> float:
    """µs of this process's CPU per command, best of `rounds`."""

    async def caller() -> None:
        for _ in range(commands // callers):
            await command()

    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        await asyncio.gather(*[caller() for _ in range(callers)])
        best = min(best, (time.process_time() - began) / (commands // callers * callers) * 1e6)
    return best


async def measure(options: argparse.Namespace) -> None:
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="spp-bench-redis-client-"))
    redis_server = start_redis(port, folder, log=folder / "redis.log")
    settings = Settings(_env_file=None, ENV="dev", REDIS_URL=f"redis://127.0.0.1:{port}")
    client = redis_client(settings, "spp-bench", max_connections=settings.API_REDIS_CONNECTIONS)
    shared = SharedConnection(client)
    try:
        await client.hset("job", mapping={f"field{n}": "x" * 60 for n in range(12)})  # type: ignore[misc]
        sizes = (options.callers, options.commands, options.rounds)
        pooled = await cpu_per_command(lambda: client.hgetall("job"), *sizes)  # type: ignore[arg-type, return-value]
        pipelined = await cpu_per_command(lambda: shared.execute("HGETALL", "job"), *sizes)
        print(f"HGETALL, {options.callers} concurrent callers, CPU per command (best of {options.rounds}):")
        print(f"  redis-py client, pool of {settings.API_REDIS_CONNECTIONS}: {pooled:6.1f} µs")
        print(f"  shared connection:             {pipelined:6.1f} µs  ({pooled / pipelined:.1f}x less)")
    finally:
        await shared.aclose()
        await client.aclose()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers (32)")
    parser.add_argument("--commands", type=int, default=16_000, help="commands per round (16000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the best reported (3)")
    uvloop.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
