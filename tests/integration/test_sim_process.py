"""`python -m sim` as a real process: streaming over a socket, aborts, batching timing, cut and hang faults."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"messages": [{"role": "user", "content": "Bonjour"}], "temperature": 0.2, "top_p": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SimProcess:
    """A simulator subprocess; its log goes to a temporary file shown when it fails to start."""

    def __init__(self, log: IO[bytes], *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log
        command = [sys.executable, "-m", "sim", "--port", str(self.port), "--log-level", "warning", *options]
        self._process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                pytest.fail(f"simulator exited early:\n{self._log.read().decode()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("simulator did not become healthy in time")
            time.sleep(0.05)  # polling interval of a deadline-bounded wait

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """Three simulators started in parallel: a paced one and one per connection fault."""
    options = {
        "paced": ("--max-num-seqs", "2", "--ms-per-token", "20"),
        "cut": ("--cut-rate", "1", "--ms-per-token", "5"),
        "hang": ("--hang-rate", "1"),
    }
    with contextlib.ExitStack() as stack:
        processes: dict[str, SimProcess] = {}
        for name, args in options.items():
            process = SimProcess(stack.enter_context(tempfile.TemporaryFile()), *args)
            stack.callback(process.stop)
            processes[name] = process
        for process in processes.values():
            process.wait_ready()
        yield {name: process.url for name, process in processes.items()}


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    answer: dict[str, Any] = (await client.get("/sim/stats")).json()
    return answer


async def wait_stats(client: httpx.AsyncClient, expected: dict[str, Any], within: float = 3.0) -> None:
    """Poll /sim/stats until every expected key has its value."""
    deadline = time.monotonic() + within
    while True:
        current = await stats(client)
        if all(current[key] == value for key, value in expected.items()):
            return
        assert time.monotonic() < deadline, f"stats {current} never matched {expected}"
        await asyncio.sleep(0.02)


async def test_stream_over_a_socket(servers: dict[str, str]) -> None:
    body = CHAT | {"max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    async with (
        httpx.AsyncClient(base_url=servers["paced"]) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


async def test_closing_the_client_aborts_and_frees_the_slot(servers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=servers["paced"]) as client:
        await client.post("/sim/reset")
        async with httpx.AsyncClient(base_url=servers["paced"]) as streamer:
            body = CHAT | {"max_tokens": 500, "stream": True}
            async with streamer.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if '"content":" ' in line:
                        break
                assert (await stats(client))["running"] == 1
        await wait_stats(client, {"aborted": 1, "running": 0, "completed": 0})


async def test_batching_runs_max_num_seqs_at_once(servers: dict[str, str]) -> None:
    # 10 tokens at 20 ms: about 0.18 s per request; 4 requests through 2 slots take two rounds.
    body = CHAT | {"max_tokens": 10}
    async with httpx.AsyncClient(base_url=servers["paced"], timeout=10) as client:
        start = time.monotonic()
        answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(4)))
        elapsed = time.monotonic() - start
    assert all(a.status_code == 200 for a in answers)
    assert 0.3 <= elapsed < 3.0


async def test_cut_fault_ends_the_stream_without_done(servers: dict[str, str]) -> None:
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=servers["cut"]) as client:

        async def read_stream() -> None:
            body = CHAT | {"max_tokens": 10, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    lines.append(line)

        with pytest.raises(httpx.RemoteProtocolError):
            await read_stream()
        await wait_stats(client, {"faults": {"cut": 1}, "running": 0})
    assert any(line.startswith("data: {") for line in lines)
    assert "data: [DONE]" not in lines


async def test_hang_fault_makes_the_client_time_out(servers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=servers["hang"]) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 5}, timeout=0.3)
        await wait_stats(client, {"faults": {"hang": 1}, "aborted": 1})
