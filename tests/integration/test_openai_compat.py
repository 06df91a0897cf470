"""The OpenAI-compatible routes with the official `openai` client, through the queue, over real sockets."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.integration.conftest import AUTH, Sim, Stack, assert_no_internal_details, wait_for, with_credentials

MODEL = "AgentPublic/fabrique-reference-2"
SMALL = "small/context-64"  # a server whose context holds 64 tokens
CUT = "flaky/cut"  # a server that cuts every stream halfway


@pytest.fixture(scope="module")
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim(MODEL, prefill_ms=20, ms_per_token=5)


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., Stack], sim: Sim, start_sim: Callable[..., Sim]) -> Stack:
    small = start_sim(SMALL, max_model_len=64)
    cut = start_sim(CUT, cut_rate=1, ms_per_token=1)
    table = [(MODEL, sim.url), (SMALL, with_credentials(small.url)), (CUT, with_credentials(cut.url))]
    return start_stack(table, STREAM_FLUSH_MS=20, RETRY_BACKOFF=0.05)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    # No retries: each test sees the API's first answer.
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="test-key", max_retries=0, timeout=30) as client:
        yield client


def marker() -> str:
    """A unique question, to find the request the model server received."""
    return f"Où en est mon dossier {uuid.uuid4().hex[:12]} ?"


def messages(text: str = "Bonjour, ma carte grise n'est pas arrivée.") -> Any:
    return [{"role": "user", "content": text}]


def job_id_of(response_id: str) -> str:
    return response_id.removeprefix("chatcmpl-").removeprefix("cmpl-")


def sent_to_server(sim: Sim, text: str) -> dict[str, Any] | None:
    """The request the model server received for the question `text`, if any."""
    return next((r for r in sim.stats()["recent"] if text in orjson.dumps(r).decode()), None)


def test_chat_completion_goes_through_the_queue(client: openai.OpenAI, stack: Stack, sim: Sim) -> None:
    question = marker()

    completion = client.chat.completions.create(model=MODEL, messages=messages(question), max_tokens=12, seed=3)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12
    job = stack.http.get(f"/v1/jobs/{job_id_of(completion.id)}").json()
    assert (job["status"], job["attempts"], job["model"]) == ("succeeded", 1, MODEL)
    assert job["result"]["text"] == choice.message.content
    assert completion.created == int(datetime.fromisoformat(job["created_at"]).timestamp())
    request = sent_to_server(sim, question)
    assert request is not None
    assert stack.request_ids()[request["request_id"]] == job["id"]  # the worker's request, not the API's
    assert (request["max_tokens"], request["seed"]) == (12, 3)


def test_max_completion_tokens_wins_and_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=messages(),
        max_tokens=30,
        max_completion_tokens=4,
        extra_body={"top_k": 5, "repetition_penalty": 1.1, "anything": {"nested": True}},
    )

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4


def test_text_completion(client: openai.OpenAI, stack: Stack) -> None:
    completion = client.completions.create(model=MODEL, prompt=["Bonjour, ma carte grise"], max_tokens=8)

    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    (choice,) = completion.choices
    assert choice.finish_reason == "length"
    job = stack.http.get(f"/v1/jobs/{job_id_of(completion.id)}").json()
    assert job["result"]["text"] == choice.text
    assert job["attempts"] == 1


@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_chat_equals_the_jobs_result(client: openai.OpenAI, stack: Stack, include_usage: bool) -> None:
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(model=MODEL, messages=messages(), max_tokens=60, stream=True, **options)
    chunks = list(stream)

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    first, *rest = chunks
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    usage_chunks = [chunk for chunk in rest if not chunk.choices]
    with_choices = [chunk for chunk in rest if chunk.choices]
    assert [chunk.choices[0].finish_reason for chunk in with_choices] == [None] * (len(with_choices) - 1) + ["length"]
    assert len(with_choices) > 2, "tokens arrive in several chunks"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in with_choices)
    job = stack.http.get(f"/v1/jobs/{job_id_of(first.id)}").json()
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert text == job["result"]["text"]
    if include_usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 60
        assert chunks[-1].usage.prompt_tokens == job["result"]["usage"]["prompt_tokens"]
    else:
        assert usage_chunks == []
        assert all(chunk.usage is None for chunk in chunks)


def test_streamed_completion_with_usage(client: openai.OpenAI, stack: Stack) -> None:
    stream = client.completions.create(
        model=MODEL, prompt="Mon titre de séjour", max_tokens=30, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert all(chunk.object == "text_completion" for chunk in chunks)
    *tokens, usage = chunks
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 30
    assert tokens[-1].choices[0].finish_reason == "length"
    job = stack.http.get(f"/v1/jobs/{job_id_of(usage.id)}").json()
    assert "".join(chunk.choices[0].text for chunk in tokens) == job["result"]["text"]


def test_the_wire_format_is_vllms(stack: Stack) -> None:
    body = {"model": MODEL, "messages": messages(), "max_tokens": 5, "stream": True}
    with stack.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]

    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: {") for line in lines[:-1])
    first, *_, last = (orjson.loads(line.removeprefix("data: ")) for line in lines[:-1])
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert last["choices"][0]["finish_reason"] == "length"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope/nope", messages=messages())

    assert caught.value.body == {
        "message": "The model `nope/nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    ("options", "param"),
    [({"n": 2}, "n"), ({"temperature": 3}, "temperature"), ({"max_completion_tokens": 0}, "max_completion_tokens")],
)
def test_invalid_requests_are_400s_naming_the_field(client: openai.OpenAI, options: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages(), **options)

    assert caught.value.param == param
    assert caught.value.body is not None


def test_context_length_exceeded_is_a_bad_request_with_the_servers_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=SMALL, prompt="Bonjour, ma carte grise", max_tokens=100)

    assert "maximum context length is 64 tokens" in caught.value.message
    assert_no_internal_details(str(caught.value.body))


def test_a_failure_while_streaming_is_an_error_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=SMALL, messages=messages(), max_tokens=100, stream=True)

    with pytest.raises(openai.APIError, match="maximum context length is 64 tokens"):
        list(stream)


def test_a_failed_job_is_a_server_error(client: openai.OpenAI) -> None:
    """Every attempt's stream is cut: the job fails once its retries are spent."""
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model=CUT, prompt="Bonjour", max_tokens=20)

    assert caught.value.status_code == 503
    assert "backend_unavailable" in caught.value.message
    assert_no_internal_details(str(caught.value.body))


