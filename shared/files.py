"""Uploaded files (the OpenAI Files API), kept in Redis so that every API process serves them.

A file never passes whole through one Redis command nor through the API's memory: the multipart
upload is parsed as it arrives and appended to a temporary key in chunks, then renamed into place
with its metadata in one transaction; reads walk it with GETRANGE, chunk by chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from redis.asyncio import Redis

from shared import keys
from shared.errors import BadFileRequest, FileNotFound, FileTooLarge
from shared.models import now_ms
from shared.settings import Settings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

CHUNK_BYTES = 1 << 20
"""Bytes per APPEND while uploading and per GETRANGE while reading."""
UPLOAD_TTL = 3600
"""Seconds the bytes of an upload that never completes (client gone, process killed) are kept."""
PURPOSE = "batch"
"""The only purpose accepted: files are batch inputs."""
_MAX_FIELD_BYTES = 1024
_MAX_FORM_OVERHEAD = 1 << 16
"""Bytes of a multipart body besides the file (boundaries, part headers, other fields)."""


class _FormReader:
    """A streaming multipart/form-data parser keeping the `file` part's bytes until they are taken.

    `purpose` is kept whole, up to a small size; other fields are ignored.
    """

    def __init__(self, content_type: str) -> None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise BadFileRequest("send the file as multipart/form-data, with a `file` part and `purpose=batch`")
        self.purpose: str | None = None
        self.filename: str | None = None
        self.done = False
        self.pending_bytes = 0
        self._pending: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._name = ""
        self._value = bytearray()
        callbacks: MultipartCallbacks = {
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise BadFileRequest(f"unreadable multipart body: {exc}") from None

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise BadFileRequest(f"unreadable multipart body: {exc}") from None

    def take(self) -> bytes:
        """The file's bytes parsed since the last call."""
        data = b"".join(self._pending)
        self._pending.clear()
        self.pending_bytes = 0
        return data

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.pop(b"content-disposition", b""))
        self._headers.clear()
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            self.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")
        self._value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self._pending.append(data[start:end])
            self.pending_bytes += end - start
        elif self._name == "purpose":
            self._value += data[start:end]
            if len(self._value) > _MAX_FIELD_BYTES:
                raise BadFileRequest(f"form field 'purpose' is over {_MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._name == "purpose":
            self.purpose = self._value.decode("utf-8", "replace")

    def _end(self) -> None:
        self.done = True


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


def public_file(meta: dict[str, str]) -> dict[str, Any]:
    """The OpenAI file object of a file's metadata (times in Unix seconds)."""
    return {
        "id": meta["id"],
        "object": "file",
        "bytes": int(meta["bytes"]),
        "created_at": int(meta["created_at"]) // 1000,
        "expires_at": int(meta["expires_at"]) // 1000 if meta.get("expires_at") else None,
        "filename": meta["filename"],
        "purpose": meta["purpose"],
        "status": "processed",
        "status_details": None,
    }


class FileStore:
    """Files of each owner: metadata through `redis` (decoded), bytes through `raw` (a client that does not decode)."""

    def __init__(self, redis: Redis, raw: Redis, settings: Settings) -> None:
        self.redis = redis
        self.raw = raw
        self.settings = settings

    async def upload(self, owner: str, content_type: str, body: AsyncIterable[bytes]) -> dict[str, str]:
        """Store the `file` of a multipart body as it arrives; its metadata once complete.

        Raises FileTooLarge as soon as the file passes BATCH_MAX_BYTES, BadFileRequest for a form
        without a file, with another purpose than `batch`, or cut before its end.
        """
        form = _FormReader(content_type)
        limit = self.settings.BATCH_MAX_BYTES
        upload = keys.file_upload(owner, uuid.uuid4().hex)
        size = received = 0
        try:
            async for data in body:
                received += len(data)
                if received > limit + _MAX_FORM_OVERHEAD:  # whatever the body holds besides the file
                    raise FileTooLarge(limit)
                form.feed(data)
                if form.pending_bytes >= CHUNK_BYTES:
                    size += await self._append(upload, form.take(), size, limit)
            size += await self._append(upload, form.take(), size, limit)
            if not form.done:
                raise BadFileRequest("the multipart body ended before its closing boundary")
            if form.filename is None:
                raise BadFileRequest("the form has no `file` part")
            if form.purpose != PURPOSE:
                raise BadFileRequest(f"purpose must be {PURPOSE!r}, not {form.purpose!r}")
            if size == 0:
                raise BadFileRequest("the file is empty")
            now = now_ms()
            ttl = self.settings.file_ttl
            file_id = new_file_id()
            meta = {
                "id": file_id,
                "filename": form.filename,
                "purpose": PURPOSE,
                "bytes": str(size),
                "created_at": str(now),
                "expires_at": str(now + ttl * 1000),
            }
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rename(upload, keys.file_data(owner, file_id))
                pipe.hset(keys.file(owner, file_id), mapping=meta)
                pipe.expire(keys.file_data(owner, file_id), ttl)
                pipe.expire(keys.file(owner, file_id), ttl)
                await pipe.execute()
            return meta
        except BaseException:
            await self.redis.delete(upload)
            raise

    async def _append(self, upload: str, data: bytes, size: int, limit: int) -> int:
        if not data:
            return 0
        if size + len(data) > limit:
            raise FileTooLarge(limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.append(upload, data)
            pipe.expire(upload, UPLOAD_TTL)
            await pipe.execute()
        return len(data)

    async def get(self, owner: str, file_id: str) -> dict[str, str]:
        meta: dict[str, str] = await self.redis.hgetall(keys.file(owner, file_id))  # type: ignore[misc]
        if not meta:
            raise FileNotFound(file_id)
        return meta

    async def delete(self, owner: str, file_id: str) -> None:
        if not await self.redis.delete(keys.file(owner, file_id), keys.file_data(owner, file_id)):
            raise FileNotFound(file_id)

    async def chunks(self, owner: str, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, CHUNK_BYTES at a time (ends early if the file is deleted meanwhile)."""
        key = keys.file_data(owner, file_id)
        start = 0
        while True:
            data: bytes = await self.raw.getrange(key, start, start + CHUNK_BYTES - 1)
            if data:
                yield data
            if len(data) < CHUNK_BYTES:
                return
            start += CHUNK_BYTES

    async def lines(self, owner: str, file_id: str, max_bytes: int | None = None) -> AsyncIterator[tuple[int, bytes]]:
        """(line number from 1, line without its end) of the file; a last line without a newline counts.

        A line longer than `max_bytes` may come cut, still longer than `max_bytes`: it is never held whole (a file
        of one 200 MiB line would otherwise be copied and scanned again with each chunk).
        """
        number = 0
        tail = b""
        async for data in self.chunks(owner, file_id):
            *complete, tail = (tail + data).split(b"\n")
            for line in complete:
                number += 1
                yield number, line
            if max_bytes is not None and len(tail) > max_bytes:
                tail = tail[: max_bytes + 1]
        if tail:
            yield number + 1, tail
