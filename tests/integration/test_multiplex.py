"""The shared connection on a real redis-server: concurrent commands, error replies, cancellation, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from api.multiplex import SharedConnection
from shared.connection import redis_client
from tests.integration.conftest import RedisServer
from tests.unit.conftest import make_settings

NAME = "spp-test-shared"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(make_settings(REDIS_URL=redis_server.url), NAME)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def shared(client: Redis) -> AsyncIterator[SharedConnection]:
    shared = SharedConnection(client)
    yield shared
    await shared.aclose()


async def connections_named(client: Redis, name: str) -> int:
    return sum(1 for item in await client.client_list() if item["name"] == name)


async def test_concurrent_commands_each_get_their_own_reply_on_one_connection(
    client: Redis, shared: SharedConnection
) -> None:
    await client.mset({f"k{n}": f"value {n}" for n in range(500)})
    before = await connections_named(client, NAME)

    replies = await asyncio.gather(*[shared.execute("GET", f"k{n}") for n in range(500)])

    assert replies == [f"value {n}" for n in range(500)]
    assert await connections_named(client, NAME) == before + 1


async def test_the_commands_of_one_event_loop_turn_leave_in_one_write(
    client: Redis, shared: SharedConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.mset({f"k{n}": f"value {n}" for n in range(500)})
    await shared.execute("PING")  # connected: what follows needs no connection first
    writes: list[int] = []
    send = AbstractConnection.send_packed_command

    async def counted(connection: AbstractConnection, command: Any, check_health: bool = True) -> None:
        writes.append(len(command))
        await send(connection, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    replies = await asyncio.gather(*[shared.execute("GET", f"k{n}") for n in range(500)])
    assert replies == [f"value {n}" for n in range(500)]
    assert len(writes) == 1
    replies = [await shared.execute("GET", f"k{n}") for n in range(3)]
    assert replies == [f"value {n}" for n in range(3)]
    assert len(writes) == 4  # one at a time: each as soon as it comes


async def test_an_error_reply_fails_its_command_only(client: Redis, shared: SharedConnection) -> None:
    await client.set("text", "x")
    await client.hset("hash", "f", "v")  # type: ignore[misc]

    results = await asyncio.gather(
        shared.execute("HGETALL", "hash"),
        shared.execute("HGETALL", "text"),
        shared.execute("SET", "flag", True),
        shared.execute("GET", "text"),
        return_exceptions=True,
    )

    assert results[0] == ["f", "v"]
    assert isinstance(results[1], redis_errors.ResponseError)
    assert "WRONGTYPE" in str(results[1])
    assert isinstance(results[2], redis_errors.DataError)  # refused before anything is sent
    assert "bool" in str(results[2])
    assert results[3] == "x"
    assert await client.exists("flag") == 0


async def test_a_cancelled_command_does_not_shift_the_replies_of_the_others(
    client: Redis, shared: SharedConnection
) -> None:
    await client.mset({"a": "1", "b": "2"})
    connection = await shared.execute("CLIENT", "ID")
    # BLPOP holds the connection's replies back for 0.2 s: the cancelled caller leaves while its reply is due.
    slow = asyncio.create_task(shared.execute("BLPOP", "nothing", 0.2))
    following = asyncio.create_task(shared.execute("GET", "a"))
    await asyncio.sleep(0)
    slow.cancel()

    assert await following == "1"
    assert await shared.execute("GET", "b") == "2"
    assert slow.cancelled()
    assert await shared.execute("CLIENT", "ID") == connection  # the same connection all along


async def test_scripts_are_loaded_again_when_redis_forgot_them(client: Redis, shared: SharedConnection) -> None:
    script = client.register_script("return ARGV[1] .. KEYS[1]")
    assert await shared.evalsha(script, ["k"], ["v"]) == "vk"
    await client.script_flush()

    assert await shared.evalsha(script, ["k"], ["w"]) == "wk"


async def test_commands_go_on_after_a_redis_restart(redis_server: RedisServer, shared: SharedConnection) -> None:
    assert await shared.execute("SET", "survivor", "1") == "OK"
    redis_server.stop()
    redis_server.start()

    # The old connection is gone: the command fails on it, then is sent again on a new one.
    assert await shared.execute("GET", "survivor") == "1"


async def test_commands_in_flight_when_the_connection_drops_are_sent_again(
    client: Redis, shared: SharedConnection
) -> None:
    await client.set("k", "v")
    # BLPOP holds the replies of the commands behind it while the connection is killed under them.
    slow = asyncio.create_task(shared.execute("BLPOP", "nothing", 0.5))
    behind = [asyncio.create_task(shared.execute("GET", "k")) for _ in range(20)]
    for _ in range(500):  # up to 5 s
        blocked = [int(item["id"]) for item in await client.client_list() if item["cmd"] == "blpop"]
        if blocked:
            break
        await asyncio.sleep(0.01)

    assert await client.client_kill_filter(_id=str(blocked[0])) == 1

    assert await asyncio.gather(*behind) == ["v"] * 20
    assert await slow is None
    assert [item for item in await client.client_list() if int(item["id"]) == blocked[0]] == []


async def test_commands_whose_write_fails_are_sent_again_on_a_new_connection(
    client: Redis, shared: SharedConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.set("k", "v")
    await shared.execute("PING")
    before = await connections_named(client, NAME)
    send = AbstractConnection.send_packed_command
    writes = 0

    async def failing_once(connection: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal writes
        writes += 1
        if writes == 1:  # the socket is gone when the first write finds it
            connection._writer.transport.abort()  # type: ignore[union-attr]
        await send(connection, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", failing_once)

    assert await asyncio.wait_for(asyncio.gather(*[shared.execute("GET", "k") for _ in range(20)]), 10) == ["v"] * 20
    assert await connections_named(client, NAME) == before  # the failed one closed, a new one made


async def test_a_connection_silent_past_the_reply_timeout_is_replaced(client: Redis) -> None:
    """Redis paused stands for a peer gone without closing the connection: no reply ever comes on it."""
    shared = SharedConnection(client, reply_timeout=0.3)
    try:
        await client.set("k", "v")
        first = await shared.execute("CLIENT", "ID")
        await client.client_pause(600, all=True)

        assert await shared.execute("GET", "k") == "v"
        assert await shared.execute("CLIENT", "ID") != first
    finally:
        await shared.aclose()
