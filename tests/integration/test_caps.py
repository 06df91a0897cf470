"""Validation caps through the real API (uvicorn on a real redis-server): a 422 naming the limit, nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from shared import keys
from tests.integration.conftest import RedisServer, Stack, wait_for

MODEL = "caps/model"


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack]) -> Stack:
    # No worker: nothing here reaches a model server.
    return start_stack([(MODEL, "http://127.0.0.1:9")], workers={}, BATCH_MAX_LINE_BYTES=2000)


def stored(redis_server: RedisServer, pattern: str) -> list[str]:
    return list(redis_server.client().scan_iter(match=pattern, count=1000))


def test_oversized_metadata_is_a_422_naming_the_key_and_the_limit(stack: Stack, redis_server: RedisServer) -> None:
    jobs: list[dict[str, Any]] = [
        {"id": "caps-ok", "prompt": "a", "metadata": {"small": "x"}},
        {"id": "caps-big", "prompt": "b", "metadata": {"note": "x" * 513}},
    ]
    answer = stack.http.post("/v1/jobs", content=orjson.dumps(jobs))
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", 1, "metadata", "note"]
    assert "METADATA_VALUE_CHARS=512" in error["msg"]
    whole = {f"k{i}": "😀" * 512 for i in range(8)}  # 16 KiB of JSON
    answer = stack.http.post("/v1/jobs", json={"id": "caps-whole", "prompt": "c", "metadata": whole})
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert (error["loc"], "METADATA_MAX_BYTES=8192" in error["msg"]) == (["body", "metadata"], True)
    for job_id in ("caps-ok", "caps-big", "caps-whole"):
        assert stack.http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert redis_server.client().zcard(keys.queue(MODEL)) == 0


def test_a_long_completion_window_is_a_422_and_no_batch_is_stored(stack: Stack, redis_server: RedisServer) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": MODEL, "prompt": "x"}}
    uploaded = stack.http.post(
        "/v1/files", files={"file": ("in.jsonl", orjson.dumps(line) + b"\n")}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200
    before = stored(redis_server, keys.batch("*", "*"))
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/completions", "completion_window": "9999h"}
    answer = stack.http.post("/v1/batches", json=body)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "completion_window"]
    assert "'24h'" in error["msg"]
    answer = stack.http.post("/v1/batches", json={**body, "completion_window": "24h", "metadata": {"k": "é" * 600}})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "metadata", "k"]
    assert stored(redis_server, keys.batch("*", "*")) == before


def test_a_line_over_the_byte_cap_fails_the_batch_with_nothing_queued(stack: Stack, redis_server: RedisServer) -> None:
    short = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": MODEL, "prompt": "x"}}
    long = {**short, "custom_id": "b", "body": {"model": MODEL, "prompt": "x" * 3000}}
    data = orjson.dumps(short) + b"\n\n" + orjson.dumps(long) + b"\n"
    uploaded = stack.http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
    batch_id = stack.http.post("/v1/batches", json=body).json()["id"]
    batch: dict[str, Any] = {}

    def ended() -> bool:
        batch.update(stack.http.get(f"/v1/batches/{batch_id}").json())
        return bool(batch["status"] != "validating")

    wait_for(ended, 20, "the batch is validated")
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert (error["code"], error["line"], error["param"]) == ("line_too_long", 3, None)
    assert "BATCH_MAX_LINE_BYTES=2000" in error["message"]
    assert batch["request_counts"]["total"] == 0
    assert redis_server.client().zcard(keys.queue(MODEL)) == 0
