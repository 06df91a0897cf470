"""The model server clients against mock servers on 127.0.0.1: vLLM's OpenAI-compatible streams and `/generate`."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from shared.models import GenerationRequest, Message, Usage
from tests.unit.conftest import MODEL, Answer, MockServer, Serve, Step, forever, make_settings, reply, stream
from worker.backends import (
    PUBLIC_MESSAGE_CHARS,
    BackendRejected,
    BackendUnavailable,
    Delta,
    Event,
    Final,
    ModelClient,
    public_text,
)

pytestmark = pytest.mark.usefixtures("clean_env")


# ---- helpers ------------------------------------------------------------------------------------------------


def chat_chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def text_chunk(text: str, *, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def sse(*chunks: dict[str, Any] | str, done: bool = True, eol: str = "\n") -> bytes:
    """A Server-Sent Events body: one `data:` event per chunk (strings are written as raw lines)."""
    lines: list[str] = []
    for chunk in chunks:
        lines += [chunk if isinstance(chunk, str) else "data: " + orjson.dumps(chunk).decode(), ""]
    if done:
        lines += ["data: [DONE]", ""]
    return eol.join(lines).encode() + eol.encode()


def client_for(server: MockServer, table: str | None = None, **settings: Any) -> ModelClient:
    """A client of `server` (its URL given with `/v1`, as vLLM's often are) unless `table` says otherwise."""
    llm_table = table or f'[["{MODEL}", "{server.url}/v1"]]'
    return ModelClient(make_settings(LLM_TABLE=llm_table, **settings), MODEL)


def legacy_client_for(server: MockServer) -> ModelClient:
    return client_for(server, f'[["{MODEL}", "{server.url}", "generate"]]')


def prompt_request(prompt: str | None = "Bonjour", **fields: Any) -> GenerationRequest:
    values: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 16, "temperature": 0.2, "top_p": 0.9}
    return GenerationRequest.model_validate(values | fields)


def chat_request(*contents: str, **fields: Any) -> GenerationRequest:
    messages = [Message(role="user", content=content) for content in contents or ("Bonjour",)]
    return prompt_request(prompt=None, messages=messages, **fields)


async def run(client: ModelClient, request: GenerationRequest, request_id: str = "public:j1:1") -> list[Event]:
    try:
        return [event async for event in client.stream(request, request_id)]
    finally:
        await client.aclose()


async def collect_into(seen: list[Event], client: ModelClient, request: GenerationRequest) -> None:
    """Like `run`, but keeps the events received before an error in `seen`."""
    try:
        async for event in client.stream(request, "kid:1"):
            seen.append(event)
    finally:
        await client.aclose()


def texts(events: Iterable[Event]) -> list[str]:
    return [event.text for event in events if isinstance(event, Delta)]


def final(events: list[Event]) -> Final:
    last = events[-1]
    assert isinstance(last, Final)
    assert sum(isinstance(event, Final) for event in events) == 1
    return last


def split_at(body: bytes, cuts: list[int], gates: list[asyncio.Event]) -> Answer:
    """`body` streamed in pieces cut at `cuts`: piece i+1 is only sent once `gates[i]` is set.

    With `gates[i]` set when the client yields its (i+1)-th delta, the client has read all of piece i before
    piece i+1 exists: the cuts are exactly where its reads end, whatever TCP would have merged.
    """
    steps: list[Step] = []
    start = 0
    for cut, gate in zip(cuts, gates, strict=True):
        steps += [body[start:cut], gate.wait]
        start = cut
    return stream(*steps, body[start:])


async def run_opening_gates(client: ModelClient, request: GenerationRequest, gates: list[asyncio.Event]) -> list[Event]:
    """Like `run`, setting `gates[i]` when the (i+1)-th delta arrives."""
    events: list[Event] = []
    try:
        async for event in client.stream(request, "kid:1"):
            events.append(event)
            if isinstance(event, Delta) and len(texts(events)) <= len(gates):
                gates[len(texts(events)) - 1].set()
    finally:
        await client.aclose()
    return events


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that is bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


# ---- OpenAI-compatible streams ----------------------------------------------------------------------------

CHAT_STREAM = sse(
    chat_chunk("", role="assistant"),
    chat_chunk(" Bonjour"),
    chat_chunk(".", finish="stop"),
    usage_chunk(9, 2),
)


