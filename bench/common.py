"""What every benchmark shares: starting the processes under test, measuring them, printing results."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import redis

from shared import keys
from shared.settings import DEFAULT_LLM_TABLE, parse_llm_table
from stack.processes import (
    Service,
    find_redis_server,
    free_port,
    http_ok,
    redis_reachable,
    spawn,
    start_python,
    wait_until,
)

MODEL = parse_llm_table(DEFAULT_LLM_TABLE)[0].model
API_KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
"""The header of every request of ours to the API (API_KEYS is set to API_KEY)."""
RESULTS_DIR = Path(__file__).parent / "results"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- the model server under test ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelServer:
    """The model server the benchmarks measure against: our simulator (`url` None, the default), or an
    OpenAI-compatible server already running (`--backend`), e.g. real vLLM on a GPU machine."""

    url: str | None = None
    model: str = MODEL
    api_key: str | None = field(default=None, repr=False)

    @property
    def external(self) -> bool:
        return self.url is not None

    @property
    def headers(self) -> dict[str, str]:
        """What a direct client of the server sends with every request: the bearer key, if any."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def describe(self) -> dict[str, Any]:
        """For the printed details and the JSON line: never the key itself."""
        return {"url": self.url, "model": self.model, "api_key": "set" if self.api_key else "none"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model server (throughput and latency only)")
    group.add_argument(
        "--backend",
        metavar="URL",
        help="an OpenAI-compatible server already running, http://host:port (default: start our simulator)",
    )
    group.add_argument("--backend-model", metavar="NAME", default=MODEL, help=f"its served model name ({MODEL})")
    group.add_argument("--backend-key", metavar="KEY", help="its bearer key (default: $LLM_API_KEY, if set)")


def model_server(args: argparse.Namespace) -> ModelServer:
    """The server that `add_arguments`' options name."""
    if args.backend is None:
        return ModelServer()
    key = args.backend_key if args.backend_key is not None else os.environ.get("LLM_API_KEY")
    return ModelServer(args.backend.rstrip("/").removesuffix("/v1"), args.backend_model, key or None)


# ---- processes ---------------------------------------------------------------------------------


class Processes:
    """The child processes of one benchmark, all stopped (in reverse order) on exit, even on error."""

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"spp-bench-{name}-"))
        self.services: list[Service] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
        if kind is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"  (process logs kept in {self.dir})", file=sys.stderr)

    def close(self) -> None:
        while self.services:
            self.services.pop().stop()

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}-{len(self.services)}.log"

    def _python(self, name: str, module_args: list[str], env: dict[str, str], ready_url: str | None) -> Service:
        """Start `python -m <module_args>`, kept for stopping before waiting until `ready_url` answers 200."""
        service = start_python(name, module_args, env=env, log=self._log(name))
        self.services.append(service)
        if ready_url is not None:
            wait_until(lambda: http_ok(ready_url), 30, name, service.process)
        return service

    def redis(self) -> str:
        """A redis-server of our own, with AOF on as in production; returns its URL.

        As stack.processes.start_redis, but the process is kept for stopping before it is waited for.
        """
        port = free_port()
        data = self.dir / f"redis-{port}"
        data.mkdir()
        args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        args += ["--save", "", "--appendonly", "yes", "--protected-mode", "no"]
        service = spawn("redis", args, log=self._log("redis"))
        self.services.append(service)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis_reachable(url, 0.2), 15, f"redis-server on port {port}", service.process)
        return url

    def sim(self, **options: float | int) -> str:
        """The vLLM simulator with `options` (e.g. max_num_seqs=64, prefill_ms=200); returns its URL."""
        port = free_port()
        args = ["sim", "--port", str(port), "--model", MODEL, "--log-level", "warning"]
        for name, value in options.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        url = f"http://127.0.0.1:{port}"
        self._python("sim", args, {}, f"{url}/health")
        return url

    def model_server(self, server: ModelServer, **options: float | int) -> str:
        """The URL of `server`; for our simulator, started here with `options` (see `sim`)."""
        return server.url if server.url is not None else self.sim(**options)

    def worker(self, env: dict[str, str], model: str = MODEL) -> Service:
        return self._python("worker", ["worker", "--model", model], env, None)

    def api(self, env: dict[str, str]) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self._python("api", ["api"], {**env, "API_PORT": str(port)}, f"{url}/health")
        return url

    def python(self, name: str, module_args: list[str], env: dict[str, str] | None = None) -> Service:
        """`python -m <module_args>`, e.g. a helper of bench/ run as a separate process."""
        return self._python(name, module_args, env or {}, None)

    def stack(self, sim_url: str, *, model: str = MODEL, api_key: str | None = None, **settings: str | int) -> Stack:
        """Redis, one worker and the API against `sim_url` (serving `model`, wanting `api_key` if any);
        returns once the worker has registered."""
        redis_url = self.redis()
        env = stack_env(redis_url, sim_url, model, api_key, **settings)
        worker = self.worker(env, model)
        api_url = self.api(env)
        api = self.services[-1]
        wait_worker(redis_url, worker, model=model)
        return Stack(redis_url, api_url, sim_url, env, worker, api, model)


