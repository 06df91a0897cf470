"""`python -m api`: serve the API with uvicorn on API_HOST:API_PORT."""

from __future__ import annotations

import importlib.util

import uvicorn

from api.auth import KeyRing
from api.main import create_app, open_access_refusal
from shared.logs import configure_logging
from shared.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit()
    refusal = open_access_refusal(settings)
    if refusal is not None:
        raise SystemExit(f"albert-spp: {refusal}")
    try:
        KeyRing(settings)  # a keys file that does not load stops the API here, with its reason, not a traceback
    except ValueError as exc:
        raise SystemExit(f"albert-spp: {exc}") from None
    configure_logging(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.API_HOST,
        port=settings.API_PORT,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools",
        proxy_headers=True,
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
        access_log=False,
        log_config=None,  # keep the handlers of configure_logging()
        log_level=settings.LOG_LEVEL.lower(),
    )
    server = uvicorn.Server(config)
    if not settings.API_METRICS_PORT:
        server.run()
        return
    # One application on two sockets (api.main.MetricsPort tells them apart): /metrics on its own address only.
    metrics = uvicorn.Config(
        config.app,
        host=settings.API_METRICS_HOST,
        port=settings.API_METRICS_PORT,
        log_config=None,  # uvicorn's own would replace configure_logging()'s handlers: lines no longer JSON
        log_level=settings.LOG_LEVEL.lower(),
    )
    server.run(sockets=[config.bind_socket(), metrics.bind_socket()])


if __name__ == "__main__":
    main()