async def test_chat_stream_yields_deltas_then_final_with_usage(serve: Serve) -> None:
    events = await run(client_for(await serve(stream(CHAT_STREAM))), chat_request())

    assert texts(events) == [" Bonjour", "."]
    assert final(events) == Final("stop", Usage(prompt_tokens=9, completion_tokens=2, total_tokens=11))


async def test_completion_stream_yields_text_pieces(serve: Serve) -> None:
    body = sse(text_chunk("Il "), text_chunk("fait"), text_chunk(" beau", finish="length"), usage_chunk(3, 3))

    events = await run(client_for(await serve(stream(body))), prompt_request())

    assert texts(events) == ["Il ", "fait", " beau"]
    assert final(events) == Final("length", Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6))


async def test_body_with_content_length_is_read_too(serve: Serve) -> None:
    events = await run(client_for(await serve(reply(CHAT_STREAM))), chat_request())

    assert texts(events) == [" Bonjour", "."]


async def test_chat_request_body_path_and_headers(serve: Serve) -> None:
    server = await serve(stream(CHAT_STREAM))

    await run(client_for(server), chat_request("Salut", max_tokens=5, temperature=0.0, top_p=1.0), "alice:j9:2")

    request = server.requests[0]
    assert request.method == "POST"
    assert request.url == f"{server.url}/v1/chat/completions"
    assert request.headers["X-Request-Id"] == "alice:j9:2"
    assert request.headers["Content-Type"] == "application/json"
    assert server.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Salut"}],
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_completion_request_body_has_prompt_stop_and_seed(serve: Serve) -> None:
    server = await serve(stream(sse(text_chunk("x", finish="stop"))))

    await run(client_for(server), prompt_request("Once", stop=["\n", "END"], seed=42))

    assert server.requests[0].path == "/v1/completions"
    body = server.body
    assert body["prompt"] == "Once"
    assert "messages" not in body
    assert body["stop"] == ["\n", "END"]
    assert body["seed"] == 42
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 16)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_seed_zero_is_sent(serve: Serve) -> None:
    server = await serve(stream(sse(text_chunk("x", finish="stop"))))

    await run(client_for(server), prompt_request(seed=0))

    assert server.body["seed"] == 0
    assert "stop" not in server.body


async def test_missing_usage_chunk_counts_completion_tokens_from_pieces(serve: Serve) -> None:
    body = sse(chat_chunk("", role="assistant"), chat_chunk("a"), chat_chunk("b"), chat_chunk("c", finish="stop"))

    events = await run(client_for(await serve(stream(body))), chat_request())

    assert final(events) == Final("stop", Usage(completion_tokens=3))


async def test_null_usage_in_ordinary_chunks_is_ignored(serve: Serve) -> None:
    chunk = chat_chunk("a", finish="stop") | {"usage": None}

    events = await run(client_for(await serve(stream(sse(chunk, usage_chunk(1, 1))))), chat_request())

    assert final(events).usage == Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)


async def test_sse_comments_and_other_fields_are_skipped(serve: Serve) -> None:
    body = sse(
        ": ping", "event: message", "id: 3", "retry: 1000", chat_chunk("a"), ": ping", chat_chunk("b", finish="stop")
    )

    events = await run(client_for(await serve(stream(body))), chat_request())

    assert texts(events) == ["a", "b"]


async def test_empty_and_role_only_deltas_yield_nothing(serve: Serve) -> None:
    empty_choices = chat_chunk() | {"choices": []}
    null_content = chat_chunk() | {"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": None}]}
    body = sse(
        chat_chunk(role="assistant"), chat_chunk(""), null_content, empty_choices, chat_chunk("a", finish="stop")
    )

    events = await run(client_for(await serve(stream(body))), chat_request())

    assert texts(events) == ["a"]
    assert final(events).usage.completion_tokens == 1


async def test_crlf_line_endings(serve: Serve) -> None:
    body = sse(chat_chunk("a"), chat_chunk("b", finish="stop"), usage_chunk(1, 2), eol="\r\n")

    events = await run(client_for(await serve(stream(body))), chat_request())

    assert texts(events) == ["a", "b"]
    assert final(events).finish_reason == "stop"


async def test_data_field_without_space(serve: Serve) -> None:
    body = b'data:{"choices":[{"index":0,"text":"a","finish_reason":"stop"}]}\n\ndata:[DONE]\n\n'

    events = await run(client_for(await serve(stream(body))), prompt_request())

    assert texts(events) == ["a"]


