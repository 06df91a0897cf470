"""Redis commands per job, the input of the capacity model.

200 jobs (max_tokens=20, simulator without prefill and 5 ms per token, STREAM_FLUSH_MS=100) are
submitted in arrays of 100; we wait until the model's queue and running set are empty, polling Redis
on a connection of our own. Per job:
- executed: every command Redis ran (INFO total_commands_processed, which counts the commands run
  inside Lua scripts too), minus ours (the polls and one INFO);
- sent: the commands clients sent (each costs a parse and a reply, often a round trip), per
  connection name, from MONITOR;
- INFO commandstats: the top commands.
Baseline: the same counts for arq with its defaults (enqueue_job, pickle, keep_result 1 h) running the
same jobs, which moves a job through its queue but keeps no job record nor token stream.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import redis
import uvloop
from arq import create_pool
from arq.connections import RedisSettings

from bench import arq_defaults
from bench.common import AUTH, MODEL, Figure, Processes, Result, apoll, bench_redis, command_calls, sync
from bench.throughput import fetch_jobs, prompts
from shared import keys

NAME = "commands"
SIM = {"prefill_ms": 0, "ms_per_token": 5}
_STOP = "bench-monitor-stop"
_ARQ_CLIENT = "arq-client"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--commands-jobs", type=int, default=200, help="jobs counted (200)")
    group.add_argument("--commands-max-tokens", type=int, default=20, help="max_tokens of each job (20)")
    group.add_argument("--flush-ms", type=int, default=100, help="STREAM_FLUSH_MS of the worker (100)")


class Monitor(threading.Thread):
    """MONITOR on its own connection: counts commands by client address ("lua" inside scripts) and name."""

    def __init__(self, url: str, *, record: bool = False) -> None:
        super().__init__(name="monitor", daemon=True)
        self._client = redis.Redis.from_url(url, client_name="bench-monitor")
        self._url = url
        self.counts: Counter[tuple[str, str]] = Counter()
        self.ready = threading.Event()
        self._record = record
        self.lines: list[tuple[float, str, str, str]] = []  # with `record`: (time, client, command, first argument)

    def run(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self.ready.set()
            while True:
                line = monitor.connection.read_response()
                text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
                # 1700000000.123456 [0 127.0.0.1:43382] "evalsha" "..." ...   or   [0 lua] "hset" ...
                client = text.split("[", 1)[1].split("]", 1)[0].split(" ", 1)[1]
                words = text.split("] ", 1)[1].split('"', 4)
                command = words[1].lower()
                if command == "echo" and _STOP in text:
                    return
                self.counts[(client, command)] += 1
                if self._record:
                    argument = words[3] if len(words) > 3 else ""
                    self.lines.append((float(text.split(" ", 1)[0]), client, command, argument))

    def stop(self) -> None:
        sender = redis.Redis.from_url(self._url)
        try:
            sender.echo(_STOP)
        finally:
            sender.close()
        self.join(10)
        self._client.close()


class CommandMeter:
    """Counts the commands Redis runs between `start()` and `stop()`, minus those of this meter."""

    def __init__(self, redis_url: str) -> None:
        self.client = bench_redis(redis_url)
        self.monitor = Monitor(redis_url)
        self._own = 0
        self._began = 0.0
        self._before: tuple[int, dict[str, int]] = (0, {})
        self._names: dict[str, str] = {}
        self.result: dict[str, Any] = {}

    def _connection_names(self) -> dict[str, str]:
        clients: list[dict[str, Any]] = sync(self.client.client_list())
        return {str(c["addr"]): str(c["name"]) or "(no name: arq's pool)" for c in clients}

    def start(self) -> None:
        self.monitor.start()
        self.monitor.ready.wait(10)
        self._names = self._connection_names()
        self._before = command_calls(self.client)
        self._began = time.monotonic()
        self._own = 1  # the INFO just sent is counted in the next reading

    def empty(self, *sets: str) -> bool:
        """Whether every sorted set in `sets` is empty (one pipeline: len(sets) commands of ours)."""
        with self.client.pipeline(transaction=False) as pipe:
            for name in sets:
                pipe.zcard(name)
            self._own += len(sets)
            return not any(pipe.execute())

    async def wait_empty(self, *sets: str, within: float = 120, interval: float = 0.1) -> None:
        async def empty() -> bool:
            return self.empty(*sets)

        await apoll(empty, within, f"{', '.join(sets)} empty", interval)

    def stop(self, jobs: int) -> dict[str, Any]:
        """The counts per job; also kept in `self.result`."""
        elapsed = time.monotonic() - self._began
        after, calls_after = command_calls(self.client)
        names = self._names | self._connection_names()
        self.monitor.stop()
        self.client.close()
        total_before, calls_before = self._before
        calls = {name: count - calls_before.get(name, 0) for name, count in calls_after.items() if name != "info"}
        if "zcard" in calls:
            calls["zcard"] -= self._own - 1
        sent: Counter[str] = Counter()
        sent_commands: Counter[str] = Counter()
        in_scripts = 0
        for (address, command), count in self.monitor.counts.items():
            name = "lua" if address == "lua" else names.get(address, "(closed connection)")
            if name == "lua":
                in_scripts += count
            elif not name.startswith("bench"):
                sent[name] += count
                sent_commands[command] += count
        self.result = {
            "jobs": jobs,
            "seconds": round(elapsed, 3),
            "executed_per_job": (after - total_before - self._own) / jobs,
            "sent_per_job": sum(sent.values()) / jobs,
            "in_scripts_per_job": in_scripts / jobs,
            "sent_per_job_by_connection": _per_job(sent, jobs),
            "sent_per_job_by_command": _per_job(sent_commands, jobs),
            "executed_per_job_by_command": _per_job(Counter(calls), jobs),
            "connections": dict(Counter(name for name in names.values() if not name.startswith("bench"))),
            "own_commands_subtracted": self._own,
        }
        return self.result


def _per_job(counts: Counter[str], jobs: int, top: int = 20) -> dict[str, float]:
    return {name: round(count / jobs, 2) for name, count in counts.most_common(top) if count > 0}


async def _run_albert(api_url: str, meter: CommandMeter, texts: list[str], max_tokens: int) -> list[str]:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=AUTH) as http:
        meter.start()
        for start in range(0, len(texts), 100):
            body = [{"prompt": text, "params": {"max_tokens": max_tokens}} for text in texts[start : start + 100]]
            response = await http.post("/v1/jobs", content=orjson.dumps(body))
            response.raise_for_status()
            ids += [job["id"] for job in response.json()]
        await meter.wait_empty(keys.queue(MODEL), keys.running(MODEL))
        meter.stop(len(texts))
    return ids


async def _run_arq(redis_url: str, meter: CommandMeter, texts: list[str], max_tokens: int) -> int:
    """Enqueue with arq's client (counted, as our POSTs are); returns how many jobs failed."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        await pool.client_setname(_ARQ_CLIENT)
        meter.start()
        jobs = await arq_defaults.enqueue(pool, texts, max_tokens)
        await meter.wait_empty("arq:queue")
        meter.stop(len(texts))
        results = [await job.result_info() for job in jobs]
    finally:
        await pool.aclose()
    return sum(1 for result in results if result is None or not result.success)


