"""Fair share (issue 14): a client's flood does not slow another client down, weights share the tokens, and
fairness costs nothing.

Setup: the simulator with --max-num-seqs 64 --prefill-ms 50 --ms-per-token 10 (100 tokens/s a sequence, 6,400
completion tokens/s in all) and one worker with WORKER_MAX_JOBS=64, the server's slots, as WORKER_MAX_JOBS=256 for
vLLM's max_num_seqs of 256: a job the worker starts starts on the server, so the fair order, not the server's FIFO,
decides what runs next. Jobs draw max_tokens from {32, 128, 512} and prompts of 1 to 8 paragraphs (140 to 1,100
characters): 2.3 s a job on average, 28 jobs/s, 840 jobs a 30 s window (a 512-token job lasts a sixth of it). The
simulator generates exactly max_tokens tokens (finish_reason "length") unless a `stop` string comes first (or
--early-stop-rate, not used here); a job whose generation stops early used fewer tokens than the scheduler's
estimate at submission, prompt characters / 4 + max_tokens, and finish.lua corrects its client's finish tag with the
tokens used. Clients are named in an
API_KEYS_FILE with their weights; none has a queue limit.

1. isolation: client B submits one job at a time (max_tokens 32, POST -> `done` event of /events), alone, then
   while client A floods: a 5,000-line batch (Files + Batch API) and 2,000 interactive jobs. Target: B's p50 under
   the flood <= 1.5 x B's p50 alone.
2. shares: clients of weight 3 and 1, then 1 and 1, then 1 and 1 where one client's jobs stop at the first full stop
   (17 tokens on average, of their 32 to 512); each is topped up every second to 64 + 200 jobs queued or running (GET
   /v1/usage). After a warm-up, N windows; the worker is then stopped (SIGTERM: its running jobs finish) and every
   job read. A job's tokens (usage: prompt + completion) are spread evenly over its run,
   started_at -> finished_at. Per window: heavy/light real tokens (target 3.0 within 5 %); the same with the
   estimated cost (what a scheduler charging only its estimate would see), and with the real tokens of the jobs that
   started in the window (the scheduler's order alone, before any service time); Jain's index of the real tokens of
   the clients of the lowest weight (target >= 0.98). No target is met unless every client had jobs queued at every
   top-up of the windows (more than the 64 slots queued or running).
3. no cost: bench/throughput.py's direct client against its pipeline (target >= 0.97), then the same pipeline with
   WORKER_MAX_JOBS equal to the simulator's 64 slots, as above; bench/submission.py's POST /v1/jobs against
   GET /health (target >= 0.5).
--quick: smaller sizes, 2 windows of 10 s, and one shares case with three clients (3, 1, 1); under 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson
import uvloop

from api.jobs import CHARS_PER_TOKEN
from bench import submission, throughput
from bench.common import AUTH, MODEL, Figure, Processes, Result, Stack, model_load, percentile, poll
from bench.http import Connection
from bench.loadgen import Load

NAME = "fairness"
SLOTS = 64
SIM = {"max_num_seqs": SLOTS, "prefill_ms": 50, "ms_per_token": 10}
LENGTHS = (32, 128, 512)
PARAGRAPH = (
    "Bonjour, j'ai déposé ma demande de carte grise sur le site de l'ANTS il y a trois semaines et le suivi "
    "indique toujours « en cours d'instruction ». "
)
BACKLOG = 200
"""Jobs each client keeps queued beyond the slots, topped up every second: seconds of work even for short jobs."""
WARMUP_S = 15.0
"""Before the first window: longer than the longest job (50 ms + 512 x 10 ms), so that the jobs a worker took before
every client had submitted have ended (a client alone may take every slot)."""
ISOLATION_TARGET, SHARE_TOLERANCE, JAIN_TARGET, THROUGHPUT_TARGET = 1.5, 0.05, 0.98, 0.97


@dataclass(frozen=True)
class Case:
    """Clients sharing one model: their weights, and the `stop` strings of some clients' jobs."""

    label: str
    weights: dict[str, float]
    stops: dict[str, list[str]] = field(default_factory=dict)