async def test_stream_split_inside_a_character_a_line_ending_and_a_field_name_is_parsed_the_same(
    serve: Serve,
) -> None:
    body = sse(chat_chunk("é"), chat_chunk("tã"), chat_chunk("ü"), chat_chunk("!", finish="stop"), eol="\r\n")
    second, third, fourth = (body.index(b"data:", body.index(text.encode())) for text in ("é", "tã", "ü"))
    cuts = [
        body.index("ã".encode()) + 1,  # inside the two bytes of "ã"
        third - 1,  # between the "\r" and the "\n" of the blank line ending the second event
        fourth + 2,  # inside "data:"
    ]
    assert second < cuts[0] < cuts[1] < third < cuts[2]
    gates = [asyncio.Event() for _ in cuts]

    events = await run_opening_gates(client_for(await serve(split_at(body, cuts, gates))), chat_request(), gates)

    assert texts(events) == ["é", "tã", "ü", "!"]
    assert final(events) == Final("stop", Usage(completion_tokens=4))


async def test_sse_line_longer_than_64_kib(serve: Serve) -> None:
    long = "y" * 100_000 + "é" * 10_000
    body = sse(chat_chunk(long), chat_chunk(".", finish="stop"), usage_chunk(1, 2))
    assert max(len(line) for line in body.split(b"\n")) > 2**16

    events = await run(client_for(await serve(stream(body))), chat_request())

    assert texts(events) == [long, "."]
    assert final(events).usage.completion_tokens == 2


async def test_stream_that_ends_with_finish_reason_but_without_done_is_complete(serve: Serve) -> None:
    body = sse(chat_chunk("a", finish="stop"), done=False)

    events = await run(client_for(await serve(stream(body))), chat_request())

    assert final(events) == Final("stop", Usage(completion_tokens=1))


# ---- connections ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "generate"])
async def test_sequential_generations_reuse_one_connection(serve: Serve, protocol: str) -> None:
    server = await serve(stream(CHAT_STREAM if protocol == "openai" else records("Q", ["a", "ab"], b"\0")))
    client = client_for(server, f'[["{MODEL}", "{server.url}", "{protocol}"]]')

    try:
        for _ in range(5):
            events = [event async for event in client.stream(prompt_request("Q"), "kid:1")]
            assert isinstance(events[-1], Final)
    finally:
        await client.aclose()

    assert len(server.requests) == 5
    assert len({request.peer for request in server.requests}) == 1


async def test_connection_refused_is_unavailable(closed_port: int) -> None:
    client = ModelClient(make_settings(LLM_TABLE=f'[["{MODEL}", "http://127.0.0.1:{closed_port}"]]'), MODEL)

    with pytest.raises(BackendUnavailable, match="ClientConnectorError"):
        await run(client, chat_request())


async def test_silence_longer_than_the_read_timeout_is_unavailable(serve: Serve) -> None:
    server = await serve(stream(sse(chat_chunk("a"), done=False), forever))
    seen: list[Event] = []

    with pytest.raises(BackendUnavailable, match="no answer in time"):
        await collect_into(seen, client_for(server, BACKEND_READ_TIMEOUT=0.05), chat_request())

    assert seen == [Delta("a")]


# ---- OpenAI-compatible errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            {"error": {"message": "context length exceeded", "type": "BadRequestError", "param": None, "code": 400}},
            id="nested",
        ),
        pytest.param(
            {"object": "error", "message": "context length exceeded", "type": "BadRequestError", "code": 400},
            id="flat",
        ),
    ],
)
async def test_http_400_is_rejected_with_the_server_message(serve: Serve, error: dict[str, Any]) -> None:
    server = await serve(reply(orjson.dumps(error), status=400, content_type="application/json"))

    with pytest.raises(BackendRejected, match="HTTP 400: context length exceeded"):
        await run(client_for(server), chat_request())
    assert len(server.requests) == 1


async def test_http_404_unknown_model_is_rejected(serve: Serve) -> None:
    body = orjson.dumps({"error": {"message": "The model `x` does not exist.", "code": 404}})

    with pytest.raises(BackendRejected, match="does not exist"):
        await run(client_for(await serve(reply(body, status=404))), chat_request())


@pytest.mark.parametrize("status", [500, 502, 503, 429, 424, 408])
async def test_server_errors_and_overload_are_unavailable(serve: Serve, status: int) -> None:
    body = orjson.dumps({"error": {"message": "engine is busy", "code": status}})

    with pytest.raises(BackendUnavailable, match=f"HTTP {status}: engine is busy"):
        await run(client_for(await serve(reply(body, status=status, content_type="application/json"))), chat_request())


