"""Nothing heavy on the event loop: large bodies are parsed and validated in a worker thread while the loop goes on,
small ones stay on the loop, and batch validation checks its lines in a thread and lets the loop run between them.

Not timed: each test asserts where the work ran, or what the loop did meanwhile (bench/stalls.py has the figures).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from fastapi.exceptions import RequestValidationError

from api import batch_format, batches, body
from api.batches import BatchStore
from api.files import FileStore
from api.openai_shapes import MAX_TEXT_PARTS, Endpoint, OpenAIError
from api.routes.jobs import _parse_submission
from shared.models import JobCreate, Limits
from tests.unit.conftest import batch_stores, make_settings
from tests.unit.test_batches import chat, raw, upload

pytestmark = pytest.mark.usefixtures("clean_env")

OWNER = "owner1"


def jobs_body(size: int) -> bytes:
    """An array of jobs of about `size` bytes."""
    job = {"prompt": "Ma demande à la CAF est bloquée depuis trois mois. " * 20, "template": "spp"}
    count = max(1, size // len(orjson.dumps(job)))
    return orjson.dumps([job] * count)


def spy_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads that parse JSON bodies (body.loads), as they do."""
    threads: list[int] = []
    loads = body.loads

    def spy(raw: bytes, **options: Any) -> Any:
        threads.append(threading.get_ident())
        return loads(raw, **options)

    monkeypatch.setattr(body, "loads", spy)
    return threads


@pytest.mark.parametrize(("size", "off_loop"), [(1_000, False), (body.OFF_LOOP_BODY_BYTES * 2, True)])
async def test_only_large_bodies_are_parsed_off_the_loop(
    size: int, off_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_threads(monkeypatch)
    raw_body = jobs_body(size)
    assert (len(raw_body) > body.OFF_LOOP_BODY_BYTES) is off_loop

    jobs, many = await _parse_submission(raw_body, make_settings())

    assert many
    assert len(jobs) >= 1
    assert jobs[0].template == "spp"
    assert len(threads) == 1
    assert (threads[0] != threading.get_ident()) is off_loop


async def test_the_loop_runs_other_tasks_while_a_large_body_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse waits, in its thread, for a task of the loop: were it on the loop, that task could never run."""
    served = threading.Event()
    loads = body.loads

    def waiting(raw: bytes, **options: Any) -> Any:
        assert served.wait(10), "the loop ran nothing while the body was parsed"
        return loads(raw, **options)

    monkeypatch.setattr(body, "loads", waiting)

    async def health() -> None:
        served.set()

    parse = asyncio.create_task(_parse_submission(jobs_body(body.OFF_LOOP_BODY_BYTES * 2), make_settings()))
    await asyncio.sleep(0)  # the parse starts first, then waits in its thread
    await health()
    jobs, _ = await parse
    assert jobs


async def test_many_unknown_fields_are_refused_before_pydantic_lists_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """A million unknown fields made pydantic build a million errors, and FastAPI render them, for a minute."""
    validated: list[Any] = []
    monkeypatch.setattr(JobCreate, "model_validate", classmethod(lambda cls, data, **_: validated.append(data)))
    job = {"prompt": "Bonjour", **{f"champ-{index}": 0 for index in range(20_000)}}

    with pytest.raises(RequestValidationError) as caught:
        await _parse_submission(orjson.dumps(job), make_settings())

    [error] = caught.value.errors()
    assert error["type"] == "extra_forbidden"
    assert "20001 fields" in error["msg"]
    assert validated == []


async def test_a_long_list_is_refused_before_its_elements_are_validated() -> None:
    messages = [{"role": "user", "content": ""}] * 10_000
    with pytest.raises(RequestValidationError) as caught:
        await _parse_submission(orjson.dumps({"messages": messages}), make_settings(MAX_MESSAGES=256))
    [error] = caught.value.errors()
    assert (error["type"], error["loc"]) == ("too_long", ("body", "messages"))
    assert "10000 items, over the limit of 256" in error["msg"]


async def test_errors_are_capped_and_long_inputs_not_echoed() -> None:
    """FastAPI renders a 422's errors on the loop: their number and size are bounded."""
    jobs = [{"prompt": "x" * 1000, "params": {"max_tokens": 0}}] * (body.MAX_REPORTED_ERRORS + 50)
    with pytest.raises(RequestValidationError) as caught:
        await _parse_submission(orjson.dumps(jobs), make_settings())
    errors = caught.value.errors()
    assert len(errors) == body.MAX_REPORTED_ERRORS + 1
    assert errors[-1]["msg"] == "50 more errors"
    assert all(len(orjson.dumps(error["input"])) <= body.MAX_ECHOED_INPUT + 2 for error in errors)


# ---- batch validation ----------------------------------------------------------------------------------------------


@pytest.fixture
async def stores() -> AsyncIterator[tuple[FileStore, BatchStore]]:
    async with batch_stores(make_settings(BATCH_MAX_LINES=1_000)) as both:
        yield both


async def test_batch_lines_are_checked_off_the_loop_a_group_at_a_time(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, store = stores
    groups: list[tuple[int, int]] = []  # (thread, lines)
    check = batch_format.check_lines

    def spy(lines: list[tuple[int, bytes]], **options: Any) -> list[batch_format.CheckedLine]:
        groups.append((threading.get_ident(), len(lines)))
        return check(lines, **options)

    monkeypatch.setattr(batches, "check_lines", spy)
    monkeypatch.setattr(batches, "VALIDATE_GROUP_BYTES", 4096)
    data = b"".join(raw(chat(f"q{index}")) + b"\n" for index in range(200))
    file_id = await upload(files, data, piece=4096)
    record = await store.create(OWNER, file_id, Endpoint.CHAT, "24h", None)

    await store.process(OWNER, record["id"])

    assert (await store.get(OWNER, record["id"]))["status"] == "in_progress"
    assert len(groups) >= len(data) // 4096
    assert sum(lines for _, lines in groups) == 200
    assert threading.get_ident() not in {thread for thread, _ in groups}


async def test_batch_validation_lets_the_loop_run_between_lines(
    stores: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of blank lines is read on the loop; each slice of YIELD_AFTER_SECONDS ends with a turn of the loop."""
    files, store = stores
    monkeypatch.setattr(batches, "YIELD_AFTER_SECONDS", 0.0)  # every line: the turns can then be counted
    file_id = await upload(files, b"\n" * 900 + raw(chat("q")) + b"\n", piece=4096)
    record = await store.create(OWNER, file_id, Endpoint.CHAT, "24h", None)
    turns = 0
    done = False

    async def count_turns() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await store.process(OWNER, record["id"])
    done = True
    await counter

    assert (await store.get(OWNER, record["id"]))["status"] == "in_progress"
    assert turns >= 900


def test_a_refused_request_s_parts_are_freed_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [{"type": "text", "text": "é"}] * (MAX_TEXT_PARTS + body.FREED_AT_ONCE)
    request = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    seen: list[Any] = []
    loads = body.loads

    def keep(raw: bytes, max_items: int | None = None) -> Any:
        seen.append(loads(raw, max_items))
        return seen[-1]

    monkeypatch.setattr(body, "loads", keep)
    limits = Limits(max_prompt_chars=10**6, max_messages=8, max_tokens=100)

    with pytest.raises(OpenAIError, match="MAX_TEXT_PARTS"):
        body.openai_request(Endpoint.CHAT, orjson.dumps(request), ["m"], limits)

    assert seen[0]["messages"][0]["content"] == [], "emptied where it was refused, in the worker thread"
