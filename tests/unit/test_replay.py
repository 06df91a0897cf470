"""The worker's model client against real servers' recorded answers (sim/transcripts), replayed by sim/replay.py
on a real uvicorn socket: each transcript's `@expect` is what the client must derive from it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import uvicorn

from shared.models import GenerationRequest, Message, Usage
from sim.replay import ReplayApp, Transcript, TranscriptError, load_transcript, parse_transcript, shipped_transcripts
from tests.unit.conftest import MODEL, make_settings
from worker.backends import BackendRejected, BackendUnavailable, Delta, Event, Final, ModelClient

pytestmark = pytest.mark.usefixtures("clean_env")

TRANSCRIPTS = shipped_transcripts()

Replay = Callable[[Transcript], Awaitable[str]]


@pytest.fixture
async def replay() -> AsyncIterator[Replay]:
    """Starts replay servers (uvicorn on a free port of 127.0.0.1) and gives their base URLs; all stop after."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(transcript: Transcript) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        config = uvicorn.Config(ReplayApp(transcript), log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        servers.append((server, task))
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def request_for(transcript: Transcript) -> GenerationRequest:
    """A chat or prompt request, as the transcript's endpoint takes."""
    values = {"model": MODEL, "max_tokens": 10, "temperature": 0.0, "top_p": 1.0}
    if transcript.endpoint == "/v1/completions":
        return GenerationRequest.model_validate(values | {"prompt": "What color is the sky?"})
    return GenerationRequest.model_validate(values | {"messages": [Message(role="user", content="Bonjour")]})


async def run_client(url: str, request: GenerationRequest) -> list[Event]:
    client = ModelClient(make_settings(LLM_TABLE=f'[["{MODEL}", "{url}"]]', FIRST_TOKEN_TIMEOUT=10), MODEL)
    try:
        return [event async for event in client.stream(request, "replay:j1:1")]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "path",
    TRANSCRIPTS,
    ids=[path.stem for path in TRANSCRIPTS],
)
async def test_worker_derives_what_the_transcript_says(path: Path, replay: Replay) -> None:
    transcript = load_transcript(path)
    expect = transcript.expect
    url = await replay(transcript)

    if "error" in expect:
        error = {"BackendRejected": BackendRejected, "BackendUnavailable": BackendUnavailable}[expect["error"]]
        with pytest.raises(error):
            await run_client(url, request_for(transcript))
        return
    events = await run_client(url, request_for(transcript))

    assert "".join(event.text for event in events if isinstance(event, Delta)) == expect["text"]
    assert events[-1] == Final(expect["finish_reason"], Usage.model_validate(expect["usage"]))


def test_every_transcript_names_its_server_endpoint_model_and_expectation() -> None:
    assert len(TRANSCRIPTS) >= 12
    servers = set()
    for path in TRANSCRIPTS:
        transcript = load_transcript(path)
        servers.add(transcript.directives["server"])
        assert transcript.endpoint in ("/v1/chat/completions", "/v1/completions"), path.name
        assert "model" in transcript.directives, path.name
        assert set(transcript.expect) in ({"error"}, {"text", "finish_reason", "usage"}), path.name
        assert "ource" in path.read_text(encoding="utf-8").split("\nHTTP/")[0], f"{path.name} names no source"
    assert servers == {"vllm", "tgi", "sglang", "ollama"}


def test_body_is_kept_byte_for_byte() -> None:
    body = b'data: {"a":1}\r\n\r\n: ping\r\n\r\nevent: message\ndata:[DONE]'
    data = b"# @model: m\r\n# from somewhere\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body

    transcript = parse_transcript(data)

    assert transcript.status == 200
    assert transcript.headers == (("Content-Type", "text/event-stream"),)
    assert transcript.body == body
    assert transcript.model == "m"
    assert transcript.events() == [b'data: {"a":1}\r\n\r\n', b": ping\r\n\r\n", b"event: message\ndata:[DONE]"]


@pytest.mark.parametrize(
    "data",
    [b"# only a comment\n", b"HTTP/1.1 200 OK\nContent-Type: x\n", b"HTTP/1.1 OK\n\n", b"HTTP/1.1 200 OK\nbad\n\n"],
)
def test_malformed_transcripts_are_refused(data: bytes) -> None:
    with pytest.raises(TranscriptError):
        parse_transcript(data)


async def test_server_answers_every_generation_request_and_health_and_models(replay: Replay) -> None:
    transcript = load_transcript(next(path for path in TRANSCRIPTS if path.name == "tgi-chat.txt"))
    url = await replay(transcript)

    async with aiohttp.ClientSession() as session:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/chat/completions"):
            async with session.post(url + path, json={"anything": True}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/event-stream"
                assert response.headers["x-compute-type"] == "1-nvidia-a10g"
                assert await response.read() == transcript.body
        async with session.get(url + "/health") as response:
            assert response.status == 200
        async with session.get(url + "/v1/models") as response:
            assert [model["id"] for model in (await response.json())["data"]] == [transcript.model]
        async with session.get(url + "/metrics") as response:
            assert response.status == 404


async def test_error_transcript_keeps_its_status_and_body(replay: Replay) -> None:
    transcript = load_transcript(next(path for path in TRANSCRIPTS if path.name == "tgi-error-validation.txt"))
    url = await replay(transcript)

    async with aiohttp.ClientSession() as session, session.post(url + "/v1/chat/completions", json={}) as response:
        assert response.status == 422
        assert await response.read() == transcript.body


async def test_paced_replay_sends_one_event_at_a_time() -> None:
    transcript = load_transcript(next(path for path in TRANSCRIPTS if path.name == "vllm-chat-usage.txt"))
    sent: list[bytes] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            sent.append(message["body"])  # type: ignore[arg-type]

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
    await ReplayApp(transcript, pace_ms=1)(scope, receive, send)  # type: ignore[arg-type]

    assert sent == transcript.events()
    assert len(sent) == 5
    assert b"".join(sent) == transcript.body
