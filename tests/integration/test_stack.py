"""`python -m stack`, what `make run` runs: everything starts, serves a job, and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.processes import free_port, http_ok, port_is_free
from tests.integration.conftest import AUTH, RedisServer, wait_for


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> tuple[subprocess.Popen[bytes], str]:
        if not port_is_free(8081):
            pytest.skip("port 8081, the simulator's, is taken on this machine")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LLM_TABLE", "API_"))}
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "stack"],
            cwd=tmp_path,
            env={**clean, "API_PORT": str(port), **env},
            stdout=(tmp_path / "stack.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _serve_one_job(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as client:
        job = client.post("/v1/jobs", json={"prompt": "Bonjour", "params": {"max_tokens": 5}}).json()
        deadline = time.monotonic() + 30
        while (status := client.get(f"/v1/jobs/{job['id']}").json()["status"]) not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.05)
        assert status == "succeeded"


def test_stack_starts_everything_and_ctrl_c_stops_it(launch: object, tmp_path: Path) -> None:
    assert callable(launch)
    process, url = launch()
    wait_for(lambda: http_ok(f"{url}/health") or process.poll() is not None, 90, "the API of the stack")
    assert process.poll() is None, (tmp_path / "stack.log").read_text()
    _serve_one_job(url)
    assert (tmp_path / ".run" / "redis").is_dir(), "its own Redis keeps its files under .run/"
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
    assert port_is_free(8081), "the simulator was stopped"
    assert not http_ok(f"{url}/health"), "the API was stopped"


def test_stack_uses_the_configured_redis(launch: object, tmp_path: Path, redis_server: RedisServer) -> None:
    assert callable(launch)
    process, url = launch(REDIS_URL=redis_server.url)
    wait_for(lambda: http_ok(f"{url}/health") or process.poll() is not None, 90, "the API of the stack")
    _serve_one_job(url)
    assert not (tmp_path / ".run" / "redis").exists()
    assert "using the configured server" in (tmp_path / "stack.log").read_text()
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
