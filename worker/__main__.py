"""`python -m worker --model NAME`: run an arq worker for one model of LLM_TABLE."""

from __future__ import annotations

import argparse
import asyncio

from shared.logs import configure_logging
from shared.settings import settings_or_exit
from worker.runner import ModelWorker


async def _run(model: str) -> None:
    worker = ModelWorker(settings_or_exit(), model)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()


def main() -> None:
    settings = settings_or_exit()
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--model", default=settings.default_model, choices=settings.models)
    args = parser.parse_args()
    configure_logging(settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(args.model))
    else:
        uvloop.run(_run(args.model))


if __name__ == "__main__":
    main()
