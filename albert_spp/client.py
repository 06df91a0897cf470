"""`Client`: the synchronous client of an albert-spp server's jobs (`AsyncClient` is its asyncio twin)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO

import httpx

from albert_spp import config
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

STREAM_READ_TIMEOUT = 60.0
"""Seconds of silence after which an event stream counts as dropped (the server sends a keep-alive every 15)."""
RESUMABLE_STATUSES = frozenset({502, 503, 504})
"""Answers to an event stream's reopening that are worth another try: a server restarting or overloaded."""


def answer_of(data: dict[str, Any]) -> Job | Deleted:
    """What `DELETE /v1/jobs/{id}` answers: the cancelled job, or the erasure of a finished one."""
    return Deleted.model_validate(data) if data.get("object") == "job.deleted" else Job.model_validate(data)


def erased(job_id: str, answer: Job | Deleted) -> Deleted:
    if isinstance(answer, Job):
        raise AlbertSppError(f"job {job_id} is still {answer.status} after its cancellation: not erased")
    return answer


class Client:
    """Jobs of an albert-spp server: submit one or many, wait, stream, list, count, retry, cancel, erase.

    `base_url` defaults to $ALBERT_SPP_URL, then http://127.0.0.1:8000; `api_key` to $ALBERT_SPP_API_KEY. A key
    about to travel over plain http to another machine raises an InsecureKeyWarning. `max_jobs_per_request`
    is the server's MAX_JOBS_PER_REQUEST (`submit_many` splits larger arrays); `max_reconnects` the tries in a
    row to reopen a dropped event stream.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_jobs_per_request: int = MAX_JOBS_PER_REQUEST,
        max_reconnects: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = config.base_url(base_url)
        key = config.api_key(api_key)
        config.warn_if_insecure(self.base_url, key)
        self.max_jobs_per_request = max_jobs_per_request
        self.max_reconnects = max_reconnects
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url, headers=config.headers(key), timeout=timeout, transport=transport
        )
        self._sleep: Callable[[float], None] = time.sleep  # tests replace both
        self._clock: Callable[[], float] = time.monotonic

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, *, params: Sequence[tuple[str, str]] = (), json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, params=list(params), json=json)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {self.base_url}{path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response.json()

    # ---- submitting ------------------------------------------------------------------------------------

    def submit(
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
        """Queue one job (exactly one of `prompt` or `messages`); the fields left out take the server's defaults.
        Resubmitting an `id` with the same job answers the existing job."""
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
        return Job.model_validate(self._request("POST", "/v1/jobs", json=body))

    def submit_many(self, jobs: Iterable[JobRequest | str], *, max_wait: float = 600.0) -> builtins.list[Job]:
        """Queue jobs (a string is a prompt), `max_jobs_per_request` per request, in order. A request refused by a
        limit (429, nothing of it queued) is sent again after the server's Retry-After, for up to `max_wait`
        seconds in all; an error raised carries in `submitted` the jobs queued before it."""
        submitted: builtins.list[Job] = []
        waited = 0.0
        try:
            for chunk in chunks(jobs, self.max_jobs_per_request):
                while True:
                    try:
                        answer = self._request("POST", "/v1/jobs", json=chunk)
                        break
                    except RateLimited as exc:
                        pause = exc.retry_after if exc.retry_after is not None else 1.0
                        if waited + pause > max_wait:
                            raise
                        self._sleep(pause)
                        waited += pause
                submitted += [Job.model_validate(item) for item in answer]
        except AlbertSppError as exc:
            exc.submitted = submitted
            raise
        return submitted

    # ---- reading and waiting ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job: its status, and its result or error once finished."""
        return Job.model_validate(self._request("GET", job_path(job_id)))

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job once finished (succeeded, failed or cancelled), looked at with a growing pause (50 ms to 2 s);
        WaitTimeout after `timeout` seconds."""
        deadline, backoff = Deadline(timeout, self._clock), Backoff()
        while True:
            job = self.get(job_id)
            if job.status.finished:
                return job
            if deadline.passed:
                raise WaitTimeout(f"job {job_id} still {job.status} after {timeout}s", [job_id])
            self._sleep(deadline.pause(backoff.next()))

    def wait_all(
        self, job_ids: Iterable[str], *, timeout: float | None = None, progress: bool | TextIO = True
    ) -> builtins.list[Job]:
        """The jobs once all have finished, in the order given, with a progress bar on stderr (`progress`: False
        for none, or another stream); WaitTimeout (naming the pending ids) after `timeout` seconds."""
        tally, deadline, backoff = Tally(job_ids, progress), Deadline(timeout, self._clock), Backoff()
        try:
            while tally.pending:
                if tally.record([self.get(job_id) for job_id in tally.pending]):
                    backoff.reset()
                if not tally.pending:
                    break
                if deadline.passed:
                    count = len(tally.pending)
                    raise WaitTimeout(f"{count} of {len(tally.ids)} jobs unfinished after {timeout}s", tally.pending)
                self._sleep(deadline.pause(backoff.next()))
        finally:
            tally.close()
        return tally.jobs()

    # ---- following ------------------------------------------------------------------------------------

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events (Queued, Token, Reset, then Done) as they come, from the start or after
        `last_event_id`. A dropped connection is reopened after the last event received (Last-Event-ID), up to
        `max_reconnects` times in a row without a new event."""
        path, failures = job_path(job_id, "events"), 0
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_of(response)
                    parser = SseParser()
                    for line in response.iter_lines():
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
            self._sleep(reconnect_pause(failures))

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[str | Reset]:
        """The job's text as it is generated, a piece at a time, until it ends. A Reset means that the attempt
        starts over: the text received so far is void, the next pieces are the new attempt's."""
        for event in self.events(job_id, last_event_id=last_event_id):
            if isinstance(event, Token):
                yield event.text
            elif isinstance(event, Reset):
                yield event

    # ---- listing and counting --------------------------------------------------------------------------

    def list(
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
        """One page of the client's jobs, newest first, filtered (filters ANDed; `status` may name several);
        pass its `next_after` as `after` for the next page."""
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
        return JobList.model_validate(self._request("GET", "/v1/jobs", params=query))

    def iter_jobs(
        self,
        *,
        page_size: int = 100,
        status: str | Iterable[str] | None = None,
        model: str | None = None,
        batch: str | None = None,
        created_after: Time | None = None,
        created_before: Time | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> Iterator[Job]:
        """Every job matching the filters, newest first, a page of `page_size` at a time."""
        statuses = [status] if isinstance(status, str) else builtins.list(status or ())
        after: str | None = None
        while True:
            page = self.list(
                limit=page_size,
                after=after,
                status=statuses,
                model=model,
                batch=batch,
                created_after=created_after,
                created_before=created_before,
                metadata=metadata,
            )
            yield from page.data
            if not page.has_more or page.next_after is None:
                return
            after = page.next_after

    def stats(self, *, batch: str | None = None, metadata: Mapping[str, MetadataValue] | None = None) -> JobStats:
        """The client's jobs counted by status (and by model, without a filter); at most one filter: a batch or
        one metadata pair."""
        return JobStats.model_validate(self._request("GET", "/v1/jobs/stats", params=filters(batch, metadata)))

    # ---- changing --------------------------------------------------------------------------------------

    def retry(self, job_id: str) -> Job:
        """Run a failed or cancelled job again under its id (Conflict for any other)."""
        return Job.model_validate(self._request("POST", job_path(job_id, "retry")))

    def cancel(self, job_id: str) -> Job | Deleted:
        """Cancel a queued or running job: the cancelled job. The server erases a job that has already finished,
        and answers Deleted."""
        return answer_of(self._request("DELETE", job_path(job_id)))

    def delete(self, job_id: str) -> Deleted:
        """Erase the job (cancelled first if it had not finished)."""
        answer = self.cancel(job_id)
        if isinstance(answer, Job):  # it was queued or running: now cancelled, it can be erased
            answer = self.cancel(job_id)
        return erased(job_id, answer)

    def delete_where(self, *, metadata: Mapping[str, MetadataValue] | None = None, batch: str | None = None) -> int:
        """Cancel then erase every job of the client matching the filters (at least one); how many."""
        answer = self._request("DELETE", "/v1/jobs", params=erase_query(batch, metadata))
        return int(answer["deleted"])

    def provenance(self, job_id: str) -> dict[str, Any]:
        """What produced the finished job's answer: model and revision, replica, template, sampling, attempts."""
        answer: dict[str, Any] = self._request("GET", job_path(job_id, "provenance"))
        return answer