async def test_non_json_error_body_is_quoted(serve: Serve) -> None:
    server = await serve(reply(b"<html>Bad Gateway</html>", status=502, content_type="text/html"))

    with pytest.raises(BackendUnavailable, match="HTTP 502: <html>Bad Gateway</html>"):
        await run(client_for(server), chat_request())


@pytest.mark.parametrize(
    ("code", "error_type"),
    [(500, BackendUnavailable), (400, BackendRejected)],
)
async def test_mid_stream_error_chunk_raises(serve: Serve, code: int, error_type: type[Exception]) -> None:
    error = {"error": {"message": "engine died", "type": "InternalServerError", "code": code}}
    body = sse(chat_chunk("a"), error)
    seen: list[Event] = []

    with pytest.raises(error_type, match="failed during the stream: engine died"):
        await collect_into(seen, client_for(await serve(stream(body))), chat_request())

    assert seen == [Delta("a")]


async def test_stream_ended_without_done_nor_finish_reason_is_unavailable(serve: Serve) -> None:
    body = sse(chat_chunk("a"), chat_chunk("b"), done=False)

    with pytest.raises(BackendUnavailable, match="cut"):
        await run(client_for(await serve(stream(body))), chat_request())


async def test_done_without_any_finish_reason_is_a_cut_stream(serve: Serve) -> None:
    """llama-cpp-python ends a stream it interrupts for a newer request with [DONE] and no finish reason: the
    text is truncated, and must not be stored as an answer."""
    body = sse(chat_chunk("a"), chat_chunk("b"), done=True)

    with pytest.raises(BackendUnavailable, match="cut without a finish reason"):
        await run(client_for(await serve(stream(body))), chat_request())


async def test_stream_ended_inside_a_chunk_is_unavailable(serve: Serve) -> None:
    body = sse(chat_chunk("a"), done=False) + b'data: {"choices": [{"index": 0, "del'

    with pytest.raises(BackendUnavailable, match="unreadable chunk"):
        await run(client_for(await serve(stream(body))), chat_request())


@pytest.mark.parametrize(
    "tail", [b"", b'data: {"choices": [{"index": 0, "del'], ids=["between-events", "inside-an-event"]
)
async def test_connection_lost_mid_stream_is_unavailable(serve: Serve, tail: bytes) -> None:
    server = await serve(stream(sse(chat_chunk("a"), done=False), tail, cut=True))
    seen: list[Event] = []

    with pytest.raises(BackendUnavailable, match="ClientPayloadError"):
        await collect_into(seen, client_for(server), chat_request())

    assert seen == [Delta("a")]


def test_client_of_a_model_missing_from_llm_table_is_refused() -> None:
    with pytest.raises(ValueError, match="not in LLM_TABLE"):
        ModelClient(make_settings(), "unknown-model")


# ---- legacy /generate --------------------------------------------------------------------------------------


def records(prompt: str, completions: list[str], separator: bytes) -> bytes:
    """Cumulative `/generate` records: each holds the prompt and all the text so far."""
    return b"".join(orjson.dumps({"text": [prompt + text]}) + separator for text in completions)


@pytest.mark.parametrize("separator", [b"\n", b"\0"], ids=["newline", "nul"])
async def test_legacy_generate_yields_deltas_of_cumulative_records(serve: Serve, separator: bytes) -> None:
    server = await serve(stream(records("Q: ", ["Il", "Il fait", "Il fait beau"], separator), content_type=""))

    events = await run(legacy_client_for(server), prompt_request("Q: ", max_tokens=16))

    assert texts(events) == ["Il", " fait", " beau"]
    assert final(events) == Final("stop", Usage(completion_tokens=3))


async def test_legacy_generate_request_body_and_path(serve: Serve) -> None:
    server = await serve(stream(records("P", ["x"], b"\0")))

    await run(legacy_client_for(server), prompt_request("P", stop=["."], seed=3), "public:j1:1")

    assert server.requests[0].method == "POST"
    assert server.requests[0].url == f"{server.url}/generate"
    assert server.requests[0].headers["X-Request-Id"] == "public:j1:1"
    assert server.body == {
        "prompt": "P",
        "stream": True,
        "max_tokens": 16,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["."],
        "seed": 3,
    }


