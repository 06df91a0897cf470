"""Request bodies that are one item or a JSON array of them, validated with errors naming the field."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import annotated_types
import anyio
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import json_pieces
from api.openai_shapes import Endpoint, OpenAIError, ParsedRequest, parse_request
from shared.models import Limits

Item = TypeVar("Item", bound=BaseModel)
Result = TypeVar("Result")

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
"""The status counted (in the request metrics) for a request whose client left before its body ended: nginx's."""


class AbortedBodies:
    """A client that goes away before its request body has all arrived is no error of this service: one INFO
    line, no traceback, no answer (there is no one to answer). Starlette raises ClientDisconnect from the
    route's read of the body; a route storing as it reads (`POST /v1/files`) has removed what it stored
    by then. FastAPI turns the disconnect of a body it parses itself (`POST /v1/batches`) into a 400
    nobody receives: the line is written here, where the disconnect is seen, for every route alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":  # the only method whose routes read a body
            await self.app(scope, receive, send)
            return
        received, complete, aborted, answered = 0, False, False, False

        def went_away() -> None:
            nonlocal aborted
            if not aborted:
                aborted = True
                logger.info("client went away after %d bytes of its request body: POST %s", received, scope["path"])

        async def watching_receive() -> Message:
            nonlocal received, complete
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not complete:
                went_away()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watching_receive, watching_send)
        except ClientDisconnect:
            went_away()
            if not answered:
                # Nobody reads it: only the request metrics see its status.
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
                    await send({"type": "http.response.body", "body": b""})


def invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 naming the location and the problem, in FastAPI's own error shape."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg, "input": None}])


OFF_LOOP_BODY_BYTES = 262_144
"""Bodies larger than this are parsed and validated in a worker thread, a piece at a time (api/json_pieces.py),
so that the event loop keeps answering meanwhile: a 32 MiB array of 1,000 jobs held it 140 to 350 ms, a body of a
million unknown fields a minute (docs/PERFORMANCE.md, "Event-loop stalls"). Below, the worst body costs the loop
~20 ms, and the thread would cost more than it saves: an array of 1,000 short jobs (246 KB) took 8 ms longer."""
MAX_REPORTED_ERRORS = 100
"""Validation errors listed in one 422, the others counted in one more entry: FastAPI renders them on the loop."""
MAX_ECHOED_INPUT = 256
"""Characters of an invalid value echoed in its error (`input`); a longer value, or a list or an object, is not."""


async def off_loop(size: int, work: Callable[[], Result]) -> Result:
    """`work()`, in a worker thread when it handles a body of more than OFF_LOOP_BODY_BYTES (`size`)."""
    if size <= OFF_LOOP_BODY_BYTES:
        return work()
    return await anyio.to_thread.run_sync(work)


async def parse_one_or_many(
    raw: bytes,
    model: type[Item],
    *,
    max_items: int,
    limit_name: str,
    context: dict[str, Any] | None = None,
    max_lengths: Mapping[str, int] | None = None,
) -> tuple[list[Item], bool]:
    """The items of `raw` (one object or an array of at most `max_items`), and whether it was an array; parsed and
    validated off the loop when `raw` is large (see OFF_LOOP_BODY_BYTES).

    `max_lengths` bounds the lists and objects of the named fields beyond the model's own `max_length`s (the
    model validates those only after validating each element: a million messages took pydantic 2.4 s).
    """
    return await off_loop(
        len(raw), functools.partial(parse_items, raw, model, max_items, limit_name, context, max_lengths or {})
    )


def loads(raw: bytes, max_items: int | None = None) -> Any:
    """A body's JSON: by orjson at once when small (on the loop), by json_pieces when large (in a worker thread,
    where its pieces let the loop take the GIL; on the loop they would only cost more: 10 ms instead of 5 for an
    array of 1,000 short jobs)."""
    if len(raw) <= OFF_LOOP_BODY_BYTES:
        return orjson.loads(raw)
    return json_pieces.loads(raw, max_items=max_items)


def parse_items(
    raw: bytes,
    model: type[Item],
    max_items: int,
    limit_name: str,
    context: dict[str, Any] | None,
    max_lengths: Mapping[str, int],
) -> tuple[list[Item], bool]:
    """`parse_one_or_many`, on the thread it is called on."""
    too_many = f"items in one request, over the limit of {limit_name}={max_items}"
    try:
        data = loads(raw, max_items=max_items)
    except orjson.JSONDecodeError as exc:
        raise invalid((), f"JSON decode error: {exc}", "json_invalid") from None
    except json_pieces.TooManyItems:
        raise invalid((), f"more than {max_items} {too_many}", "too_long") from None
    many = isinstance(data, list)
    if many and len(data) > max_items:
        raise invalid((), f"{len(data)} {too_many}", "too_long")
    if many and not data:
        raise invalid((), "empty array", "too_short")
    _check_sizes(data if many else [data], many, model, {**_max_lengths(model), **max_lengths})
    try:
        items = (
            TypeAdapter(list[model]).validate_python(data, context=context)  # type: ignore[valid-type]
            if many
            else [model.model_validate(data, context=context)]
        )
    except ValidationError as exc:
        raise validation_error(exc) from None
    return items, many


def openai_request(endpoint: Endpoint, raw: bytes, models: Collection[str], limits: Limits) -> ParsedRequest:
    """The request of an OpenAI-compatible route's body, or a 400 `OpenAIError` (see `off_loop` for a large body)."""
    try:
        body = loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"JSON decode error: {exc}") from None
    try:
        return parse_request(endpoint, body, models=models, limits=limits)
    except OpenAIError:
        _let_go_of_parts(body)
        raise