EARLY_STOP = ["."]
"""A `stop` that ends a job at the simulator's first full stop, 17 tokens in on average: far below its max_tokens."""
FULL_CASES = (
    Case("weights 3:1", {"heavy": 3, "light": 1}),
    Case("weights 1:1", {"left": 1, "right": 1}),
    Case("weights 1:1, one stops early", {"whole": 1, "early": 1}, {"early": EARLY_STOP}),
)
QUICK_CASES = (Case("weights 3:1:1", {"heavy": 3, "light": 1, "equal": 1}),)


@dataclass(frozen=True)
class Sizes:
    """How much each part measures: --quick, or the full run, with the options given."""

    windows: int
    window_s: float
    warmup_s: float
    probe_jobs: int
    cases: tuple[Case, ...]
    throughput_jobs: int
    submit_rounds: int
    submit_seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--quick", action="store_true", help="fairness: the small run (under 2 minutes)")
    group.add_argument("--fair-windows", type=int, help="fairness: measured windows a case (4; --quick 2)")
    group.add_argument("--fair-window-s", type=float, help="fairness: seconds a window (30; --quick 10)")
    group.add_argument("--probe-jobs", type=int, help="fairness: client B's jobs, alone and flooded (40; --quick 10)")


def sizes(args: argparse.Namespace) -> Sizes:
    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    return Sizes(
        windows=pick(args.fair_windows, 4, 2),
        window_s=pick(args.fair_window_s, 30.0, 10.0),
        warmup_s=WARMUP_S,
        probe_jobs=pick(args.probe_jobs, 40, 10),
        cases=QUICK_CASES if quick else FULL_CASES,
        throughput_jobs=300 if quick else 2000,
        submit_rounds=3 if quick else 7,
        submit_seconds=2.0 if quick else 3.0,
    )


# ---- jobs and clients ----------------------------------------------------------------------------


def job_body(rng: random.Random, index: int, stop: list[str] | None = None) -> dict[str, Any]:
    """A job of the mix: 1 to 8 paragraphs, max_tokens among LENGTHS."""
    prompt = f"Demande {index}. " + PARAGRAPH * rng.randint(1, 8)
    params: dict[str, Any] = {"max_tokens": rng.choice(LENGTHS)} | ({"stop": stop} if stop else {})
    return {"prompt": prompt, "params": params}


