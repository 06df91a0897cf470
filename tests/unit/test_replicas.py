"""Replica skipping: a server that keeps failing is skipped for a growing while, when its model has others;
and the first-token deadline of the model client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from shared.models import GenerationRequest
from shared.settings import Backend
from stack.processes import free_port
from tests.unit.conftest import MODEL, Serve, forever, make_settings, reply, stream
from worker.backends import BackendRejected, BackendUnavailable, Delta, ModelClient
from worker.replicas import MAX_COOLDOWN_DOUBLINGS, Replicas

pytestmark = pytest.mark.usefixtures("clean_env")

REQUEST = GenerationRequest(model=MODEL, prompt="Bonjour", max_tokens=4, temperature=0.2, top_p=1.0)
BODY = b'data: {"choices": [{"index": 0, "text": "Oui", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


class Clock:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replicas(count: int, clock: Clock | None = None, **settings: Any) -> Replicas:
    backends = [Backend(model=MODEL, url=f"http://r{index}") for index in range(count)]
    return Replicas(make_settings(**settings), backends, clock or Clock())


def picks(pool: Replicas, count: int) -> list[str]:
    return [pool.pick().backend.url for _ in range(count)]


def test_replicas_are_used_in_turn() -> None:
    assert picks(replicas(3), 6) == ["http://r0", "http://r1", "http://r2"] * 2


def test_a_replica_failing_in_a_row_is_skipped_then_tried_again() -> None:
    clock = Clock()
    pool = replicas(2, clock, REPLICA_MAX_FAILURES=3, REPLICA_COOLDOWN=10)
    bad = pool.replicas[0]
    for _ in range(2):
        pool.failed(bad)
    assert picks(pool, 2) == ["http://r0", "http://r1"], "two failures in a row: still used"

    pool.failed(bad)

    assert picks(pool, 3) == ["http://r1"] * 3
    clock.now += 10
    assert picks(pool, 2) == ["http://r0", "http://r1"], "tried again after the cool-down"


def test_the_cool_down_doubles_while_the_replica_keeps_failing() -> None:
    clock = Clock()
    pool = replicas(2, clock, REPLICA_MAX_FAILURES=2, REPLICA_COOLDOWN=10)
    bad = pool.replicas[0]
    cooldowns = []
    pool.failed(bad)
    for _ in range(MAX_COOLDOWN_DOUBLINGS + 2):
        pool.failed(bad)  # one failure after a cool-down starts the next one
        cooldowns.append(bad.skipped_until - clock.now)
        clock.now = bad.skipped_until

    assert cooldowns == [10 * 2**n for n in range(MAX_COOLDOWN_DOUBLINGS + 1)] + [10 * 2**MAX_COOLDOWN_DOUBLINGS]


def test_failures_of_requests_sent_before_the_cool_down_do_not_extend_it() -> None:
    clock = Clock()
    pool = replicas(2, clock, REPLICA_MAX_FAILURES=1, REPLICA_COOLDOWN=10)
    bad = pool.replicas[0]

    for _ in range(5):  # five requests in flight fail together
        pool.failed(bad)

    assert bad.skipped_until == clock.now + 10


def test_a_success_clears_the_record() -> None:
    pool = replicas(2, REPLICA_MAX_FAILURES=2, REPLICA_COOLDOWN=10)
    bad = pool.replicas[0]
    pool.failed(bad)
    pool.succeeded(bad)
    pool.failed(bad)

    assert bad.skipped_until == 0.0


def test_the_only_server_of_a_model_is_never_skipped() -> None:
    pool = replicas(1, REPLICA_MAX_FAILURES=1)
    for _ in range(5):
        pool.failed(pool.replicas[0])

    assert picks(pool, 2) == ["http://r0"] * 2


def test_when_all_cool_down_the_first_back_is_used() -> None:
    clock = Clock()
    pool = replicas(2, clock, REPLICA_MAX_FAILURES=1, REPLICA_COOLDOWN=10)
    pool.failed(pool.replicas[1])
    clock.now += 1
    pool.failed(pool.replicas[0])

    assert picks(pool, 2) == ["http://r1"] * 2


# ---- through the model client -----------------------------------------------------------------------------


async def test_a_dead_replica_is_skipped_after_its_failures(serve: Serve) -> None:
    live = await serve(stream(BODY))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    table = orjson.dumps([[MODEL, dead], [MODEL, live.url]]).decode()
    client = ModelClient(make_settings(LLM_TABLE=table, REPLICA_MAX_FAILURES=2, REPLICA_COOLDOWN=60), MODEL)
    outcomes = []
    try:
        for _ in range(8):
            try:
                outcomes.append("".join([e.text async for e in client.stream(REQUEST, "k:1") if isinstance(e, Delta)]))
            except BackendUnavailable as exc:
                outcomes.append("refused" if "ClientConnectorError" in str(exc) else str(exc))
    finally:
        await client.aclose()

    assert outcomes == ["refused", "Oui", "refused", "Oui", "Oui", "Oui", "Oui", "Oui"]


async def test_a_4xx_does_not_count_against_the_replica(serve: Serve) -> None:
    server = await serve(reply(b'{"error": {"message": "too long"}}', status=400, content_type="application/json"))
    table = orjson.dumps([[MODEL, server.url], [MODEL, server.url]]).decode()
    client = ModelClient(make_settings(LLM_TABLE=table, REPLICA_MAX_FAILURES=1), MODEL)
    try:
        for _ in range(3):
            with pytest.raises(BackendRejected):
                [event async for event in client.stream(REQUEST, "k:1")]
    finally:
        await client.aclose()

    assert all(replica.skipped_until == 0.0 for replica in client.replicas.replicas)


async def test_a_first_token_that_never_comes_is_unavailable(serve: Serve) -> None:
    server = await serve(stream(forever))  # headers, then silence
    client = ModelClient(make_settings(LLM_TABLE=f'[["{MODEL}", "{server.url}"]]', FIRST_TOKEN_TIMEOUT=0.2), MODEL)
    began = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable, match=r"no first token within FIRST_TOKEN_TIMEOUT=0\.2s"):
            [event async for event in client.stream(REQUEST, "k:1")]
    finally:
        await client.aclose()

    assert time.monotonic() - began < 2


async def test_the_first_token_deadline_ends_with_the_first_token(serve: Serve) -> None:
    async def pause() -> None:
        await asyncio.sleep(0.4)

    first = b'data: {"choices": [{"index": 0, "text": "Oui", "finish_reason": null}]}\n\n'
    last = b'data: {"choices": [{"index": 0, "text": ".", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    server = await serve(stream(first, pause, last))
    client = ModelClient(make_settings(LLM_TABLE=f'[["{MODEL}", "{server.url}"]]', FIRST_TOKEN_TIMEOUT=0.2), MODEL)
    try:
        events = [event async for event in client.stream(REQUEST, "k:1")]
    finally:
        await client.aclose()

    assert [event.text for event in events if isinstance(event, Delta)] == ["Oui", "."]
