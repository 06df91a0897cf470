"""One Redis connection shared by concurrent commands, written together once per event-loop turn; replies are
taken in order.

redis-py lends each command a connection of its pool for its round trip, and spends ~45 µs of Python per
command around it (pool, retry, timeouts, health checks, reply callbacks): 63 µs of CPU per HGETALL measured
here under 32 concurrent callers, against 5 µs for the same commands pipelined on one shared connection
(docs/PERFORMANCE.md). The API sends its hot commands (reading a job, submitting jobs) through this. The
commands of the requests served in one turn of the event loop leave in one write (one system call, and one
read for Redis) by a writer task that runs after them.

The connection is made by the client's own pool (address, Sentinel, password, database, client name) and
commands are retried by the client's own policy, as redis-py does: a reply lost in a reconnect means the
command is sent again, which every caller here must allow (reads, and scripts that are safe to replay).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import anyio
import hiredis
from redis import exceptions
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript

REPLY_TIMEOUT = 10.0
"""Seconds without any reply while commands wait, after which the connection is taken for dead (a peer gone
without closing it, behind a firewall or a NAT) and its commands are sent again on a new one."""


class SharedConnection:
    def __init__(self, client: Redis, *, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.client = client
        """The client whose pool makes the connection and whose policy retries its commands."""
        self._retry = client.get_retry()
        self._reply_timeout = reply_timeout
        self._connection: AbstractConnection | None = None
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        """The callers waiting for a reply, in the order of their commands."""
        self._outbox: list[bytes] = []
        """The commands not written yet, in the order of `_waiters`."""
        self._outbox_filled = asyncio.Event()
        self._replies = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._reading: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *args: Any) -> Any:
        """The reply of one command (decoded as the client's are, error replies raised), retried on reconnect."""
        return await self._call(args, None)

    async def _call(self, args: tuple[Any, ...], packed: bytes | None) -> Any:
        if self._retry is None:
            return await self._execute(args, packed)
        return await self._retry.call_with_retry(lambda: self._execute(args, packed), _reconnects_by_itself)

    async def evalsha(
        self, script: AsyncScript, keys: list[str], args: list[Any], *, pack_off_loop: bool = False
    ) -> Any:
        """Run `script`, loading it first if Redis does not know it (after a restart, or a SCRIPT FLUSH).

        `pack_off_loop`: a command of megabytes is encoded in a worker thread, once even when the script must be
        loaded first (hiredis took ~110 ms of the event loop for a submission of 32 MiB)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        packed = await anyio.to_thread.run_sync(pack_in_pieces, command) if pack_off_loop else None
        try:
            return await self._call(command, packed)
        except exceptions.NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.script)
            return await self._call(command, packed)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in (self._reading, self._writing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None

    async def _execute(self, args: tuple[Any, ...], packed: bytes | None = None) -> Any:
        try:
            command = packed if packed is not None else hiredis.pack_command(args)
        except TypeError as error:  # as redis-py says it: bool, None...
            raise exceptions.DataError(f"{error}: {args[0]} {[type(arg).__name__ for arg in args[1:]]}") from None
        connection = self._connection or await self._connect()
        if connection is not self._connection or not connection.is_connected:  # lost, or failing
            raise exceptions.ConnectionError("shared connection lost")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        self._outbox.append(command)
        self._outbox_filled.set()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._reply_timeout, self._check_replies, self._replies)
        return await waiter

    def _check_replies(self, replies_before: int) -> None:
        """While commands wait, some reply must come every `reply_timeout` seconds, or the connection is dead."""
        self._watchdog = None
        if not self._waiters:
            return
        if self._replies == replies_before and self._reading is not None:
            self._reading.cancel()  # fails the waiting commands, which are sent again on a new connection
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._reply_timeout, self._check_replies, self._replies)

    async def _connect(self) -> AbstractConnection:
        async with self._connecting:
            if self._connection is None:
                connection: AbstractConnection = self.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                if connection.socket_timeout is not None:
                    raise ValueError("a shared connection needs socket_timeout=None: REPLY_TIMEOUT is its own")
                await connection.connect()  # type: ignore[no-untyped-call]
                self._connection = connection
                self._reading = asyncio.create_task(self._read(connection))
                self._writing = asyncio.create_task(self._write(connection))
            return self._connection

    async def _write(self, connection: AbstractConnection) -> None:
        """Write the commands queued since its last write, all in one. A failed write ends it: redis-py has closed
        the connection, whose reader then fails every command waiting."""
        while True:
            await self._outbox_filled.wait()
            self._outbox_filled.clear()
            commands, self._outbox = self._outbox, []
            try:
                await connection.send_packed_command(b"".join(commands), check_health=False)
            except Exception:
                return

    async def _read(self, connection: AbstractConnection) -> None:
        """Hand each reply to the caller of its command; when the connection fails, fail every caller."""
        try:
            while True:
                reply: Any
                try:
                    reply = await connection.read_response()
                except exceptions.ResponseError as error:  # an error reply: its command's, not the connection's
                    reply = error
                if not self._waiters:
                    raise exceptions.ConnectionError("a reply no command was waiting for")
                waiter = self._waiters.popleft()
                self._replies += 1
                if waiter.done():  # its caller was cancelled
                    continue
                if isinstance(reply, exceptions.ResponseError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except asyncio.CancelledError:
            self._lost(exceptions.ConnectionError("shared connection closed, or silent past its reply timeout"))
            await connection.disconnect(nowait=True)
            raise
        except Exception as error:
            self._lost(error if isinstance(error, exceptions.ConnectionError) else exceptions.ConnectionError(error))
            await connection.disconnect(nowait=True)

    def _lost(self, failure: exceptions.ConnectionError) -> None:
        """The next command opens a new connection; those waiting on this one fail (and are retried)."""
        self._connection = None
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None
        self._outbox.clear()
        self._outbox_filled.clear()
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)


def pack_in_pieces(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """A command in RESP, as `hiredis.pack_command` writes it, built one argument at a time: in a worker thread, the
    interpreter lets the event loop run between two of them (hiredis packs a whole command in one call, holding
    the GIL throughout)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float):
            raise exceptions.DataError(f"cannot send a {type(arg).__name__} to Redis: {args[0]!r}")
        data = arg if isinstance(arg, bytes) else (arg if isinstance(arg, str) else repr(arg)).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


async def _reconnects_by_itself(error: Exception) -> None:
    """Between tries: nothing to do, the reader has dropped the failed connection and the next try opens one."""
