"""vLLM's wire shapes: error bodies, SSE chunks (preformatted bytes for the hot path), full responses."""

from __future__ import annotations

from typing import Any

import orjson

from sim.textgen import Plan

DONE = b"data: [DONE]\n\n"

# What vLLM says when its engine fails under a request: used by the error and mid-stream faults.
ENGINE_ERROR = "EngineCore encountered an issue. See stack trace (above) for the root cause."

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


def error_body(message: str, code: int, param: str | None, *, legacy: bool) -> dict[str, Any]:
    """`{"error": {...}}` since vLLM 0.10.1; the flat `{"object": "error", ...}` (param always null) before."""
    err_type = _ERROR_TYPES.get(code, "InternalServerError")
    if legacy:
        return {"object": "error", "message": message, "type": err_type, "param": None, "code": code}
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_chunk(message: str, *, legacy: bool) -> bytes:
    """A mid-stream error event: the status is already 200, so the error travels as a data chunk."""
    body = error_body(message, 500, None, legacy=legacy)
    if legacy:  # old vLLM wrapped its flat error object the same way
        body = {"error": body}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkEncoder:
    """SSE chunks of one streamed response, with the constant prefix rendered once."""

    __slots__ = ("_close", "_head", "_open", "_token_close", "chat")

    def __init__(self, response_id: str, created: int, model: str, *, chat: bool) -> None:
        self.chat = chat
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self._head = (
            b'data: {"id":'
            + orjson.dumps(response_id)
            + b',"object":"'
            + obj
            + b'","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":'
        )
        if chat:
            self._open = self._head + b'[{"index":0,"delta":{"content":'
            self._close = b'},"logprobs":null,"finish_reason":'
        else:
            self._open = self._head + b'[{"index":0,"text":'
            self._close = b',"logprobs":null,"finish_reason":'
        self._token_close = self._close + (b"null}]}\n\n" if chat else b'null,"stop_reason":null}]}\n\n')

    def role(self) -> bytes:
        """First chat chunk: the assistant role with empty content."""
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def token(self, piece: str) -> bytes:
        return self._open + orjson.dumps(piece) + self._token_close

    def finish(self, piece: str, finish_reason: str, stop_reason: str | None) -> bytes:
        """The last token's chunk, carrying finish_reason and stop_reason."""
        return (
            self._open
            + orjson.dumps(piece)
            + self._close
            + orjson.dumps(finish_reason)
            + b',"stop_reason":'
            + orjson.dumps(stop_reason)
            + b"}]}\n\n"
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The final usage chunk (only with stream_options.include_usage), whose choices are empty."""
        return self._head + b'[],"usage":' + orjson.dumps(usage(prompt_tokens, completion_tokens)) + b"}\n\n"


def chat_completion(response_id: str, created: int, model: str, plan: Plan, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": plan.text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": plan.finish_reason,
                "stop_reason": plan.stop_reason,
            }
        ],
        "usage": usage(prompt_tokens, plan.completion_tokens),
        "prompt_logprobs": None,
    }


def text_completion(response_id: str, created: int, model: str, plan: Plan, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": plan.text,
                "logprobs": None,
                "finish_reason": plan.finish_reason,
                "stop_reason": plan.stop_reason,
            }
        ],
        "usage": usage(prompt_tokens, plan.completion_tokens),
    }


def generate_record(text: str) -> bytes:
    """One record of the legacy /generate API (without its delimiter): the cumulative text."""
    return orjson.dumps({"text": [text]})


def model_list(models: tuple[str, ...], created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": models[0],
                "parent": None,
                "max_model_len": max_model_len,
            }
            for name in models
        ],
    }