FREED_AT_ONCE = 10_000
"""Text parts of a refused request freed in one step: a million took 60 ms, in one call that holds the GIL."""


def _let_go_of_parts(body: Any) -> None:
    """Empty the text-part lists of a refused request a slice at a time, so that the event loop's thread gets the
    GIL between two slices instead of waiting for the whole body to be freed at once."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        while isinstance(content, list) and content:
            del content[-FREED_AT_ONCE:]


def validation_error(exc: ValidationError, loc: tuple[str | int, ...] = ("body",)) -> RequestValidationError:
    """The 422 of a pydantic error under `loc`: at most MAX_REPORTED_ERRORS errors, without long inputs."""
    errors: list[dict[str, Any]] = [
        {**error, "loc": (*loc, *error["loc"]), "input": _echoed(error.get("input"))}
        for error in exc.errors(include_url=False)[:MAX_REPORTED_ERRORS]
    ]
    if exc.error_count() > MAX_REPORTED_ERRORS:
        more = exc.error_count() - MAX_REPORTED_ERRORS
        errors.append({"type": "too_many_errors", "loc": loc, "msg": f"{more} more errors", "input": None})
    return RequestValidationError(errors)


def _echoed(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_ECHOED_INPUT else None
    return value if value is None or isinstance(value, bool | int | float) else None


@functools.cache
def _max_lengths(model: type[BaseModel]) -> dict[str, int]:
    """The `max_length` of each field of `model` that has one."""
    return {
        name: bound.max_length
        for name, field in model.model_fields.items()
        for bound in field.metadata
        if isinstance(bound, annotated_types.MaxLen)
    }


def _check_sizes(items: list[Any], many: bool, model: type[BaseModel], max_lengths: Mapping[str, int]) -> None:
    """Refuse, before pydantic validates them one by one, the items whose sizes no valid item has: more unknown
    fields than a model forbidding them can list in its errors, or a field longer than its bound."""
    forbid = model.model_config.get("extra") == "forbid"
    fields = model.model_fields
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        loc: tuple[int, ...] = (index,) if many else ()
        if forbid and len(item) > MAX_REPORTED_ERRORS:
            unknown = list(itertools.islice((key for key in item if key not in fields), 3))
            message = f"{len(item)} fields; unknown: {', '.join(unknown)}..."
            raise invalid(loc, message, "extra_forbidden")
        for name, bound in max_lengths.items():
            value = item.get(name)
            if isinstance(value, list | dict) and len(value) > bound:
                raise invalid((*loc, name), f"{len(value)} items, over the limit of {bound}", "too_long")


_COMPONENTS: dict[str, Any] = {}
"""Schemas of the bodies parsed by hand, for the OpenAPI document's components (see `add_components`)."""


def one_or_many_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a route taking `model` or an array of it (parsed by `parse_one_or_many`)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _COMPONENTS.update(schema.pop("$defs", {}))
    _COMPONENTS[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    body = {"oneOf": [ref, {"type": "array", "items": ref}]}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"422": {"description": "The body is invalid; `loc` names the field (and the item's index)"}},
    }


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a route taking one `model` (parsed by `parse_object`)."""
    schema = one_or_many_schema(model)
    schema["requestBody"]["content"]["application/json"]["schema"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    return schema


async def parse_object(raw: bytes, model: type[Item]) -> Item:
    """One `model` from `raw`, as `parse_one_or_many` reads it (off the loop when large, fields counted before
    validation): for the routes whose small body FastAPI would parse and validate on the loop, where a body of a
    million unknown fields took it over a minute."""
    items, many = await parse_one_or_many(raw, model, max_items=1, limit_name="one object")
    if many:
        raise invalid((), "expected a JSON object, not an array", "model_type")
    return items[0]


def add_components(openapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the schemas `one_or_many_schema` refers to."""
    openapi.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
    return openapi
