"""OpenAI's (and vLLM's) shapes for `/v1/chat/completions` and `/v1/completions`, converted to and from jobs.

Used by the synchronous OpenAI-compatible routes (api/routes/openai.py) and by batches: a request
body becomes a `JobCreate` (`parse_request`), a finished job becomes the body vLLM would have
answered (`finished_response`), and a streamed job becomes vLLM's chunks (`ChunkEncoder`).

Validation is done once, by `JobCreate` (the same rules and limits as `POST /v1/jobs`); its errors
are renamed to the request's own fields (`params.max_tokens` → `max_tokens`) and raised as a 400
`OpenAIError`, the status vLLM answers for an invalid request.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from shared.models import ErrorType, JobCreate, JobError, JobRecord, JobResult, JobStatus, Limits, Usage


class Endpoint(enum.StrEnum):
    """The two OpenAI endpoints served; the values are their paths (a batch line's `url`)."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"

    @property
    def id_prefix(self) -> str:
        return "chatcmpl-" if self is Endpoint.CHAT else "cmpl-"

    @property
    def object(self) -> str:
        return "chat.completion" if self is Endpoint.CHAT else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self is Endpoint.CHAT else "text_completion"


# ---- errors ---------------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
}


class OpenAIError(Exception):
    """An error answered in vLLM's shape: `{"error": {"message", "type", "param", "code"}}`, code the status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "InternalServerError")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


def unknown_model(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist.", param="model")


def job_failure(job_id: str, status: str, error: JobError | None) -> OpenAIError:
    """The error answering a failed or cancelled job.

    The model server refusing the request (a 4xx, e.g. context length exceeded) is the caller's
    fault, as with vLLM: 400 with its message. Otherwise the server failed us: 503 if it could not
    be reached, else 502. A cancelled job has no standard status: 500.
    """
    if status == JobStatus.CANCELLED or error is None:
        return OpenAIError(500, f"job {job_id} was cancelled before it finished")
    if error.type == ErrorType.BACKEND_REJECTED:
        return OpenAIError(400, error.message)
    code = 503 if error.type == ErrorType.BACKEND_UNAVAILABLE else 502
    return OpenAIError(code, f"job {job_id} failed ({error.type}): {error.message}")


# ---- requests -------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(description="Text, or a list of text parts (joined with newlines).")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with `usage` and empty `choices`.")


class _Request(BaseModel):
    """Fields common to both endpoints; unknown ones are ignored, as clients send many."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="One of the models of LLM_TABLE (`GET /v1/models`).")
    max_tokens: int | None = Field(None, description="Default: the DEFAULT_MAX_TOKENS setting.")
    temperature: float | None = Field(None, description="0 to 2; default: the default of `POST /v1/jobs`.")
    top_p: float | None = Field(None, description="In (0, 1].")
    stop: str | list[str] | None = Field(None, description="Up to 8 stop strings.")
    seed: int | None = None
    n: int = Field(1, description="Only 1 is supported.")
    stream: bool = Field(False, description="Answer with Server-Sent Events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = Field(None, description="Only with `stream: true`.")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported, got {n}")
        return n

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return options

    def _job(
        self, text: dict[str, Any], max_tokens: tuple[int | None, str], job_id: str | None, limits: Limits | None
    ) -> JobCreate:
        """The job of this request, whose text is `text` (`prompt` or `messages`).

        `max_tokens` is the value and the request's field it came from, to name it in errors.
        """
        sampling = {
            "max_tokens": max_tokens[0],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
        }
        data = {
            "id": job_id,
            "model": self.model,
            # Unset fields keep the defaults of a job, not the model server's own.
            "params": {name: value for name, value in sampling.items() if value is not None},
            **text,
        }
        try:
            return JobCreate.model_validate(data, context={"limits": limits})
        except ValidationError as exc:
            raise _invalid(exc, {"max_tokens": max_tokens[1]}) from None


class ChatCompletionRequest(_Request):
    """The body of `POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, description="Wins over `max_tokens`.")

    def job(self, job_id: str | None = None, limits: Limits | None = None) -> JobCreate:
        messages = [{"role": message.role, "content": message.text()} for message in self.messages]
        max_tokens: tuple[int | None, str] = (self.max_tokens, "max_tokens")
        if self.max_completion_tokens is not None:
            max_tokens = (self.max_completion_tokens, "max_completion_tokens")
        return self._job({"messages": messages}, max_tokens, job_id, limits)


class CompletionRequest(_Request):
    """The body of `POST /v1/completions`."""

    prompt: str | list[str] = Field(description="A string, or a list of exactly one string.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"only one prompt per request is supported, got {len(prompt)}")
        return prompt

    def job(self, job_id: str | None = None, limits: Limits | None = None) -> JobCreate:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return self._job({"prompt": prompt}, (self.max_tokens, "max_tokens"), job_id, limits)


REQUEST_MODELS: dict[Endpoint, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
}


def _invalid(exc: ValidationError, renames: Mapping[str, str]) -> OpenAIError:
    """A 400 naming the first bad field (dotted, as the request spells it) and listing every problem."""
    problems: list[str] = []
    params: list[str | None] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if loc[:1] == ("params",):  # the job's sampling parameters are top-level fields of the request
            loc = loc[1:]
        if loc and isinstance(loc[0], str):
            loc = (renames.get(loc[0], loc[0]), *loc[1:])
        param = ".".join(map(str, loc)) or None
        params.append(param)
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{param}: {message}" if param else message)
    return OpenAIError(400, "; ".join(problems), param=params[0])


MAX_TEXT_PARTS = 1_000
"""Text parts of a chat request, all messages together: clients send a few; 100,000 parts of one character, under
the prompt's cap, took pydantic 150 ms to validate in one call that holds the GIL."""


