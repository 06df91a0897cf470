"""Uploaded files (the OpenAI Files API), kept in Redis so that every API process serves them.

A file never passes whole through one Redis command nor through the API's memory: the multipart
upload is parsed as it arrives and appended to a temporary key in chunks, then renamed into place
with its metadata in one transaction; reads walk it with GETRANGE, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from redis.asyncio import Redis

from api.exceptions import BadFileRequest, FileNotFound, FileTooLarge, QuotaExceeded
from api.stored import NO_CHARGE, Charge, StoredBytes
from shared import keys
from shared.models import now_ms
from shared.policy import ClientPolicy, default_policy
from shared.scripts import load_script
from shared.settings import Settings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Bytes per APPEND while uploading and per GETRANGE while reading; an upload is charged (max_stored_bytes) as
each is stored."""
UPLOAD_TTL = 3600
"""Seconds the bytes of an upload that never completes (client gone, process killed) are kept, and charged."""
UPLOAD_LEASE_MS = 30_000
"""How long an upload holds its slot (max_uploads) without renewing it: how soon a dead process's slots come back."""
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


@dataclass
class _Upload:
    """An upload being stored: its temporary key, and what it is charged so far (max_stored_bytes)."""

    owner: str
    policy: ClientPolicy
    key: str
    charge: Charge = NO_CHARGE


class FileStore:
    """Files of each owner: metadata through `redis` (decoded), bytes through `raw` (a client that does not decode)."""

    def __init__(self, redis: Redis, raw: Redis, settings: Settings) -> None:
        self.redis = redis
        self.raw = raw
        self.settings = settings
        self.stored = StoredBytes(redis)
        self.default_policy = default_policy(settings)
        self._lease_script = load_script(redis, "upload_lease")

    async def upload(
        self, owner: str, content_type: str, body: AsyncIterable[bytes], policy: ClientPolicy | None = None
    ) -> dict[str, str]:
        """Store the `file` of a multipart body as it arrives; its metadata once complete.

        Raises QuotaExceeded before reading the body when the client (`policy`, by default the CLIENT_* settings)
        has `max_uploads` uploads in progress, and as soon as the file would take it past its `max_stored_bytes`;
        FileTooLarge as soon as the file passes BATCH_MAX_BYTES; BadFileRequest for a form without a file, with
        another purpose than `batch`, or cut before its end. Nothing of a refused upload is kept.
        """
        policy = policy or self.default_policy
        form = _FormReader(content_type)
        upload_id = uuid.uuid4().hex
        async with self._slot(owner, upload_id, policy):
            upload = _Upload(owner, policy, keys.file_upload(owner, upload_id))
            try:
                return await self._receive(upload, form, body)
            except BaseException:
                await self.redis.delete(upload.key)
                await self.stored.release(owner, *upload.charge)
                raise

    async def _receive(self, upload: _Upload, form: _FormReader, body: AsyncIterable[bytes]) -> dict[str, str]:
        limit = self.settings.BATCH_MAX_BYTES
        received = 0
        async for data in body:
            received += len(data)
            if received > limit + _MAX_FORM_OVERHEAD:  # whatever the body holds besides the file
                raise FileTooLarge(limit)
            form.feed(data)
            if form.pending_bytes >= CHUNK_BYTES:
                await self._append(upload, form.take())
        await self._append(upload, form.take())
        if not form.done:
            raise BadFileRequest("the multipart body ended before its closing boundary")
        if form.filename is None:
            raise BadFileRequest("the form has no `file` part")
        if form.purpose != PURPOSE:
            raise BadFileRequest(f"purpose must be {PURPOSE!r}, not {form.purpose!r}")
        if upload.charge.nbytes == 0:
            raise BadFileRequest("the file is empty")
        return await self._complete(upload, form.filename)

    async def _append(self, upload: _Upload, data: bytes) -> None:
        if not data:
            return
        limit = self.settings.BATCH_MAX_BYTES
        if upload.charge.nbytes + len(data) > limit:
            raise FileTooLarge(limit)
        # Charged before it is stored, until the upload's bytes would expire: the earlier ones move along, as the
        # EXPIRE below pushes them back too.
        expires_at = now_ms() + UPLOAD_TTL * 1000
        upload.charge = await self.stored.reserve(
            upload.owner, upload.policy, len(data), expires_at, moving=upload.charge
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.append(upload.key, data)
            pipe.expire(upload.key, UPLOAD_TTL)
            await pipe.execute()

    async def _complete(self, upload: _Upload, filename: str) -> dict[str, str]:
        """Put the upload in place with its metadata, its charge moved to the file's expiry, in one transaction."""
        owner, now, ttl = upload.owner, now_ms(), self.settings.file_ttl
        file_id, expires_at = new_file_id(), now + ttl * 1000
        meta = {
            "id": file_id,
            "filename": filename,
            "purpose": PURPOSE,
            "bytes": str(upload.charge.nbytes),
            "created_at": str(now),
            "expires_at": str(expires_at),
            "charged_until": str(expires_at),  # what `delete` gives back (max_stored_bytes)
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rename(upload.key, keys.file_data(owner, file_id))
            pipe.hset(keys.file(owner, file_id), mapping=meta)
            pipe.expire(keys.file_data(owner, file_id), ttl)
            pipe.expire(keys.file(owner, file_id), ttl)
            await self.stored.move(owner, upload.charge, expires_at, pipe=pipe)
            await pipe.execute()
        return meta

    @contextlib.asynccontextmanager
    async def _slot(self, owner: str, upload_id: str, policy: ClientPolicy) -> AsyncIterator[None]:
        """One of the client's `max_uploads` slots, leased while the upload runs (renewed by a task of its own)."""
        limit = policy.max_uploads
        if limit == 0:
            yield
            return
        key = keys.uploads(owner)
        count = await self._lease_script(keys=[key], args=[upload_id, now_ms(), UPLOAD_LEASE_MS, limit])
        if count >= 0:
            raise QuotaExceeded("max_uploads", limit, count, 1, what="uploads in progress")
        renewal = asyncio.create_task(self._renew(key, upload_id), name="upload-lease")
        try:
            yield
        finally:
            renewal.cancel()
            await self.redis.zrem(key, upload_id)

    async def _renew(self, key: str, upload_id: str) -> None:
        while True:
            await asyncio.sleep(UPLOAD_LEASE_MS / 3000)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(key, {upload_id: now_ms() + UPLOAD_LEASE_MS}, xx=True)
                    pipe.pexpire(key, UPLOAD_LEASE_MS)
                    await pipe.execute()
            except Exception as exc:  # Redis unreachable: the upload fails by itself if it stays so
                logger.warning("upload lease not renewed: %s: %s", type(exc).__name__, exc)

    async def get(self, owner: str, file_id: str) -> dict[str, str]:
        meta: dict[str, str] = await self.redis.hgetall(keys.file(owner, file_id))  # type: ignore[misc]
        if not meta:
            raise FileNotFound(file_id)
        return meta

    async def delete(self, owner: str, file_id: str) -> None:
        """Delete the file, and give its bytes back to the client's `max_stored_bytes`."""
        size, charged_until = await self.redis.hmget(keys.file(owner, file_id), ["bytes", "charged_until"])  # type: ignore[misc]
        if not await self.redis.delete(keys.file(owner, file_id), keys.file_data(owner, file_id)):
            raise FileNotFound(file_id)
        if size and charged_until:  # only the one delete that removed it gives back
            await self.stored.release(owner, int(size), int(charged_until))

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
