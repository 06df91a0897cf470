"""`python -m stack`, what `make run` runs: everything starts, serves a job, and stops on Ctrl-C.

The stack runs as a real subprocess in a process group of its own, and Ctrl-C is sent as a terminal sends it: to
the whole process group (`os.killpg`). Each stack gets free ports for its own Redis (REDIS_PORT, on which it
starts one when nothing answers there: never the machine's 6379), the simulator (SIM_PORT) and the API.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from stack.__main__ import Listener, check_ports
from stack.processes import free_port, http_ok, listens_on, port_is_free, spawn_python, wait_http
from tests.integration.conftest import AUTH, RedisServer, wait_for


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    ports: dict[str, int]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self) -> None:
        wait_for(lambda: http_ok(f"{self.url}/health") or self.process.poll() is not None, 90, "the API of the stack")
        assert self.process.poll() is None, self.output()

    def ctrl_c(self) -> None:
        """What the terminal does on Ctrl-C: SIGINT to every process of the foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, headers=AUTH)


class Launch(Protocol):
    def __call__(self, **env: str) -> Launched: ...


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    launched: list[Launched] = []
    # Stable across restarts of a test's stack: its Redis keeps its data under tmp_path/.run whatever the port.
    ports = {"REDIS_PORT": free_port(), "SIM_PORT": free_port(), "API_PORT": free_port()}

    def start(**env: str) -> Launched:
        clean = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("REDIS_", "LLM_", "API_", "SIM_", "WORKER_"))
        }
        settings = {**{name: str(port) for name, port in ports.items()}, "WORKER_METRICS_PORT": "0", **env}
        log = tmp_path / f"stack-{len(launched)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "stack"],
            cwd=tmp_path,
            env={**clean, **settings},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,  # as a shell's job: the group a terminal's Ctrl-C goes to
        )
        started = Launched(process, f"http://127.0.0.1:{settings['API_PORT']}", log, ports)
        launched.append(started)
        return started

    yield start
    for started in launched:
        if started.process.poll() is None:  # a failed test's: stopped in order, running jobs handed back at once
            started.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.process.wait(5)
            started.process.terminate()
            try:
                started.process.wait(60)
            except subprocess.TimeoutExpired:
                started.process.kill()
                started.process.wait()


def _submit(stack: Launched, max_tokens: int) -> str:
    with stack.client() as client:
        job_id: str = client.post("/v1/jobs", json={"prompt": "Bonjour", "params": {"max_tokens": max_tokens}}).json()[
            "id"
        ]
    return job_id


