"""Clients of the model servers: vLLM's OpenAI-compatible API (any compatible server) and legacy `/generate`.

Both stream the generation as `Delta` text pieces and end with one `Final`. Failures raise
`BackendUnavailable` (worth retrying: connection refused, 5xx, cut stream, silence) or
`BackendRejected` (the server refused the request itself: a 4xx such as context length exceeded).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from shared.models import GenerationRequest, Usage
from shared.settings import Backend, Settings


class BackendError(Exception):
    """A generation that the model server could not complete."""

    kind = "backend_error"


class BackendUnavailable(BackendError):
    kind = "backend_unavailable"


class BackendRejected(BackendError):
    kind = "backend_rejected"


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Final:
    finish_reason: str | None
    usage: Usage


Event = Delta | Final


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


async def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code == 200:
        return
    raw = await response.aread()
    try:
        message = _error_message(orjson.loads(raw))
    except orjson.JSONDecodeError:
        message = raw.decode(errors="replace")[:500]
    text = f"{url} answered HTTP {response.status_code}: {message}"
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise BackendRejected(text)
    raise BackendUnavailable(text)


def _chat_as_text(request: GenerationRequest) -> str:
    """A plain prompt for servers that only take text (`/generate`)."""
    if request.prompt is not None:
        return request.prompt
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in request.messages or ()) + "<|assistant|>\n"


class ModelClient:
    """Streams generations of one model from its servers, spreading requests over replicas."""

    def __init__(self, settings: Settings, model: str, *, transport: httpx.AsyncBaseTransport | None = None):
        self.model = model
        self.backends = settings.backends_for(model)
        if not self.backends:
            raise ValueError(f"model {model!r} is not in LLM_TABLE")
        self._next = itertools.cycle(self.backends)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.BACKEND_READ_TIMEOUT, connect=settings.BACKEND_CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=settings.WORKER_MAX_JOBS),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(self, request: GenerationRequest, request_id: str) -> AsyncGenerator[Event, None]:
        backend = next(self._next)
        try:
            if backend.protocol == "generate":
                async for event in self._stream_generate(backend, request, request_id):
                    yield event
            else:
                async for event in self._stream_openai(backend, request, request_id):
                    yield event
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"{backend.url}: no answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"{backend.url}: {type(exc).__name__}: {exc}") from exc

    async def _stream_openai(
        self, backend: Backend, request: GenerationRequest, request_id: str
    ) -> AsyncGenerator[Event, None]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.messages is not None:
            path, chat = "/v1/chat/completions", True
            body["messages"] = [m.model_dump() for m in request.messages]
        else:
            path, chat = "/v1/completions", False
            body["prompt"] = request.prompt
        url = backend.url + path
        finish_reason: str | None = None
        usage: Usage | None = None
        pieces = 0
        headers = {"X-Request-Id": request_id, "Accept": "text/event-stream"}
        async with self._http.stream("POST", url, content=orjson.dumps(body), headers=headers) as response:
            await _raise_for_status(response, url)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, SSE comments (": ping"), event/id fields
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise BackendUnavailable(f"{url}: unreadable chunk in the stream: {data[:200]!r}") from None
                if "error" in chunk:
                    message = f"{url}: error during the stream: {_error_message(chunk)}"
                    code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
                    raise (BackendRejected if code == 400 else BackendUnavailable)(message)
                if chunk.get("usage"):
                    usage = Usage.model_validate(chunk["usage"])
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if text:
                        pieces += 1
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
            else:
                if finish_reason is None:
                    raise BackendUnavailable(f"{url}: the stream was cut before its end")
        yield Final(finish_reason, usage or Usage(completion_tokens=pieces))

    async def _stream_generate(
        self, backend: Backend, request: GenerationRequest, request_id: str
    ) -> AsyncGenerator[Event, None]:
        prompt = _chat_as_text(request)
        body: dict[str, Any] = {
            "prompt": prompt,
            "stream": True,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        url = backend.url + "/generate"
        sent = 0
        records = 0
        buffer = b""
        headers = {"X-Request-Id": request_id}
        async with self._http.stream("POST", url, content=orjson.dumps(body), headers=headers) as response:
            await _raise_for_status(response, url)
            async for raw in response.aiter_bytes():
                buffer += raw
                *complete, buffer = buffer.replace(b"\0", b"\n").split(b"\n")
                for record in complete:
                    if not record.strip():
                        continue
                    text = orjson.loads(record)["text"][0]
                    completion = text[len(prompt) :] if text.startswith(prompt) else text
                    records += 1
                    if len(completion) > sent:
                        yield Delta(completion[sent:])
                        sent = len(completion)
        if buffer.strip():
            raise BackendUnavailable(f"{url}: the stream was cut inside a record")
        if records == 0:
            raise BackendUnavailable(f"{url}: the stream ended without any record")
        # /generate reports neither usage nor finish reason: one record is one generated token.
        finish_reason = "length" if records >= request.max_tokens else "stop"
        yield Final(finish_reason, Usage(completion_tokens=records))
