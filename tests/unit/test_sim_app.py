"""The simulator's HTTP protocol, driven in-process (httpx.ASGITransport, or raw ASGI for disconnects)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from sim import SimConfig, create_app

MODEL = "AgentPublic/fabrique-reference-2"
MESSAGES = [{"role": "user", "content": "Bonjour"}]
CHAT_PROMPT_TOKENS = 11  # "<|user|>\nBonjour\n<|assistant|>\n"


@asynccontextmanager
async def client_for(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
        yield client


@asynccontextmanager
async def sim_client(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(SimConfig(**options))) as client:
        yield client


def sse_events(body: bytes) -> list[Any]:
    """Decoded `data:` payloads, with "[DONE]" kept as a string."""
    events: list[Any] = []
    for block in body.split(b"\n\n"):
        if not block:
            continue
        assert block.startswith(b"data: ")
        payload = block[len(b"data: ") :]
        events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return events


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "temperature": 0.2, "top_p": 1} | fields


async def wait_for(condition: Callable[[], Any], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_chat_stream_shapes_and_order() -> None:
    async with sim_client() as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True), headers={"X-Request-Id": "r1"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 1 + 5  # role chunk, then one chunk per token; no usage chunk
    assert {c["id"] for c in chunks} == {"chatcmpl-r1"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {MODEL}
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:]] == [None] * 4 + ["length"]
    assert chunks[-1]["choices"][0]["stop_reason"] is None
    assert all(c["choices"][0]["delta"]["content"] for c in chunks[1:])


async def test_chat_stream_usage_chunk_only_with_include_usage() -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    async with sim_client() as client:
        events = sse_events((await client.post("/v1/chat/completions", json=body)).content)
        without = sse_events((await client.post("/v1/chat/completions", json=chat(stream=True))).content)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": CHAT_PROMPT_TOKENS, "completion_tokens": 5, "total_tokens": 16}
    assert len(events) == len(without) + 1
    assert all("usage" not in e for e in without[:-1])


async def test_completions_stream_and_non_stream_agree() -> None:
    body = {"model": MODEL, "prompt": ["Bonjour"], "max_tokens": 7, "seed": 3}
    async with sim_client() as client:
        events = sse_events((await client.post("/v1/completions", json=body | {"stream": True})).content)
        whole = (await client.post("/v1/completions", json=body)).json()
    chunks = events[:-1]
    assert events[-1] == "[DONE]"
    assert len(chunks) == 7
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[0]["id"].startswith("cmpl-")
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == "".join(c["choices"][0]["text"] for c in chunks)
    assert whole["usage"] == {"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8}


async def test_chat_non_stream_is_deterministic_per_seed() -> None:
    async with sim_client() as client:
        first = (await client.post("/v1/chat/completions", json=chat(seed=1, max_tokens=30))).json()
        again = (await client.post("/v1/chat/completions", json=chat(seed=1, max_tokens=30))).json()
        other = (await client.post("/v1/chat/completions", json=chat(seed=2, max_tokens=30))).json()
    assert first["object"] == "chat.completion"
    assert first["id"].startswith("chatcmpl-")
    message = first["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == again["choices"][0]["message"]["content"]
    assert message["content"] != other["choices"][0]["message"]["content"]
    assert first["usage"]["completion_tokens"] == 30


async def test_default_max_tokens_like_vllm() -> None:
    async with sim_client(max_model_len=64) as client:
        chat_answer = (await client.post("/v1/chat/completions", json={"messages": MESSAGES})).json()
        completion = (await client.post("/v1/completions", json={"prompt": "Bonjour"})).json()
        winner = (await client.post("/v1/chat/completions", json=chat(max_tokens=9, max_completion_tokens=3))).json()
    assert chat_answer["usage"]["completion_tokens"] == 64 - CHAT_PROMPT_TOKENS
    assert chat_answer["model"] == MODEL
    assert completion["usage"]["completion_tokens"] == 16
    assert winner["usage"]["completion_tokens"] == 3


async def test_early_stop_and_stop_strings() -> None:
    async with sim_client(early_stop_rate=1.0) as client:
        early = (await client.post("/v1/chat/completions", json=chat(max_tokens=40))).json()
    assert early["choices"][0]["finish_reason"] == "stop"
    assert early["usage"]["completion_tokens"] < 40
    async with sim_client() as client:
        full = (await client.post("/v1/completions", json={"prompt": "Bonjour", "max_tokens": 40})).json()
        text = full["choices"][0]["text"]
        stop = text.split()[6]
        stopped = (
            await client.post("/v1/completions", json={"prompt": "Bonjour", "max_tokens": 40, "stop": stop})
        ).json()
    choice = stopped["choices"][0]
    assert choice["text"] == text[: text.index(stop)]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)


@pytest.mark.parametrize("legacy", [False, True])
async def test_context_length_error_in_both_shapes(legacy: bool) -> None:
    async with sim_client(legacy_errors=legacy) as client:
        response = await client.post("/v1/chat/completions", json=chat(max_tokens=4090))
    assert response.status_code == 400
    message = (
        "This model's maximum context length is 4096 tokens. However, you requested 4101 tokens "
        "(11 in the messages, 4090 in the completion). Please reduce the length of the messages or completion."
    )
    expected: dict[str, Any]
    if legacy:
        expected = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    else:
        expected = {"error": {"message": message, "type": "BadRequestError", "param": "max_tokens", "code": 400}}
    assert response.json() == expected


@pytest.mark.parametrize("legacy", [False, True])
async def test_unknown_model_is_404(legacy: bool) -> None:
    async with sim_client(legacy_errors=legacy) as client:
        response = await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    error = response.json() if legacy else response.json()["error"]
    assert error["message"] == "The model `nope` does not exist."
    assert error["type"] == "NotFoundError"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 3}, "stop"),
        ({"messages": []}, "messages"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_validation_errors_name_the_param(fields: dict[str, Any], param: str) -> None:
    async with sim_client() as client:
        response = await client.post("/v1/chat/completions", json=chat(**fields))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_invalid_json_is_400() -> None:
    async with sim_client() as client:
        response = await client.post("/v1/chat/completions", content=b"{not json")
        stats = (await client.get("/sim/stats")).json()
    assert response.status_code == 400
    assert stats["recent"][-1]["body"] == "{not json"


@pytest.mark.parametrize(("delimiter", "separator"), [("newline", b"\n"), ("nul", b"\0")])
async def test_generate_streams_cumulative_records(delimiter: str, separator: bytes) -> None:
    body = {"prompt": "Bonjour", "max_tokens": 6, "temperature": 0.2, "top_p": 1}
    async with sim_client(generate_delimiter=delimiter) as client:
        streamed = (await client.post("/generate", json=body | {"stream": True})).content
        whole = (await client.post("/generate", json=body)).json()
    assert streamed.endswith(separator)
    records = [orjson.loads(r)["text"][0] for r in streamed.split(separator)[:-1]]
    assert len(records) == 6
    assert all(r.startswith("Bonjour") for r in records)
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(records))
    assert whole == {"text": [records[-1]]}


@pytest.mark.parametrize("legacy", [False, True])
async def test_error_fault_answers_500(legacy: bool) -> None:
    async with sim_client(error_rate=1.0, legacy_errors=legacy) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        stats = (await client.get("/sim/stats")).json()
    assert response.status_code == 500
    error = response.json() if legacy else response.json()["error"]
    assert (error["type"], error["code"]) == ("InternalServerError", 500)
    assert stats["faults"] == {"error": 1}


async def test_midstream_error_fault_sends_an_error_chunk_then_done() -> None:
    async with sim_client(midstream_error_rate=1.0) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=10))
        plain = await client.post("/v1/chat/completions", json=chat(max_tokens=10))
    assert response.status_code == 200
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == 500
    assert len(events) == 1 + 5 + 2  # role, half the tokens, error, [DONE]
    assert plain.status_code == 200  # non-streaming requests have no mid-stream


async def test_first_token_delay() -> None:
    async with sim_client(first_token_delay_ms=150) as client:
        start = time.monotonic()
        response = await client.post("/v1/completions", json={"prompt": "Bonjour", "max_tokens": 2})
    assert response.status_code == 200
    assert time.monotonic() - start >= 0.14


async def test_sim_stats_counts_and_reset() -> None:
    async with sim_client(models=(MODEL, "alias")) as client:
        await client.post("/v1/chat/completions", json=chat(), headers={"X-Request-Id": "abc"})
        await client.post("/v1/chat/completions", json=chat(model="alias", stream=True))
        await client.post("/v1/completions", json={"model": "alias", "prompt": "x", "max_tokens": 2})
        stats = (await client.get("/sim/stats")).json()
        metrics = (await client.get("/metrics")).text
        reset = (await client.post("/sim/reset")).json()
    assert stats["requests"] == 3
    assert stats["completed"] == 3
    assert (stats["running"], stats["waiting"], stats["aborted"]) == (0, 0, 0)
    assert stats["by_model"] == {MODEL: 1, "alias": 2}
    assert stats["by_endpoint"] == {"/v1/chat/completions": 2, "/v1/completions": 1}
    assert stats["recent"][0] == chat() | {"endpoint": "/v1/chat/completions", "request_id": "abc"}
    assert 'sim_requests_total{model="alias",endpoint="/v1/completions"} 1.0' in metrics
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in metrics
    assert 'vllm:request_success_total{finished_reason="length",model_name="alias"} 2.0' in metrics
    assert (reset["requests"], reset["completed"], reset["by_model"], reset["recent"]) == (0, 0, {}, [])


async def test_info_endpoints() -> None:
    async with sim_client(models=(MODEL, "alias"), max_model_len=2048) as client:
        models = (await client.get("/v1/models")).json()
        health = await client.get("/health")
        version = (await client.get("/version")).json()
        tokens = (await client.post("/tokenize", json={"model": MODEL, "prompt": "Bonjour, Madame."})).json()
        chat_tokens = (await client.post("/tokenize", json={"messages": MESSAGES})).json()
    assert [m["id"] for m in models["data"]] == [MODEL, "alias"]
    assert models["data"][0] | {"created": 0} == {
        "id": MODEL,
        "object": "model",
        "created": 0,
        "owned_by": "vllm",
        "root": MODEL,
        "parent": None,
        "max_model_len": 2048,
    }
    assert (health.status_code, health.content) == (200, b"")
    assert set(version) == {"version"}
    assert (tokens["count"], tokens["max_model_len"], len(tokens["tokens"])) == (4, 2048, 4)
    assert chat_tokens["count"] == CHAT_PROMPT_TOKENS


class RawCall:
    """One request driven through the raw ASGI interface, so that the test decides when the client leaves."""

    def __init__(self, app: Starlette, path: str, body: dict[str, Any]) -> None:
        self.app = app
        self.path = path
        self.body = orjson.dumps(body)
        self.messages: list[MutableMapping[str, Any]] = []
        self.first_body = asyncio.Event()
        self.leave = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_body.set()

    def start(self) -> asyncio.Task[None]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1234),
            "server": ("sim", 80),
        }
        return asyncio.create_task(self.app(scope, self.receive, self.send))

    @property
    def body_bytes(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


async def stats_of(client: httpx.AsyncClient) -> dict[str, Any]:
    stats: dict[str, Any] = (await client.get("/sim/stats")).json()
    return stats


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_aborts_and_frees_the_slot(stream: bool) -> None:
    app = create_app(SimConfig(ms_per_token=10, max_num_seqs=1))
    call = RawCall(app, "/v1/chat/completions", chat(max_tokens=500, stream=stream))
    task = call.start()
    async with client_for(app) as client:

        async def running() -> bool:
            return bool((await stats_of(client))["running"] == 1)

        await wait_for(running)
        if stream:
            await asyncio.wait_for(call.first_body.wait(), 2)
        call.leave.set()
        await asyncio.wait_for(task, 2)
        stats = await stats_of(client)
        assert (stats["aborted"], stats["running"], stats["completed"]) == (1, 0, 0)
        after = await client.post("/v1/chat/completions", json=chat(max_tokens=2))
        assert after.status_code == 200


async def test_hang_fault_sends_nothing_until_the_client_leaves() -> None:
    app = create_app(SimConfig(hang_rate=1.0))
    call = RawCall(app, "/v1/completions", {"prompt": "x", "stream": True})
    task = call.start()
    async with client_for(app) as client:

        async def hanging() -> bool:
            return bool((await stats_of(client))["faults"] == {"hang": 1})

        await wait_for(hanging)
        assert not task.done()
        assert call.messages == []
        call.leave.set()
        await asyncio.wait_for(task, 2)
        assert call.messages == []
        assert (await stats_of(client))["aborted"] == 1


async def test_cut_fault_leaves_the_stream_unfinished() -> None:
    app = create_app(SimConfig(cut_rate=1.0))
    call = RawCall(app, "/v1/chat/completions", chat(max_tokens=10, stream=True))
    await asyncio.wait_for(call.start(), 2)
    assert all(m.get("more_body", True) for m in call.messages)  # no final body message
    events = sse_events(call.body_bytes)
    assert len(events) == 1 + 5
    assert "[DONE]" not in events


async def test_api_key_guards_the_v1_routes_as_vllm_does() -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    async with sim_client(api_key="sk-1") as client:
        refused = await client.post("/v1/chat/completions", json=body)
        listed = await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        allowed = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-1"})
        health = await client.get("/health")

    assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
    assert listed.status_code == 401
    assert (allowed.status_code, health.status_code) == (200, 200)
