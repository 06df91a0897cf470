"""`AsyncClient`: the asyncio twin of `Client`, method for method."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO

import httpx

from albert_spp import config
from albert_spp.client import RESUMABLE_STATUSES, STREAM_READ_TIMEOUT, answer_of, erased
from albert_spp.errors import AlbertSppError, APIConnectionError, RateLimited, ServerError, WaitTimeout, error_of
from albert_spp.events import Done, Event, Reset, SseParser, Token, event_of
from albert_spp.models import (
    Deleted,
    Job,
    JobList,
    JobRequest,
    JobStats,
    Message,
    MetadataValue,
    Params,
    WebhookRequest,
)
from albert_spp.queries import (
    MAX_JOBS_PER_REQUEST,
    Time,
    chunks,
    erase_query,
    filters,
    job_body,
    job_path,
    list_query,
)
from albert_spp.waiting import Backoff, Deadline, Tally, reconnect_pause


class AsyncClient:
    """Jobs of an albert-spp server, for asyncio: the methods of Client, awaited (`events`, `stream` and
    `iter_jobs` are async iterators). `wait_all` looks at up to `concurrency` jobs at once."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_jobs_per_request: int = MAX_JOBS_PER_REQUEST,
        max_reconnects: int = 5,
        concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = config.base_url(base_url)
        key = config.api_key(api_key)
        config.warn_if_insecure(self.base_url, key)
        self.max_jobs_per_request = max_jobs_per_request
        self.max_reconnects = max_reconnects
        self.concurrency = concurrency
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=config.headers(key), timeout=timeout, transport=transport
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests replace both
        self._clock: Callable[[], float] = time.monotonic

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _request(
        self, method: str, path: str, *, params: Sequence[tuple[str, str]] = (), json: Any = None
    ) -> Any:
        try:
            response = await self._http.request(method, path, params=list(params), json=json)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {self.base_url}{path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response.json()

    # ---- submitting ------------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Message] | None = None,
        model: str | None = None,
        template: str | None = None,
        params: Params | None = None,
        id: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        priority: int | None = None,
        webhook: WebhookRequest | None = None,
    ) -> Job:
        """Client.submit."""
        body = job_body(
            prompt,
            messages=messages,
            model=model,
            template=template,
            params=params,
            id=id,
            metadata=metadata,
            priority=priority,
            webhook=webhook,
        )
        return Job.model_validate(await self._request("POST", "/v1/jobs", json=body))

    async def submit_many(self, jobs: Iterable[JobRequest | str], *, max_wait: float = 600.0) -> builtins.list[Job]:
        """Client.submit_many."""
        submitted: builtins.list[Job] = []
        waited = 0.0
        try:
            for chunk in chunks(jobs, self.max_jobs_per_request):
                while True:
                    try:
                        answer = await self._request("POST", "/v1/jobs", json=chunk)
                        break
                    except RateLimited as exc:
                        pause = exc.retry_after if exc.retry_after is not None else 1.0
                        if waited + pause > max_wait:
                            raise
                        await self._sleep(pause)
                        waited += pause
                submitted += [Job.model_validate(item) for item in answer]
        except AlbertSppError as exc:
            exc.submitted = submitted
            raise
        return submitted

    # ---- reading and waiting ---------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """Client.get."""
        return Job.model_validate(await self._request("GET", job_path(job_id)))

    # `timeout` rather than asyncio.timeout (ASYNC109): Client's signature, and WaitTimeout names the pending jobs.
    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Client.wait."""
        deadline, backoff = Deadline(timeout, self._clock), Backoff()
        while True:
            job = await self.get(job_id)
            if job.status.finished:
                return job
            if deadline.passed:
                raise WaitTimeout(f"job {job_id} still {job.status} after {timeout}s", [job_id])
            await self._sleep(deadline.pause(backoff.next()))

    async def wait_all(
        self,
        job_ids: Iterable[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        progress: bool | TextIO = True,
    ) -> builtins.list[Job]:
        """Client.wait_all, looking at up to `concurrency` jobs at once."""
        tally, deadline, backoff = Tally(job_ids, progress), Deadline(timeout, self._clock), Backoff()
        room = asyncio.Semaphore(self.concurrency)

        async def look(job_id: str) -> Job:
            async with room:
                return await self.get(job_id)

        try:
            while tally.pending:
                if tally.record(await asyncio.gather(*(look(job_id) for job_id in tally.pending))):
                    backoff.reset()
                if not tally.pending:
                    break
                if deadline.passed:
                    count = len(tally.pending)
                    raise WaitTimeout(f"{count} of {len(tally.ids)} jobs unfinished after {timeout}s", tally.pending)
                await self._sleep(deadline.pause(backoff.next()))
        finally:
            tally.close()
        return tally.jobs()

    # ---- following ------------------------------------------------------------------------------------

    async def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        """Client.events."""
        path, failures = job_path(job_id, "events"), 0
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_of(response)
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        frame = parser.feed(line)
                        event = event_of(frame) if frame is not None else None
                        if frame is None or event is None:
                            continue
                        if frame.id and frame.id != last_event_id:  # news: the stream moves on
                            last_event_id, failures = frame.id, 0
                        yield event
                        if isinstance(event, Done):
                            return
                cause: Exception = APIConnectionError(f"the event stream of job {job_id} ended before its end")
            except httpx.TransportError as exc:
                cause = exc
            except ServerError as exc:
                if exc.status not in RESUMABLE_STATUSES:
                    raise
                cause = exc
            failures += 1
            if failures > self.max_reconnects:
                raise APIConnectionError(f"the event stream of job {job_id} dropped {failures} times: {cause!r}")
            await self._sleep(reconnect_pause(failures))

    async def stream(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[str | Reset]:
        """Client.stream."""
        async for event in self.events(job_id, last_event_id=last_event_id):
            if isinstance(event, Token):
                yield event.text
            elif isinstance(event, Reset):
                yield event

    # ---- listing and counting --------------------------------------------------------------------------

    async def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        status: str | Iterable[str] | None = None,
        model: str | None = None,
        batch: str | None = None,
        created_after: Time | None = None,
        created_before: Time | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> JobList:
        """Client.list."""
        query = list_query(
            limit=limit,
            after=after,
            status=status,
            model=model,
            batch=batch,
            created_after=created_after,
            created_before=created_before,
            metadata=metadata,
        )
        return JobList.model_validate(await self._request("GET", "/v1/jobs", params=query))

    async def iter_jobs(
        self,
        *,
        page_size: int = 100,
        status: str | Iterable[str] | None = None,
        model: str | None = None,
        batch: str | None = None,
        created_after: Time | None = None,
        created_before: Time | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> AsyncIterator[Job]:
        """Client.iter_jobs."""
        statuses = [status] if isinstance(status, str) else builtins.list(status or ())
        after: str | None = None
        while True:
            page = await self.list(
                limit=page_size,
                after=after,
                status=statuses,
                model=model,
                batch=batch,
                created_after=created_after,
                created_before=created_before,
                metadata=metadata,
            )
            for job in page.data:
                yield job
            if not page.has_more or page.next_after is None:
                return
            after = page.next_after

    async def stats(self, *, batch: str | None = None, metadata: Mapping[str, MetadataValue] | None = None) -> JobStats:
        """Client.stats."""
        return JobStats.model_validate(await self._request("GET", "/v1/jobs/stats", params=filters(batch, metadata)))

    # ---- changing --------------------------------------------------------------------------------------

    async def retry(self, job_id: str) -> Job:
        """Client.retry."""
        return Job.model_validate(await self._request("POST", job_path(job_id, "retry")))

    async def cancel(self, job_id: str) -> Job | Deleted:
        """Client.cancel."""
        return answer_of(await self._request("DELETE", job_path(job_id)))

    async def delete(self, job_id: str) -> Deleted:
        """Client.delete."""
        answer = await self.cancel(job_id)
        if isinstance(answer, Job):  # it was queued or running: now cancelled, it can be erased
            answer = await self.cancel(job_id)
        return erased(job_id, answer)

    async def delete_where(
        self, *, metadata: Mapping[str, MetadataValue] | None = None, batch: str | None = None
    ) -> int:
        """Client.delete_where."""
        answer = await self._request("DELETE", "/v1/jobs", params=erase_query(batch, metadata))
        return int(answer["deleted"])

    async def provenance(self, job_id: str) -> dict[str, Any]:
        """Client.provenance."""
        answer: dict[str, Any] = await self._request("GET", job_path(job_id, "provenance"))
        return answer