def stack_env(
    redis_url: str, sim_url: str, model: str = MODEL, api_key: str | None = None, /, **settings: str | int
) -> dict[str, str]:
    """The environment of the workers and the API: quiet logs, one model served by `sim_url`, with
    LLM_API_KEY when the server wants a key. The benchmarks' one client may queue any number of jobs (its
    default CLIENT_MAX_QUEUED_JOBS would refuse the floods they measure); `settings` win."""
    env = {
        "ENV": "dev",
        "REDIS_URL": redis_url,
        "LLM_TABLE": json.dumps([[model, sim_url]]),
        "LOG_LEVEL": "WARNING",
        "API_KEYS": API_KEY,
        "CLIENT_MAX_QUEUED_JOBS": "0",
    }
    if api_key is not None:
        env["LLM_API_KEY"] = api_key
    return env | {name: str(value) for name, value in settings.items()}


def wait_worker(redis_url: str, worker: Service, timeout: float = 30, *, model: str = MODEL) -> None:
    """Until the worker's first heartbeat is in Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        registered = lambda: int(sync(client.zcard(keys.workers(model)))) > 0  # noqa: E731
        wait_until(registered, timeout, "worker registered", worker.process)
    finally:
        client.close()


@dataclass
class Stack:
    redis_url: str
    api_url: str
    sim_url: str
    env: dict[str, str]
    worker: Service
    api: Service
    model: str = MODEL

    def redis(self, name: str = "bench") -> redis.Redis:
        return bench_redis(self.redis_url, name)


def bench_redis(url: str, name: str = "bench") -> redis.Redis:
    """A client of ours, named so that CLIENT LIST tells it from the processes under test."""
    return redis.Redis.from_url(url, decode_responses=True, client_name=name)


def model_load(api: httpx.Client) -> tuple[int, int]:
    """(queued, running) of the model, as GET /v1/models reports it."""
    data = api.get("/v1/models").json()["data"][0]
    return int(data["queued"]), int(data["running"])


# ---- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    """CPU used by some processes (and this one) between `start()` and `stop()`, in % of one core."""

    def __init__(self, services: dict[str, Service]) -> None:
        self.pids = {name: service.pid for name, service in services.items()} | {"bench client": os.getpid()}
        self._before: dict[str, float] = {}
        self._began = 0.0
        self.percent: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # CPU seconds used

    def start(self) -> None:
        self._began = time.monotonic()
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._began
        self.seconds = {name: cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()}
        self.percent = {name: round(100 * used / wall, 1) for name, used in self.seconds.items()}
        return self.percent


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def sync(reply: object) -> Any:
    """A reply of the synchronous redis client (typed by redis-py as possibly awaitable)."""
    assert not inspect.isawaitable(reply)
    return reply


def command_calls(client: redis.Redis) -> tuple[int, dict[str, int]]:
    """total_commands_processed and the calls of each command, from one INFO (so one command of ours)."""
    info: dict[str, Any] = sync(client.info("all"))
    calls = {
        name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in info.items() if name.startswith("cmdstat_")
    }
    return int(info["total_commands_processed"]), calls


def own_command_overhead(client: redis.Redis) -> int:
    """How many commands two back-to-back `command_calls` count: what a measurement adds by itself."""
    first, _ = command_calls(client)
    second, _ = command_calls(client)
    return second - first


def poll(predicate: Callable[[], bool], within: float, what: str, interval: float = 0.05) -> None:
    """Call `predicate` every `interval` seconds until it is true; TimeoutError after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {within:.0f}s")
        time.sleep(interval)


async def apoll(check: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.05) -> None:
    """`poll` for an async check."""
    try:
        async with asyncio.timeout(within):
            while True:
                if await check():
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"{what}: not done after {within:.0f}s") from None


# ---- reporting ---------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure, its baseline from the same run, and the target it is held to."""

    name: str
    unit: str
    measured: float
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""  # e.g. "ratio >= 0.95", "<= 10 ms"; empty: informative
    met: bool | None = None
    reference: str = ""  # a number from elsewhere to compare with (e.g. the issue's)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.measured / self.baseline


@dataclass
class Result:
    bench: str
    figures: list[Figure]
    options: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def print_table(result: Result, *, details: bool = True) -> None:
    header = ["figure", "unit", "baseline", "measured", "ratio", "target", "met", "reference"]
    rows = [header]
    for figure in result.figures:
        met = {None: "", True: "yes", False: "NO"}[figure.met]
        baseline = _number(figure.baseline) + (f" ({figure.baseline_name})" if figure.baseline_name else "")
        measured, ratio = _number(figure.measured), _number(figure.ratio)
        rows.append([figure.name, figure.unit, baseline, measured, ratio, figure.target, met, figure.reference])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"\n== {result.bench} ({result.seconds:.0f} s) ==")
    for index, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))
    for name, value in result.details.items() if details else ():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        print(f"  {name}: {text if len(text) <= 1200 else '(long: see the JSON line)'}")


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True, check=False)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": versions.stdout.split()[2].removeprefix("v=") if versions.stdout else "?",
        "load_1m": round(os.getloadavg()[0], 2),
    }


def save(result: Result) -> Path:
    """Append the result as one JSON line to bench/results/<bench>.jsonl."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{result.bench}.jsonl"
    line = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bench": result.bench,
        "seconds": round(result.seconds, 1),
        "machine": machine(),
        "options": result.options,
        "figures": [asdict(figure) | {"ratio": figure.ratio} for figure in result.figures],
        "details": result.details,
    }
    with path.open("a") as file:
        file.write(json.dumps(line) + "\n")
    return path
