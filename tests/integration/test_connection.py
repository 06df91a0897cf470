"""The clients of shared/connection.py on a real redis-server: commands packed by hiredis, same replies."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from shared.connection import redis_client
from tests.integration.conftest import RedisServer
from tests.unit.conftest import make_settings


@pytest.mark.parametrize("single_connection", [False, True])
async def test_commands_are_packed_by_hiredis_and_answered_as_before(
    redis_server: RedisServer, single_connection: bool
) -> None:
    client = redis_client(
        make_settings(REDIS_URL=redis_server.url), "spp-test-packing", single_connection=single_connection
    )
    try:
        connection = client.connection or await client.connection_pool.get_connection()
        # One buffer from hiredis, where redis-py's own packer makes one per argument batch.
        assert connection.pack_command("SET", "k", "é", 1.5, 2) == [
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n$3\r\n1.5\r\n$1\r\n2\r\n"
        ]
        if not single_connection:
            await client.connection_pool.release(connection)
        many = {f"field{i}": f"value {i} é" for i in range(5000)}
        await client.hset("spp-test:many", mapping=many)  # type: ignore[misc]
        assert await client.hgetall("spp-test:many") == many  # type: ignore[misc]
        # A command name of two words is sent as two arguments.
        assert "spp-test-packing" in {item["name"] for item in await client.client_list()}
        # What hiredis does not pack is refused by redis-py, naming the type, and nothing is sent.
        with pytest.raises(redis_errors.DataError, match="bool"):
            await client.set("spp-test:flag", True)
        assert await client.exists("spp-test:flag") == 0
    finally:
        await client.delete("spp-test:many")
        await client.aclose()
