"""Many SSE subscribers in one process: `python -m bench.sse_clients --url U --ids-file F --per-job N
[--part I --parts P]`.

Subscription k follows job ids[k // per_job]; this process takes the subscriptions k with k % parts == part.
Each is one connection (one asyncio.Protocol on uvloop: a chunked-body and SSE parser, no HTTP library)
sending `GET /v1/jobs/{id}/events`. Once every subscription has its answer's head, the process prints
`ready`; when every one has its `done` event (or --timeout passes) it prints one JSON object (or writes
it to --output and prints `done`):
- lags_ms: for each `token` event, (the time it was received, the time it was received minus the time
  the worker sent it: the ms of its stream id, which is its event id; the machine has one clock), in ms;
- done_lags_ms: the same lag for each `done` event (whose id is the time Redis added it);
- complete: subscribers whose concatenated token texts equal the final `done` job's result text;
- cpu_pct of this process, so that a saturated client shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any, cast

import orjson
import uvloop

from bench.common import API_KEY


class Subscriber(asyncio.Protocol):
    def __init__(self, request: bytes, lags: list[tuple[float, float]], done_lags: list[float]) -> None:
        self._request = request
        self._lags = lags  # (received at, lag), in ms
        self._done_lags = done_lags
        self._transport: asyncio.Transport | None = None
        self._raw = b""  # bytes received, not parsed yet
        self._head_done = False
        self._events = b""  # SSE bytes (chunk payloads) not parsed yet
        self._texts: list[str] = []
        loop = asyncio.get_running_loop()
        self.headed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[bool] = loop.create_future()  # True when the text is complete
        self.tokens = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headed.done():
            self.headed.set_exception(ConnectionError(f"closed before the answer: {exc}"))
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before `done`: {exc}"))

    def data_received(self, data: bytes) -> None:
        now_ms = 1000 * time.time()
        self._raw += data
        if not self._head_done:
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._raw = self._raw[:end].lower(), self._raw[end + 4 :]
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                self.headed.set_exception(RuntimeError(f"answer {head[:200]!r}"))
                assert self._transport is not None
                self._transport.close()
                return
            self._head_done = True
            self.headed.set_result(None)
        while True:  # chunks: size in hex, CRLF, payload, CRLF
            line_end = self._raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._raw[:line_end].split(b";", 1)[0], 16)
            if size == 0 or len(self._raw) < line_end + 2 + size + 2:
                break
            self._events += self._raw[line_end + 2 : line_end + 2 + size]
            self._raw = self._raw[line_end + 2 + size + 2 :]
        while True:
            end = self._events.find(b"\n\n")
            if end < 0:
                return
            frame, self._events = self._events[:end], self._events[end + 2 :]
            self._frame(frame, now_ms)

    def _frame(self, frame: bytes, now_ms: float) -> None:
        fields: dict[bytes, bytes] = {}
        for line in frame.split(b"\n"):
            name, _, value = line.partition(b": ")
            fields[name] = value
        event = fields.get(b"event")
        if event == b"token":
            self.tokens += 1
            self._lags.append((now_ms, now_ms - int(fields[b"id"].split(b"-", 1)[0])))
            self._texts.append(orjson.loads(fields[b"data"])["text"])
        elif event == b"done":
            self._done_lags.append(now_ms - int(fields[b"id"].split(b"-", 1)[0]))
            job = orjson.loads(fields[b"data"])
            expected = (job.get("result") or {}).get("text")
            if not self.done.done():
                self.done.set_result(job["status"] == "succeeded" and "".join(self._texts) == expected)
            assert self._transport is not None
            self._transport.close()


async def subscribe(args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    host, _, port = args.url.removeprefix("http://").rstrip("/").partition(":")
    mine = [ids[k // args.per_job] for k in range(len(ids) * args.per_job) if k % args.parts == args.part]
    loop = asyncio.get_running_loop()
    lags: list[tuple[float, float]] = []
    done_lags: list[float] = []
    subscribers: list[Subscriber] = []

    async def connect(job_id: str) -> None:
        request = (
            f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {API_KEY}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        _, subscriber = await loop.create_connection(lambda: Subscriber(request, lags, done_lags), host, int(port))
        subscribers.append(subscriber)
        await subscriber.headed

    began, cpu = time.perf_counter(), time.process_time()
    opening = asyncio.Semaphore(args.open_at_once)

    async def limited(job_id: str) -> None:
        async with opening:
            await connect(job_id)

    await asyncio.gather(*(limited(job_id) for job_id in mine))
    print("ready", flush=True)
    connected = time.perf_counter() - began
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(s.done for s in subscribers), return_exceptions=True), args.timeout
    )
    seconds = time.perf_counter() - began
    errors = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    return {
        "subscribers": len(subscribers),
        "complete": sum(1 for outcome in outcomes if outcome is True),
        "errors": errors[:5],
        "error_count": len(errors),
        "token_events": sum(s.tokens for s in subscribers),
        "lags_ms": [(round(at), round(lag, 1)) for at, lag in lags],
        "done_lags_ms": [round(lag, 1) for lag in done_lags],
        "connect_s": round(connected, 3),
        "seconds": round(seconds, 3),
        "cpu_pct": round(100 * (time.process_time() - cpu) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_clients", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ids-file", required=True, help="job ids, one a line")
    parser.add_argument("--per-job", type=int, default=10)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--open-at-once", type=int, default=100, help="connections being opened at once (100)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--output", help="write the JSON object there, and `done` on stdout (default: stdout)")
    args = parser.parse_args()
    result = json.dumps(uvloop.run(subscribe(args, Path(args.ids_file).read_text().split())))
    if args.output:
        Path(args.output).write_text(result)
        result = "done"
    print(result, flush=True)


if __name__ == "__main__":
    main()
