"""Request validation: vLLM's 400/404 answers (with `param`) and the normalised generation parameters."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sim.config import SimConfig
from sim.tokenizer import apply_chat_template, count_tokens

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default


class Kind(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    GENERATE = "generate"


class RequestError(Exception):
    """An error answered before generation starts, in vLLM's error shape."""

    def __init__(self, message: str, code: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True, slots=True)
class GenParams:
    kind: Kind
    model: str
    prompt: str  # the text the model sees: for chat, the messages through the chat template
    prompt_tokens: int
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and not _is_int(value):
        raise RequestError(f"{name} must be an integer, got {value!r}.", param=name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is not None and not _is_number(value):
        raise RequestError(f"{name} must be a number, got {value!r}.", param=name)
    return None if value is None else float(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"{name} must be a boolean, got {value!r}.", param=name)
    return bool(value)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RequestError("stop must be a string or a list of strings.", param="stop")
    return tuple(s for s in value if s)


def check_model(body: dict[str, Any], config: SimConfig) -> str:
    """The requested served name (the first one when absent); 404 for a name not served."""
    model = body.get("model")
    if model is None:
        return config.models[0]
    if not isinstance(model, str):
        raise RequestError("model must be a string.", param="model")
    if model not in config.models:
        raise RequestError(f"The model `{model}` does not exist.", code=404, param="model")
    return model


def prompt_text(body: dict[str, Any], kind: Kind) -> tuple[str, str]:
    """(text the model sees, name of the field it came from)."""
    if kind is Kind.CHAT:
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise RequestError("messages must be a non-empty list of messages with a role.", param="messages")
        if not all(isinstance(m.get("content"), str | list | None) for m in messages):
            raise RequestError("message content must be a string, a list of parts or null.", param="messages")
        return apply_chat_template(messages), "messages"
    prompt = body.get("prompt")
    if kind is Kind.COMPLETION and isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string (the simulator takes one prompt).", param="prompt")
    return prompt, "prompt"


def _max_tokens(body: dict[str, Any], kind: Kind) -> tuple[int | None, str]:
    """The requested completion budget and its field; for chat, max_completion_tokens wins."""
    if kind is Kind.CHAT and body.get("max_completion_tokens") is not None:
        return _int(body, "max_completion_tokens"), "max_completion_tokens"
    return _int(body, "max_tokens"), "max_tokens"


def _check_context(prompt_tokens: int, requested: int | None, field: str, param: str, limit: int) -> int:
    """The completion budget, or vLLM's context-length 400."""
    if requested is None:
        if prompt_tokens >= limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
                param=param,
            )
        return limit - prompt_tokens
    if requested < 1:
        raise RequestError(f"{field} must be at least 1, got {requested}.", param=field)
    if prompt_tokens + requested > limit:
        raise RequestError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the "
            "completion). Please reduce the length of the messages or completion.",
            param=field,
        )
    return requested


def parse_request(kind: Kind, body: Any, config: SimConfig) -> GenParams:
    """Validate a generation request the way vLLM does, raising RequestError."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    model = config.models[0] if kind is Kind.GENERATE else check_model(body, config)
    prompt, prompt_field = prompt_text(body, kind)
    requested, field = _max_tokens(body, kind)
    temperature = _number(body, "temperature")
    if temperature is not None and temperature < 0:
        raise RequestError(f"temperature must be non-negative, got {temperature}.", param="temperature")
    top_p = _number(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}.", param="top_p")
    n = _int(body, "n")
    if n is not None and n != 1:
        raise RequestError(f"The simulator only supports n=1, got {n}.", param="n")
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise RequestError("stream_options must be an object.", param="stream_options")
    if stream_options and not stream:
        raise RequestError("Stream options can only be defined when `stream=True`.", param="stream_options")
    if requested is None and kind is not Kind.CHAT:
        requested = COMPLETIONS_DEFAULT_MAX_TOKENS
    prompt_tokens = count_tokens(prompt)
    return GenParams(
        kind=kind,
        model=model,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=_check_context(prompt_tokens, requested, field, prompt_field, config.max_model_len),
        stop=_stop(body),
        seed=_int(body, "seed"),
        stream=stream,
        include_usage=bool(stream_options and stream_options.get("include_usage")),
    )


def parse_tokenize(body: Any, config: SimConfig) -> str:
    """The text /tokenize counts: a prompt, or messages through the chat template."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    if body.get("model") is not None:
        check_model(body, config)
    return prompt_text(body, Kind.CHAT if "messages" in body else Kind.GENERATE)[0]
