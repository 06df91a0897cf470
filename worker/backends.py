"""Clients of the model servers: vLLM's OpenAI-compatible API (any compatible server) and legacy `/generate`.

Both stream the generation as `Delta` text pieces and end with one `Final`. Failures raise
`BackendUnavailable` (worth retrying: connection refused, 5xx, cut stream, silence) or
`BackendRejected` (the server refused the request itself: a 4xx such as context length exceeded).

aiohttp, not httpx: with a few hundred streams in flight, httpx's connection pool rescans every
connection for each idle one on every request (quadratic), which took most of a worker's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import orjson

from shared.models import ErrorType, GenerationRequest, Usage
from shared.settings import Backend, Settings
from worker.provenance import ModelCard, ModelCards, Trace, card_of
from worker.replicas import Replica, Replicas

logger = logging.getLogger(__name__)

_DRAIN_SECONDS = 1.0

_CARD_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
"""A /v1/models question that takes longer is given up: the provenance then lacks the model's revision."""


class BackendError(Exception):
    """A generation that the model server could not complete.

    `str(error)` is the public message, the one stored in the job and shown to its client: what happened and
    the server's own words, sanitised; never the server's URL or credentials. `internal` adds where it
    happened and the details, for the worker's log.
    """

    kind: ClassVar[ErrorType] = ErrorType.BACKEND_ERROR

    def __init__(self, public: str, where: str = "", detail: str = "") -> None:
        super().__init__(public)
        self.internal = ": ".join(part for part in (where, public, detail) if part)


class BackendUnavailable(BackendError):
    kind = ErrorType.BACKEND_UNAVAILABLE


class BackendRejected(BackendError):
    kind = ErrorType.BACKEND_REJECTED


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Final:
    finish_reason: str | None
    usage: Usage


Event = Delta | Final

_REQUEST_IDS = uuid.UUID("6f1d7c52-3b0e-4d47-9a4e-2f9b8c1d0a5e")
"""The namespace of the request ids sent to model servers (uuid5 of a job's key id and run)."""

_RETRIED_4XX = (408, 424, 429)
"""Client errors that are the server's state, not the request's fault: a timeout, a failed generation (TGI's
424: a shard ran out of memory), overload."""

PUBLIC_MESSAGE_CHARS = 300
"""The longest server message kept in a job's error: a model server may echo a whole prompt."""

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def request_id(kid: str, run: int) -> str:
    """The request id of a job's run, sent to the model server as `X-Request-Id`: a UUID, the one form every
    server accepts (some refuse anything else), the same for the same run, logged next to the job id."""
    return str(uuid.uuid5(_REQUEST_IDS, f"{kid}:{run}"))


def public_text(message: str) -> str:
    """A model server's own message, fit for a client: URLs (which may hold hosts or credentials) and control
    characters removed, at most PUBLIC_MESSAGE_CHARS characters."""
    cleaned = _CONTROL.sub(" ", _URL.sub("<url>", message)).strip()
    if len(cleaned) > PUBLIC_MESSAGE_CHARS:
        cleaned = cleaned[: PUBLIC_MESSAGE_CHARS - 1] + "…"
    return cleaned


