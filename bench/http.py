"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the hot paths of the benchmarks.

httpx costs a few hundred microseconds of Python per request; on a 2-core machine shared with
the servers under test, that would show up in the figures. This client only formats a request,
reads the status line and headers, and reads a Content-Length or chunked body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


class HTTPError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


class Connection:
    """One keep-alive connection to `host:port`; one request at a time."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self._extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.status = 0  # of the last answer

    @classmethod
    def to(cls, url: str, headers: dict[str, str] | None = None) -> Connection:
        """A connection to an `http://host:port` URL, sending `headers` with every request."""
        host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
        return cls(host, int(port or 80), headers)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str]]:
        reader, writer = await self._open()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._extra}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def stream(self, method: str, path: str, body: bytes | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives (chunk by chunk when chunked); raises HTTPError unless the status is 2xx.

        Consume it to the end: a stream left unfinished closes the connection.
        """
        finished = False
        try:
            status, headers = await self._send(method, path, body)
            self.status = status
            reader = self._reader
            assert reader is not None
            if headers.get("transfer-encoding", "").lower() == "chunked":
                pieces: AsyncIterator[bytes] = _chunks(reader)
            else:
                pieces = _sized(reader, int(headers.get("content-length", "0")))
            if not 200 <= status < 300:
                error = b"".join([piece async for piece in pieces])
                raise HTTPError(f"{method} {path}: HTTP {status}: {error[:300]!r}")
            async for piece in pieces:
                yield piece
            finished = headers.get("connection", "").lower() != "close"
        finally:
            if not finished:
                await self.close()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """The whole answer; raises HTTPError unless the status is 2xx."""
        body = b"".join([piece async for piece in self.stream(method, path, body)])
        return Reply(self.status, body)


async def _sized(reader: asyncio.StreamReader, length: int) -> AsyncIterator[bytes]:
    if length:
        yield await reader.readexactly(length)


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]
