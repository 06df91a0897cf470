"""OpenAI request bodies to jobs, finished jobs to completion objects, streamed jobs to vLLM's chunks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from api.openai_shapes import (
    MAX_TEXT_PARTS,
    ChunkEncoder,
    Endpoint,
    OpenAIError,
    ParsedRequest,
    completion_object,
    finished_response,
    job_failure,
    parse_request,
)
from api.streams import SSE_DONE, sse_data, sse_event, sse_frame
from shared.models import JobError, JobRecord, JobResult, Limits, Message, Usage
from tests.unit.conftest import job_record

MODEL = "m"
MODELS = [MODEL, "other"]
LIMITS = Limits(max_prompt_chars=50, max_messages=3, max_tokens=100)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}]}
PROMPT = {"model": MODEL, "prompt": "Bonjour"}
RESULT = JobResult(
    text="Bonjour.", finish_reason="length", usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
)


def parse(endpoint: Endpoint, body: Any, **options: Any) -> ParsedRequest:
    return parse_request(endpoint, body, models=MODELS, limits=LIMITS, **options)


def refusal(endpoint: Endpoint, body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        parse(endpoint, body)
    return caught.value


# ---- requests ---------------------------------------------------------------------------------------------


def test_chat_body_becomes_a_job_with_its_sampling() -> None:
    body = {
        **CHAT,
        "messages": [{"role": "system", "content": "Sois bref."}, {"role": "user", "content": "Bonjour"}],
        "max_tokens": 20,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": "\n",
        "seed": 7,
    }
    parsed = parse(Endpoint.CHAT, body)

    assert parsed.endpoint is Endpoint.CHAT
    assert (parsed.stream, parsed.include_usage) == (False, False)
    job = parsed.job
    assert job.model == MODEL
    assert job.prompt is None
    assert job.messages == [Message(role="system", content="Sois bref."), Message(role="user", content="Bonjour")]
    params = job.params
    assert (params.max_tokens, params.temperature, params.top_p, params.stop, params.seed) == (20, 0.3, 0.9, ["\n"], 7)


def test_unset_sampling_keeps_the_defaults_of_a_job() -> None:
    params = parse(Endpoint.CHAT, CHAT).job.params

    assert params.max_tokens is None  # the store applies DEFAULT_MAX_TOKENS
    assert (params.temperature, params.top_p, params.stop, params.seed) == (0.7, 1.0, None, None)


def test_explicit_nulls_are_unset_fields() -> None:
    body = {**CHAT, "max_tokens": None, "temperature": None, "stop": None, "stream_options": None}

    assert parse(Endpoint.CHAT, body).job.params.temperature == 0.7


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse(Endpoint.CHAT, {**CHAT, "max_tokens": 50, "max_completion_tokens": 5}).job.params.max_tokens == 5
    assert parse(Endpoint.CHAT, {**CHAT, "max_tokens": 50}).job.params.max_tokens == 50


def test_text_parts_of_a_message_are_joined() -> None:
    content = [{"type": "text", "text": "Bonjour"}, {"type": "text", "text": "Merci"}]
    body = {**CHAT, "messages": [{"role": "user", "content": content, "name": "citoyen"}]}

    assert parse(Endpoint.CHAT, body).job.messages == [Message(role="user", content="Bonjour\nMerci")]


def test_more_text_parts_than_max_text_parts_are_refused_before_validation() -> None:
    content = [{"type": "text", "text": ""}] * (MAX_TEXT_PARTS // 2 + 1)
    body = {**CHAT, "messages": [{"role": "user", "content": content}, {"role": "user", "content": content}]}

    error = refusal(Endpoint.CHAT, body)

    assert (error.status, error.param) == (400, "messages")
    assert f"over the limit of MAX_TEXT_PARTS={MAX_TEXT_PARTS}" in error.message


def test_unknown_fields_are_ignored() -> None:
    body = {**PROMPT, "top_k": 5, "logprobs": None, "user": "x", "frequency_penalty": 0}

    assert parse(Endpoint.COMPLETIONS, body).job.prompt == "Bonjour"


@pytest.mark.parametrize("prompt", ["Bonjour", ["Bonjour"]])
def test_completion_prompt_is_a_string_or_a_list_of_one(prompt: str | list[str]) -> None:
    job = parse(Endpoint.COMPLETIONS, {**PROMPT, "prompt": prompt}).job

    assert (job.prompt, job.messages) == ("Bonjour", None)


def test_stream_options() -> None:
    parsed = parse(Endpoint.COMPLETIONS, {**PROMPT, "stream": True, "stream_options": {"include_usage": True}})
    assert (parsed.stream, parsed.include_usage) == (True, True)

    error = refusal(Endpoint.COMPLETIONS, {**PROMPT, "stream_options": {"include_usage": True}})
    assert (error.status, error.param) == (400, "stream_options")
    assert "stream=True" in error.message


def test_job_id_is_passed_on() -> None:
    assert parse(Endpoint.CHAT, CHAT, job_id="line-1").job.id == "line-1"


def test_unknown_model_is_a_404_like_vllm() -> None:
    error = refusal(Endpoint.CHAT, {**CHAT, "model": "nope"})

    assert error.status == 404
    assert error.body() == {
        "error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}
    }


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "words"),
    [
        (Endpoint.CHAT, {**CHAT, "n": 2}, "n", "only n=1"),
        (Endpoint.COMPLETIONS, {**PROMPT, "prompt": ["a", "b"]}, "prompt", "only one prompt"),
        (Endpoint.COMPLETIONS, {**PROMPT, "prompt": ""}, "prompt", "at least 1 character"),
        (Endpoint.CHAT, {**CHAT, "temperature": 5}, "temperature", "less than or equal to 2"),
        (Endpoint.CHAT, {**CHAT, "max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal"),
        (Endpoint.COMPLETIONS, {**PROMPT, "max_tokens": 0}, "max_tokens", "greater than or equal"),
        (Endpoint.CHAT, {**CHAT, "messages": []}, "messages", "at least 1 item"),
        (Endpoint.CHAT, {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "'system'"),
        (Endpoint.CHAT, {"messages": CHAT["messages"]}, "model", "Field required"),
        (Endpoint.CHAT, {**CHAT, "stop": ["a"] * 9}, "stop", "at most 8"),
        (Endpoint.COMPLETIONS, {**PROMPT, "prompt": "x" * 51}, None, "over the limit of 50"),
    ],
)
def test_invalid_bodies_are_400s_naming_the_field(
    endpoint: Endpoint, body: dict[str, Any], param: str | None, words: str
) -> None:
    error = refusal(endpoint, body)

    assert (error.status, error.param) == (400, param)
    assert words in error.message
    assert error.body()["error"]["type"] == "BadRequestError"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert refusal(Endpoint.CHAT, [CHAT]).status == 400


# ---- finished jobs ----------------------------------------------------------------------------------------


def record(status: str, **fields: str) -> JobRecord:
    return job_record(model=MODEL, status=status, **fields)


def test_chat_completion_object() -> None:
    status, body = finished_response(Endpoint.CHAT, record("succeeded", result=RESULT.model_dump_json()))

    assert status == 200
    assert body == {
        "id": "chatcmpl-j1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Bonjour.", "tool_calls": []},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_text_completion_object() -> None:
    body = completion_object(Endpoint.COMPLETIONS, "j1", MODEL, 1700000000, RESULT)

    assert (body["id"], body["object"]) == ("cmpl-j1", "text_completion")
    assert body["choices"] == [
        {"index": 0, "text": "Bonjour.", "logprobs": None, "finish_reason": "length", "stop_reason": None}
    ]


def test_missing_counts_and_reason_are_filled() -> None:
    """A legacy `/generate` server counts no prompt tokens and gives no finish reason."""
    result = JobResult(text="x", finish_reason=None, usage=Usage(completion_tokens=4))

    body = completion_object(Endpoint.CHAT, "j1", MODEL, 1, result)

    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("kind", "status"),
    [("backend_rejected", 400), ("backend_unavailable", 503), ("backend_error", 502), ("timeout", 502)],
)
def test_failed_job_status(kind: str, status: int) -> None:
    error = JobError(type=kind, message="http://gpu:8000 answered HTTP 400: too long")

    code, body = finished_response(Endpoint.CHAT, record("failed", error=error.model_dump_json()))

    assert code == status
    assert body["error"]["code"] == status
    assert body["error"]["param"] is None
    assert "too long" in body["error"]["message"]


def test_rejected_job_answers_the_servers_message() -> None:
    message = "http://gpu:8000 answered HTTP 400: This model's maximum context length is 64 tokens."

    error = job_failure("j1", "failed", JobError(type="backend_rejected", message=message))

    assert (error.status, error.message) == (400, message)


def test_cancelled_job_is_a_500_saying_so() -> None:
    code, body = finished_response(Endpoint.COMPLETIONS, record("cancelled"))

    assert code == 500
    assert body["error"]["type"] == "InternalServerError"
    assert "j1 was cancelled" in body["error"]["message"]


# ---- chunks -----------------------------------------------------------------------------------------------


def test_chat_chunks_are_vllms() -> None:
    encoder = ChunkEncoder.for_record(Endpoint.CHAT, record("running"))
    head = {"id": "chatcmpl-j1", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}

    assert encoder.role() == head | {
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ]
    }
    assert encoder.token(" Bonjour") == head | {
        "choices": [{"index": 0, "delta": {"content": " Bonjour"}, "logprobs": None, "finish_reason": None}]
    }
    assert encoder.finish(RESULT) == head | {
        "choices": [
            {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "length", "stop_reason": None}
        ]
    }
    assert encoder.usage(RESULT) == head | {
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def test_completion_chunks_are_vllms() -> None:
    encoder = ChunkEncoder(Endpoint.COMPLETIONS, "j1", MODEL, 1)

    token = encoder.token("Bon")
    assert (token["id"], token["object"]) == ("cmpl-j1", "text_completion")
    assert token["choices"] == [
        {"index": 0, "text": "Bon", "logprobs": None, "finish_reason": None, "stop_reason": None}
    ]
    assert encoder.finish(RESULT)["choices"] == [
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "length", "stop_reason": None}
    ]


def test_server_sent_event_framing() -> None:
    """The frames of both kinds of stream, from one encoder (api/streams.py)."""
    assert sse_data({"a": "é"}) == b'data: {"a":"\xc3\xa9"}\n\n'
    assert orjson.loads(sse_data({"a": 1})[len(b"data: ") :]) == {"a": 1}
    assert SSE_DONE == b"data: [DONE]\n\n"
    assert sse_frame("token", "10-0", {"text": "é"}) == b'event: token\nid: 10-0\ndata: {"text":"\xc3\xa9"}\n\n'
    assert sse_event("queued", {"queue_position": 0}) == b'event: queued\ndata: {"queue_position":0}\n\n'
