"""The model server clients against a mock transport: vLLM's OpenAI-compatible streams and legacy `/generate`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx
import orjson
import pytest

from shared.models import GenerationRequest, Message, Usage
from tests.unit.conftest import MODEL, make_settings
from worker.backends import BackendRejected, BackendUnavailable, Delta, Event, Final, ModelClient

Handler = Callable[[httpx.Request], httpx.Response]

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


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    """`body` delivered `size` bytes at a time, as a slow network would."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


class Server:
    """A mock model server: records every request and answers with `answer(request)`."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.requests[-1].content)
        return body


def answer_with(
    content: bytes | AsyncIterator[bytes], status: int = 200, content_type: str = "text/event-stream"
) -> Handler:
    return lambda request: httpx.Response(status, content=content, headers={"content-type": content_type})


def client_for(server: Server, table: str | None = None) -> ModelClient:
    settings = make_settings(LLM_TABLE=table or f'[["{MODEL}", "http://vllm.test:8000/v1"]]')
    return ModelClient(settings, MODEL, transport=httpx.MockTransport(server))


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


# ---- OpenAI-compatible streams ----------------------------------------------------------------------------

CHAT_STREAM = sse(
    chat_chunk("", role="assistant"),
    chat_chunk(" Bonjour"),
    chat_chunk(".", finish="stop"),
    usage_chunk(9, 2),
)


async def test_chat_stream_yields_deltas_then_final_with_usage() -> None:
    events = await run(client_for(Server(answer_with(CHAT_STREAM))), chat_request())

    assert texts(events) == [" Bonjour", "."]
    assert final(events) == Final("stop", Usage(prompt_tokens=9, completion_tokens=2, total_tokens=11))


async def test_completion_stream_yields_text_pieces() -> None:
    body = sse(text_chunk("Il "), text_chunk("fait"), text_chunk(" beau", finish="length"), usage_chunk(3, 3))

    events = await run(client_for(Server(answer_with(body))), prompt_request())

    assert texts(events) == ["Il ", "fait", " beau"]
    assert final(events) == Final("length", Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6))


async def test_chat_request_body_path_and_headers() -> None:
    server = Server(answer_with(CHAT_STREAM))

    await run(client_for(server), chat_request("Salut", max_tokens=5, temperature=0.0, top_p=1.0), "alice:j9:2")

    request = server.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "http://vllm.test:8000/v1/chat/completions"
    assert request.headers["X-Request-Id"] == "alice:j9:2"
    assert server.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Salut"}],
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_completion_request_body_has_prompt_stop_and_seed() -> None:
    server = Server(answer_with(sse(text_chunk("x", finish="stop"))))

    await run(client_for(server), prompt_request("Once", stop=["\n", "END"], seed=42))

    assert server.requests[0].url.path == "/v1/completions"
    body = server.body
    assert body["prompt"] == "Once"
    assert "messages" not in body
    assert body["stop"] == ["\n", "END"]
    assert body["seed"] == 42
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 16)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_seed_zero_is_sent() -> None:
    server = Server(answer_with(sse(text_chunk("x", finish="stop"))))

    await run(client_for(server), prompt_request(seed=0))

    assert server.body["seed"] == 0
    assert "stop" not in server.body


async def test_missing_usage_chunk_counts_completion_tokens_from_pieces() -> None:
    body = sse(chat_chunk("", role="assistant"), chat_chunk("a"), chat_chunk("b"), chat_chunk("c", finish="stop"))

    events = await run(client_for(Server(answer_with(body))), chat_request())

    assert final(events) == Final("stop", Usage(completion_tokens=3))


async def test_null_usage_in_ordinary_chunks_is_ignored() -> None:
    chunk = chat_chunk("a", finish="stop") | {"usage": None}

    events = await run(client_for(Server(answer_with(sse(chunk, usage_chunk(1, 1))))), chat_request())

    assert final(events).usage == Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)


async def test_sse_comments_and_other_fields_are_skipped() -> None:
    body = sse(
        ": ping", "event: message", "id: 3", "retry: 1000", chat_chunk("a"), ": ping", chat_chunk("b", finish="stop")
    )

    events = await run(client_for(Server(answer_with(body))), chat_request())

    assert texts(events) == ["a", "b"]


async def test_empty_and_role_only_deltas_yield_nothing() -> None:
    empty_choices = chat_chunk() | {"choices": []}
    null_content = chat_chunk() | {"choices": [{"index": 0, "delta": {"content": None}, "finish_reason": None}]}
    body = sse(
        chat_chunk(role="assistant"), chat_chunk(""), null_content, empty_choices, chat_chunk("a", finish="stop")
    )

    events = await run(client_for(Server(answer_with(body))), chat_request())

    assert texts(events) == ["a"]
    assert final(events).usage.completion_tokens == 1


async def test_crlf_line_endings() -> None:
    body = sse(chat_chunk("a"), chat_chunk("b", finish="stop"), usage_chunk(1, 2), eol="\r\n")

    events = await run(client_for(Server(answer_with(body))), chat_request())

    assert texts(events) == ["a", "b"]
    assert final(events).finish_reason == "stop"


async def test_data_field_without_space() -> None:
    body = b'data:{"choices":[{"index":0,"text":"a","finish_reason":"stop"}]}\n\ndata:[DONE]\n\n'

    events = await run(client_for(Server(answer_with(body))), prompt_request())

    assert texts(events) == ["a"]


async def test_stream_split_at_any_byte_is_parsed_the_same() -> None:
    body = sse(chat_chunk("é"), chat_chunk("tã", finish="stop"), usage_chunk(1, 2))

    events = await run(client_for(Server(answer_with(pieces(body, 3)))), chat_request())

    assert texts(events) == ["é", "tã"]
    assert final(events).usage.completion_tokens == 2


async def test_stream_that_ends_with_finish_reason_but_without_done_is_complete() -> None:
    body = sse(chat_chunk("a", finish="stop"), done=False)

    events = await run(client_for(Server(answer_with(body))), chat_request())

    assert final(events) == Final("stop", Usage(completion_tokens=1))


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
async def test_http_400_is_rejected_with_the_server_message(error: dict[str, Any]) -> None:
    server = Server(answer_with(orjson.dumps(error), status=400, content_type="application/json"))

    with pytest.raises(BackendRejected, match="HTTP 400: context length exceeded"):
        await run(client_for(server), chat_request())
    assert len(server.requests) == 1


async def test_http_404_unknown_model_is_rejected() -> None:
    body = orjson.dumps({"error": {"message": "The model `x` does not exist.", "code": 404}})

    with pytest.raises(BackendRejected, match="does not exist"):
        await run(client_for(Server(answer_with(body, status=404))), chat_request())


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_server_errors_and_overload_are_unavailable(status: int) -> None:
    body = orjson.dumps({"error": {"message": "engine is busy", "code": status}})

    with pytest.raises(BackendUnavailable, match=f"HTTP {status}: engine is busy"):
        await run(client_for(Server(answer_with(body, status=status))), chat_request())


async def test_non_json_error_body_is_quoted() -> None:
    server = Server(answer_with(b"<html>Bad Gateway</html>", status=502, content_type="text/html"))

    with pytest.raises(BackendUnavailable, match="HTTP 502: <html>Bad Gateway</html>"):
        await run(client_for(server), chat_request())


@pytest.mark.parametrize(
    ("code", "error_type"),
    [(500, BackendUnavailable), (400, BackendRejected)],
)
async def test_mid_stream_error_chunk_raises(code: int, error_type: type[Exception]) -> None:
    error = {"error": {"message": "engine died", "type": "InternalServerError", "code": code}}
    body = sse(chat_chunk("a"), error)
    seen: list[Event] = []

    with pytest.raises(error_type, match="error during the stream: engine died"):
        await collect_into(seen, client_for(Server(answer_with(body))), chat_request())

    assert seen == [Delta("a")]


async def test_stream_cut_without_done_nor_finish_reason_is_unavailable() -> None:
    body = sse(chat_chunk("a"), chat_chunk("b"), done=False)

    with pytest.raises(BackendUnavailable, match="cut"):
        await run(client_for(Server(answer_with(body))), chat_request())


async def test_stream_cut_inside_a_chunk_is_unavailable() -> None:
    body = sse(chat_chunk("a"), done=False) + b'data: {"choices": [{"index": 0, "del'

    with pytest.raises(BackendUnavailable):
        await run(client_for(Server(answer_with(body))), chat_request())


async def test_connection_error_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(BackendUnavailable, match="ConnectError"):
        await run(client_for(Server(refuse)), chat_request())


async def test_read_timeout_is_unavailable() -> None:
    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(BackendUnavailable, match="no answer in time"):
        await run(client_for(Server(silent)), chat_request())


async def test_connection_lost_mid_stream_is_unavailable() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield sse(chat_chunk("a"), done=False)
        raise httpx.ReadError("connection reset by peer")

    with pytest.raises(BackendUnavailable, match="ReadError"):
        await run(client_for(Server(answer_with(broken()))), chat_request())


def test_client_of_a_model_missing_from_llm_table_is_refused() -> None:
    with pytest.raises(ValueError, match="not in LLM_TABLE"):
        ModelClient(make_settings(), "unknown-model")


# ---- legacy /generate --------------------------------------------------------------------------------------

LEGACY_TABLE = f'[["{MODEL}", "http://old.test:8080", "generate"]]'


def records(prompt: str, completions: list[str], separator: bytes) -> bytes:
    """Cumulative `/generate` records: each holds the prompt and all the text so far."""
    return b"".join(orjson.dumps({"text": [prompt + text]}) + separator for text in completions)


@pytest.mark.parametrize("separator", [b"\n", b"\0"], ids=["newline", "nul"])
async def test_legacy_generate_yields_deltas_of_cumulative_records(separator: bytes) -> None:
    server = Server(answer_with(records("Q: ", ["Il", "Il fait", "Il fait beau"], separator), content_type=""))

    events = await run(client_for(server, LEGACY_TABLE), prompt_request("Q: ", max_tokens=16))

    assert texts(events) == ["Il", " fait", " beau"]
    assert final(events) == Final("stop", Usage(completion_tokens=3))


async def test_legacy_generate_request_body_and_path() -> None:
    server = Server(answer_with(records("P", ["x"], b"\0")))

    await run(client_for(server, LEGACY_TABLE), prompt_request("P", stop=["."], seed=3), "public:j1:1")

    assert str(server.requests[0].url) == "http://old.test:8080/generate"
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


async def test_legacy_generate_finish_reason_length_at_max_tokens() -> None:
    server = Server(answer_with(records("P", ["a", "ab", "abc"], b"\n")))

    events = await run(client_for(server, LEGACY_TABLE), prompt_request("P", max_tokens=3))

    assert final(events) == Final("length", Usage(completion_tokens=3))


async def test_legacy_generate_chat_is_sent_as_text_and_its_prefix_stripped() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        prompt = orjson.loads(request.content)["prompt"]
        return httpx.Response(200, content=records(prompt, ["Salut", "Salut !"], b"\0"))

    server = Server(answer)

    events = await run(client_for(server, LEGACY_TABLE), chat_request("Bonjour"))

    assert "Bonjour" in server.body["prompt"]
    assert texts(events) == ["Salut", " !"]


async def test_legacy_generate_records_split_across_reads() -> None:
    body = records("Q", ["é", "é tã", "é tã !"], b"\0")

    events = await run(client_for(Server(answer_with(pieces(body, 5))), LEGACY_TABLE), prompt_request("Q"))

    assert "".join(texts(events)) == "é tã !"
    assert final(events).usage.completion_tokens == 3


async def test_legacy_generate_cut_inside_a_record_is_unavailable() -> None:
    body = records("Q", ["a"], b"\n") + b'{"text": ["Qab'

    with pytest.raises(BackendUnavailable, match="cut inside a record"):
        await run(client_for(Server(answer_with(body)), LEGACY_TABLE), prompt_request("Q"))


async def test_legacy_generate_without_any_record_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="without any record"):
        await run(client_for(Server(answer_with(b"")), LEGACY_TABLE), prompt_request("Q"))


async def test_legacy_generate_http_errors() -> None:
    rejected = Server(answer_with(b'{"detail": "prompt too long"}', status=422))
    unavailable = Server(answer_with(b"Internal Server Error", status=500))

    with pytest.raises(BackendRejected, match="prompt too long"):
        await run(client_for(rejected, LEGACY_TABLE), prompt_request("Q"))
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        await run(client_for(unavailable, LEGACY_TABLE), prompt_request("Q"))


# ---- replicas -------------------------------------------------------------------------------------------


async def test_requests_alternate_between_replicas() -> None:
    server = Server(answer_with(CHAT_STREAM))
    table = f'[["{MODEL}", "http://replica-1:8000/v1"], ["other", "http://x"], ["{MODEL}", "http://replica-2:8000"]]'
    client = client_for(server, table)

    for _ in range(4):
        assert texts([event async for event in client.stream(chat_request(), "kid:1")]) == [" Bonjour", "."]
    await client.aclose()

    assert [request.url.host for request in server.requests] == ["replica-1", "replica-2", "replica-1", "replica-2"]


async def test_replicas_may_mix_protocols() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/generate":
            return httpx.Response(200, content=records("Q", ["x"], b"\n"))
        return httpx.Response(200, content=sse(text_chunk("x", finish="stop")))

    server = Server(answer)
    client = client_for(server, f'[["{MODEL}", "http://a"], ["{MODEL}", "http://b", "generate"]]')

    for _ in range(2):
        assert texts([event async for event in client.stream(prompt_request("Q"), "kid:1")]) == ["x"]
    await client.aclose()

    assert [str(request.url) for request in server.requests] == ["http://a/v1/completions", "http://b/generate"]
