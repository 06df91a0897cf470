"""Batch files of the `batch` command: the input's kind and checks, SPP lines into requests, results into lines.

Pure functions over bytes and dicts, without network, so that tests/unit/test_cli.py covers them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from shared.templates import render_prompt

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
SPP_ENDPOINT = "/v1/chat/completions"
SPP_TEMPLATE = "spp"
MAX_ID_CHARS = 512
"""The server's limit on a `custom_id` (api/batch_format.py)."""


class Kind(enum.StrEnum):
    OPENAI = "openai"
    """OpenAI batch requests: `{"custom_id", "method", "url", "body"}`."""
    SPP = "spp"
    """The old SPP API's items: `{"id", "text"}`."""


class InputError(Exception):
    """A problem of the input file, naming its line (from 1) when there is one."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass(frozen=True)
class BatchInput:
    """A checked input file: its kind, the batch's endpoint, the ids in input order and the file's sha256."""

    path: Path
    kind: Kind
    endpoint: str
    ids: list[str]
    sha256: str


def kind_of(line: dict[str, Any]) -> Kind | None:
    """The kind a JSON object claims to be (by its keys), or None."""
    if any(key in line for key in ("custom_id", "method", "url", "body")):
        return Kind.OPENAI
    if "id" in line or "text" in line:
        return Kind.SPP
    return None


def _numbered(source: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """The file's non-blank lines with their numbers (from 1): the server skips blank lines too."""
    for number, raw in enumerate(source, start=1):
        if raw.strip():
            yield number, raw


def _check_id(value: Any, field: str, number: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise InputError(f"{field} must be a string of 1 to {MAX_ID_CHARS} characters", number)
    return value


def check_line(raw: bytes, number: int) -> tuple[Kind, str, str | None]:
    """(kind, id, url) of one line; InputError naming the line if it is malformed.

    An OpenAI line's body is the server's to check (models, sampling): only the batch's own fields are checked.
    """
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", number) from None
    if not isinstance(line, dict):
        raise InputError("not a JSON object", number)
    kind = kind_of(line)
    if kind is None:
        message = (
            'neither an OpenAI batch request {"custom_id", "method", "url", "body"} nor an SPP line {"id", "text"}'
        )
        raise InputError(message, number)
    if kind is Kind.SPP:
        item_id = _check_id(line.get("id"), "id", number)
        if not isinstance(line.get("text"), str) or not line["text"].strip():
            raise InputError("text must be a non-empty string", number)
        return kind, item_id, None
    custom_id = _check_id(line.get("custom_id"), "custom_id", number)
    if line.get("method") != "POST":
        raise InputError(f"method must be 'POST', not {line.get('method')!r}", number)
    url = line.get("url")
    if url not in ENDPOINTS:
        raise InputError(f"url must be one of {', '.join(ENDPOINTS)}, not {url!r}", number)
    body = line.get("body")
    if not isinstance(body, dict):
        raise InputError("body must be a JSON object", number)
    if body.get("stream"):
        raise InputError("stream is not supported in a batch", number)
    return kind, custom_id, url


def read_input(path: Path) -> BatchInput:
    """Check every line of `path` (one kind, one url, unique ids): InputError naming the first bad line."""
    digest = hashlib.sha256()
    seen: dict[str, int] = {}  # id -> line number; in input order
    kind: Kind | None = None
    first = 0
    endpoint = SPP_ENDPOINT
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            digest.update(raw)
            if not raw.strip():
                continue  # the server skips blank lines too
            line_kind, item_id, url = check_line(raw, number)
            if kind is None:
                kind, first, endpoint = line_kind, number, url or SPP_ENDPOINT
            elif line_kind is not kind:
                raise InputError(
                    f"{_described(line_kind)}, but line {first} is {_described(kind)}: a file holds one kind", number
                )
            elif url is not None and url != endpoint:
                raise InputError(f"url {url!r} differs from line {first}'s {endpoint!r}: a batch has one", number)
            if item_id in seen:
                raise InputError(f"id {item_id!r} already appears on line {seen[item_id]}", number)
            seen[item_id] = number
    if kind is None:
        raise InputError("the file has no request")
    return BatchInput(path, kind, endpoint, list(seen), digest.hexdigest())


def _described(kind: Kind) -> str:
    return "an SPP line" if kind is Kind.SPP else "an OpenAI batch request"


def spp_request(item_id: str, text: str, model: str, max_tokens: int, temperature: float) -> dict[str, Any]:
    """The chat request of one SPP line: the SPP template rendered with the text as the only user message."""
    return {
        "custom_id": item_id,
        "method": "POST",
        "url": SPP_ENDPOINT,
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": render_prompt(SPP_TEMPLATE, text)}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        },
    }


def write_requests(source: BinaryIO, target: BinaryIO, model: str, max_tokens: int, temperature: float) -> None:
    """Convert a checked SPP file (read_input) into OpenAI batch lines, line by line."""
    for _, raw in _numbered(source):
        line = orjson.loads(raw)
        target.write(orjson.dumps(spp_request(line["id"], line["text"], model, max_tokens, temperature)) + b"\n")


# ---- results -----------------------------------------------------------------------------------------

MISSING = {
    "code": "missing_result",
    "message": "the batch's output and error files have no line for this request (its result may have expired)",
}


def result_of(line: dict[str, Any]) -> dict[str, Any]:
    """`{"id", "answer"}` or `{"id", "error": {"code", "message"}}` from an output or error-file line."""
    custom_id = line.get("custom_id")
    error = line.get("error")
    response = line.get("response")
    if error:
        return {"id": custom_id, "error": {"code": str(error.get("code")), "message": str(error.get("message"))}}
    if not isinstance(response, dict):
        return {"id": custom_id, "error": {"code": "no_response", "message": "the line has neither response nor error"}}
    status = response.get("status_code")
    body = response.get("body")
    if not isinstance(status, int) or not 200 <= status < 300:
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            code = detail.get("code") or detail.get("type") or f"http_{status}"
            return {"id": custom_id, "error": {"code": str(code), "message": str(detail.get("message"))}}
        return {"id": custom_id, "error": {"code": f"http_{status}", "message": orjson.dumps(body).decode()}}
    try:
        choice = body["choices"][0]  # type: ignore[index]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
    except (KeyError, IndexError, TypeError):
        return {"id": custom_id, "error": {"code": "no_answer", "message": "the response has no choice with text"}}
    return {"id": custom_id, "answer": text or ""}