def test_a_restart_after_tokens_were_sent_ends_the_stream_and_the_job(client: openai.OpenAI, stack: Stack) -> None:
    """The first attempt's tokens reached the client, then its stream was cut: the retry cannot be shown."""
    stream = client.chat.completions.create(model=CUT, messages=messages(), max_tokens=40, stream=True)
    received: list[ChatCompletionChunk] = []

    with pytest.raises(openai.APIError, match="after tokens were sent") as caught:
        received.extend(stream)  # appends each chunk as it comes, until the error chunk raises

    assert caught.value.body is not None
    assert len(received) > 1, "the role chunk, then the first attempt's tokens"
    assert all(chunk.choices[0].finish_reason is None for chunk in received)
    job = stack.wait_job(job_id_of(received[0].id))
    assert job["status"] == "cancelled"
    assert job["attempts"] == 2


def test_a_streaming_client_that_disconnects_cancels_its_job(stack: Stack, sim: Sim) -> None:
    aborted = sim.stats()["aborted"]
    body = {"model": MODEL, "messages": messages(), "max_tokens": 2000, "stream": True}  # about 10 s

    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            chunks = (orjson.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line)
            # The role chunk comes at once; a token means the model server is generating.
            chunk = next(c for c in chunks if c["choices"][0]["delta"].get("content"))
        job_id = job_id_of(chunk["id"])

    assert stack.wait_job(job_id)["status"] == "cancelled"
    wait_for(lambda: sim.stats()["aborted"] > aborted, 10, "the model server saw the request aborted")


def test_a_waiting_client_that_disconnects_cancels_its_job(stack: Stack, sim: Sim) -> None:
    aborted = sim.stats()["aborted"]
    question = marker()
    body = orjson.dumps({"model": MODEL, "messages": messages(question), "max_tokens": 2000})
    url = urlsplit(stack.url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n{next(iter(AUTH))}: {AUTH['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    assert url.hostname is not None
    assert url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=10) as connection:
        connection.sendall(head.encode() + body)
        wait_for(lambda: sent_to_server(sim, question) is not None, 10, "the model server got the request")
    request = sent_to_server(sim, question)
    assert request is not None
    wait_for(lambda: request["request_id"] in stack.request_ids(), 10, "the worker logged its request id")
    job_id = stack.request_ids()[request["request_id"]]

    assert stack.wait_job(job_id)["status"] == "cancelled"
    wait_for(lambda: sim.stats()["aborted"] > aborted, 10, "the model server saw the request aborted")


def test_openapi_documents_both_routes(stack: Stack) -> None:
    paths = stack.http.get("/openapi.json").json()["paths"]

    chat = paths["/v1/chat/completions"]["post"]
    schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n"} <= set(
        schema["properties"]
    )
    assert {"model", "messages"} <= set(schema["required"])
    completion = paths["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "prompt"} <= set(completion["required"])
    assert "$ref" not in orjson.dumps(schema).decode()
    assert {"400", "404", "502", "503"} <= set(chat["responses"])
