"""Request bodies that are one item or a JSON array of them, validated with errors naming the field."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Item = TypeVar("Item", bound=BaseModel)

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


def parse_one_or_many(
    raw: bytes, model: type[Item], *, max_items: int, limit_name: str, context: dict[str, Any] | None = None
) -> tuple[list[Item], bool]:
    """The items of `raw` (one object or an array of at most `max_items`), and whether it was an array."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid((), f"JSON decode error: {exc}", "json_invalid") from None
    many = isinstance(data, list)
    if many and len(data) > max_items:
        raise invalid((), f"{len(data)} items in one request, over the limit of {limit_name}={max_items}", "too_long")
    if many and not data:
        raise invalid((), "empty array", "too_short")
    try:
        items = (
            TypeAdapter(list[model]).validate_python(data, context=context)  # type: ignore[valid-type]
            if many
            else [model.model_validate(data, context=context)]
        )
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None
    return items, many


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


def add_components(openapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the schemas `one_or_many_schema` refers to."""
    openapi.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
    return openapi