def run(args: argparse.Namespace) -> Result:
    texts = prompts(args.commands_jobs)
    max_tokens = args.commands_max_tokens
    with Processes(NAME) as processes:
        sim_url = processes.sim(**SIM)
        with Processes(NAME) as stack_processes:
            stack = stack_processes.stack(sim_url, STREAM_FLUSH_MS=args.flush_ms)
            # Warm-up: Lua scripts loaded, connections open; then the counted run.
            uvloop.run(_run_albert(stack.api_url, CommandMeter(stack.redis_url), texts[:50], max_tokens))
            meter = CommandMeter(stack.redis_url)
            ids = uvloop.run(_run_albert(stack.api_url, meter, texts, max_tokens))
            ours = meter.result
            jobs = uvloop.run(fetch_jobs(stack.api_url, ids))
            ours["succeeded"] = sum(1 for job in jobs if job["status"] == "succeeded")
        with Processes(NAME) as arq_processes:
            redis_url = arq_processes.redis()
            env = {"BENCH_REDIS_URL": redis_url, "BENCH_SIM_URL": sim_url}
            arq_processes.python("arq-worker", ["bench.arq_defaults"], env=env)
            uvloop.run(arq_defaults.measure(redis_url, texts[:20], max_tokens))  # warm-up, and waits for the worker
            meter = CommandMeter(redis_url)
            failed = uvloop.run(_run_arq(redis_url, meter, texts, max_tokens))
            arq = meter.result
            arq["succeeded"] = len(texts) - failed
    figures = [
        Figure("Redis commands executed per job", "cmd/job", ours["executed_per_job"], arq["executed_per_job"], "arq"),
        Figure("Redis commands sent per job", "cmd/job", ours["sent_per_job"], arq["sent_per_job"], "arq"),
    ]
    options = {"jobs": args.commands_jobs, "max_tokens": max_tokens, "flush_ms": args.flush_ms, "sim": SIM}
    return Result(NAME, figures, options, {"albert_spp": ours, "arq_defaults": arq})
