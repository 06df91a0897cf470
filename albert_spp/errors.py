"""The client's errors: one class per kind of answer a caller may want to handle apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from albert_spp.models import Job


class AlbertSppError(Exception):
    """Every error of this package. `submitted`: for `submit_many`, the jobs that its earlier requests had queued
    before this error stopped it."""

    submitted: Sequence[Job] = ()


class APIConnectionError(AlbertSppError):
    """The server could not be reached, or the connection broke before an answer."""


class WaitTimeout(AlbertSppError, TimeoutError):
    """`wait` or `wait_all` gave up: the jobs of `pending` had not finished in time."""

    def __init__(self, message: str, pending: Sequence[str]) -> None:
        super().__init__(message)
        self.pending = list(pending)


class APIError(AlbertSppError):
    """An answer of 4xx or 5xx: its status, the server's `detail` (a text, or a list of validation errors for a
    422), its whole JSON body, and its Retry-After in seconds (429, 503)."""

    def __init__(self, status: int, detail: Any, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.detail = detail
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"{status}: {describe(detail)}")


class BadRequest(APIError):
    """400."""


class AuthenticationError(APIError):
    """401: no API key, or one the server does not know."""


class PermissionDenied(APIError):
    """403."""


class NotFound(APIError):
    """404: no such job for this API key (or an unknown model)."""


class Conflict(APIError):
    """409: e.g. an id reused with another body, a retry of a job that has not failed."""


class InvalidRequest(APIError):
    """422: the body or the query did not validate; `detail` lists the errors, each naming its field."""


class RateLimited(APIError):
    """429: a limit (the client's rate, queued jobs, tokens per day, or the model's queue); `retry_after`
    is the server's Retry-After in seconds, and `body` names the limit and the usage."""


class ServerError(APIError):
    """5xx; a 503 (Redis unavailable or full) carries `retry_after`."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    429: RateLimited,
}


def describe(detail: Any) -> str:
    """The server's `detail` as one line: a validation error list as `field: message; ...`."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", ()))
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the server sends seconds


def error_of(response: httpx.Response) -> APIError:
    """The error of an answer of 4xx or 5xx (its body read)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text or response.reason_phrase}
    detail = body.get("detail")
    if detail is None and isinstance(body.get("error"), dict):
        detail = body["error"].get("message")
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return kind(status, detail if detail is not None else response.reason_phrase, body, _retry_after(response))
