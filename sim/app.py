"""The Starlette application: vLLM's OpenAI-compatible routes, the legacy /generate, and /sim/* for tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Coroutine
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from sim.asgi import Emit, Hang, LiveStream, until_disconnect
from sim.config import SimConfig
from sim.engine import Scheduler
from sim.faults import Fault, FaultInjector
from sim.metrics import render_metrics
from sim.params import GenParams, Kind, RequestError, parse_request, parse_tokenize
from sim.protocol import (
    ENGINE_ERROR,
    ChunkEncoder,
    chat_completion,
    error_body,
    generate_record,
    model_list,
    text_completion,
)
from sim.runs import Runner
from sim.stats import Stats
from sim.textgen import Plan, make_plan
from sim.tokenizer import token_ids

VLLM_VERSION = "0.11.0"
LEGACY_VLLM_VERSION = "0.9.2"  # reported with --legacy-errors: the flat error shape predates 0.10.1

_ENDPOINTS = {Kind.CHAT: "/v1/chat/completions", Kind.COMPLETION: "/v1/completions", Kind.GENERATE: "/generate"}


def _json(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code, headers, media_type="application/json")


class Simulator:
    """State of one simulated server: the scheduler, the fault RNG and the counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.scheduler = Scheduler(config.max_num_seqs, self.stats)
        self.faults = FaultInjector(config)
        self.runner = Runner(config, self.scheduler, self.stats)
        self.started = int(time.time())

    def routes(self) -> list[Route]:
        return [
            Route(_ENDPOINTS[Kind.CHAT], self.chat_completions, methods=["POST"]),
            Route(_ENDPOINTS[Kind.COMPLETION], self.completions, methods=["POST"]),
            Route(_ENDPOINTS[Kind.GENERATE], self.generate, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/sim/stats", self.sim_stats, methods=["GET"]),
            Route("/sim/reset", self.sim_reset, methods=["POST"]),
        ]

    def _error(self, message: str, code: int, param: str | None = None) -> Response:
        return _json(error_body(message, code, param, legacy=self.config.legacy_errors), code)

    def _model_label(self, kind: Kind, body: Any) -> str:
        """The model a request is counted under: as requested, the default one when absent ("" if unreadable)."""
        requested = body.get("model") if isinstance(body, dict) and kind is not Kind.GENERATE else None
        if requested is None:
            return self.config.models[0] if isinstance(body, dict) else ""
        return requested if isinstance(requested, str) else ""

    def _count_abort(self) -> None:
        self.stats.aborted += 1

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, Kind.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, Kind.COMPLETION)

    async def generate(self, request: Request) -> Response:
        return await self._serve(request, Kind.GENERATE)

    def _unauthorized(self, request: Request) -> Response | None:
        """vLLM's answer to a /v1 request without the --api-key bearer key (its body is not an OpenAI error)."""
        if self.config.api_key is None or request.headers.get("authorization") == f"Bearer {self.config.api_key}":
            return None
        return _json({"error": "Unauthorized"}, 401)

    async def _serve(self, request: Request, kind: Kind) -> Response:
        if kind is not Kind.GENERATE and (refused := self._unauthorized(request)) is not None:
            return refused
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        self.stats.record_request(_ENDPOINTS[kind], self._model_label(kind, body), request_id, body)
        try:
            params = parse_request(kind, body, self.config)
        except RequestError as exc:
            return self._error(exc.message, exc.code, exc.param)
        fault = self.faults.decide(stream=params.stream, error_chunks=kind is not Kind.GENERATE)
        if fault is not None:
            self.stats.faults[fault.value] += 1
        if fault is Fault.HANG:
            return Hang(self._count_abort)
        if fault is Fault.ERROR:
            return self._error(ENGINE_ERROR, 500)
        plan = make_plan(
            params.model, params.prompt, params.seed, params.max_tokens, params.stop, self.config.early_stop_rate
        )
        headers = {"x-request-id": request_id}
        if kind is Kind.GENERATE:
            return await self._legacy(request, params, plan, fault, headers)
        response_id = ("chatcmpl-" if kind is Kind.CHAT else "cmpl-") + request_id
        created = int(time.time())
        if params.stream:
            encoder = ChunkEncoder(response_id, created, params.model, chat=kind is Kind.CHAT)

            def produce(emit: Emit) -> Coroutine[Any, Any, bool]:
                return self.runner.openai_stream(emit, params, plan, encoder, fault)

            return LiveStream(produce, "text/event-stream", headers)
        if not await until_disconnect(request.receive, self.runner.run_once(params, plan)):
            return Response(status_code=499)
        build = chat_completion if kind is Kind.CHAT else text_completion
        return _json(build(response_id, created, params.model, plan, params.prompt_tokens), headers=headers)

    async def _legacy(
        self, request: Request, params: GenParams, plan: Plan, fault: Fault | None, headers: dict[str, str]
    ) -> Response:
        if params.stream:

            def produce(emit: Emit) -> Coroutine[Any, Any, bool]:
                return self.runner.generate_stream(emit, params, plan, fault)

            return LiveStream(produce, None, headers)
        if not await until_disconnect(request.receive, self.runner.run_once(params, plan)):
            return Response(status_code=499)
        return Response(generate_record(params.prompt + plan.text), headers=headers, media_type="application/json")

    async def models(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        return _json(model_list(self.config.models, self.started, self.config.max_model_len))

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return _json({"version": LEGACY_VLLM_VERSION if self.config.legacy_errors else VLLM_VERSION})

    async def tokenize(self, request: Request) -> Response:
        try:
            text = parse_tokenize(orjson.loads(await request.body()), self.config)
        except orjson.JSONDecodeError:
            return self._error("The request body must be a JSON object.", 400)
        except RequestError as exc:
            return self._error(exc.message, exc.code, exc.param)
        tokens = token_ids(text)
        return _json({"count": len(tokens), "max_model_len": self.config.max_model_len, "tokens": tokens})

    async def metrics(self, request: Request) -> Response:
        return Response(render_metrics(self.stats, self.config), media_type="text/plain; version=0.0.4")

    async def sim_stats(self, request: Request) -> Response:
        return _json(self.stats.snapshot())

    async def sim_reset(self, request: Request) -> Response:
        self.stats.reset()
        return _json(self.stats.snapshot())


def create_app(config: SimConfig | None = None) -> Starlette:
    """A fresh simulator (its own counters and fault RNG) as an ASGI app."""
    return Starlette(routes=Simulator(config or SimConfig()).routes())
