"""A TCP proxy between the worker and a real model server: sees when the worker closes a request, on any server.

Servers report a client's disconnection differently, if at all; at the TCP level it is the same everywhere.
While `hold` is set, a response is forwarded until its first bytes holding `data:` (a first token), then
nothing more of it: the generation stays "in progress" for the worker, however fast the tiny model is, until
the worker closes the connection, which `Connection.client_closed` records. The connection is then in `held`
(whether the worker opened it for this request or reused one of its pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass
class Connection:
    client_closed: threading.Event = field(default_factory=threading.Event)  # the worker closed its side
    request: bytearray = field(default_factory=bytearray)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `upstream_port`, in a thread of its own (the tests are synchronous)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold = False
        self.held: list[Connection] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        connection = Connection()
        upstream, to_upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def requests() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await client.read(65536):
                    connection.request += data
                    to_upstream.write(data)
                    await to_upstream.drain()
            connection.client_closed.set()
            to_upstream.close()

        async def responses() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await upstream.read(65536):
                    to_client.write(data)
                    await to_client.drain()
                    if self.hold and b"data:" in data:
                        self.held.append(connection)
                        return  # nothing more reaches the worker; the server is left to its own pace
            to_client.close()

        try:
            await asyncio.gather(requests(), responses())
        finally:
            to_client.close()
            to_upstream.close()