def estimated_cost(job: dict[str, Any]) -> int:
    """The scheduler's cost of a job (api/jobs.py): prompt characters / 4, rounded up, + max_tokens."""
    return -(-len(job["prompt"]) // CHARS_PER_TOKEN) + int(job["params"]["max_tokens"])


def key_of(client: str) -> str:
    return f"{client}-key"


def headers_of(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_of(client)}"}


def fair_stack(processes: Processes, weights: dict[str, float]) -> Stack:
    """Simulator, Redis, one worker with the server's slots and the API, `weights` in its keys file."""
    clients = {name: {"key": key_of(name), "weight": weight, "max_queued_jobs": 0} for name, weight in weights.items()}
    path = processes.dir / "clients.json"
    path.write_text(json.dumps(clients))
    sim_url = processes.sim(**SIM)
    return processes.stack(sim_url, API_KEYS_FILE=str(path), MAX_QUEUE_DEPTH=0, WORKER_MAX_JOBS=SLOTS)


def submit(http: httpx.Client, client: str, jobs: list[dict[str, Any]]) -> list[str]:
    """The jobs' ids, posted as arrays of 1,000."""
    ids: list[str] = []
    for start in range(0, len(jobs), 1000):
        response = http.post("/v1/jobs", json=jobs[start : start + 1000], headers=headers_of(client))
        response.raise_for_status()
        ids += [job["id"] for job in response.json()]
    return ids


async def fetch(api_url: str, client: str, ids: list[str], concurrency: int = 8) -> list[dict[str, Any]]:
    """Every job of `client`, `concurrency` GETs at a time."""
    pending, jobs = iter(ids), []

    async def reader() -> None:
        connection = Connection.to(api_url, headers_of(client))
        try:
            for job_id in pending:
                jobs.append(orjson.loads((await connection.request("GET", f"/v1/jobs/{job_id}")).body))
        finally:
            await connection.close()

    await asyncio.gather(*(reader() for _ in range(concurrency)))
    return jobs


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


# ---- 1. isolation --------------------------------------------------------------------------------


async def probe(api_url: str, count: int, max_tokens: int = 32) -> list[float]:
    """Client B: `count` jobs one after the other; POST sent -> `done` event received, in ms."""
    api = Connection.to(api_url, AUTH)
    samples: list[float] = []
    try:
        for index in range(count):
            body = orjson.dumps(
                {"prompt": f"Question {index} : où en est ma demande ?", "params": {"max_tokens": max_tokens}}
            )
            began = time.perf_counter()
            job = orjson.loads((await api.request("POST", "/v1/jobs", body)).body)
            events = b""
            async for piece in api.stream("GET", f"/v1/jobs/{job['id']}/events"):
                events += piece
            if b'"status":"succeeded"' not in events.rsplit(b"event: done", 1)[-1]:
                raise RuntimeError(f"client B's job {job['id']} did not succeed: {events[-300:]!r}")
            samples.append(1000 * (time.perf_counter() - began))
    finally:
        await api.close()
    return samples


def flood(http: httpx.Client, rng: random.Random, lines: int, jobs: int) -> dict[str, Any]:
    """Client A: a batch of `lines` requests and `jobs` interactive jobs; returns once the batch is queued."""
    began = time.monotonic()
    requests = []
    for index in range(lines):
        job = job_body(rng, index)
        body = {"model": MODEL, "prompt": job["prompt"], **job["params"]}
        requests.append({"custom_id": f"a-{index}", "method": "POST", "url": "/v1/completions", "body": body})
    content = b"".join(orjson.dumps(request) + b"\n" for request in requests)
    headers = headers_of("flood")
    upload = http.post("/v1/files", files={"file": ("a.jsonl", content)}, data={"purpose": "batch"}, headers=headers)
    upload.raise_for_status()
    endpoint = {"input_file_id": upload.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
    batch = http.post("/v1/batches", json=endpoint, headers=headers)
    batch.raise_for_status()
    ids = submit(http, "flood", [job_body(rng, lines + index) for index in range(jobs)])
    status = ""

    def queued() -> bool:
        nonlocal status
        status = str(http.get(f"/v1/batches/{batch.json()['id']}", headers=headers).json()["status"])
        return status != "validating"

    poll(queued, 60, "client A's batch queued", 0.1)
    if status != "in_progress":
        raise RuntimeError(f"client A's batch is {status}")
    return {"batch_lines": lines, "interactive_jobs": len(ids), "submitted_s": round(time.monotonic() - began, 2)}


def isolation(probe_jobs: int) -> tuple[list[Figure], dict[str, Any]]:
    rng = random.Random(1)
    with Processes(NAME) as processes:
        stack = fair_stack(processes, {"flood": 1})
        uvloop.run(probe(stack.api_url, 3))  # warm-up
        alone = uvloop.run(probe(stack.api_url, probe_jobs))
        with httpx.Client(base_url=stack.api_url, timeout=60, headers=AUTH) as http:
            details: dict[str, Any] = {"flood": flood(http, rng, 5000, 2000)}
            poll(lambda: model_load(http)[1] >= SLOTS, 30, "every slot busy with client A's jobs")
            flooded = uvloop.run(probe(stack.api_url, probe_jobs))
            details["flood"]["queued_after"] = model_load(http)[0]
    p50, p95 = percentile(alone, 50), percentile(alone, 95)
    under50, under95 = percentile(flooded, 50), percentile(flooded, 95)
    details |= {"alone_ms": sorted(round(ms) for ms in alone), "flooded_ms": sorted(round(ms) for ms in flooded)}
    print(f"  isolation: client B p50 {p50:.0f} ms alone, {under50:.0f} ms flooded; p95 {p95:.0f} / {under95:.0f} ms")
    figures = [
        Figure("B p50 submit->done, alone (baseline)", "ms", p50),
        Figure(
            "B p50 submit->done, A flooding",
            "ms",
            under50,
            p50,
            "B alone",
            f"ratio <= {ISOLATION_TARGET}",
            under50 <= ISOLATION_TARGET * p50,
        ),
        Figure("B p95 submit->done, A flooding", "ms", under95, p95, "B alone p95"),
    ]
    return figures, details


# ---- 2. shares -----------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished job of a client: its run and its tokens, real (usage) and estimated (the scheduler's cost)."""

    started: float
    finished: float
    tokens: int
    cost: int


Measure = Literal["tokens", "cost", "started"]


def spread(runs: list[Run], start: float, width: float, count: int, measure: Measure = "tokens") -> list[float]:
    """Per window of `width` seconds from `start`: the real tokens (`measure` "tokens") or the estimated cost ("cost")
    of each run spread evenly over it (a run of no length counts whole in the window of its end), or the real tokens
    of the runs that started in the window ("started": the scheduler's order, before any service time)."""
    windows = [0.0] * count
    for run in runs:
        tokens = run.cost if measure == "cost" else run.tokens
        length = run.finished - run.started
        for index in range(count):
            low, high = start + index * width, start + (index + 1) * width
            if measure == "started" or length <= 0:
                at = run.started if measure == "started" else run.finished
                windows[index] += tokens if low <= at < high else 0
            else:
                windows[index] += tokens * max(0.0, min(high, run.finished) - max(low, run.started)) / length
    return windows


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one has everything."""
    total, squares = sum(values), sum(value * value for value in values)
    return total * total / (len(values) * squares) if squares else 1.0


@dataclass
class Window:
    """One window of a case: per measure of `spread`, each client's amount; the heavy/light ratio of each measure
    (weights differ); Jain's index of the real tokens of the clients of the lowest weight (two or more)."""

    amounts: dict[str, dict[str, float]]
    ratios: dict[str, float] = field(default_factory=dict)
    jain: float | None = None


@dataclass
class Backlog:
    """The jobs of a case's clients, each kept at SLOTS + BACKLOG jobs queued or running by top-ups."""

    case: Case
    rng: random.Random = field(default_factory=lambda: random.Random(2))
    bodies: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Each client's jobs by id, as submitted."""
    fewest: dict[str, int] = field(default_factory=dict)
    """The fewest jobs queued or running each client had at a top-up since `watch`; above SLOTS, some were queued."""
    watching: bool = False

    def top_up(self, http: httpx.Client) -> None:
        for client in self.case.weights:
            usage = http.get("/v1/usage", headers=headers_of(client))
            usage.raise_for_status()
            queued = int(usage.json()["usage"]["queued_jobs"])
            if self.watching:
                self.fewest[client] = min(queued, self.fewest.get(client, queued))
            mine = self.bodies.setdefault(client, {})
            stop = self.case.stops.get(client)
            jobs = [job_body(self.rng, len(mine) + index, stop) for index in range(SLOTS + BACKLOG - queued)]
            mine.update(zip(submit(http, client, jobs), jobs, strict=True))

    def keep(self, http: httpx.Client, until: float) -> None:
        """Top up every second until `until` (time.time())."""
        while (now := time.time()) < until:
            self.top_up(http)
            time.sleep(max(0.0, min(1.0, until - now) - (time.time() - now)))


def shares(case: Case, size: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    backlog = Backlog(case)
    with Processes(NAME) as processes:
        stack = fair_stack(processes, case.weights)
        with httpx.Client(base_url=stack.api_url, timeout=60, headers=AUTH) as http:
            start = time.time() + size.warmup_s
            backlog.keep(http, start)
            backlog.watching = True
            backlog.keep(http, start + size.windows * size.window_s)
        stack.worker.stop(timeout=40)  # SIGTERM: its running jobs finish (WORKER_SHUTDOWN_GRACE 30 s)
        records = {
            client: uvloop.run(fetch(stack.api_url, client, list(backlog.bodies[client]))) for client in case.weights
        }
    runs: dict[str, list[Run]] = {}
    details: dict[str, Any] = {"fewest_queued_or_running": backlog.fewest, "jobs": {}}
    for client, jobs in records.items():
        done = [job for job in jobs if job["status"] == "succeeded"]
        runs[client] = [
            Run(
                _seconds(job["started_at"]),
                _seconds(job["finished_at"]),
                job["result"]["usage"]["prompt_tokens"] + job["result"]["usage"]["completion_tokens"],
                estimated_cost(backlog.bodies[client][job["id"]]),
            )
            for job in done
        ]
        details["jobs"][client] = {
            "submitted": len(jobs),
            "succeeded": len(done),
            "failed": sum(1 for job in jobs if job["status"] not in ("succeeded", "queued")),
            "stopped_before_max_tokens": sum(1 for job in done if job["result"]["finish_reason"] != "length"),
            "estimate_over_real_tokens": round(
                sum(r.cost for r in runs[client]) / sum(r.tokens for r in runs[client]), 3
            ),
        }
    backlogged = min(backlog.fewest.values()) > SLOTS
    windows = case_windows(case, runs, start, size)
    details["windows"] = [vars(window) for window in windows]
    return case_figures(case, windows, backlogged, size.window_s), details


MEASURES: dict[Measure, str] = {
    "tokens": "real tokens, spread over each run",
    "cost": "estimated cost, spread over each run",
    "started": "real tokens, by start",
}
"""The measures of `spread`; the first is held to the targets, the others tell the scheduler's order from the service
time (started: where each job's tokens would fall if it were served at once) and the estimate from the real tokens
(cost: what a scheduler charging its submission estimate would see)."""


def case_windows(case: Case, runs: dict[str, list[Run]], start: float, size: Sizes) -> list[Window]:
    """Each window's amounts, heavy/light ratios and Jain's index of the clients of the lowest weight; printed."""
    amounts = {
        measure: {client: spread(runs[client], start, size.window_s, size.windows, measure) for client in runs}
        for measure in MEASURES
    }
    heavy, light = max(case.weights, key=case.weights.__getitem__), min(case.weights, key=case.weights.__getitem__)
    lowest = [client for client, weight in case.weights.items() if weight == case.weights[light]]
    windows = []
    for index in range(size.windows):
        window = Window({m: {c: round(amounts[m][c][index]) for c in runs} for m in MEASURES})
        if heavy not in lowest:
            window.ratios = {m: amounts[m][heavy][index] / amounts[m][light][index] for m in MEASURES}
        if len(lowest) > 1:
            window.jain = jain([amounts["tokens"][client][index] for client in lowest])
        windows.append(window)
        ratios = ", ".join(f"{name} {window.ratios[m]:.3f}" for m, name in MEASURES.items() if m in window.ratios)
        print(
            f"  {case.label}, window {index + 1} ({size.window_s:g} s): real tokens {window.amounts['tokens']}"
            + (f"; {heavy}/{light}: {ratios}" if ratios else "")
            + (f"; Jain's index {window.jain:.4f}" if window.jain is not None else ""),
            flush=True,
        )
    return windows


def case_figures(case: Case, windows: list[Window], backlogged: bool, window_s: float) -> list[Figure]:
    """The worst window of the case for each measure; no target met unless every client stayed backlogged."""
    weights = sorted(case.weights.values())
    figures = []
    suffix = f", worst of {len(windows)} x {window_s:g} s" + ("" if backlogged else " (NOT all backlogged)")
    if weights[-1] != weights[0]:
        target = weights[-1] / weights[0]
        for measure, name in MEASURES.items():
            worst = max((w.ratios[measure] for w in windows), key=lambda ratio: abs(ratio / target - 1))
            held = measure == "tokens"
            figures.append(
                Figure(
                    f"{case.label}: heavy/light {name}{suffix}",
                    "ratio",
                    worst,
                    target,
                    "weights",
                    f"within {target:g} ± {SHARE_TOLERANCE:.0%}" if held else "",
                    (abs(worst / target - 1) <= SHARE_TOLERANCE and backlogged) if held else None,
                )
            )
    indexes = [w.jain for w in windows if w.jain is not None]
    if indexes:
        figures.append(
            Figure(
                f"{case.label}: Jain's index, equal clients{suffix}",
                "",
                min(indexes),
                target=f">= {JAIN_TARGET}",
                met=min(indexes) >= JAIN_TARGET and backlogged,
            )
        )
    return figures


# ---- 3. no cost ----------------------------------------------------------------------------------


def throughputs(jobs: int) -> tuple[list[Figure], dict[str, Any]]:
    """bench/throughput.py's pipeline (one client, WORKER_MAX_JOBS 256 for the simulator's 64 sequences) against
    its direct client; then the same pipeline with WORKER_MAX_JOBS 64, the server's slots, as in the stacks above."""
    texts, slots = throughput.prompts(jobs), throughput.SIM["max_num_seqs"]
    with Processes(NAME) as processes:
        sim_url = processes.sim(**throughput.SIM)
        stacks = {
            "": processes.stack(sim_url),
            f", WORKER_MAX_JOBS={slots}": processes.stack(sim_url, WORKER_MAX_JOBS=slots),
        }
        uvloop.run(throughput.direct(sim_url, throughput.prompts(64), 64, 20))  # warm-up
        for stack in stacks.values():
            throughput.pipeline(stack, throughput.prompts(64), 100, 20)
        direct = uvloop.run(throughput.direct(sim_url, texts, 64, 20))
        pipelines = {label: throughput.pipeline(stack, texts, 100, 20) for label, stack in stacks.items()}
    rate = direct["req_s"]
    figures = [Figure(f"throughput: direct client, {jobs} jobs (baseline)", "req/s", rate)]
    for label, pipeline in pipelines.items():
        target, measured = f"ratio >= {THROUGHPUT_TARGET}", pipeline["req_s"]
        met = measured >= THROUGHPUT_TARGET * rate
        figures.append(Figure(f"throughput: API+Redis+worker{label}", "req/s", measured, rate, "direct", target, met))
    return figures, {"direct": direct, "pipelines": pipelines}


def submissions(rounds: int, seconds: float) -> tuple[list[Figure], dict[str, Any]]:
    """bench/submission.py's POST /v1/jobs of one job against GET /health of the same API process."""
    health = Load("GET", ["/health"], AUTH)
    post = Load("POST", ["/v1/jobs"], AUTH, orjson.dumps(submission.job_body(0)))
    try:
        with Processes(NAME) as processes:
            redis_url = processes.redis()
            meter = {"redis": processes.services[-1]}
            # No worker: every job stays queued, so the client may keep any number (the default is 5,000).
            api_url = processes.api(submission.api_env(redis_url, CLIENT_MAX_QUEUED_JOBS=0))
            meter["api"] = processes.services[-1]
            load = submission.compare(api_url, health, post, meter, 32, seconds, rounds, wrk=False)
    finally:
        health.close()
        post.close()
    health_rps, post_rps = load["baseline_rps"], load["measured_rps"]
    figures = [
        Figure("submission: GET /health (baseline)", "req/s", health_rps),
        Figure(
            "submission: POST /v1/jobs, one job",
            "req/s",
            post_rps,
            health_rps,
            "health",
            f"ratio >= {submission.RATIO_TARGET}",
            post_rps >= submission.RATIO_TARGET * health_rps,
        ),
    ]
    return figures, load


# ---- the benchmark -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    size = sizes(args)
    print(
        f"  setup: simulator {SIM} (exactly max_tokens tokens a job unless its stop string comes first), "
        f"one worker with WORKER_MAX_JOBS={SLOTS}, max_tokens from {LENGTHS}, prompts of 1 to 8 paragraphs; "
        f"{size.windows} windows of {size.window_s:g} s after {size.warmup_s:g} s",
        flush=True,
    )
    figures, isolation_details = isolation(size.probe_jobs)
    details: dict[str, Any] = {"isolation": isolation_details}
    for case in size.cases:
        case_figures_, details[case.label] = shares(case, size)
        figures += case_figures_
    throughput_figures, details["throughput"] = throughputs(size.throughput_jobs)
    submission_figures, details["submission"] = submissions(size.submit_rounds, size.submit_seconds)
    figures += throughput_figures + submission_figures
    options = {"quick": args.quick, "sim": SIM, "worker_max_jobs": SLOTS, "lengths": LENGTHS}
    options |= {name: value for name, value in vars(size).items() if name != "cases"}
    options["cases"] = [vars(case) for case in size.cases]
    return Result(NAME, figures, options, details)
