"""`albert-spp`: the command-line client. `albert-spp batch INPUT -o OUTPUT` runs a file of questions as a batch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from albert_spp import config
from client import batch

DEFAULT_URL = config.DEFAULT_URL


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _temperature(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 2")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def default_api_key() -> str:
    """$ALBERT_SPP_API_KEY, else `dev`: never another service's variable (an OpenAI key would be sent here)."""
    return os.environ.get(config.KEY_VARIABLE) or "dev"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="albert-spp", description="Command-line client of an albert-spp server.")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "batch",
        help="run a JSONL file of questions as one batch, with a progress bar",
        description=(
            "Upload INPUT as a batch of the server, show its progress, then write one line per input line to "
            'OUTPUT: {"id", "answer"} or {"id", "error": {"code", "message"}}, in input order. INPUT holds either '
            'OpenAI batch requests {"custom_id", "method", "url", "body"} or SPP lines {"id", "text"} (each becomes '
            "a chat request with the SPP prompt template). Interrupted (Ctrl-C) and run again with the same "
            "arguments, it resumes the same batch (state in OUTPUT.batch.json)."
        ),
        epilog="Exit codes: 0 every request answered; 1 some failed; 2 usage, input or batch validation error; "
        "130 interrupted (the batch keeps running).",
    )
    run.add_argument("input", type=Path, metavar="INPUT", help="the JSONL file of requests")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT", help="the JSONL file of results")
    run.add_argument(
        "--url",
        default=os.environ.get(config.URL_VARIABLE) or DEFAULT_URL,
        help=f"the server (default: $ALBERT_SPP_URL or {DEFAULT_URL})",
    )
    run.add_argument(
        "--api-key",
        default=None,
        help="the API key (default: $ALBERT_SPP_API_KEY, else 'dev'; never $OPENAI_API_KEY)",
    )
    run.add_argument("--model", help="SPP lines: the model (default: the server's first, GET /v1/models)")
    run.add_argument(
        "--max-tokens",
        type=_positive_int,
        help=f"SPP lines: max_tokens of each answer (default {batch.DEFAULT_MAX_TOKENS})",
    )
    run.add_argument(
        "--temperature",
        type=_temperature,
        help=f"SPP lines: the sampling temperature (default {batch.DEFAULT_TEMPERATURE})",
    )
    run.add_argument("--raw", action="store_true", help="write the OpenAI output and error lines as they came")
    run.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two looks at the batch (default 1)",
    )
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "batch":
        options = batch.Options(
            input=args.input,
            output=args.output,
            url=args.url,
            api_key=args.api_key or default_api_key(),
            model=args.model,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            raw=args.raw,
            poll_interval=args.poll_interval,
        )
        return batch.run(options)
    raise AssertionError(args.command)  # pragma: no cover: argparse refuses other commands


if __name__ == "__main__":
    sys.exit(main())
