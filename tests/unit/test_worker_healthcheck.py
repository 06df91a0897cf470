"""`python -m worker.healthcheck`, the worker image's HEALTHCHECK: healthy while a worker of this host beats."""

from __future__ import annotations

import socket
import time

import fakeredis
import pytest

from shared import keys
from shared.settings import Settings
from tests.unit.conftest import MODEL, make_settings
from worker import healthcheck
from worker.jobs import WorkerJobStore


async def test_a_fresh_heartbeat_of_this_host_is_healthy(
    redis: fakeredis.FakeAsyncRedis, worker_store: WorkerJobStore, settings: Settings
) -> None:
    await worker_store.heartbeat(MODEL, "container-a:1", {})
    await worker_store.heartbeat(MODEL, "container-b:1", {})

    assert await healthcheck.fresh_workers(redis, settings, "container-a") == ["container-a:1"]
    assert await healthcheck.fresh_workers(redis, settings, "container-c") == []
    # "container-a" is not "container-ab": the worker id is <hostname>:<pid>.
    assert await healthcheck.fresh_workers(redis, settings, "container") == []


async def test_a_heartbeat_older_than_the_lease_is_unhealthy(
    redis: fakeredis.FakeAsyncRedis, worker_store: WorkerJobStore, settings: Settings
) -> None:
    await worker_store.heartbeat(MODEL, "container-a:1", {})
    later = time.time() + settings.worker_lease + 1
    assert await healthcheck.fresh_workers(redis, settings, "container-a", now=later) == []
    assert await healthcheck.fresh_workers(redis, settings, "container-a", now=later - 2) == ["container-a:1"]


def test_unreachable_redis_is_unhealthy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = make_settings(REDIS_URL="redis://127.0.0.1:1/0")
    monkeypatch.setattr(healthcheck, "settings_or_exit", lambda: unreachable)

    assert healthcheck.main() == 1
    assert "Redis unreachable" in capsys.readouterr().err


def test_exit_code_follows_the_heartbeat_of_this_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(healthcheck, "settings_or_exit", make_settings)
    monkeypatch.setattr(
        healthcheck,
        "redis_client",
        lambda *args, **kwargs: fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
    )

    assert healthcheck.main() == 1
    assert f"models: {MODEL}" in capsys.readouterr().err

    beat = fakeredis.FakeRedis(server=server)
    beat.zadd(keys.workers(MODEL), {f"{socket.gethostname()}:1": time.time() * 1000})
    assert healthcheck.main() == 0