def _check_lengths(body: dict[str, Any], limits: Limits) -> None:
    """A 400 for more messages, or text parts, than a valid request has, before pydantic validates each one: a
    million parts took it 0.4 s, in one call that holds the GIL (docs/PERFORMANCE.md, "Event-loop stalls")."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    if len(messages) > limits.max_messages:
        message = f"messages: {len(messages)} messages, over the limit of {limits.max_messages}"
        raise OpenAIError(400, message, param="messages")
    parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
    if parts > MAX_TEXT_PARTS:
        message = f"messages: {parts} text parts, over the limit of MAX_TEXT_PARTS={MAX_TEXT_PARTS}"
        raise OpenAIError(400, message, param="messages")


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    endpoint: Endpoint
    job: JobCreate
    stream: bool
    include_usage: bool


def parse_request(
    endpoint: Endpoint,
    body: Any,
    *,
    models: Collection[str],
    limits: Limits | None = None,
    job_id: str | None = None,
) -> ParsedRequest:
    """Validate an OpenAI request body (decoded JSON) into a job; raises a 400 or 404 `OpenAIError`.

    `models` are the known models (another one is a 404, as with vLLM); `limits` the size caps of a
    job; `job_id` the job's id (default: the store makes one).
    """
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    if limits is not None:
        _check_lengths(body, limits)
    try:
        request = REQUEST_MODELS[endpoint].model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, {}) from None
    if request.model not in models:
        raise unknown_model(request.model)
    options = request.stream_options
    return ParsedRequest(
        endpoint=endpoint,
        job=request.job(job_id, limits),
        stream=request.stream,
        include_usage=options is not None and options.include_usage,
    )


# ---- responses ------------------------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, int]:
    """OpenAI's usage, whose fields are all integers: a server that does not count the prompt (legacy
    `/generate`) reports 0 prompt tokens."""
    prompt = usage.prompt_tokens or 0
    total = usage.total_tokens if usage.total_tokens is not None else prompt + usage.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": usage.completion_tokens, "total_tokens": total}


def _finish_reason(result: JobResult) -> str:
    # A finished generation always has a reason in OpenAI's shapes; servers that give none stopped by themselves.
    return result.finish_reason or "stop"


def _created(record: JobRecord) -> int:
    """Unix seconds of the job's creation: the `created` of its responses and chunks."""
    return int(record["created_at"]) // 1000


def completion_object(endpoint: Endpoint, job_id: str, model: str, created: int, result: JobResult) -> dict[str, Any]:
    """The `chat.completion` or `text_completion` object of a succeeded job, as vLLM answers it."""
    choice: dict[str, Any] = {"index": 0}
    if endpoint is Endpoint.CHAT:
        choice["message"] = {"role": "assistant", "content": result.text, "tool_calls": []}
    else:
        choice["text"] = result.text
    choice |= {"logprobs": None, "finish_reason": _finish_reason(result), "stop_reason": None}
    return {
        "id": endpoint.id_prefix + job_id,
        "object": endpoint.object,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(result.usage),
    }


def finished_response(endpoint: Endpoint, record: JobRecord) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) answering a finished job's record: 200 and its completion, or an error."""
    job_id = record["id"]
    if record["status"] == JobStatus.SUCCEEDED:
        result = JobResult.model_validate_json(record["result"])
        return 200, completion_object(endpoint, job_id, record["model"], _created(record), result)
    error = JobError.model_validate_json(record["error"]) if "error" in record else None
    failure = job_failure(job_id, record["status"], error)
    return failure.status, failure.body()


class ChunkEncoder:
    """The streamed chunks of one job, in vLLM's shapes (see ../shared/reference/vllm-protocol.md)."""

    def __init__(self, endpoint: Endpoint, job_id: str, model: str, created: int) -> None:
        self.endpoint = endpoint
        self._head: dict[str, Any] = {
            "id": endpoint.id_prefix + job_id,
            "object": endpoint.chunk_object,
            "created": created,
            "model": model,
        }

    @classmethod
    def for_record(cls, endpoint: Endpoint, record: JobRecord) -> ChunkEncoder:
        return cls(endpoint, record["id"], record["model"], _created(record))

    def _choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.endpoint is Endpoint.CHAT:
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
            return choice | ({"stop_reason": None} if finish_reason is not None else {})
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}

    def role(self) -> dict[str, Any]:
        """The first chunk of a chat stream: the assistant's role, with empty content."""
        delta = {"role": "assistant", "content": ""}
        return self._head | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}

    def token(self, text: str) -> dict[str, Any]:
        return self._head | {"choices": [self._choice(text, None)]}

    def finish(self, result: JobResult) -> dict[str, Any]:
        """The last chunk with a choice: no text (every token was sent already), and the finish reason."""
        return self._head | {"choices": [self._choice("", _finish_reason(result))]}

    def usage(self, result: JobResult) -> dict[str, Any]:
        """The usage chunk (only with `stream_options.include_usage`): its `choices` are empty."""
        return self._head | {"choices": [], "usage": _usage(result.usage)}
