"""Listing: `GET /v1/jobs?limit=100` with filters over 1,000,000 stored jobs, and `GET /v1/jobs/stats` against
`GET /health`.

Our own redis-server (AOF switched off once started: 1.1 M jobs would write gigabytes of it, and its rewrite would
compete for the cores while we measure; nothing here reads it back). No worker and no model server: the jobs are
written by the bench itself, fast, through the product's paths where they exist:

- `ApiJobStore.submit` (submit.lua: records, queues, the client's unfinished jobs, its index sets) in arrays of 1,000,
  --listing-jobs jobs of client A and --listing-other-jobs of client B, one array of B after every ten of A, so that
  B's jobs are spread over the same time range (an index shared by the clients would make A's pages walk them);
- then, array by array, the bench's own Lua script (`MARK`) gives each job its status as the worker's start.lua and
  finish.lua, or the API's cancel.lua, would: the record's status, times, attempts, result (and the request dropped)
  or error, its moves between the index sets (index.lua's `index_move`, the same code), the queues and the client's
  unfinished jobs left, the set of expiring jobs joined and the record's TTL. Not written: the token streams (they
  expire STREAM_TTL after the end), the models' activity streams (capped) and the token settlements.

The jobs: ~80-character prompts, max_tokens 100; 2 models (A: two thirds, B: one third); metadata on 4 jobs of 5,
`{"citizen": "<n % 1000>", "service": "caf" | "ants"}` (citizen=42: 0.1 % of the jobs; service=caf: 40 %). The newest
5 % are queued (nine in ten) or running; the others succeeded (94.5 %, a ~--listing-answer-chars answer), failed (4 %)
or were cancelled (1.5 %).

Then two API processes: `python -m bench.timed_api` (the API plus a `Server-Timing` header: the time inside the
application, from the request head parsed to the answer started) for the server times, and `python -m api` for the
request rates. Measured, one request at a time on one keep-alive connection (--listing-requests each, after 20 of
warm-up; the values of a filter vary from one request to the next where they can): the server time p50 and p99 of
each filter, and the list script's mean time inside Redis (INFO commandstats); every page of a few selective filters
from the first to the last (`next_after`), checked complete and without duplicates against the jobs written; the
same for client B (isolation: none of A's pages holds a job of B's, and B's pages cost what A's do). Then
`GET /v1/jobs/stats` against `GET /health` of the same process with the load generator of `polling` (bench/loadgen.py,
a separate process, --listing-connections connections, --listing-rounds rounds of --listing-seconds, the round of the
median ratio reported); informative: a listing under the same load. Last, the memory: INFO `used_memory` per job, and
the bytes of the index structures (every `spp:idx:*` set and `spp:expiring`, used_memory before and after deleting
them) per job.

Baseline of the server times: 100 `GET /v1/jobs/{id}` (one job each, the alternative of a client without a listing),
measured in the same run on the same process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
import redis
import uvloop
from redis.commands.core import AsyncScript

from api.auth import KeyRing
from api.jobs import ApiJobStore
from bench import loadgen
from bench.common import AUTH, MODEL, CpuMeter, Figure, Processes, Result, bench_redis, percentile, stack_env, sync
from bench.loadgen import Load
from bench.memory import drop_indexes, memory
from bench.submission import add_compare_arguments, compare
from shared import keys
from shared.connection import redis_client
from shared.models import JobCreate, JobStatus
from shared.scripts import script_source
from shared.settings import Settings
from shared.store import REAP_GRACE
from stack.processes import free_port, http_ok, wait_until

NAME = "listing"
NO_MODEL_SERVER = "http://127.0.0.1:9"  # no worker runs: the model servers are never called
OTHER_MODEL = "AgentPublic/albert-large"
MODELS = (MODEL, OTHER_MODEL)
API_KEY_B = "bench-key-b"
AUTH_B = {"Authorization": f"Bearer {API_KEY_B}"}
ARRAY = 1000
"""Jobs per `ApiJobStore.submit` call: MAX_JOBS_PER_REQUEST."""
OTHER_EVERY = 10
"""One array of client B's after every this many of A's."""
ACTIVE_SHARE = 0.05
"""The newest jobs of this share are queued or running; the older ones have finished."""
PAGE = 100
SERVER_TARGET_MS = 5.0
RATIO_TARGET = 0.7
WARMUP = 20
SETTINGS: dict[str, str | int] = {
    "MAX_QUEUE_DEPTH": 0,
    "CLIENT_MAX_QUEUED_JOBS": 0,
    "CLIENT_MAX_STORED_BYTES": 0,
    "RATE_LIMIT": 0,
    "LLM_TABLE": json.dumps([[model, NO_MODEL_SERVER] for model in MODELS]),
    "API_KEYS": f"bench-key,{API_KEY_B}",
}
"""The stack's settings: two models, the limits a flood of 1.1 M queued jobs would hit off (0: none)."""

