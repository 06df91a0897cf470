"""Redis high availability: with REDIS_SENTINELS set, the API and workers find the master through Sentinel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from stack.processes import Service, find_redis_server, free_port, spawn, wait_until
from tests.integration.conftest import RedisServer, Sim, Stack


@pytest.fixture(scope="module")
def sentinel(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[int]:
    port = free_port()
    config = tmp_path_factory.mktemp("sentinel") / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor spp-master 127.0.0.1 {redis_server.port} 1\n"
        "sentinel down-after-milliseconds spp-master 5000\n"
    )
    service: Service = spawn(
        "sentinel", [find_redis_server(), str(config), "--sentinel"], log=logs_dir / "sentinel.log"
    )
    client = redis.Redis(port=port, decode_responses=True)

    def knows_master() -> bool:
        try:
            return bool(client.sentinel_get_master_addr_by_name("spp-master"))  # type: ignore[no-untyped-call]
        except redis.RedisError:
            return False

    wait_until(knows_master, 15, "the sentinel", service.process)
    yield port
    service.stop()


def test_jobs_run_through_a_sentinel(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], sentinel: int
) -> None:
    sim = start_sim("sentinel/model")
    stack = start_stack(
        [("sentinel/model", sim.url)],
        REDIS_URL="redis://127.0.0.1:1/0",  # unreachable on purpose: only the sentinel knows the master
        REDIS_SENTINELS=f"127.0.0.1:{sentinel}",
        REDIS_SENTINEL_MASTER="spp-master",
    )
    job = stack.http.post(
        "/v1/jobs", json={"model": "sentinel/model", "prompt": "Bonjour", "params": {"max_tokens": 3}}
    )
    assert job.status_code == 202
    done = stack.wait_job(job.json()["id"])
    assert done["status"] == "succeeded"
    events = stack.http.get(f"/v1/jobs/{done['id']}/events").text
    assert "event: done" in events