def _error_message(body: Any) -> str:
    """The message of either vLLM error shape: `{"error": {...}}` or the older flat `{"message": ...}`."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            return str(inner.get("message", inner))
        if isinstance(inner, str):
            return inner
        if "message" in body:
            return str(body["message"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:500]


async def _raise_for_status(response: aiohttp.ClientResponse, where: str) -> None:
    if response.status == 200:
        return
    raw = await response.read()
    try:
        message = _error_message(orjson.loads(raw))
    except orjson.JSONDecodeError:
        message = raw.decode(errors="replace")[:500]
    said = public_text(message)
    text = f"the model server answered HTTP {response.status}" + (f": {said}" if said else "")
    if response.status in (401, 403):
        # The worker's key, not the job, is wrong: worth retrying once an operator has fixed it.
        raise BackendUnavailable(f"{text} (check LLM_API_KEY or the LLM_TABLE entry's api_key)", where)
    if 400 <= response.status < 500 and response.status not in _RETRIED_4XX:
        raise BackendRejected(text, where)
    raise BackendUnavailable(text, where)


async def _records(response: aiohttp.ClientResponse, separators: bytes = b"\n") -> AsyncIterator[bytes]:
    """The body split on `separators` (any of those bytes), whatever the size of a record."""
    buffer = b""
    async for raw in response.content.iter_any():
        buffer += raw
        if not any(separator in raw for separator in separators):
            continue
        for separator in separators[1:]:
            buffer = buffer.replace(bytes([separator]), separators[:1])
        *complete, buffer = buffer.split(separators[:1])
        for record in complete:
            yield record
    if buffer:
        yield buffer


def _chat_as_text(request: GenerationRequest) -> str:
    """A plain prompt for servers that only take text (`/generate`)."""
    if request.prompt is not None:
        return request.prompt
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in request.messages or ()) + "<|assistant|>\n"


def _sampling(request: GenerationRequest) -> dict[str, Any]:
    """The generation parameters of a request body."""
    sampling: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.stop:
        sampling["stop"] = request.stop
    if request.seed is not None:
        sampling["seed"] = request.seed
    return sampling


class ModelClient:
    """Streams generations of one model from its servers, spreading requests over replicas (worker/replicas.py)."""

    def __init__(self, settings: Settings, model: str) -> None:
        self.model = model
        self.backends = settings.backends_for(model)
        if not self.backends:
            raise ValueError(f"model {model!r} is not in LLM_TABLE")
        self.replicas = Replicas(settings, self.backends)
        self.cards = ModelCards(self._card)
        """What each replica says it serves, for the provenance of its answers."""
        self._first_token_timeout = settings.FIRST_TOKEN_TIMEOUT
        self._read_timeout = settings.BACKEND_READ_TIMEOUT
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.BACKEND_CONNECT_TIMEOUT, sock_read=settings.BACKEND_READ_TIMEOUT
        )
        self._default_key = settings.LLM_API_KEY
        self._tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(settings.LLM_CA_BUNDLE)) if settings.LLM_CA_BUNDLE else True
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running event loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ssl=self._tls)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, raise_for_status=False)
        return self._session

    async def aclose(self) -> None:
        await self.cards.aclose()
        if self._session is not None:
            await self._session.close()

    def _headers(self, backend: Backend, request_id: str, **more: str) -> dict[str, str]:
        """The headers of a request: JSON, the request id and, when the server needs one, its bearer key."""
        headers = {"X-Request-Id": request_id, "Content-Type": "application/json", **more}
        key = backend.api_key or self._default_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def stream(
        self, request: GenerationRequest, request_id: str, trace: Trace | None = None
    ) -> AsyncGenerator[Event, None]:
        """The generation's events from the next replica; raises BackendUnavailable or BackendRejected.

        The first event must come within FIRST_TOKEN_TIMEOUT of sending the request (a server that accepts
        requests but never starts them); after it, BACKEND_READ_TIMEOUT bounds each silence. A `trace` is told
        what answers (the replica, the sampling sent, the model id reported), and the replica's card is asked for
        in the background when it is missing or stale.
        """
        replica = self.replicas.pick()
        backend = replica.backend
        if trace is not None:
            trace.replica = replica.rank
            self.cards.refresh(replica.rank)
        if backend.protocol == "generate":
            events = self._stream_generate(backend, request, request_id, trace)
        else:
            events = self._stream_openai(backend, request, request_id, trace)
        first_token = asyncio.timeout(self._first_token_timeout)
        try:
            async with contextlib.aclosing(events), first_token:
                async for event in events:
                    first_token.reschedule(None)
                    yield event
        except TimeoutError as exc:
            self._failed(replica)
            if first_token.expired():
                reason = f"no first token within FIRST_TOKEN_TIMEOUT={self._first_token_timeout:g}s"
            else:
                reason = (
                    f"no answer in time: the model server was silent for BACKEND_READ_TIMEOUT={self._read_timeout:g}s"
                )
            raise BackendUnavailable(reason, backend.public_url) from exc
        except aiohttp.ClientError as exc:
            self._failed(replica)
            # aiohttp's messages name the host (and, for TLS, the certificate's details): internal only.
            public = f"the connection to the model server failed ({type(exc).__name__})"
            raise BackendUnavailable(public, backend.public_url, str(exc)) from exc
        except BackendUnavailable:
            self._failed(replica)
            raise
        except BackendRejected:
            self.replicas.succeeded(replica)
            raise
        else:
            self.replicas.succeeded(replica)

    def _failed(self, replica: Replica) -> None:
        self.replicas.failed(replica)
        self.cards.forget(replica.rank)

    async def _card(self, rank: int) -> ModelCard | None:
        """What the replica of `rank` says it serves (`GET /v1/models`); None when it cannot tell."""
        backend = self.replicas.replicas[rank].backend
        url = backend.url + "/v1/models"
        try:
            headers = self._headers(backend, str(uuid.uuid4()))
            async with self.session.get(url, headers=headers, timeout=_CARD_TIMEOUT) as response:
                if response.status != 200:
                    logger.debug("model server %s/v1/models answered HTTP %d", backend.public_url, response.status)
                    return None
                return card_of(orjson.loads(await response.read()), self.model)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            logger.debug("model server %s/v1/models unanswered: %s", backend.public_url, type(exc).__name__)
            return None

    async def _stream_openai(
        self, backend: Backend, request: GenerationRequest, request_id: str, trace: Trace | None
    ) -> AsyncGenerator[Event, None]:
        sampling = _sampling(request)
        if trace is not None:
            trace.sampling = sampling
        body = {"model": request.model, **sampling, "stream": True, "stream_options": {"include_usage": True}}
        if request.messages is not None:
            path, chat = "/v1/chat/completions", True
            body["messages"] = [m.model_dump() for m in request.messages]
        else:
            path, chat = "/v1/completions", False
            body["prompt"] = request.prompt
        url = backend.url + path
        where = backend.public_url + path
        finish_reason: str | None = None
        usage: Usage | None = None
        pieces = 0
        done = False
        headers = self._headers(backend, request_id, Accept="text/event-stream")
        async with self.session.post(url, data=orjson.dumps(body), headers=headers) as response:
            await _raise_for_status(response, where)
            async for raw in _records(response):
                line = raw.rstrip(b"\r")
                if not line.startswith(b"data:"):
                    continue  # blank separators, SSE comments (": ping"), event/id fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    unreadable = "the model server sent an unreadable chunk"
                    raise BackendUnavailable(unreadable, where, repr(data[:200])) from None
                if trace is not None and trace.served_model is None:
                    trace.read_chunk(chunk)
                if "error" in chunk:
                    message = f"the model server failed during the stream: {public_text(_error_message(chunk))}"
                    code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
                    raise (BackendRejected if code == 400 else BackendUnavailable)(message, where)
                if chunk.get("usage"):
                    usage = Usage.model_validate(chunk["usage"])
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if text:
                        pieces += 1
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
            if done:
                # The end of the body lets the connection be reused; a server that keeps the response
                # open after [DONE] only costs its connection, not the generation.
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    await asyncio.wait_for(response.content.read(), _DRAIN_SECONDS)
        if finish_reason is None:
            # Neither [DONE] nor a finish reason: cut. [DONE] without a finish reason: cut too, as some servers end
            # a stream they interrupt (llama-cpp-python, for a newer request) or fail (SGLang 0.4) that way.
            cut = "before its end" if not done else "without a finish reason"
            raise BackendUnavailable(f"the model server's stream was cut {cut}", where)
        yield Final(finish_reason, usage or Usage(completion_tokens=pieces))

    async def _stream_generate(
        self, backend: Backend, request: GenerationRequest, request_id: str, trace: Trace | None
    ) -> AsyncGenerator[Event, None]:
        prompt = _chat_as_text(request)
        sampling = _sampling(request)
        if trace is not None:
            trace.sampling = sampling
        body = {"prompt": prompt, **sampling, "stream": True}
        url = backend.url + "/generate"
        where = backend.public_url + "/generate"
        sent = 0
        records = 0
        async with self.session.post(
            url, data=orjson.dumps(body), headers=self._headers(backend, request_id)
        ) as response:
            await _raise_for_status(response, where)
            async for record in _records(response, b"\n\0"):
                if not record.strip():
                    continue
                try:
                    text = orjson.loads(record)["text"][0]
                except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                    unreadable = "the model server sent an unreadable record"
                    raise BackendUnavailable(unreadable, where, repr(record[:200])) from None
                completion = text[len(prompt) :] if text.startswith(prompt) else text
                records += 1
                if len(completion) > sent:
                    yield Delta(completion[sent:])
                    sent = len(completion)
        if records == 0:
            raise BackendUnavailable("the model server's stream ended without any record", where)
        # /generate reports neither usage nor finish reason: one record is one generated token.
        finish_reason = "length" if records >= request.max_tokens else "stop"
        yield Final(finish_reason, Usage(completion_tokens=records))
