"""Replay a real model server's recorded answer: ``python -m sim --replay FILE [--port N] [--pace-ms MS]``.

What it is for: checking the worker against what vLLM, TGI, SGLang or Ollama really send (field order,
`data:` without a space, usage and finish_reason in one chunk, no `[DONE]`, flat error bodies...), which the
simulator, speaking today's vLLM, does not. Every POST to ``/v1/chat/completions`` or ``/v1/completions``
gets the recorded answer, byte for byte, whatever its body; ``GET /health`` answers 200 and ``GET /v1/models``
lists the model the transcript names, so that a worker (and the whole stack) starts against it.

Transcript format (``sim/transcripts/<server>-<what>.txt``)::

    # free text: where the answer comes from (repository and path, or URL), what was rebuilt and how
    # @server: tgi                                  directives: "# @key: value"
    # @endpoint: /v1/chat/completions               the route the answer belongs to (informative)
    # @model: meta-llama/Llama-3.1-8B-Instruct      served by /v1/models
    # @expect: {"text": "...", "finish_reason": "stop", "usage": {...}}   or {"error": "BackendRejected"}
    HTTP/1.1 200 OK
    Content-Type: text/event-stream
    x-compute-type: 1-nvidia-a10g

    data:{"object":"chat.completion.chunk",...}
    ...

- Lines starting with ``#`` before the status line are comments; ``# @key: value`` lines are directives.
  ``@expect`` is JSON: what a correct client derives from the answer (the text, finish_reason and usage),
  or the error it should raise; tests/unit/test_replay.py holds the worker to it.
- Then the status line, the headers one per line, and one empty line (the head's lines may end with
  ``\\n`` or ``\\r\\n``).
- Everything after that empty line, to the end of the file, is the body exactly as sent: ``\\r\\n``
  framing, SSE comments, ``event:`` lines and the absence of a final newline are kept. Write such files
  as bytes (an editor may add or convert line endings).

Headers that describe the framing of the recorded connection (``Content-Length``, ``Transfer-Encoding``,
``Connection``, ``Date``, ``Server``, ``Keep-Alive``) are not replayed: uvicorn frames the body itself
(chunked). With ``--pace-ms``, the body is sent one SSE event at a time (cut after each blank line),
that many milliseconds apart, as a server generating tokens would; without it, in one write.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

TRANSCRIPTS = Path(__file__).parent / "transcripts"
"""The transcripts shipped with the package."""

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")

_NOT_REPLAYED = frozenset({"content-length", "transfer-encoding", "connection", "date", "server", "keep-alive"})
_EVENT_END = re.compile(rb"(?<=\r\n\r\n)|(?<=\n\n)|(?<=\r\r)")
_STATUS_LINE = re.compile(r"HTTP/\d(?:\.\d)? (\d{3})(?: .*)?")


class TranscriptError(ValueError):
    """A transcript file that does not follow the format of this module's docstring."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """One recorded answer: its status, headers and body bytes, and the directives of its header comment."""

    name: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.directives.get("model", "replay")

    @property
    def endpoint(self) -> str:
        return self.directives.get("endpoint", GENERATION_PATHS[0])

    @property
    def expect(self) -> dict[str, Any]:
        """The `@expect` directive, parsed; {} when absent."""
        raw = self.directives.get("expect")
        if raw is None:
            return {}
        expect: dict[str, Any] = orjson.loads(raw)
        return expect

    def events(self) -> list[bytes]:
        """The body cut after each blank line (an SSE event ends there), the cuts making up the whole body."""
        return [piece for piece in _EVENT_END.split(self.body) if piece]


def parse_transcript(data: bytes, name: str = "transcript") -> Transcript:
    """A transcript from its file's bytes; raises TranscriptError if it is malformed."""
    directives: dict[str, str] = {}
    position = 0
    status: int | None = None
    headers: list[tuple[str, str]] = []
    while True:
        end = data.find(b"\n", position)
        if end < 0:
            raise TranscriptError(f"{name}: the head (status line, headers, blank line) is not complete")
        line = data[position:end].rstrip(b"\r").decode("utf-8")
        position = end + 1
        if status is None:
            if line.startswith("#"):
                key, sep, value = line[1:].strip().partition(":")
                if key.startswith("@") and sep:
                    directives[key[1:].strip()] = value.strip()
                continue
            if not line.strip():
                continue
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise TranscriptError(f"{name}: expected a status line such as 'HTTP/1.1 200 OK', got {line!r}")
            status = int(match.group(1))
            continue
        if not line:
            break
        header, sep, value = line.partition(":")
        if not sep or not header.strip():
            raise TranscriptError(f"{name}: expected a header line 'Name: value', got {line!r}")
        headers.append((header.strip(), value.strip()))
    if status is None:
        raise TranscriptError(f"{name}: no status line")
    return Transcript(name, status, tuple(headers), data[position:], directives)


def load_transcript(path: Path) -> Transcript:
    return parse_transcript(path.read_bytes(), path.name)


def shipped_transcripts() -> list[Path]:
    """The transcripts of sim/transcripts, by name."""
    return sorted(TRANSCRIPTS.glob("*.txt"))


class ReplayApp:
    """An ASGI app answering every generation request with `transcript`, and /health and /v1/models."""

    def __init__(self, transcript: Transcript, pace_ms: float = 0.0) -> None:
        self.transcript = transcript
        self.pace = pace_ms / 1000
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in GENERATION_PATHS:
            await self._drain(receive)
            await self._replay(send)
        elif method == "GET" and path == "/health":
            await self._send(send, 200, b"", b"text/plain")
        elif method == "GET" and path == "/v1/models":
            models = {
                "object": "list",
                "data": [
                    {"id": self.transcript.model, "object": "model", "created": self.created, "owned_by": "replay"}
                ],
            }
            await self._send(send, 200, orjson.dumps(models), b"application/json")
        else:
            body = {"error": {"message": f"{method} {path}: not recorded", "type": "NotFoundError", "code": 404}}
            await self._send(send, 404, orjson.dumps(body), b"application/json")

    async def _replay(self, send: Send) -> None:
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.transcript.headers
            if name.lower() not in _NOT_REPLAYED
        ]
        await send({"type": "http.response.start", "status": self.transcript.status, "headers": headers})
        pieces = self.transcript.events() if self.pace else [self.transcript.body]
        for index, piece in enumerate(pieces):
            if index and self.pace:
                await asyncio.sleep(self.pace)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Read the request body (ignored): the answer is the same whatever was asked."""
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_replay_app(path: Path, pace_ms: float = 0.0) -> ReplayApp:
    return ReplayApp(load_transcript(path), pace_ms)
