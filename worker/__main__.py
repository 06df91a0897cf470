"""`python -m worker --model NAME`: run an arq worker for one model of LLM_TABLE."""

from __future__ import annotations

import argparse
import asyncio
import logging

from shared.settings import get_settings
from worker.runner import ModelWorker


async def _run(model: str) -> None:
    worker = ModelWorker(get_settings(), model)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()


def main() -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--model", default=settings.default_model, choices=settings.models)
    args = parser.parse_args()
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(args.model))
    else:
        uvloop.run(_run(args.model))


if __name__ == "__main__":
    main()
