"""Caps that protect every client: metadata size, `completion_window`, and the lines of a batch input file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.batch_format import parse_line
from api.batches import BatchStore
from api.files import FileStore
from api.openai_shapes import Endpoint
from api.routes.batches import BatchCreate
from api.routes.jobs import _parse_submission
from shared import keys
from shared.models import METADATA_MAX_BYTES, METADATA_VALUE_CHARS, JobCreate, Limits
from tests.unit.conftest import MODEL, batch_stores, make_settings
from tests.unit.test_batches import chat, raw, upload

pytestmark = pytest.mark.usefixtures("clean_env")

OWNER = "owner1"


def errors_of(exc: ValidationError | RequestValidationError) -> list[tuple[tuple[Any, ...], str]]:
    return [(tuple(error["loc"]), error["msg"]) for error in exc.errors()]


def sized_metadata(size: int) -> dict[str, str]:
    """Metadata whose compact JSON is exactly `size` bytes (values of at most METADATA_VALUE_CHARS)."""
    metadata: dict[str, str] = {}
    while len(orjson.dumps(metadata)) < size:
        key = f"k{len(metadata):02d}"
        metadata[key] = ""
        room = size - len(orjson.dumps(metadata))
        metadata[key] = "x" * min(room, METADATA_VALUE_CHARS)
    assert len(orjson.dumps(metadata)) == size
    return metadata


# ---- metadata of a job ------------------------------------------------------------------------------


def test_a_metadata_value_over_512_characters_is_named_with_the_limit() -> None:
    JobCreate.model_validate({"prompt": "a", "metadata": {"k": "😀" * METADATA_VALUE_CHARS}})
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate({"prompt": "a", "metadata": {"ok": 1, "big": "x" * (METADATA_VALUE_CHARS + 1)}})
    [(loc, message)] = errors_of(caught.value)
    assert loc == ("metadata", "big")
    assert "METADATA_VALUE_CHARS=512" in message
    assert "513 characters" in message


def test_metadata_over_8_kib_of_json_is_refused_naming_the_limit() -> None:
    at_limit = sized_metadata(METADATA_MAX_BYTES)
    assert JobCreate.model_validate({"prompt": "a", "metadata": at_limit}).metadata == at_limit
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate({"prompt": "a", "metadata": sized_metadata(METADATA_MAX_BYTES + 1)})
    [(loc, message)] = errors_of(caught.value)
    assert loc == ("metadata",)
    assert f"{METADATA_MAX_BYTES + 1} bytes" in message
    assert "METADATA_MAX_BYTES=8192" in message


def test_the_metadata_cap_counts_bytes_not_characters() -> None:
    # 16 values of 512 four-byte characters: within the character cap, 32 KiB of JSON.
    metadata = {f"k{i}": "😀" * METADATA_VALUE_CHARS for i in range(16)}
    with pytest.raises(ValidationError, match="METADATA_MAX_BYTES"):
        JobCreate.model_validate({"prompt": "a", "metadata": metadata})


async def test_an_array_names_the_item_and_the_key() -> None:
    settings = make_settings()
    body = orjson.dumps([{"prompt": "a"}, {"prompt": "b", "metadata": {"note": "x" * 600}}])
    with pytest.raises(RequestValidationError) as caught:
        await _parse_submission(body, settings)
    [(loc, message)] = errors_of(caught.value)
    assert loc == ("body", 1, "metadata", "note")
    assert "METADATA_VALUE_CHARS=512" in message


# ---- POST /v1/batches -------------------------------------------------------------------------------


def batch_body(**changes: Any) -> dict[str, Any]:
    return {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h", **changes}


def test_completion_window_is_only_24h() -> None:
    assert BatchCreate.model_validate(batch_body()).completion_window == "24h"
    for window in ("9999h", "1h", "48h", "24"):
        with pytest.raises(ValidationError) as caught:
            BatchCreate.model_validate(batch_body(completion_window=window))
        [(loc, message)] = errors_of(caught.value)
        assert loc == ("completion_window",)
        assert "'24h'" in message


def test_batch_metadata_has_the_same_caps() -> None:
    with pytest.raises(ValidationError) as caught:
        BatchCreate.model_validate(batch_body(metadata={"note": "x" * (METADATA_VALUE_CHARS + 1)}))
    [(loc, message)] = errors_of(caught.value)
    assert (loc, "METADATA_VALUE_CHARS=512" in message) == (("metadata", "note"), True)
    metadata = {f"k{i}": "é" * METADATA_VALUE_CHARS for i in range(16)}  # 16 KiB of JSON
    with pytest.raises(ValidationError) as caught:
        BatchCreate.model_validate(batch_body(metadata=metadata))
    [(loc, message)] = errors_of(caught.value)
    assert (loc, "METADATA_MAX_BYTES=8192" in message) == (("metadata",), True)


# ---- batch input lines ------------------------------------------------------------------------------


def test_the_largest_valid_request_line_fits_the_default_line_cap() -> None:
    """MAX_PROMPT_CHARS characters of 4-byte UTF-8 as `json.dumps` writes them (\\u escapes, 12 bytes each), over
    MAX_MESSAGES messages, with the longest custom_id: still under the default BATCH_MAX_LINE_BYTES."""
    settings = make_settings()
    per_message = settings.MAX_PROMPT_CHARS // settings.MAX_MESSAGES
    messages = [{"role": "assistant", "content": "😀" * per_message} for _ in range(settings.MAX_MESSAGES)]
    messages[0]["content"] += "😀" * (settings.MAX_PROMPT_CHARS - per_message * settings.MAX_MESSAGES)
    line = {
        "custom_id": "😀" * 512,
        "method": "POST",
        "url": Endpoint.CHAT.value,
        "body": {"model": MODEL, "messages": messages, "max_tokens": settings.MAX_TOKENS_LIMIT},
    }
    encoded = json.dumps(line).encode()
    limits = Limits(
        max_prompt_chars=settings.MAX_PROMPT_CHARS,
        max_messages=settings.MAX_MESSAGES,
        max_tokens=settings.MAX_TOKENS_LIMIT,
    )
    parse_line(encoded, Endpoint.CHAT, [MODEL], limits)
    assert 2_400_000 < len(encoded) < settings.BATCH_MAX_LINE_BYTES


@pytest.fixture
async def capped() -> AsyncIterator[tuple[FileStore, BatchStore]]:
    async with batch_stores(make_settings(BATCH_MAX_LINES=5, BATCH_MAX_LINE_BYTES=1000)) as both:
        yield both


async def run_batch(files: FileStore, batches: BatchStore, data: bytes) -> dict[str, Any]:
    file_id = await upload(files, data, piece=4096)
    record = await batches.create(OWNER, file_id, Endpoint.CHAT, "24h", None)
    await batches.process(OWNER, record["id"])
    failed = await batches.get(OWNER, record["id"])
    assert failed["status"] == "failed"
    assert await batches.redis.zcard(keys.queue(MODEL)) == 0
    errors: list[dict[str, Any]] = orjson.loads(failed["errors"])["data"]
    return errors[0] if len(errors) == 1 else {"all": errors}


async def test_a_line_over_batch_max_line_bytes_fails_the_batch(capped: tuple[FileStore, BatchStore]) -> None:
    files, batches = capped
    long_line = raw(chat("long", messages=[{"role": "user", "content": "x" * 1000}]))
    error = await run_batch(files, batches, raw(chat("a")) + b"\n" + long_line + b"\n" + raw(chat("b")) + b"\n")
    assert (error["code"], error["line"], error["param"]) == ("line_too_long", 2, None)
    assert "BATCH_MAX_LINE_BYTES=1000" in error["message"]


async def test_blank_lines_count_against_batch_max_lines(capped: tuple[FileStore, BatchStore]) -> None:
    files, batches = capped
    data = raw(chat("a")) + b"\n" + b"\n \n\r\n\n" + raw(chat("b")) + b"\n"
    error = await run_batch(files, batches, data)
    assert (error["code"], error["line"]) == ("too_many_lines", 6)
    assert "BATCH_MAX_LINES=5" in error["message"]


async def test_a_file_of_blank_lines_is_read_no_further_than_the_cap(
    capped: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, batches = capped
    read: list[int] = []
    chunks = files.chunks

    async def counted(owner: str, file_id: str) -> AsyncIterator[bytes]:
        async for data in chunks(owner, file_id):
            read.append(len(data))
            yield data

    monkeypatch.setattr("api.files.CHUNK_BYTES", 64)
    file_id = await upload(files, b"\n" * 10_000, piece=4096)
    monkeypatch.setattr(files, "chunks", counted)
    record = await batches.create(OWNER, file_id, Endpoint.CHAT, "24h", None)
    await batches.process(OWNER, record["id"])
    errors = orjson.loads((await batches.get(OWNER, record["id"]))["errors"])["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("too_many_lines", 6)]
    assert sum(read) == 64


async def test_a_line_without_end_is_never_held_whole(
    capped: tuple[FileStore, BatchStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = capped
    monkeypatch.setattr("api.files.CHUNK_BYTES", 100)
    file_id = await upload(files, b"a\n" + b"x" * 5_000 + b"\nb", piece=4096)
    lines = [(number, len(line)) async for number, line in files.lines(OWNER, file_id, 300)]
    assert [length for _, length in lines[::2]] == [1, 1]
    assert [number for number, _ in lines] == [1, 2, 3]
    assert 300 < lines[1][1] <= 301 + 100
