"""`python -m bench [name ...] [options]`: run the benchmarks (all of them by default) in sequence.

Each prints a table of figures with their same-run baselines and appends a JSON line to
bench/results/<name>.jsonl. Nothing is asserted: a missed target is shown, not raised.
With --backend URL, throughput and latency (the default names then) run against that server
instead of our simulator.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from types import ModuleType

from bench import (
    commands,
    common,
    eta,
    fairness,
    fanout,
    latency,
    listing,
    memory,
    polling,
    scaleout,
    stalls,
    streaming,
    submission,
    throughput,
    webhooks,
)
from bench.common import Result, machine, print_table, save

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        throughput,
        latency,
        commands,
        submission,
        polling,
        streaming,
        fanout,
        memory,
        scaleout,
        stalls,
        fairness,
        eta,
        listing,
        webhooks,
    )
}
BACKEND_READY = [throughput.NAME, latency.NAME]
"""The benchmarks that run against --backend; the others need our simulator's own options."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    common.add_arguments(parser)
    for module in BENCHMARKS.values():
        module.add_arguments(parser)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every started process is stopped on the way out


def selected(cli: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The benchmarks to run (all, or with --backend those that can); exits through `cli.error` otherwise."""
    names: list[str] = args.names or list(BACKEND_READY if args.backend else BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        cli.error(f"unknown benchmark {', '.join(unknown)}: choose among {', '.join(BENCHMARKS)}")
    if args.backend is not None:
        if not args.backend.startswith("http://"):
            cli.error("--backend: an http://host:port URL")
        simulated = [name for name in names if name not in BACKEND_READY]
        if simulated:
            cli.error(f"--backend: {', '.join(simulated)} need our simulator; run {' and '.join(BACKEND_READY)}")
    return names


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    cli = parser()
    args = cli.parse_args(argv)
    names = selected(cli, args)
    print(f"machine: {machine()}", flush=True)
    results: list[Result] = []
    began = time.monotonic()
    for name in names:
        print(f"\n-- {name} --", flush=True)
        start = time.monotonic()
        run: Callable[[argparse.Namespace], Result] = BENCHMARKS[name].run
        result = run(args)
        result.seconds = time.monotonic() - start
        print_table(result)
        print(f"  appended to {save(result)}", flush=True)
        results.append(result)
    if len(results) > 1:
        print(f"\n== summary ({time.monotonic() - began:.0f} s) ==")
        for result in results:
            print_table(result, details=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