async def test_legacy_generate_finish_reason_length_at_max_tokens(serve: Serve) -> None:
    server = await serve(stream(records("P", ["a", "ab", "abc"], b"\n")))

    events = await run(legacy_client_for(server), prompt_request("P", max_tokens=3))

    assert final(events) == Final("length", Usage(completion_tokens=3))


async def test_legacy_generate_chat_is_sent_as_text_and_its_prefix_stripped(serve: Serve) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        prompt = (await request.json())["prompt"]
        return await stream(records(prompt, ["Salut", "Salut !"], b"\0"))(request)

    server = await serve(answer)

    events = await run(legacy_client_for(server), chat_request("Bonjour"))

    assert "Bonjour" in server.body["prompt"]
    assert texts(events) == ["Salut", " !"]


async def test_legacy_generate_records_split_inside_a_character_and_a_record(serve: Serve) -> None:
    body = records("Q", ["é", "é tã", "é tã !"], b"\0")
    cuts = [body.index("ã".encode()) + 1, body.rindex(b'"text"') + 3]
    gates = [asyncio.Event() for _ in cuts]

    events = await run_opening_gates(
        legacy_client_for(await serve(split_at(body, cuts, gates))), prompt_request("Q"), gates
    )

    assert texts(events) == ["é", " tã", " !"]
    assert final(events).usage.completion_tokens == 3


async def test_legacy_generate_record_longer_than_64_kib(serve: Serve) -> None:
    completions = ["x" * 40_000, "x" * 80_000, "x" * 80_000 + "é" * 30_000]
    body = records("Q", completions, b"\0")
    assert max(len(record) for record in body.split(b"\0")) > 2**16

    events = await run(legacy_client_for(await serve(stream(body))), prompt_request("Q"))

    assert texts(events) == ["x" * 40_000, "x" * 40_000, "é" * 30_000]
    assert final(events).usage.completion_tokens == 3


async def test_legacy_generate_ended_inside_a_record_is_unavailable(serve: Serve) -> None:
    body = records("Q", ["a"], b"\n") + b'{"text": ["Qab'

    with pytest.raises(BackendUnavailable, match="unreadable record"):
        await run(legacy_client_for(await serve(stream(body))), prompt_request("Q"))


async def test_legacy_generate_connection_lost_inside_a_record_is_unavailable(serve: Serve) -> None:
    server = await serve(stream(records("Q", ["a"], b"\0"), b'{"text": ["Qab', cut=True))

    with pytest.raises(BackendUnavailable, match="ClientPayloadError"):
        await run(legacy_client_for(server), prompt_request("Q"))


async def test_legacy_generate_without_any_record_is_unavailable(serve: Serve) -> None:
    with pytest.raises(BackendUnavailable, match="without any record"):
        await run(legacy_client_for(await serve(stream(b""))), prompt_request("Q"))


async def test_legacy_generate_http_errors(serve: Serve) -> None:
    rejected = await serve(reply(b'{"detail": "prompt too long"}', status=422, content_type="application/json"))
    unavailable = await serve(reply(b"Internal Server Error", status=500, content_type="text/plain"))

    with pytest.raises(BackendRejected, match="prompt too long"):
        await run(legacy_client_for(rejected), prompt_request("Q"))
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        await run(legacy_client_for(unavailable), prompt_request("Q"))


# ---- replicas -------------------------------------------------------------------------------------------


async def test_requests_alternate_between_replicas(serve: Serve) -> None:
    first, second = await serve(stream(CHAT_STREAM)), await serve(stream(CHAT_STREAM))
    table = f'[["{MODEL}", "{first.url}/v1"], ["other", "http://x"], ["{MODEL}", "{second.url}"]]'
    client = client_for(first, table)
    counts: list[tuple[int, int]] = []

    try:
        for _ in range(4):
            assert texts([event async for event in client.stream(chat_request(), "kid:1")]) == [" Bonjour", "."]
            counts.append((len(first.requests), len(second.requests)))
    finally:
        await client.aclose()

    assert counts == [(1, 0), (1, 1), (2, 1), (2, 2)]
    assert {request.path for request in first.requests + second.requests} == {"/v1/chat/completions"}


async def test_replicas_may_mix_protocols(serve: Serve) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/generate":
            return await stream(records("Q", ["x"], b"\n"))(request)
        return await stream(sse(text_chunk("x", finish="stop")))(request)

    server = await serve(answer)
    client = client_for(server, f'[["{MODEL}", "{server.url}"], ["{MODEL}", "{server.url}", "generate"]]')

    try:
        for _ in range(2):
            assert texts([event async for event in client.stream(prompt_request("Q"), "kid:1")]) == ["x"]
    finally:
        await client.aclose()

    assert [request.path for request in server.requests] == ["/v1/completions", "/generate"]