def _job(stack: Launched, job_id: str) -> dict[str, Any]:
    with stack.client() as client:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _wait_job(stack: Launched, job_id: str, statuses: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := _job(stack, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout}s: {job}"
        time.sleep(0.05)
    return job


def _stopped_quietly(stack: Launched, timeout: float = 60) -> None:
    """The stack exits 0 (or 130), with no traceback of any of its processes, and every port it held free."""
    code = stack.process.wait(timeout)
    output = stack.output()
    assert code in (0, 130), output
    assert "Traceback" not in output, output
    for name, port in stack.ports.items():
        assert port_is_free(port), f"{name} {port} still held after the stack exited"


def test_stack_starts_everything_and_ctrl_c_stops_it(launch: Launch, tmp_path: Path) -> None:
    """SIM_PORT moves the simulator, and the workers follow it (LLM_TABLE unset): jobs succeed."""
    stack = launch()
    stack.wait_up()
    job = _wait_job(stack, _submit(stack, 5), ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    assert (tmp_path / ".run" / "redis").is_dir(), "its own Redis keeps its files under .run/"
    output = stack.output()
    assert f"started redis-server on 127.0.0.1:{stack.ports['REDIS_PORT']}" in output
    assert (
        f"vLLM simulator for AgentPublic/fabrique-reference-2 on http://127.0.0.1:{stack.ports['SIM_PORT']}" in output
    )
    stack.ctrl_c()
    _stopped_quietly(stack)
    assert not http_ok(f"{stack.url}/health"), "the API was stopped"


def test_ctrl_c_hands_running_jobs_back_unharmed_each_time(launch: Launch) -> None:
    """Ctrl-C reaches only `python -m stack`, which stops the workers before Redis: a running job is handed back
    without counting the attempt. The report: after three Ctrl-C the job had failed with `worker_lost`."""
    settings = {"WORKER_SHUTDOWN_GRACE": "1"}  # the worker lets it run 1 s, then hands it back
    job_id = ""
    for _ in range(3):
        stack = launch(**settings)
        stack.wait_up()
        job_id = job_id or _submit(stack, 400)  # 8 s of tokens at the stack's simulator's 20 ms a token
        running = _wait_job(stack, job_id, ("running", "succeeded", "failed"))
        assert (running["status"], running["attempts"]) == ("running", 1), running
        stack.ctrl_c()
        _stopped_quietly(stack)
        assert "handed back on shutdown" in stack.output()
    stack = launch(**settings)
    stack.wait_up()
    done = _wait_job(stack, job_id, ("succeeded", "failed", "cancelled"), timeout=60)
    assert (done["status"], done["attempts"]) == ("succeeded", 1), done
    stack.ctrl_c()
    _stopped_quietly(stack)


def test_a_second_ctrl_c_hands_running_jobs_back_at_once(launch: Launch) -> None:
    stack = launch()  # WORKER_SHUTDOWN_GRACE: 30 s
    stack.wait_up()
    job_id = _submit(stack, 2000)
    _wait_job(stack, job_id, ("running",))
    stack.ctrl_c()
    wait_for(lambda: "the workers let running jobs finish" in stack.output(), 20, "the workers draining")
    began = time.monotonic()
    stack.ctrl_c()
    _stopped_quietly(stack, timeout=20)
    assert time.monotonic() - began < 15, "the second Ctrl-C did not wait out the grace"
    assert "handed back on shutdown" in stack.output()
    stack = launch(WORKER_SHUTDOWN_GRACE="0")
    stack.wait_up()
    job = _wait_job(stack, job_id, ("running", "succeeded", "failed"))
    assert job["attempts"] == 1, job
    stack.ctrl_c()
    _stopped_quietly(stack)


def test_ctrl_c_while_starting_stops_what_started_quietly(launch: Launch) -> None:
    stack = launch()
    wait_for(lambda: "Model server: vLLM simulator" in stack.output(), 60, "the simulator started")
    stack.ctrl_c()  # the workers and the API are starting
    _stopped_quietly(stack, timeout=30)


@pytest.mark.parametrize("setting", ["API_PORT", "SIM_PORT", "WORKER_METRICS_PORT"])
def test_a_taken_port_stops_the_stack_at_once_naming_it(launch: Launch, tmp_path: Path, setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = launch(**{setting: str(port)})
        code = stack.process.wait(20)
    output = stack.output()
    assert code == 1, output
    line = rf"port {port} \(.+\) is already in use: stop what listens there or set {setting}=\d+"
    assert re.fullmatch(line + r"( \(0: no metrics\))?\n", output), output  # one line, nothing else
    assert not (tmp_path / ".run").exists(), "nothing was started"
    assert port_is_free(stack.ports["REDIS_PORT"])


def test_ports_set_twice_are_refused() -> None:
    port = free_port()
    planned = [
        Listener(port, "127.0.0.1", "the simulator", "SIM_PORT"),
        Listener(port, "127.0.0.1", "the API", "API_PORT"),
    ]
    assert check_ports(planned) == (
        f"port {port} is set for both the simulator (SIM_PORT) and the API (API_PORT): give one of them another port"
    )


def test_listens_on_tells_which_process_holds_a_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        if listens_on(os.getpid(), port) is None:
            pytest.skip("no Linux /proc to tell")
        assert listens_on(os.getpid(), port) is True
        other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            assert listens_on(other.pid, port) is False
        finally:
            other.communicate(b"")


def test_readiness_is_not_fooled_by_another_server_on_the_port(tmp_path: Path) -> None:
    """Another server answers the probe while ours fails to bind: the wait fails instead of calling it ready."""
    impostor_port = free_port()
    impostor = spawn_python("impostor", ["http.server", "--bind", "127.0.0.1", str(impostor_port)], env={})
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{impostor_port}/"), 15, "the other server")
        ours = spawn_python("ours", ["sim", "--port", str(impostor_port)], env={}, log=tmp_path / "sim.log")
        with pytest.raises(RuntimeError, match="exited"):
            wait_http(ours, f"http://127.0.0.1:{impostor_port}/")
        ours.stop()
    finally:
        impostor.stop()


def test_stack_uses_the_configured_redis(launch: Launch, tmp_path: Path, redis_server: RedisServer) -> None:
    stack = launch(REDIS_URL=redis_server.url)
    stack.wait_up()
    job = _wait_job(stack, _submit(stack, 5), ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    assert not (tmp_path / ".run" / "redis").exists()
    assert "using the configured server" in stack.output()
    stack.ctrl_c()
    _stopped_quietly(stack)
    assert redis_server.client().ping(), "the configured Redis is not ours to stop"
