"""Readiness follows Redis: 503 while it is unreachable (why only in the log), back by itself once it returns."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.conftest import RedisServer, Sim, Stack, wait_for


def test_ready_is_503_while_redis_is_down(
    start_stack: Callable[..., Stack], start_sim: Callable[..., Sim], redis_server: RedisServer
) -> None:
    sim = start_sim("model-ready")
    stack = start_stack([("model-ready", sim.url)])
    assert stack.http.get("/ready").status_code == 200
    assert stack.api.log is not None
    before = stack.api.log.stat().st_size
    redis_server.stop()
    try:
        response = stack.http.get("/ready")
        assert response.status_code == 503
        assert response.headers["retry-after"]
        # Anyone may ask: the answer names no host, port or error; the log does.
        assert response.json() == {"status": "unavailable"}
        with stack.api.log.open("rb") as log:
            log.seek(before)
            assert f":{redis_server.port}".encode() in log.read()
        assert stack.http.get("/health").status_code == 200
        refused = stack.http.post("/v1/jobs", json={"model": "model-ready", "prompt": "x"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
    finally:
        redis_server.start()
    wait_for(lambda: stack.http.get("/ready").status_code == 200, 10, "ready again")
    job = stack.http.post("/v1/jobs", json={"model": "model-ready", "prompt": "de retour"}).json()
    assert stack.wait_job(job["id"])["status"] == "succeeded"
