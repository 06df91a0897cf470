"""Event-loop stalls: `GET /health` latency while one client sends the worst inputs the API accepts.

One API process (`python -m api`), our own Redis, no worker (every job stays queued), the client limits off
(rate limit, queued jobs, stored bytes, active batches). A probe, in a process of its own, sends `GET /health`
on one keep-alive connection every 10 ms and measures each answer from the moment it was due (as wrk2 does: a
probe held up by a stall is late, and the probes it delays are counted late too, not skipped). First idle
(the baseline), then while ONE client sends each kind of input in turn, one request at a time:

- jobs-1000: `POST /v1/jobs`, 1,000 jobs (MAX_JOBS_PER_REQUEST) with `template: "spp"`, French text with
  accents and acronyms, prompts as long as fit in MAX_BODY_BYTES (32 MiB);
- jobs-200k: the same with prompts of MAX_PROMPT_CHARS (200,000 characters), as many as fit;
- metadata: 1,000 jobs, each with metadata at its caps (32 keys of 64 characters, 8 KiB);
- openai-chat: `POST /v1/chat/completions` (streamed: the answer's head comes once the job is queued; the
  connection is then closed, which cancels it): 200,000 characters and a 32 MiB body of ignored fields;
- openai-parts: the same as MAX_TEXT_PARTS (1,000) text parts that fill the prompt's cap (the most allowed);
- anonymize-1000, anonymize-200k: `POST /anonymize`, as the two job cases;
- batch-valid: `POST /v1/files` of a 200 MiB input of 50,000 valid lines (BATCH_MAX_BYTES, BATCH_MAX_LINES),
  then `POST /v1/batches` and polling until it is queued (validation of 50,000 lines, then the jobs);
- batch-blank, batch-invalid: 200 MiB of blank lines, of invalid lines (the batch fails);
- deep: 32 MiB of `[`; array-zeros: an array of 16 M zeros; many-keys: one job with a million unknown fields;
  metadata-list: a metadata value that is a list of 4 M numbers; batch-keys: `POST /v1/batches` with a million
  unknown fields: bodies the API must refuse.

Reported per case: the /health p50, p99 and max while it ran, and p99 against idle p99; target p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from api.openai_shapes import MAX_TEXT_PARTS
from bench.common import AUTH, MODEL, Figure, Processes, Result, percentile, stack_env

NAME = "stalls"
PROBE_INTERVAL_S = 0.010
P99_TARGET_MS = 50.0
NO_MODEL_SERVER = "http://127.0.0.1:9"  # no worker runs: the model server is never called
MIB = 2**20
MAX_BODY_BYTES = 32 * MIB
MAX_JOBS = 1_000
MAX_PROMPT_CHARS = 200_000
BATCH_MAX_BYTES = 200 * MIB
BATCH_MAX_LINES = 50_000
PROSE = (
    "Bonjour, j'ai déposé ma demande de carte grise à l'ANTS il y a trois semaines et la CAF a suspendu mon RSA ; "
    "la CPAM ne répond pas, ni la MDPH. « Où en est mon dossier ? » Le conseiller de France Travail m'a dit "
    "d'attendre. Pièces jointes : avis d'imposition DGFiP, attestation CMU-C. Merci de votre réponse rapide. "
)
LIMITS = {
    "RATE_LIMIT": 0,
    "MAX_QUEUE_DEPTH": 0,
    "MAX_BATCH_QUEUE_DEPTH": 0,
    "CLIENT_MAX_QUEUED_JOBS": 0,
    "CLIENT_MAX_STORED_BYTES": 0,
    "CLIENT_MAX_ACTIVE_BATCHES": 0,
}
"""Every limit of one client off (0: unlimited), so that the worst inputs are accepted and processed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--stalls-repeats", type=int, default=3, help="requests per JSON case (3)")
    group.add_argument("--stalls-idle-seconds", type=float, default=3.0, help="idle baseline window (3 s)")
    group.add_argument("--stalls-cases", default="", help=f"comma-separated cases (default: all: {', '.join(CASES)})")


# ---- the probe (a process of its own) ------------------------------------------------------------------


