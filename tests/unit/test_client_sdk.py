"""The `albert_spp` client without a server (httpx.MockTransport): requests sent, answers and errors mapped, arrays
split, 429s waited for, pages followed, event streams parsed, reset and resumed."""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from albert_spp import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequest,
    Client,
    Conflict,
    Deleted,
    Done,
    InsecureKeyWarning,
    InvalidRequest,
    Job,
    JobStatus,
    NotFound,
    Queued,
    RateLimited,
    Reset,
    ServerError,
    Token,
    WaitTimeout,
)
from albert_spp.events import event_of, frames
from albert_spp.queries import chunks
from client import batch
from tests.unit.conftest import Clock

URL = "http://127.0.0.1:8000"
Handler = Callable[[httpx.Request], httpx.Response]


def job(job_id: str = "j-1", status: str = "queued", **fields: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "model": "m",
        "status": status,
        "attempts": 0,
        "created_at": "2025-01-02T03:04:05.678Z",
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
        "metadata": None,
        "priority": 0,
        **fields,
    }


def succeeded(job_id: str, text: str = "Bonjour") -> dict[str, Any]:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return job(job_id, "succeeded", attempts=1, result={"text": text, "finish_reason": "stop", "usage": usage})


class Server:
    """A MockTransport handler that records each request and answers with `answer(request)`."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.answer(request)

    def bodies(self) -> list[Any]:
        return [orjson.loads(request.content) for request in self.requests]


def make_client(answer: Handler, **options: Any) -> tuple[Client, Server, list[float]]:
    server = Server(answer)
    client = Client(URL, "key-1", transport=httpx.MockTransport(server), **options)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, server, sleeps


def make_async_client(answer: Handler, **options: Any) -> tuple[AsyncClient, Server, list[float]]:
    server = Server(answer)
    client = AsyncClient(URL, "key-1", transport=httpx.MockTransport(server), **options)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = sleep
    return client, server, sleeps


def echo_jobs(request: httpx.Request) -> httpx.Response:
    """POST /v1/jobs: each job of the array queued under its prompt as id."""
    sent = orjson.loads(request.content)
    items = sent if isinstance(sent, list) else [sent]
    answer = [job(item.get("id") or item["prompt"]) for item in items]
    return httpx.Response(202, json=answer if isinstance(sent, list) else answer[0])


# ---- configuration ---------------------------------------------------------------------------------------------


def test_url_and_key_from_arguments_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=job())

    monkeypatch.setenv("OPENAI_API_KEY", "never-sent")
    monkeypatch.delenv("ALBERT_SPP_API_KEY", raising=False)
    monkeypatch.delenv("ALBERT_SPP_URL", raising=False)
    Client(transport=httpx.MockTransport(answer)).get("j-1")
    assert str(seen[-1].url) == "http://127.0.0.1:8000/v1/jobs/j-1"
    assert "authorization" not in seen[-1].headers  # OPENAI_API_KEY is another service's

    monkeypatch.setenv("ALBERT_SPP_URL", "http://localhost:9000/v1/")
    monkeypatch.setenv("ALBERT_SPP_API_KEY", "env-key")
    Client(transport=httpx.MockTransport(answer)).get("j-1")
    assert str(seen[-1].url) == "http://localhost:9000/v1/jobs/j-1"
    assert seen[-1].headers["authorization"] == "Bearer env-key"
    assert seen[-1].headers["user-agent"].startswith("albert-spp-python/")

    Client("https://spp.example.org/", "arg-key", transport=httpx.MockTransport(answer)).get("j-1")
    assert str(seen[-1].url) == "https://spp.example.org/v1/jobs/j-1"
    assert seen[-1].headers["authorization"] == "Bearer arg-key"


@pytest.mark.parametrize(
    ("url", "key", "warned"),
    [
        ("http://spp.example.org", "k", True),
        ("http://10.1.2.3:8000", "k", True),
        ("http://spp.example.org", None, False),
        ("https://spp.example.org", "k", False),
        ("http://127.0.0.1:8000", "k", False),
        ("http://127.5.0.1:8000", "k", False),
        ("http://localhost:8000", "k", False),
        ("http://[::1]:8000", "k", False),
    ],
)
def test_a_key_over_plain_http_to_another_host_is_warned_of(
    url: str, key: str | None, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALBERT_SPP_API_KEY", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Client(url, key).close()
    found = [warning for warning in caught if issubclass(warning.category, InsecureKeyWarning)]
    assert bool(found) == warned
    if found:
        assert found[0].filename == __file__  # the warning points at the caller's line
        assert "clear text" in str(found[0].message)


def test_the_batch_command_warns_of_a_key_over_plain_http(tmp_path: Path) -> None:
    def command(url: str) -> str:
        err = io.StringIO()
        options = batch.Options(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", url=url, api_key="k")
        batch.BatchCommand(options, err).client.close()
        return err.getvalue()

    assert command("http://spp.example.org:8000").startswith("warning: the API key would be sent in clear text")
    assert command("http://127.0.0.1:8000/v1") == ""
    assert command("https://spp.example.org") == ""


# ---- requests and errors ---------------------------------------------------------------------------------------


def test_submit_sends_the_fields_given_and_reads_the_job() -> None:
    client, server, _ = make_client(lambda request: httpx.Response(202, json=job("mine")))
    answer = client.submit(
        "Bonjour",
        id="mine",
        template="spp",
        params={"max_tokens": 7, "temperature": 0.3},
        metadata={"dossier": "A-1", "n": 2},
        priority=3,
        webhook={"url": "https://example.org/hook"},
    )
    request = server.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/jobs")
    assert request.headers["authorization"] == "Bearer key-1"
    assert server.bodies()[0] == {
        "id": "mine",
        "prompt": "Bonjour",
        "template": "spp",
        "params": {"max_tokens": 7, "temperature": 0.3},
        "metadata": {"dossier": "A-1", "n": 2},
        "priority": 3,
        "webhook": {"url": "https://example.org/hook"},
    }
    assert isinstance(answer, Job)
    assert answer.status is JobStatus.QUEUED
    assert answer.created_at == datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    client.submit(messages=[{"role": "user", "content": "Salut"}], model="m")
    assert server.bodies()[1] == {"model": "m", "messages": [{"role": "user", "content": "Salut"}]}


def test_job_ids_are_quoted_in_paths() -> None:
    client, server, _ = make_client(lambda request: httpx.Response(202, json=job("a:b@c/d")))
    client.get("a:b@c/d")
    client.retry("a:b@c/d")
    assert [request.url.raw_path for request in server.requests] == [
        b"/v1/jobs/a%3Ab%40c%2Fd",
        b"/v1/jobs/a%3Ab%40c%2Fd/retry",
    ]
    assert server.requests[1].method == "POST"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, AuthenticationError),
        (404, NotFound),
        (409, Conflict),
        (422, InvalidRequest),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_errors_are_mapped_with_the_servers_detail(status: int, kind: type[APIError]) -> None:
    headers = {"Retry-After": "7"} if status in (429, 503) else {}
    body = {"detail": "job 'x' not found", "limit": "max_queued_jobs"}
    client, _, _ = make_client(lambda request: httpx.Response(status, json=body, headers=headers))
    with pytest.raises(kind) as caught:
        client.get("x")
    error = caught.value
    assert error.status == status
    assert error.detail == "job 'x' not found"
    assert str(error) == f"{status}: job 'x' not found"
    assert error.body["limit"] == "max_queued_jobs"
    assert error.retry_after == (7.0 if status in (429, 503) else None)


def test_a_validation_error_names_each_field() -> None:
    detail = [
        {"type": "value_error", "loc": ["body", 1, "prompt"], "msg": "too long"},
        {"type": "missing", "loc": ["body", 2, "messages"], "msg": "Field required"},
    ]
    client, _, _ = make_client(lambda request: httpx.Response(422, json={"detail": detail}))
    with pytest.raises(InvalidRequest) as caught:
        client.submit("x")
    assert caught.value.detail == detail
    assert str(caught.value) == "422: body.1.prompt: too long; body.2.messages: Field required"


def test_an_answer_without_json_and_an_unreachable_server() -> None:
    client, _, _ = make_client(lambda request: httpx.Response(502, text="Bad gateway from the proxy"))
    with pytest.raises(ServerError, match="Bad gateway from the proxy"):
        client.get("x")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, _, _ = make_client(refuse)
    with pytest.raises(APIConnectionError, match="connection refused"):
        client.get("x")


# ---- submit_many ---------------------------------------------------------------------------------------------


def test_submit_many_splits_arrays_at_the_servers_limit_in_order() -> None:
    client, server, _ = make_client(echo_jobs, max_jobs_per_request=1000)
    prompts = (f"p{index}" for index in range(2500))  # read lazily
    submitted = client.submit_many(prompts)
    assert [len(body) for body in server.bodies()] == [1000, 1000, 500]
    assert server.bodies()[0][0] == {"prompt": "p0"}
    assert [item.id for item in submitted] == [f"p{index}" for index in range(2500)]

    client, server, _ = make_client(echo_jobs, max_jobs_per_request=2)
    client.submit_many([{"prompt": "a", "priority": 1}])
    assert server.bodies() == [[{"prompt": "a", "priority": 1}]]  # always an array: the answer is one too
    assert client.submit_many([]) == []


def test_chunks_refuse_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(chunks(["a"], 0))


def limited_then(times: int, retry_after: str | None = "3") -> Server:
    """Refuses the second request `times` times with a 429, answering the others."""
    refused = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        if len(server.requests) >= 2 and refused < times:
            refused += 1
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return httpx.Response(429, json={"detail": "max_queued_jobs reached"}, headers=headers)
        return echo_jobs(request)

    server = Server(answer)
    return server


def test_submit_many_waits_out_a_429_and_sends_the_same_array_again() -> None:
    server = limited_then(2)
    client = Client(URL, "k", transport=httpx.MockTransport(server), max_jobs_per_request=2)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    submitted = client.submit_many(["a", "b", "c", "d", "e"])
    assert sleeps == [3.0, 3.0]
    assert [len(body) for body in server.bodies()] == [2, 2, 2, 2, 1]
    assert server.bodies()[1] == server.bodies()[2] == server.bodies()[3]
    assert [item.id for item in submitted] == ["a", "b", "c", "d", "e"]


def test_submit_many_gives_up_after_max_wait_naming_what_was_queued() -> None:
    server = limited_then(100, retry_after=None)  # no Retry-After: a second
    client = Client(URL, "k", transport=httpx.MockTransport(server), max_jobs_per_request=2)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    with pytest.raises(RateLimited) as caught:
        client.submit_many(["a", "b", "c", "d"], max_wait=4.5)
    assert sleeps == [1.0] * 4
    assert [item.id for item in caught.value.submitted] == ["a", "b"]


def test_submit_many_stops_at_another_error_naming_what_was_queued() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if b'"bad"' in request.content:
            return httpx.Response(422, json={"detail": [{"loc": ["body", 0, "prompt"], "msg": "nope"}]})
        return echo_jobs(request)

    client, server, sleeps = make_client(answer, max_jobs_per_request=2)
    with pytest.raises(InvalidRequest) as caught:
        client.submit_many(["a", "b", "bad", "c", "d"])
    assert [item.id for item in caught.value.submitted] == ["a", "b"]
    assert len(server.requests) == 2  # nothing after the refusal
    assert sleeps == []


# ---- listing, counting, changing -----------------------------------------------------------------------------


def test_list_sends_every_filter() -> None:
    page = {"object": "list", "data": [job("a")], "has_more": False, "next_after": None}
    client, server, _ = make_client(lambda request: httpx.Response(200, json=page))
    answer = client.list(
        limit=50,
        after="cursor-1",
        status=["failed", "cancelled"],
        model="m",
        batch="batch-1",
        created_after=datetime(2025, 1, 1, tzinfo=UTC),
        created_before=1767225600,
        metadata={"dossier": "A 1", "n": 2, "x": 1.5, "urgent": True, "none": None},
    )
    assert [item.id for item in answer.data] == ["a"]
    assert answer.has_more is False
    params = server.requests[0].url.params
    assert server.requests[0].url.path == "/v1/jobs"
    assert params.get_list("status") == ["failed", "cancelled"]
    assert dict(params) | {"status": "*"} == {
        "limit": "50",
        "after": "cursor-1",
        "status": "*",
        "model": "m",
        "batch": "batch-1",
        "created_after": "2025-01-01T00:00:00+00:00",
        "created_before": "1767225600",
        "metadata.dossier": "A 1",
        "metadata.n": "2",
        "metadata.x": "1.5",
        "metadata.urgent": "true",
        "metadata.none": "null",
    }
    client.list(status="queued")
    assert server.requests[1].url.params.get_list("status") == ["queued"]


def test_iter_jobs_follows_next_after_through_short_pages() -> None:
    pages: dict[str | None, dict[str, Any]] = {
        None: {"data": [job("j5"), job("j4")], "has_more": True, "next_after": "c1"},
        "c1": {"data": [], "has_more": True, "next_after": "c2"},  # bounded work: an empty page, more to come
        "c2": {"data": [job("j3")], "has_more": True, "next_after": "c3"},
        "c3": {"data": [job("j2"), job("j1")], "has_more": False, "next_after": None},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", **pages[request.url.params.get("after")]})

    client, server, _ = make_client(answer)
    found = [item.id for item in client.iter_jobs(page_size=2, status="failed", metadata={"k": "v"})]
    assert found == ["j5", "j4", "j3", "j2", "j1"]
    assert [request.url.params.get("after") for request in server.requests] == [None, "c1", "c2", "c3"]
    for request in server.requests:
        assert (request.url.params["limit"], request.url.params["status"]) == ("2", "failed")
        assert request.url.params["metadata.k"] == "v"


def test_stats_retry_cancel_delete() -> None:
    counts = {"queued": 1, "running": 0, "succeeded": 5, "failed": 2, "cancelled": 0}
    erased = {"id": "done-1", "object": "job.deleted", "deleted": True}
    cancelled_once: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/jobs/stats":
            models = None if request.url.params else {"m": counts}  # per model only without a filter
            return httpx.Response(200, json={"object": "job.stats", "total": 8, "counts": counts, "models": models})
        if path.endswith("/retry"):
            return httpx.Response(202, json=job("f-1", "queued"))
        if request.method == "DELETE" and path == "/v1/jobs":
            return httpx.Response(200, json={"object": "job.deleted_list", "deleted": 12})
        job_id = path.rsplit("/", 1)[1]
        if job_id.startswith("running") and job_id not in cancelled_once:
            cancelled_once.add(job_id)
            return httpx.Response(200, json=job(job_id, "cancelled"))
        return httpx.Response(200, json={**erased, "id": job_id})

    client, server, _ = make_client(answer)
    stats = client.stats()
    assert stats.models is not None
    assert (stats.total, stats.counts.succeeded, stats.models["m"].failed) == (8, 5, 2)
    assert client.stats(batch="b-1").models is None
    assert server.requests[-1].url.params["batch"] == "b-1"
    client.stats(metadata={"dossier": "A-1"})
    assert dict(server.requests[-1].url.params) == {"metadata.dossier": "A-1"}

    assert client.retry("f-1").status is JobStatus.QUEUED

    cancelled = client.cancel("running-1")
    assert isinstance(cancelled, Job)
    assert cancelled.status is JobStatus.CANCELLED
    assert client.cancel("done-1") == Deleted(id="done-1", deleted=True)  # a finished job is erased

    before = len(server.requests)
    assert client.delete("running-2") == Deleted(id="running-2", deleted=True)  # cancelled, then erased
    assert [request.method for request in server.requests[before:]] == ["DELETE", "DELETE"]

    assert client.delete_where(metadata={"citizen": "c-42"}, batch="b-1") == 12
    assert dict(server.requests[-1].url.params) == {"batch": "b-1", "metadata.citizen": "c-42"}
    with pytest.raises(ValueError, match="needs a filter"):
        client.delete_where()


# ---- waiting ---------------------------------------------------------------------------------------------------


def test_wait_looks_again_with_a_growing_pause_until_the_job_ends() -> None:
    statuses = iter(["queued", "queued", "running", "running"])

    def answer(request: httpx.Request) -> httpx.Response:
        status = next(statuses, None)
        return httpx.Response(200, json=job("j", status) if status else succeeded("j", "Réponse"))

    client, server, sleeps = make_client(answer)
    done = client.wait("j")
    assert done.text == "Réponse"
    assert len(server.requests) == 5
    assert sleeps == sorted(sleeps)
    assert sleeps[0] == pytest.approx(0.05)
    assert sleeps[-1] > sleeps[0]


def test_wait_gives_up_after_its_timeout(clock: Clock) -> None:
    client, _, sleeps = make_client(lambda request: httpx.Response(200, json=job("j", "running")))

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    client._sleep, client._clock = sleep, clock
    with pytest.raises(WaitTimeout, match="job j still running after 3") as caught:
        client.wait("j", timeout=3)
    assert caught.value.pending == ["j"]
    assert sum(sleeps) == pytest.approx(3.0)  # the last pause is cut to the deadline


def test_wait_all_answers_in_the_order_given_with_progress() -> None:
    looks: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[1]
        looks[job_id] = looks.get(job_id, 0) + 1
        ends_after = {"a": 3, "b": 1, "c": 2}[job_id]
        if looks[job_id] < ends_after:
            return httpx.Response(200, json=job(job_id, "running"))
        return httpx.Response(200, json=succeeded(job_id) if job_id != "c" else job(job_id, "failed"))

    client, _, _ = make_client(answer)
    output = io.StringIO()
    jobs = client.wait_all(["a", "b", "c", "b"], progress=output)
    assert [item.id for item in jobs] == ["a", "b", "c", "b"]
    assert looks == {"a": 3, "b": 1, "c": 2}  # a finished job is not looked at again
    lines = output.getvalue().splitlines()
    assert lines[0].startswith("[")
    assert "1 done, 0 failed / 3" in lines[0]
    assert "2 done, 1 failed / 3" in lines[-1]
    assert lines[-1].endswith("completed")


def test_wait_all_timeout_names_the_pending_jobs(clock: Clock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, json=succeeded(job_id) if job_id == "a" else job(job_id, "queued"))

    client, _, _ = make_client(answer)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    client._sleep, client._clock = sleep, clock
    with pytest.raises(WaitTimeout, match="1 of 2 jobs unfinished") as caught:
        client.wait_all(["a", "b"], timeout=1, progress=False)
    assert caught.value.pending == ["b"]


# ---- event streams ---------------------------------------------------------------------------------------------


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends `chunks`, then drops the connection (or ends, when `drop` is False)."""

    def __init__(self, chunks: list[bytes], drop: bool = True) -> None:
        self.chunks = chunks
        self.drop = drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.drop:
            raise httpx.ReadError("connection reset by peer")


