"""`python -m webhooks`: deliver the webhooks of jobs and batches until SIGTERM or SIGINT (Ctrl-C).

On a signal the process takes no new event, lets the deliveries running end (WEBHOOK_TIMEOUT at most), and exits;
what it held is taken again by the next process that runs (or by another one running meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from shared.logs import configure_logging
from shared.settings import Settings, settings_or_exit
from webhooks.deliverer import Deliverer
from worker.metrics_server import serve_metrics


async def _run(settings: Settings) -> None:
    deliverer = Deliverer(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, deliverer.stop)
    runner = None
    if settings.WEBHOOK_METRICS_PORT:
        runner = await serve_metrics(deliverer.metrics, settings.WORKER_METRICS_HOST, settings.WEBHOOK_METRICS_PORT)
    try:
        await deliverer.run()
    finally:
        await deliverer.aclose()
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    settings = settings_or_exit()
    argparse.ArgumentParser(prog="python -m webhooks", description=__doc__).parse_args()
    configure_logging(settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(settings))
    else:
        uvloop.run(_run(settings))


if __name__ == "__main__":
    main()