MARK = """
-- The bench's stand-in for start.lua + finish.lua (the worker) and cancel.lua (the API), on queued jobs of one client.
-- ARGV: now_ms, the record's TTL (s), RESULT_TTL (s), owner, the client's unfinished jobs, the prefix of clients'
--       job indexes, the set of expiring jobs, a result (JSON), an error (JSON), the prefix of records, the number m
--       of models, m × (model, its queue, the client's queue on it, its running set), then (key id, status) pairs.
local now, record_ttl, result_ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local owner, unfinished, index_prefix, expiring = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local result, failure, record_prefix = ARGV[8], ARGV[9], ARGV[10]
local m = tonumber(ARGV[11])
local models = {}
for i = 0, m - 1 do
  local p = 12 + 4 * i
  models[ARGV[p]] = {ARGV[p + 1], ARGV[p + 2], ARGV[p + 3]}
end
for p = 12 + 4 * m, #ARGV, 2 do
  local kid, status = ARGV[p], ARGV[p + 1]
  local key = record_prefix .. kid
  local job = redis.call('HMGET', key, 'id', 'model', 'arq', 'index', 'rank')
  local model = models[job[2]]
  redis.call('ZREM', model[1], job[3])
  redis.call('ZREM', model[2], job[3])
  if status == 'running' then
    redis.call('HSET', key, 'status', 'running', 'started_at', now, 'attempts', 1, 'run', 1, 'worker', 'bench-1')
    redis.call('ZADD', model[3], now + 3600000, kid)
  else
    redis.call('ZREM', unfinished, kid)
    if status == 'cancelled' then
      redis.call('HSET', key, 'status', status, 'finished_at', now)
    else
      local outcome, value = 'error', failure
      if status == 'succeeded' then outcome, value = 'result', result end
      redis.call('HSET', key, 'status', status, 'finished_at', now, 'started_at', now - 1500, 'attempts', 1, 'run',
        1, 'worker', 'bench-1', 'activity', now .. '-0', outcome, value)
      if status == 'succeeded' then redis.call('HDEL', key, 'request') end
    end
    redis.call('EXPIRE', key, record_ttl)
    redis.call('ZADD', expiring, now + result_ttl * 1000, kid)
  end
  index_move(index_scopes(index_prefix, owner, job[2], job[4]), job[1], 'queued', status, job[5])
end
return 1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    add_compare_arguments(group, NAME, "stats")
    group.add_argument("--listing-jobs", type=int, default=1_000_000, help="jobs of client A (1000000)")
    group.add_argument("--listing-other-jobs", type=int, default=100_000, help="jobs of client B (100000)")
    group.add_argument("--listing-requests", type=int, default=200, help="timed requests per filter (200)")
    group.add_argument("--listing-answer-chars", type=int, default=400, help="characters of an answer (400)")


# ---- the jobs ------------------------------------------------------------------------------------------


def job_metadata(n: int) -> dict[str, str] | None:
    """Job n's metadata: none for one job in 5, else its citizen (n mod 1000) and its service (caf when n is odd)."""
    if n % 5 == 0:
        return None
    return {"citizen": str(n % 1000), "service": "caf" if n % 2 else "ants"}


def job_model(n: int) -> str:
    return MODELS[1] if n % 3 == 2 else MODELS[0]


