"""A closed-loop HTTP/1.1 load generator in the manner of wrk, in its own process.

`python -m bench.loadgen --url U --connections 32 --duration 5 [--warmup 1] (--path P | --paths-file F)
[--method POST --body-file B] [--header 'Name: value' ...]` keeps `connections` keep-alive connections
busy, each sending its next request as soon as the previous answer is complete (no pipelining), and
prints two lines on stdout: `measuring` when the measured window opens (after the warm-up), then one
JSON object: requests answered in the window, statuses, latency percentiles and the CPU this process
used in the window (so that a saturated client shows). One asyncio.Protocol per connection on uvloop:
a request costs the client a few microseconds, not the few hundred of an HTTP library.

`run()` is the parent's side: it starts the generator as a separate process (so that it does not share
the benchmark's interpreter), starts a CPU meter of the processes under test when the window opens, and
returns the figures. `run_wrk()` does the same with wrk, when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import uvloop

from bench.common import CpuMeter, percentile


class HttpClient(asyncio.Protocol):
    """One keep-alive connection sending the requests of `requests`, one at a time, while `state.running`."""

    def __init__(self, requests: Iterator[bytes], state: State) -> None:
        self._requests = requests
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._need = -1  # bytes of the answer being read (head + body), -1 until its head is complete
        self._status = 0
        self._sent_at = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent_at = time.perf_counter()
        self._transport.write(next(self._requests))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._need < 0:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buffer[:end].lower()
                self._status = int(head[9:12])
                found = re.search(rb"\r\ncontent-length: *(\d+)", head)
                if found is None:
                    raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
                self._need = end + 4 + int(found.group(1))
            if len(self._buffer) < self._need:
                return
            self._buffer = self._buffer[self._need :]
            self._need = -1
            self._state.answered(self._status, time.perf_counter() - self._sent_at)
            if not self._state.running:
                assert self._transport is not None
                self._transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class State:
    """Counts answers inside the measured window."""

    def __init__(self) -> None:
        self.running = True
        self.measuring = False
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.total = 0  # answers, warm-up and the end included

    def answered(self, status: int, seconds: float) -> None:
        self.total += 1
        if self.measuring:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.latencies.append(seconds)


def requests(method: str, host: str, paths: list[str], headers: list[str], body: bytes | None) -> list[bytes]:
    """The raw requests a connection cycles through."""
    extra = "".join(f"{header}\r\n" for header in headers)
    if body is not None:
        extra += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return [f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode() + (body or b"") for path in paths]


async def generate(args: argparse.Namespace, paths: list[str], body: bytes | None) -> dict[str, Any]:
    host, _, port = args.url.removeprefix("http://").rstrip("/").partition(":")
    raw = requests(args.method, f"{host}:{port}", paths, args.header, body)
    state = State()
    loop = asyncio.get_running_loop()
    clients: list[HttpClient] = []
    for index in range(args.connections):
        # Each connection starts at another place in the list of paths, so that they do not move in step.
        start = index * len(raw) // args.connections
        cycle = itertools.cycle(raw[start:] + raw[:start])
        _, client = await loop.create_connection(functools.partial(HttpClient, cycle, state), host, int(port))
        clients.append(client)
    await asyncio.sleep(args.warmup)
    print("measuring", flush=True)
    state.measuring = True
    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(args.duration)
    state.measuring = False
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    state.running = False
    await asyncio.wait_for(asyncio.gather(*(client.closed for client in clients)), 10)
    answered = sum(state.statuses.values())
    latencies = [1000 * value for value in state.latencies] or [math.nan]
    return {
        "requests": answered,
        "sent": state.total,
        "seconds": round(seconds, 3),
        "rps": answered / seconds,
        "statuses": {str(status): count for status, count in sorted(state.statuses.items())},
        "ok": sum(count for status, count in state.statuses.items() if 200 <= status < 300),
        "latency_ms": {q: round(percentile(latencies, float(q[1:])), 3) for q in ("p50", "p90", "p99")},
        "client_cpu_pct": round(100 * cpu_seconds / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True, help="http://host:port")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/health")
    parser.add_argument("--paths-file", help="paths, one a line, cycled through (instead of --path)")
    parser.add_argument("--body-file", help="the body of every request")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = parser.parse_args()
    paths = Path(args.paths_file).read_text().split() if args.paths_file else [args.path]
    body = Path(args.body_file).read_bytes() if args.body_file else None
    print(json.dumps(uvloop.run(generate(args, paths, body))), flush=True)


# ---- the parent's side ---------------------------------------------------------------------------


class Load:
    """What to send: a method, one path or a list of paths, a body, headers; written to files for the child."""

    def __init__(
        self, method: str, paths: list[str], headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> None:
        self.method, self.paths, self.headers, self.body = method, paths, headers or {}, body
        self._dir = Path(tempfile.mkdtemp(prefix="spp-bench-load-"))
        self.paths_file = self._dir / "paths"
        self.paths_file.write_text("\n".join(paths) + "\n")
        self.body_file: Path | None = None
        if body is not None:
            self.body_file = self._dir / "body"
            self.body_file.write_bytes(body)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def args(self) -> list[str]:
        args = ["--method", self.method, "--paths-file", str(self.paths_file)]
        if self.body_file is not None:
            args += ["--body-file", str(self.body_file)]
        for name, value in self.headers.items():
            args += ["--header", f"{name}: {value}"]
        return args


def run(url: str, load: Load, meter: CpuMeter, connections: int, duration: float, warmup: float) -> dict[str, Any]:
    """The load generator in a child process; `meter` runs during its measured window.

    The result has the generator's figures plus `cpu_pct` (% of a core) of the metered processes.
    """
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--connections", str(connections)]
    command += ["--duration", str(duration), "--warmup", str(warmup), *load.args()]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "measuring":
                raise RuntimeError(f"load generator: {line!r} (exit {child.wait()})")
            meter.start()
            line = child.stdout.readline()
            cpu = meter.stop()
            if child.wait(30) != 0 or not line:
                raise RuntimeError(f"load generator failed (exit {child.returncode})")
        except BaseException:
            child.kill()
            raise
    result: dict[str, Any] = json.loads(line)
    result["cpu_pct"] = cpu
    return result


_WRK_SCRIPT = """
local paths, body = {}, nil
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
%(body)s
local index = 0
request = function()
  index = index %% #paths + 1
  return wrk.format("%(method)s", paths[index], nil, body)
end
"""


def run_wrk(url: str, load: Load, meter: CpuMeter, connections: int, duration: float) -> dict[str, Any] | None:
    """wrk (one thread, `connections` connections) with the same requests; None when wrk is not installed.

    wrk has no warm-up: run after the same load from `run()`. Its CPU comes from RUSAGE_CHILDREN.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = load.paths_file.with_suffix(".lua")
    body = ""
    if load.body_file is not None:
        body = f'local file = io.open("{load.body_file}", "rb"); body = file:read("*a"); file:close()\n'
        body += 'wrk.headers["Content-Type"] = "application/json"'
    script.write_text(_WRK_SCRIPT % {"paths": load.paths_file, "body": body, "method": load.method})
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(script)]
    for name, value in load.headers.items():
        command += ["-H", f"{name}: {value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter.start()
    began = time.perf_counter()
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=duration + 30)
    seconds = time.perf_counter() - began
    cpu = meter.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if found is None:
        raise RuntimeError(f"wrk: no Requests/sec in {done.stdout!r}")
    return {
        "rps": float(found.group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "client_cpu_pct": round(100 * used / seconds, 1),
        "cpu_pct": cpu,
    }


if __name__ == "__main__":
    main()