# ---- what a strict or protected server needs: keys, TLS, no internal details in public messages -------------


async def test_no_authorization_header_without_a_key(serve: Serve) -> None:
    server = await serve(stream(CHAT_STREAM))

    await run(client_for(server), chat_request())

    assert "Authorization" not in server.requests[0].headers


async def test_llm_api_key_is_sent_and_an_entry_key_wins(serve: Serve) -> None:
    shared, own = await serve(stream(CHAT_STREAM)), await serve(stream(CHAT_STREAM))
    table = f'[["{MODEL}", "{shared.url}"], ["{MODEL}", "{own.url}", {{"api_key": "key-of-own"}}]]'
    client = client_for(shared, table, LLM_API_KEY="key-for-all")

    try:
        for _ in range(2):  # one request to each replica
            assert isinstance([event async for event in client.stream(chat_request(), "r")][-1], Final)
    finally:
        await client.aclose()

    assert shared.requests[0].headers["Authorization"] == "Bearer key-for-all"
    assert own.requests[0].headers["Authorization"] == "Bearer key-of-own"


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_unavailable_and_names_the_settings(serve: Serve, status: int) -> None:
    server = await serve(reply(b'{"error": "Unauthorized"}', status=status, content_type="application/json"))

    with pytest.raises(BackendUnavailable, match=f"HTTP {status}: Unauthorized .*LLM_API_KEY"):
        await run(client_for(server, LLM_API_KEY="wrong"), chat_request())


async def test_public_message_has_neither_the_server_url_nor_its_credentials(serve: Serve) -> None:
    said = {"error": {"message": "prompt too long\x00, see http://10.0.0.7:8000/docs?token=t0p", "code": 400}}
    server = await serve(reply(orjson.dumps(said), status=400, content_type="application/json"))
    port = server.url.rsplit(":", 1)[1]
    table = f'[["{MODEL}", "http://user:s3cret@127.0.0.1:{port}/v1"]]'

    with pytest.raises(BackendRejected) as caught:
        await run(client_for(server, table), chat_request())

    public = str(caught.value)
    assert public == "the model server answered HTTP 400: prompt too long , see <url>"
    assert caught.value.internal == f"http://127.0.0.1:{port}/v1/chat/completions: {public}"
    assert "s3cret" not in caught.value.internal
    assert server.requests[0].headers["Authorization"].startswith("Basic ")  # the URL's credentials still work


async def test_an_unreachable_server_is_named_in_the_log_only(closed_port: int) -> None:
    client = ModelClient(make_settings(LLM_TABLE=f'[["{MODEL}", "http://u:pw@127.0.0.1:{closed_port}"]]'), MODEL)

    with pytest.raises(BackendUnavailable) as caught:
        await run(client, chat_request())

    assert str(caught.value) == "the connection to the model server failed (ClientConnectorError)"
    assert f"http://127.0.0.1:{closed_port}" in caught.value.internal
    assert "u:pw" not in caught.value.internal


def test_public_text_is_short_and_cut_on_a_character() -> None:
    text = public_text("é" * 1000)

    assert len(text) == PUBLIC_MESSAGE_CHARS
    assert text.endswith("é…")


@pytest.fixture(scope="module")
def private_ca() -> trustme.CA:
    return trustme.CA()


async def test_https_server_of_a_private_ca(private_ca: trustme.CA, tmp_path: Path) -> None:
    """An https:// model server whose certificate only LLM_CA_BUNDLE trusts: refused without it."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    private_ca.issue_cert("127.0.0.1").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    private_ca.cert_pem.write_to_path(str(bundle))

    async def chat(_: web.Request) -> web.Response:
        return web.Response(body=CHAT_STREAM)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context).start()
    table = f'[["{MODEL}", "https://127.0.0.1:{runner.addresses[0][1]}"]]'
    try:
        events = await run(
            ModelClient(make_settings(LLM_TABLE=table, LLM_CA_BUNDLE=str(bundle)), MODEL), chat_request()
        )
        assert texts(events) == [" Bonjour", "."]
        with pytest.raises(BackendUnavailable, match="ClientConnectorCertificateError"):
            await run(ModelClient(make_settings(LLM_TABLE=table), MODEL), chat_request())
    finally:
        await runner.cleanup()
