"""Run a simulated vLLM server: ``python -m sim --port 8081 --model NAME``.

What it is for: tests and benchmarks of the job system without GPUs. It speaks vLLM's
OpenAI-compatible protocol as the worker sees it (``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``, ``/health``, ``/version``, ``/tokenize``, ``/metrics``) and the legacy
``/generate`` API, generating deterministic French text (same model, prompt and seed give the
same tokens), with vLLM's continuous-batching timing and injectable faults.

Options:
  --host HOST                  interface to bind (127.0.0.1)
  --port PORT                  port to listen on (8081)
  --model NAME                 served model name; repeat to serve several (AgentPublic/fabrique-reference-2)
  --max-num-seqs N             requests generating at once; the rest wait (256, like vLLM)
  --max-model-len N            context length checked against prompt + max_tokens (4096)
  --prefill-ms MS              delay from admission to the first token (0)
  --ms-per-token MS            delay between tokens (0: no delay, the loop is still yielded to)
  --first-token-delay-ms MS    extra delay before the first token (0)
  --early-stop-rate R          fraction of requests ending with "stop" before max_tokens (0)
  --error-rate R               fraction of requests answered HTTP 500 with vLLM's error body (0)
  --hang-rate R                fraction of requests never answered, until the client goes away (0)
  --cut-rate R                 fraction of streams whose connection is cut halfway, without [DONE] (0)
  --midstream-error-rate R     fraction of streams sending an error chunk then [DONE] halfway (0)
  --legacy-errors              vLLM's old flat error shape {"object":"error",...} (and /version 0.9.2)
  --generate-delimiter D       record separator of the /generate stream: newline (default) or nul
  --fault-seed N               seed of the fault RNG, for reproducible runs (default: unseeded)
  --log-level LEVEL            uvicorn log level (info); the access log is on only at debug
  --api-key KEY                as vLLM's: the /v1 routes answer 401 without `Authorization: Bearer KEY`
  --replay FILE                serve a recorded real server's answer instead (sim/replay.py); with it,
                               only --host, --port, --log-level and --pace-ms apply
  --pace-ms MS                 with --replay: delay between the recorded SSE events (0: all at once)

Faults are drawn per valid request, from the --fault-seed RNG, in the order hang, error, cut,
mid-stream error; the first that fires wins. A hung request holds no batch slot. An early stop
is part of the deterministic output instead (like a real end-of-sequence token): identical
requests end at the same token.

Simulator-only routes for tests: ``GET /sim/stats`` returns
``{"requests", "running", "waiting", "aborted", "completed", "by_model", "by_endpoint", "faults",
"recent"}`` where requests counts the generation requests (chat, completions, /generate) as
received, aborted those whose client went away before the end, and recent holds the last 200
request bodies with "endpoint" and "request_id" added; ``POST /sim/reset`` zeroes the counters.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from sim.app import create_app
from sim.config import DEFAULT_MODEL, SimConfig
from sim.replay import TranscriptError, create_replay_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim", description="Simulated vLLM OpenAI-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME", help="repeatable")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--prefill-ms", type=float, default=0.0)
    parser.add_argument("--ms-per-token", type=float, default=0.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=0.0)
    parser.add_argument("--early-stop-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--cut-rate", type=float, default=0.0)
    parser.add_argument("--midstream-error-rate", type=float, default=0.0)
    parser.add_argument("--legacy-errors", action="store_true")
    parser.add_argument("--generate-delimiter", choices=["newline", "nul"], default="newline")
    parser.add_argument("--fault-seed", type=int, default=None)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--api-key", default=None, help="as vLLM's: /v1 routes want 'Authorization: Bearer KEY'")
    parser.add_argument("--replay", type=Path, default=None, metavar="FILE")
    parser.add_argument("--pace-ms", type=float, default=0.0)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> SimConfig:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return SimConfig(
            host=args.host,
            port=args.port,
            models=tuple(args.models or (DEFAULT_MODEL,)),
            max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len,
            prefill_ms=args.prefill_ms,
            ms_per_token=args.ms_per_token,
            first_token_delay_ms=args.first_token_delay_ms,
            early_stop_rate=args.early_stop_rate,
            error_rate=args.error_rate,
            hang_rate=args.hang_rate,
            cut_rate=args.cut_rate,
            midstream_error_rate=args.midstream_error_rate,
            legacy_errors=args.legacy_errors,
            generate_delimiter=args.generate_delimiter,
            fault_seed=args.fault_seed,
            log_level=args.log_level,
            api_key=args.api_key,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.replay is None:
        app: ASGIApp = create_app(config)
    else:
        try:
            app = create_replay_app(args.replay, args.pace_ms)
        except (OSError, TranscriptError) as exc:
            parser.error(f"--replay: {exc}")
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools",
        log_level=config.log_level,
        access_log=config.log_level == "debug",
        # Hung and long streams would otherwise delay a SIGTERM until their clients leave.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