def _probe(url: str, interval: float, stop: multiprocessing.synchronize.Event, out: Any) -> None:
    """GET /health every `interval` seconds until `stop`; sends back [(due, latency ms from due)]."""
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples: list[tuple[float, float]] = []
    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        connection.request("GET", "/health")
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET /health: HTTP {answer.status}")
        samples.append((due, 1000 * (time.monotonic() - due)))
        due += interval
    connection.close()
    out.send(samples)


class Probe:
    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_probe, args=(url, PROBE_INTERVAL_S, self._stop, send), daemon=True)

    def start(self) -> None:
        self._process.start()

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        samples: list[tuple[float, float]] = self._receive.recv()
        self._process.join(10)
        return samples


# ---- inputs ---------------------------------------------------------------------------------------------


def prose(chars: int, seed: int = 0) -> str:
    """French text of `chars` characters (accents, acronyms), different for each `seed`."""
    text = f"Dossier {seed}. " + PROSE * (chars // len(PROSE) + 1)
    return text[:chars]


def fill(count: int, make: Callable[[int, int], dict[str, Any]], budget: int = MAX_BODY_BYTES) -> bytes:
    """A JSON array of `count` items `make(index, chars)`, with the largest `chars` whose body fits `budget`."""
    low, high = 1, MAX_PROMPT_CHARS
    while low < high:  # the items have the same size: the size of one item sets the body's
        middle = (low + high + 1) // 2
        if (len(orjson.dumps(make(0, middle))) + 1) * count + 1 <= budget:
            low = middle
        else:
            high = middle - 1
    body = orjson.dumps([make(index, low) for index in range(count)])
    while len(body) > budget:  # the index makes a few items longer
        low -= 16
        body = orjson.dumps([make(index, low) for index in range(count)])
    return body


def spp_job(index: int, chars: int) -> dict[str, Any]:
    return {"prompt": prose(chars, index), "template": "spp"}


def capped_metadata(index: int) -> dict[str, Any]:
    """32 keys of 64 characters, accented strings of 512 characters while the whole stays under METADATA_MAX_BYTES
    (8 KiB as compact JSON), numbers for the other keys."""
    metadata: dict[str, Any] = {f"{number:02d}-clé-" + "m" * 57: index for number in range(32)}
    for key in metadata:
        value = ("é" * 50 + prose(512, index))[:512]
        if len(orjson.dumps({**metadata, key: value})) > 8192:
            break
        metadata[key] = value
    return metadata


def at_most(budget: int, make: Callable[[int], dict[str, Any]]) -> bytes:
    """A JSON array of as many items `make(index)` as fit in `budget` bytes."""
    count = budget // (len(orjson.dumps(make(0))) + 1)
    while len(body := orjson.dumps([make(index) for index in range(count)])) > budget:
        count -= 1
    return body


def batch_line(index: int, chars: int) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prose(chars, index)}], "max_tokens": 64}
    line = {"custom_id": f"q-{index:06d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return orjson.dumps(line) + b"\n"


def batch_file(kind: str) -> bytes:
    """200 MiB (BATCH_MAX_BYTES) of `valid` lines (50,000: BATCH_MAX_LINES), `blank` lines, or `invalid` ones."""
    if kind == "blank":
        return b"\n" * BATCH_MAX_BYTES
    if kind == "invalid":
        line = b"{" + b"x" * (BATCH_MAX_BYTES // BATCH_MAX_LINES - 2) + b"\n"
        return line * BATCH_MAX_LINES
    per_line = BATCH_MAX_BYTES // BATCH_MAX_LINES
    chars = per_line - (len(batch_line(0, 1)) - 1)
    while len(batch_line(BATCH_MAX_LINES - 1, chars)) > per_line:
        chars -= 1
    while len(batch_line(BATCH_MAX_LINES - 1, chars)) * BATCH_MAX_LINES > BATCH_MAX_BYTES:
        chars -= 1
    return b"".join(batch_line(index, chars) for index in range(BATCH_MAX_LINES))


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "stalls-boundary-7d1f"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="input.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ---- cases ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """Bodies made before the window; `send` sends them (the window) and returns what it saw."""

    name: str
    prepare: Callable[[], Any]
    send: Callable[[httpx.Client, Any, int], dict[str, Any]]


def _posts(path: str, expect: int) -> Callable[[httpx.Client, Any, int], dict[str, Any]]:
    def send(client: httpx.Client, body: bytes, repeats: int) -> dict[str, Any]:
        statuses = []
        for _ in range(repeats):
            answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
            statuses.append(answer.status_code)
        if any(status != expect for status in statuses):
            raise RuntimeError(f"POST {path}: statuses {statuses}, expected {expect}: {answer.text[:300]}")
        return {"statuses": statuses, "body_bytes": len(body)}

    return send


def _streamed(path: str, expect: int = 200) -> Callable[[httpx.Client, Any, int], dict[str, Any]]:
    """POST a streamed OpenAI request, read the answer's head (the job is queued by then), close the connection."""

    def send(client: httpx.Client, body: bytes, repeats: int) -> dict[str, Any]:
        statuses = []
        for _ in range(repeats):
            with client.stream("POST", path, content=body, headers={"Content-Type": "application/json"}) as answer:
                statuses.append(answer.status_code)
        if any(status != expect for status in statuses):
            raise RuntimeError(f"POST {path}: statuses {statuses}, expected {expect}")
        return {"statuses": statuses, "body_bytes": len(body)}

    return send


def _batch(expect: str) -> Callable[[httpx.Client, Any, int], dict[str, Any]]:
    """Upload the file, create the batch, poll until it is `expect` (in_progress: every job queued)."""

    def send(client: httpx.Client, data: bytes, repeats: int) -> dict[str, Any]:
        body, content_type = multipart(data)
        began = time.monotonic()
        uploaded = client.post("/v1/files", content=body, headers={"Content-Type": content_type})
        uploaded.raise_for_status()
        upload_s = time.monotonic() - began
        request = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        batch = client.post("/v1/batches", json=request)
        batch.raise_for_status()
        while (status := client.get(f"/v1/batches/{batch.json()['id']}").json())["status"] == "validating":
            time.sleep(0.05)
        if status["status"] != expect:
            raise RuntimeError(f"batch {status['status']}, not {expect}: {status.get('errors')}")
        client.delete(f"/v1/files/{uploaded.json()['id']}")
        return {
            "file_bytes": len(data),
            "upload_s": round(upload_s, 2),
            "validate_and_queue_s": round(time.monotonic() - began - upload_s, 2),
            "batch": status["status"],
            "requests": status["request_counts"]["total"],
        }

    return send


def _chat_body(messages: list[dict[str, Any]], budget: int = 0) -> bytes:
    """A streamed chat request; with a `budget`, an unknown field (ignored) fills the body up to it."""
    body: dict[str, Any] = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": 16}
    if not budget:
        return orjson.dumps(body)
    room = budget - len(orjson.dumps(body)) - 32
    padding = prose(room)
    while len(padding.encode()) > room:
        padding = padding[: len(padding) - (len(padding.encode()) - room)]
    return orjson.dumps({**body, "user_context": padding})


def _many_keys(count: int) -> bytes:
    return orjson.dumps({"prompt": "Bonjour", **{f"champ-{index:07d}": 0 for index in range(count)}})


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("jobs-1000", lambda: fill(MAX_JOBS, spp_job), _posts("/v1/jobs", 202)),
        Case(
            "jobs-200k",
            lambda: at_most(MAX_BODY_BYTES, lambda index: spp_job(index, MAX_PROMPT_CHARS)),
            _posts("/v1/jobs", 202),
        ),
        Case(
            "metadata",
            lambda: orjson.dumps(
                [{"prompt": prose(200, index), "metadata": capped_metadata(index)} for index in range(MAX_JOBS)]
            ),
            _posts("/v1/jobs", 202),
        ),
        Case(
            "openai-chat",
            lambda: _chat_body([{"role": "user", "content": prose(MAX_PROMPT_CHARS)}], MAX_BODY_BYTES),
            _streamed("/v1/chat/completions"),
        ),
        Case(
            "openai-parts",
            lambda: _chat_body(
                [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": prose(MAX_PROMPT_CHARS // MAX_TEXT_PARTS - 1)}]
                        * MAX_TEXT_PARTS,
                    }
                ]
            ),
            _streamed("/v1/chat/completions"),
        ),
        Case(
            "openai-parts-32m",
            lambda: _chat_body([{"role": "user", "content": [{"type": "text", "text": "é"}] * (MAX_BODY_BYTES // 30)}]),
            _streamed("/v1/chat/completions", 400),
        ),
        Case(
            "anonymize-1000",
            lambda: fill(MAX_JOBS, lambda index, chars: {"id": f"exp-{index}", "text": prose(chars, index)}),
            _posts("/anonymize", 200),
        ),
        Case(
            "anonymize-200k",
            lambda: at_most(
                MAX_BODY_BYTES, lambda index: {"id": f"big-{index}", "text": prose(MAX_PROMPT_CHARS, index)}
            ),
            _posts("/anonymize", 200),
        ),
        Case("batch-valid", lambda: batch_file("valid"), _batch("in_progress")),
        Case("batch-blank", lambda: batch_file("blank"), _batch("failed")),
        Case("batch-invalid", lambda: batch_file("invalid"), _batch("failed")),
        Case("deep", lambda: b"[" * MAX_BODY_BYTES, _posts("/v1/jobs", 422)),
        Case("array-zeros", lambda: b"[" + b"0," * (MAX_BODY_BYTES // 2 - 2) + b"0]", _posts("/v1/jobs", 422)),
        Case("many-keys", lambda: _many_keys(1_000_000), _posts("/v1/jobs", 422)),
        Case(
            "metadata-list",
            lambda: orjson.dumps({"prompt": "Bonjour", "metadata": {"liste": [0] * 4_000_000}}),
            _posts("/v1/jobs", 422),
        ),
        Case("batch-keys", lambda: _many_keys(1_000_000), _posts("/v1/batches", 422)),
    )
}


# ---- the benchmark --------------------------------------------------------------------------------------


def summary(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    latencies = [latency for due, latency in samples if start <= due < end]
    if not latencies:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "n": len(latencies),
        "p50": round(percentile(latencies, 50), 2),
        "p99": round(percentile(latencies, 99), 2),
        "max": round(max(latencies), 2),
    }


def run(args: argparse.Namespace) -> Result:
    names = [name.strip() for name in args.stalls_cases.split(",") if name.strip()] or list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(f"--stalls-cases: unknown {', '.join(unknown)}; choose among {', '.join(CASES)}")
    windows: list[tuple[str, float, float, dict[str, Any]]] = []
    with Processes(NAME) as processes:
        redis_url = processes.redis()
        api_url = processes.api(stack_env(redis_url, NO_MODEL_SERVER, **LIMITS))
        probe = Probe(api_url)
        probe.start()
        time.sleep(1.0)  # the probe's start-up
        began = time.monotonic()
        time.sleep(args.stalls_idle_seconds)
        windows.append(("idle", began, time.monotonic(), {}))
        with httpx.Client(base_url=api_url, headers=AUTH, timeout=600) as client:
            for name in names:
                case = CASES[name]
                body = case.prepare()
                print(f"  {name}...", flush=True)
                began = time.monotonic()
                try:
                    seen = case.send(client, body, args.stalls_repeats)
                except (RuntimeError, httpx.HTTPError) as exc:  # shown, and the other cases still run
                    seen = {"error": str(exc)[:300]}
                    print(f"  {name}: {seen['error']}", flush=True)
                windows.append((name, began, time.monotonic(), seen))
                del body
                time.sleep(0.3)  # the probe catches up with what the case held up
        samples = probe.stop()
    idle = summary(samples, windows[0][1], windows[0][2])
    figures = [Figure("idle /health p99", "ms", idle["p99"])]
    details: dict[str, Any] = {"idle": idle}
    for name, start, end, seen in windows[1:]:
        figures_of = summary(samples, start, end)
        details[name] = figures_of | {"seconds": round(end - start, 2)} | seen
        p99 = figures_of["p99"]
        target = f"<= {P99_TARGET_MS:g} ms"
        met = p99 <= P99_TARGET_MS and "error" not in seen
        figures.append(Figure(f"{name}: /health p99", "ms", p99, idle["p99"], "idle p99", target, met))
    options = {"repeats": args.stalls_repeats, "idle_seconds": args.stalls_idle_seconds, "cases": names}
    return Result(NAME, figures, options, details)
