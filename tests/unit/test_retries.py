"""The retry policy of shared/retries.py: the clients use its constants, its worst cases add up, and
docs/ARCHITECTURE.md shows them."""

from __future__ import annotations

from pathlib import Path

from shared import retries
from shared.connection import redis_client
from tests.unit.conftest import make_settings
from worker.arq_adapter import redis_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_worst_cases_are_what_the_table_says() -> None:
    assert retries.command_worst_case() == 4 * 2.0 + 0.1 + 0.2 + 0.4
    assert retries.persist_worst_case() == 30 + retries.command_worst_case()
    assert retries.arq_start_worst_case() == 31 * 1 + 30 * 1


async def test_the_redis_clients_retry_as_the_policy_says() -> None:
    client = redis_client(make_settings(), "spp-test")
    try:
        retry = client.get_retry()
        assert retry is not None
        assert retry._retries == retries.REDIS_COMMAND_RETRIES
        assert [retry._backoff.compute(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
        assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == retries.REDIS_CONNECT_TIMEOUT
        assert client.connection_pool.timeout == retries.POOL_WAIT_SECONDS  # type: ignore[attr-defined]
    finally:
        await client.aclose()


def test_the_workers_arq_pool_retries_as_the_policy_says() -> None:
    arq = redis_settings(make_settings())
    assert (arq.conn_retries, arq.conn_timeout, arq.conn_retry_delay) == (30, 1, 1)


def test_the_architecture_page_shows_the_policy() -> None:
    assert retries.policy_table() in (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_the_readme_shows_each_worst_case() -> None:
    assert retries.worst_cases_table() in (ROOT / "README.md").read_text()