def job_status(n: int, total: int, draw: float) -> JobStatus:
    """Job n's status out of `total`, from a uniform `draw` in [0, 1): the newest ACTIVE_SHARE queued (9 in 10) or
    running, the others succeeded (94.5 %), failed (4 %) or cancelled (1.5 %)."""
    if n >= total * (1 - ACTIVE_SHARE):
        return JobStatus.QUEUED if draw < 0.9 else JobStatus.RUNNING
    if draw < 0.945:
        return JobStatus.SUCCEEDED
    return JobStatus.FAILED if draw < 0.985 else JobStatus.CANCELLED


def job_create(n: int) -> JobCreate:
    return JobCreate(
        prompt=f"Bonjour, où en est mon dossier n°{n} ? Je l'ai déposé il y a trois semaines.",
        model=job_model(n),
        params={"max_tokens": 100},
        metadata=job_metadata(n),
    )


@dataclass
class Client:
    """One client's jobs as written: what its listings must find."""

    name: str
    owner: str
    total: int
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(model, status) → jobs."""
    citizens: Counter[str] = field(default_factory=Counter)
    citizen_services: Counter[tuple[str, str]] = field(default_factory=Counter)
    ids: set[str] = field(default_factory=set)
    """Its job ids, kept for client B only (isolation checks)."""
    created: list[int] = field(default_factory=list)
    """`created_at` (ms) of each of its arrays, in order."""
    written: int = 0


@dataclass
class Writer:
    """Writes the jobs: `ApiJobStore.submit`, then `MARK`."""

    store: ApiJobStore
    mark: AsyncScript
    settings: Settings
    rng: random.Random
    answer: str
    error: str

    async def array(self, client: Client, keep_ids: bool) -> None:
        first = client.written
        count = min(ARRAY, client.total - first)
        jobs = [job_create(n) for n in range(first, first + count)]
        submitted = await self.store.submit(client.owner, jobs)
        client.created.append(int(submitted[0].record["created_at"]))
        ended: list[tuple[str, str]] = []
        for n, item in zip(range(first, first + count), submitted, strict=True):
            job_id = item.record["id"]
            status = job_status(n, client.total, self.rng.random())
            model, metadata = job_model(n), job_metadata(n)
            client.counts[(model, status.value)] += 1
            if metadata is not None:
                client.citizens[metadata["citizen"]] += 1
                client.citizen_services[(metadata["citizen"], metadata["service"])] += 1
            if keep_ids:
                client.ids.add(job_id)
            if status != JobStatus.QUEUED:
                ended.append((job_id, status.value))
        client.written += count
        await self.end(client.owner, ended)

    async def end(self, owner: str, jobs: list[tuple[str, str]]) -> None:
        """`MARK` on the client's queued jobs: (job id, the status each gets)."""
        if not jobs:
            return
        per_model = [
            value
            for model in self.settings.models
            for value in (model, keys.queue(model), keys.client_queue(model, owner), keys.running(model))
        ]
        await self.mark(
            args=[
                int(time.time() * 1000),
                self.settings.RESULT_TTL + REAP_GRACE,
                self.settings.RESULT_TTL,
                owner,
                keys.client_jobs(owner),
                keys.index_prefix(""),
                keys.expiring(),
                self.answer,
                self.error,
                keys.job(""),
                len(self.settings.models),
                *per_model,
                *(value for job_id, status in jobs for value in (keys.key_id(owner, job_id), status)),
            ]
        )