def event_stream(*chunks: bytes, drop: bool = False) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Broken(list(chunks), drop))


def test_frames_skip_comments_and_join_data_lines() -> None:
    lines = [": keep-alive", "", "event: token", "id: 1-0", 'data: {"text":', 'data: "a"}', "", "data:x", ""]
    found = list(frames(lines))
    assert [(frame.event, frame.id, frame.data) for frame in found] == [
        ("token", "1-0", '{"text":\n"a"}'),
        ("message", None, "x"),
    ]
    queued = next(frames(["event: queued", 'data: {"queue_position": 4, "estimated_start_at": null}', ""]))
    assert event_of(queued) == Queued(4, None)
    start = next(
        frames(["event: queued", 'data: {"queue_position": 0, "estimated_start_at": "2025-01-02T03:04:05.000Z"}', ""])
    )
    assert event_of(start) == Queued(0, datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert event_of(next(frames(["event: novelty", "data: {}", ""]))) is None  # a newer server's event


FIRST_ATTEMPT = [
    sse("queued", {"queue_position": 0, "estimated_start_at": None}),
    sse("token", {"text": "Bon"}, "10-0"),
    sse("token", {"text": "jour"}, "11-0"),
]
SECOND_ATTEMPT = [
    sse("reset", {"attempt": 2}, "12-0"),
    b": keep-alive\n\n",
    sse("token", {"text": "Salut"}, "13-0"),
    sse("done", succeeded("j", "Salut"), "14-0"),
]


def test_stream_signals_a_reset_and_ends_with_the_job() -> None:
    client, server, _ = make_client(lambda request: event_stream(*FIRST_ATTEMPT, *SECOND_ATTEMPT))
    pieces = list(client.stream("j"))
    assert pieces == ["Bon", "jour", Reset("12-0", 2), "Salut"]
    assert server.requests[0].url.path == "/v1/jobs/j/events"
    assert "last-event-id" not in server.requests[0].headers

    events = list(client.events("j"))
    assert [type(event) for event in events] == [Queued, Token, Token, Reset, Token, Done]
    done = events[-1]
    assert isinstance(done, Done)
    assert done.job.text == "Salut"


def text_of(pieces: list[str | Reset]) -> str:
    text = ""
    for piece in pieces:
        text = "" if isinstance(piece, Reset) else text + piece
    return text


def resuming_server() -> Server:
    """Drops the connection after the first attempt's tokens, answers 503 once, then sends the rest after the
    client's Last-Event-ID."""

    def answer(request: httpx.Request) -> httpx.Response:
        tries = len(server.requests)
        if tries == 1:
            return event_stream(*FIRST_ATTEMPT, drop=True)
        if tries == 2:
            return httpx.Response(503, json={"detail": "Redis unavailable"}, headers={"Retry-After": "1"})
        assert request.headers["last-event-id"] == "11-0"
        return event_stream(*SECOND_ATTEMPT)

    server = Server(answer)
    return server


def test_stream_resumes_after_a_dropped_connection_from_the_last_event() -> None:
    server = resuming_server()
    client = Client(URL, "k", transport=httpx.MockTransport(server))
    sleeps: list[float] = []
    client._sleep = sleeps.append
    pieces = list(client.stream("j"))
    assert pieces == ["Bon", "jour", Reset("12-0", 2), "Salut"]  # nothing lost, nothing repeated
    assert text_of(pieces) == "Salut"
    assert len(server.requests) == 3
    assert sleeps == [0.1, 0.2]


def test_a_stream_that_keeps_dropping_gives_up_and_a_404_is_not_retried() -> None:
    client, server, _ = make_client(lambda request: event_stream(FIRST_ATTEMPT[1]), max_reconnects=2)
    with pytest.raises(APIConnectionError, match="dropped 3 times"):
        list(client.stream("j"))
    assert len(server.requests) == 3
    assert [request.headers.get("last-event-id") for request in server.requests] == [None, "10-0", "10-0"]

    client, server, _ = make_client(lambda request: httpx.Response(404, json={"detail": "job 'j' not found"}))
    with pytest.raises(NotFound):
        list(client.stream("j"))
    assert len(server.requests) == 1


def test_stream_starts_after_a_given_event_id() -> None:
    client, server, _ = make_client(lambda request: event_stream(*SECOND_ATTEMPT))
    assert list(client.stream("j", last_event_id="11-0"))[-1] == "Salut"
    assert server.requests[0].headers["last-event-id"] == "11-0"


# ---- the async client ------------------------------------------------------------------------------------------


async def test_async_client_submits_splits_and_waits_out_429s() -> None:
    server = limited_then(1)
    client = AsyncClient(URL, "k", transport=httpx.MockTransport(server), max_jobs_per_request=2)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = sleep
    async with client:
        submitted = await client.submit_many(["a", "b", "c"])
        single = await client.submit("d", metadata={"k": 1})
    assert [item.id for item in submitted] == ["a", "b", "c"]
    assert single.id == "d"
    assert sleeps == [3.0]
    assert server.bodies() == [
        [{"prompt": "a"}, {"prompt": "b"}],
        [{"prompt": "c"}],
        [{"prompt": "c"}],
        {
            "prompt": "d",
            "metadata": {"k": 1},
        },
    ]


async def test_async_client_streams_with_reset_and_resume() -> None:
    server = resuming_server()
    async with AsyncClient(URL, "k", transport=httpx.MockTransport(server)) as client:
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        client._sleep = sleep
        pieces = [piece async for piece in client.stream("j")]
    assert pieces == ["Bon", "jour", Reset("12-0", 2), "Salut"]
    assert sleeps == [0.1, 0.2]


async def test_async_client_waits_lists_and_changes() -> None:
    looks: dict[str, int] = {}
    pages: dict[str | None, dict[str, Any]] = {
        None: {"data": [job("j2")], "has_more": True, "next_after": "c1"},
        "c1": {"data": [job("j1")], "has_more": False, "next_after": None},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/jobs":
            if request.method == "DELETE":
                return httpx.Response(200, json={"object": "job.deleted_list", "deleted": 2})
            return httpx.Response(200, json={"object": "list", **pages[request.url.params.get("after")]})
        if path == "/v1/jobs/stats":
            return httpx.Response(200, json={"object": "job.stats", "total": 0, "counts": {}})
        if path.endswith("/retry"):
            return httpx.Response(409, json={"detail": "job j1 has succeeded: only a failed or cancelled job"})
        job_id = path.rsplit("/", 1)[1]
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": job_id, "object": "job.deleted", "deleted": True})
        looks[job_id] = looks.get(job_id, 0) + 1
        return httpx.Response(200, json=succeeded(job_id) if looks[job_id] > 1 else job(job_id, "running"))

    client, _, sleeps = make_async_client(answer, concurrency=2)
    async with client:
        assert (await client.wait("w")).status is JobStatus.SUCCEEDED
        jobs = await client.wait_all([f"a{index}" for index in range(5)], progress=False)
        assert [item.id for item in jobs] == [f"a{index}" for index in range(5)]
        assert [item.id async for item in client.iter_jobs(page_size=1)] == ["j2", "j1"]
        assert (await client.stats()).counts.queued == 0
        with pytest.raises(Conflict, match="only a failed or cancelled job"):
            await client.retry("j1")
        assert await client.delete("j1") == Deleted(id="j1", deleted=True)
        assert await client.delete_where(batch="b") == 2
    assert sleeps