def make_writer(store: ApiJobStore, answer_chars: int, seed: int = 15) -> Writer:
    """A writer of jobs through `store` (and its Redis client), whose answers have `answer_chars` characters."""
    text = ("Votre dossier est en cours d'instruction auprès de la CAF. " * (answer_chars // 59 + 1))[:answer_chars]
    answer = {"text": text, "finish_reason": "stop", "usage": {"prompt_tokens": 40, "completion_tokens": 100}}
    error = {"type": "backend_error", "message": "the model server answered HTTP 503 three times"}
    return Writer(
        store,
        store.redis.register_script(script_source("index") + MARK),
        store.settings,
        random.Random(seed),
        orjson.dumps(answer).decode(),
        orjson.dumps(error).decode(),
    )


def owner_of(settings: Settings, api_key: str) -> str:
    caller = KeyRing(settings).identify(api_key)
    assert caller is not None
    return caller.owner


async def write_jobs(redis_url: str, a: Client, b: Client, answer_chars: int, progress: redis.Redis) -> float:
    """Every job of both clients, arrays of A and B interleaved; prints the memory as it goes. Returns seconds."""
    settings = Settings(_env_file=None, ENV="dev", REDIS_URL=redis_url, **SETTINGS)  # type: ignore[arg-type]
    client = redis_client(settings, "spp-bench-writer")
    store = ApiJobStore(client, settings)
    writer = make_writer(store, answer_chars)
    began = time.monotonic()
    shown = 0
    try:
        arrays = 0
        while a.written < a.total or b.written < b.total:
            if a.written < a.total:
                await writer.array(a, keep_ids=False)
                arrays += 1
            if b.written < b.total and (arrays % OTHER_EVERY == 0 or a.written >= a.total):
                await writer.array(b, keep_ids=True)
            done = a.written + b.written
            if done - shown >= 100_000 or done == a.total + b.total:
                shown = done
                used = memory(progress)["used_memory"]
                print(
                    f"  {done:>9,} jobs written ({time.monotonic() - began:5.1f} s): used_memory "
                    f"{used / 2**20:8.1f} MiB",
                    flush=True,
                )
    finally:
        await store.aclose()
        await client.aclose()
    return time.monotonic() - began


# ---- timed requests ------------------------------------------------------------------------------------


class TimedClient:
    """Sequential requests on one keep-alive connection to the timed API: the server time of each (Server-Timing)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = headers
        self._connect()

    def _connect(self) -> None:
        self.connection.close()
        self.connection.connect()
        self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, path: str) -> tuple[http.client.HTTPResponse, bytes]:
        self.connection.request("GET", path, headers=self.headers)
        answer = self.connection.getresponse()
        return answer, answer.read()

    def get(self, path: str) -> tuple[float, float, Any]:
        """(server ms, client ms, JSON answer)."""
        began = time.perf_counter()
        try:
            answer, body = self._send(path)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # uvicorn closes a keep-alive connection idle for 5 s: open another one, untimed.
            self._connect()
            began = time.perf_counter()
            answer, body = self._send(path)
        client_ms = 1000 * (time.perf_counter() - began)
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {answer.status}: {body[:300]!r}")
        timing = answer.getheader("server-timing") or ""
        if not timing.startswith("app;dur="):
            raise RuntimeError(f"GET {path}: no Server-Timing header")
        return float(timing.removeprefix("app;dur=")), client_ms, orjson.loads(body)

    def close(self) -> None:
        self.connection.close()


def list_path(query: list[tuple[str, str]], limit: int = PAGE, after: str | None = None) -> str:
    pairs = [("limit", str(limit)), *query] + ([("after", after)] if after else [])
    return "/v1/jobs?" + urlencode(pairs)


def script_ms(client: redis.Redis) -> float | None:
    """The mean time inside Redis of the scripts run since the last CONFIG RESETSTAT (INFO commandstats: EVALSHA's
    time is its script's, the commands it calls included); None when none ran. Not SLOWLOG: since Redis 7 it logs
    the commands a script calls too, a cost it would add to every one of them."""
    stats: dict[str, Any] = sync(client.info("commandstats"))
    script = stats.get("cmdstat_evalsha")
    return None if script is None else int(script["usec"]) / int(script["calls"]) / 1000


def timed(http: TimedClient, rdb: redis.Redis, paths: list[str], count: int) -> dict[str, Any]:
    """`count` requests cycling through `paths` (after WARMUP): server and client ms, jobs per page, Redis ms."""
    for index in range(WARMUP):
        http.get(paths[index % len(paths)])
    server, client, sizes = [], [], []
    rdb.config_resetstat()
    for index in range(count):
        server_ms, client_ms, answer = http.get(paths[index % len(paths)])
        server.append(server_ms)
        client.append(client_ms)
        sizes.append(len(answer.get("data", ())))
    return {
        "server_p50": percentile(server, 50),
        "server_p99": percentile(server, 99),
        "client_p50": percentile(client, 50),
        "redis_mean": script_ms(rdb),
        "jobs_per_page": sum(sizes) / len(sizes),
    }


def page_all(http: TimedClient, query: list[tuple[str, str]], limit: int = PAGE) -> dict[str, Any]:
    """Every page of `query`, first to last: their server times, the jobs, whether any came twice."""
    server: list[float] = []
    ids: list[str] = []
    statuses: Counter[str] = Counter()
    after: str | None = None
    began = time.perf_counter()
    while True:
        server_ms, _, answer = http.get(list_path(query, limit, after))
        server.append(server_ms)
        ids += [job["id"] for job in answer["data"]]
        statuses.update(job["status"] for job in answer["data"])
        if not answer["has_more"]:
            break
        after = answer["next_after"]
    return {
        "pages": len(server),
        "jobs": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "ids": ids,
        "statuses": dict(statuses),
        "server_p50": percentile(server, 50),
        "server_p99": percentile(server, 99),
        "server_total_ms": sum(server),
        "client_total_ms": 1000 * (time.perf_counter() - began),
    }


def cases(a: Client) -> dict[str, list[list[tuple[str, str]]]]:
    """The filters measured, each as the queries its requests cycle through."""
    half, newest = a.created[len(a.created) // 2], a.created[len(a.created) * 9 // 10]
    seconds = [f"{(created + step) / 1000:.3f}" for created in (half, newest) for step in (0, 1000, 2000)]
    return {
        "no filter": [[]],
        "status=failed": [[("status", "failed")]],
        "status=queued&status=running": [[("status", "queued"), ("status", "running")]],
        "metadata.citizen=<c> (0.1 %)": [[("metadata.citizen", str(c))] for c in range(0, 1000, 7)],
        "metadata.service=caf (40 %)": [[("metadata.service", "caf")]],
        "model=B&status=failed": [[("model", OTHER_MODEL), ("status", "failed")]],
        "status=failed&metadata.citizen=<c>": [[("status", "failed"), ("metadata.citizen", str(c))] for c in range(50)],
        "created_after=<t> (newest 10-50 %)": [[("created_after", t)] for t in seconds],
        "created_before=<t> (oldest 50-90 %)": [[("created_before", t)] for t in seconds],
        "metadata.citizen=<c>&metadata.service=caf": [
            [("metadata.citizen", str(c)), ("metadata.service", "caf")] for c in range(1, 1000, 14)
        ],
        "metadata.service=caf&metadata.citizen=<c>": [
            [("metadata.service", "caf"), ("metadata.citizen", str(c))] for c in range(1, 1000, 14)
        ],
        "no filter, limit=1000": [[("limit", "1000")]],
    }


SELECTIVE = (
    "status=failed",
    "metadata.citizen=<c> (0.1 %)",
    "model=B&status=failed",
    "status=failed&metadata.citizen=<c>",
)
"""The filters held to the target: those the indexes answer."""


def measure(http: TimedClient, rdb: redis.Redis, a: Client, requests: int) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for label, queries in cases(a).items():
        paths = []
        for query in queries:
            limit = int(dict(query).get("limit", PAGE))
            paths.append(list_path([pair for pair in query if pair[0] != "limit"], limit))
        found[label] = timed(http, rdb, paths, requests)
        row = found[label]
        print(
            f"  {label:45s} server p50 {row['server_p50']:6.2f} ms, p99 {row['server_p99']:6.2f} ms; Redis mean "
            f"{row['redis_mean'] or 0:5.2f} ms; {row['jobs_per_page']:6.1f} jobs a page",
            flush=True,
        )
    return found


def check_stats(http: TimedClient, client: Client) -> dict[str, Any]:
    """The client's counts against the jobs written."""
    _, _, stats = http.get("/v1/jobs/stats")
    expected = {model: {status.value: client.counts[(model, status.value)] for status in JobStatus} for model in MODELS}
    if stats["models"] != expected or stats["total"] != client.total:
        raise RuntimeError(f"stats of {client.name}: {stats}, expected {expected}")
    _, _, one = http.get("/v1/jobs/stats?" + urlencode({"metadata.citizen": "42"}))
    if one["total"] != client.citizens["42"]:
        raise RuntimeError(f"stats of {client.name}, citizen 42: {one['total']}, expected {client.citizens['42']}")
    return {"total": stats["total"], "counts": stats["counts"]}


# ---- the benchmark -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    details: dict[str, Any] = {}
    with Processes(NAME) as processes:
        redis_url = processes.redis()
        redis_service = processes.services[-1]
        rdb = bench_redis(redis_url)
        rdb.config_set("appendonly", "no")
        settings = Settings(_env_file=None, ENV="dev", REDIS_URL=redis_url, **SETTINGS)  # type: ignore[arg-type]
        a = Client("A", owner_of(settings, "bench-key"), args.listing_jobs)
        b = Client("B", owner_of(settings, API_KEY_B), args.listing_other_jobs)
        start = memory(rdb)
        seconds = uvloop.run(write_jobs(redis_url, a, b, args.listing_answer_chars, rdb))
        written = memory(rdb)
        jobs = a.total + b.total
        details["write"] = {"seconds": round(seconds, 1), "jobs_per_s": round(jobs / seconds)}
        details["memory_written"] = written
        details["counts_a"] = {f"{model} {status}": n for (model, status), n in sorted(a.counts.items())}
        print(f"  written in {seconds:.0f} s; {(written['used_memory'] - start['used_memory']) / jobs:.0f} B per job")

        env = stack_env(redis_url, NO_MODEL_SERVER, MODEL, None, **SETTINGS)
        port = free_port()
        timed_url = f"http://127.0.0.1:{port}"
        timed_api = processes.python("timed-api", ["bench.timed_api"], {**env, "API_PORT": str(port)})
        wait_until(lambda: http_ok(f"{timed_url}/health"), 30, "timed API", timed_api.process)
        http = TimedClient(timed_url, AUTH)
        http_b = TimedClient(timed_url, AUTH_B)
        try:
            details["stats_a"] = check_stats(http, a)
            details["stats_b"] = check_stats(http_b, b)
            # The baseline: reads of one job by id (the newest page's jobs).
            _, _, first = http.get(list_path([]))
            by_id = timed(http, rdb, [f"/v1/jobs/{job['id']}" for job in first["data"]], args.listing_requests)
            print(f"  GET /v1/jobs/{{id}}: server p50 {by_id['server_p50']:.2f} ms, p99 {by_id['server_p99']:.2f} ms")
            filters = measure(http, rdb, a, args.listing_requests)
            other = {
                "no filter": timed(http_b, rdb, [list_path([])], args.listing_requests),
                "metadata.citizen=<c>": timed(
                    http_b, rdb, [list_path([("metadata.citizen", str(c))]) for c in range(0, 1000, 7)], 100
                ),
            }
            print(
                f"  client B, no filter: server p50 {other['no filter']['server_p50']:.2f} ms; metadata.citizen=<c>: "
                f"{other['metadata.citizen=<c>']['server_p50']:.2f} ms",
                flush=True,
            )
            paged = {
                "metadata.citizen=42": (page_all(http, [("metadata.citizen", "42")]), a.citizens["42"]),
                "model=B&status=failed": (
                    page_all(http, [("model", OTHER_MODEL), ("status", "failed")]),
                    a.counts[(OTHER_MODEL, "failed")],
                ),
                "metadata.citizen=43&metadata.service=caf": (
                    page_all(http, [("metadata.citizen", "43"), ("metadata.service", "caf")]),
                    a.citizen_services[("43", "caf")],
                ),
                "metadata.service=caf&metadata.citizen=43": (
                    page_all(http, [("metadata.service", "caf"), ("metadata.citizen", "43")]),
                    a.citizen_services[("43", "caf")],
                ),
                "B: metadata.citizen=42": (page_all(http_b, [("metadata.citizen", "42")]), b.citizens["42"]),
            }
            leaked = sum(
                len(b.ids.intersection(found["ids"])) for label, (found, _) in paged.items() if label[:2] != "B:"
            )
            leaked_back = len(set(paged["B: metadata.citizen=42"][0]["ids"]) - b.ids)
            for label, (found, expected) in paged.items():
                print(
                    f"  paging {label}: {found['jobs']} jobs of {expected} in {found['pages']} pages "
                    f"({found['duplicates']} twice), server p50 {found['server_p50']:.2f} ms a page, "
                    f"{found['server_total_ms']:.0f} ms in all",
                    flush=True,
                )
                found.pop("ids")
        finally:
            http.close()
            http_b.close()
            timed_api.stop()

        api_url = processes.api(env)
        meter = {"api": processes.services[-1], "redis": redis_service}
        health = Load("GET", ["/health"], AUTH)
        stats = Load("GET", ["/v1/jobs/stats"], AUTH)
        listing = Load("GET", [list_path([("metadata.citizen", str(c))]) for c in range(1000)], AUTH)
        try:
            load = compare(
                api_url,
                health,
                stats,
                meter,
                args.listing_connections,
                args.listing_seconds,
                args.listing_rounds,
                wrk=False,
            )
            listed = loadgen.run(api_url, listing, CpuMeter(meter), args.listing_connections, args.listing_seconds, 1.0)
        finally:
            health.close()
            stats.close()
            listing.close()
        details["stats_load"] = load
        details["listing_load"] = listed

        before_drop = memory(rdb)
        dropped = drop_indexes(rdb)
        rdb.close()
    details["filters"] = filters
    details["by_id"] = by_id
    details["client_b"] = other
    details["paged"] = {label: found | {"expected": expected} for label, (found, expected) in paged.items()}
    details["indexes"] = dropped
    per_job = (before_drop["used_memory"] - start["used_memory"]) / jobs
    index_per_job = dropped["bytes"] / jobs
    baseline_ms = PAGE * by_id["server_p50"]
    figures = [Figure("GET /v1/jobs/{id}: server time p50 (x100: the baseline)", "ms", by_id["server_p50"])]
    for label, row in filters.items():
        selective = label in SELECTIVE
        figures.append(
            Figure(
                f"GET /v1/jobs?{label}: server p50",
                "ms",
                row["server_p50"],
                baseline_ms,
                "100 reads by id",
                f"<= {SERVER_TARGET_MS:g} ms" if selective else "",
                row["server_p50"] <= SERVER_TARGET_MS if selective else None,
                f"p99 {row['server_p99']:.2f} ms, Redis mean {row['redis_mean'] or 0:.2f} ms, "
                f"{row['jobs_per_page']:.0f} jobs a page",
            )
        )
    figures.append(
        Figure(
            "client B (isolation), no filter: server p50",
            "ms",
            other["no filter"]["server_p50"],
            filters["no filter"]["server_p50"],
            "client A's",
            reference=f"B has {b.total:,} jobs, A {a.total:,}",
        )
    )
    complete = all(found["jobs"] == expected and found["duplicates"] == 0 for found, expected in paged.values())
    figures += [
        Figure(
            "paged filters: jobs found / written, none twice",
            "",
            sum(found["jobs"] for found, _ in paged.values()),
            sum(expected for _, expected in paged.values()),
            "written",
            "ratio == 1",
            complete,
            "; ".join(f"{label}: {found['pages']} pages" for label, (found, _) in paged.items()),
        ),
        Figure(
            "jobs of another client in a page",
            "jobs",
            leaked + leaked_back,
            target="== 0",
            met=leaked + leaked_back == 0,
        ),
    ]
    health_rps, stats_rps = load["baseline_rps"], load["measured_rps"]
    figures += [
        Figure("GET /health (baseline)", "req/s", health_rps),
        Figure(
            "GET /v1/jobs/stats",
            "req/s",
            stats_rps,
            health_rps,
            "health",
            f"ratio >= {RATIO_TARGET}",
            stats_rps / health_rps >= RATIO_TARGET,
        ),
        Figure(
            "GET /v1/jobs?limit=100&metadata.citizen=<c> (informative)",
            "req/s",
            listed["rps"],
            health_rps,
            "health",
        ),
        Figure(
            "Redis memory per job (used_memory)",
            "B",
            per_job,
            per_job - index_per_job,
            "without the indexes",
            reference=f"indexes {index_per_job:.0f} B a job ({dropped['index_entries'] / jobs:.2f} entries + "
            f"{dropped['expiring'] / jobs:.2f} expiring)",
        ),
    ]
    options = {
        "jobs": a.total,
        "other_jobs": b.total,
        "requests": args.listing_requests,
        "answer_chars": args.listing_answer_chars,
        "seconds": args.listing_seconds,
        "rounds": args.listing_rounds,
        "connections": args.listing_connections,
    }
    return Result(NAME, figures, options, details)
