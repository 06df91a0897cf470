"""One delivery attempt: a POST to the receiver and what its answer means (Standard Webhooks, "Delivery success and
failure"): 2xx delivered; 410 Gone, the receiver wants no more (given up); anything else, a 3xx included (redirects
are never followed), a failed attempt to retry, after the receiver's Retry-After if it sent one.

aiohttp, whose resolver is the guard (webhooks/guard.py): httpx lets no caller choose its resolver, and its
connection pool (httpcore) cost 2.4 ms of CPU a delivery at 16 in flight, against aiohttp's fraction of one
(bench/webhooks.py).
"""

from __future__ import annotations

import email.utils
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from webhooks.guard import Guard, GuardedResolver, Refused

ANSWER_BYTES = 64 * 1024
"""Bytes of an answer read (and dropped): enough for a receiver's usual acknowledgement, so that the connection
is kept for the next delivery; a longer answer closes it."""

USER_AGENT = "albert-spp-webhooks"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to."""

    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    """Seconds the receiver asked to wait before the next attempt (Retry-After), if it did."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def final(self) -> bool:
        """No attempt follows this one: delivered, refused (its address), or Gone (the receiver wants no more)."""
        return self.delivered or self.status_code == 410 or (self.error or "").startswith("refused:")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Sender:
    """POSTs deliveries through one connection pool whose connections go only where the guard allows."""

    def __init__(
        self, guard: Guard, timeout: float, max_connections: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """`ssl_context`: the system's CAs unless given (tests give their private CA's)."""
        self.timeout = timeout
        self._guard = guard
        self._max_connections = max_connections
        self._ssl = ssl_context or ssl.create_default_context()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use (in the event loop that uses it)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._guard),
                limit=self._max_connections,
                limit_per_host=0,
                ssl=self._ssl,
                keepalive_timeout=30,
            )
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        """One attempt, within the timeout from the host's resolution to the answer's status."""
        sent = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **headers}
        try:
            self._guard.check_literal(urlsplit(url).hostname or "")
            async with self._client().post(url, data=body, headers=sent, allow_redirects=False) as response:
                await _read_some(response)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                return Attempt(status_code=response.status, retry_after=retry_after)
        except Refused as exc:
            return Attempt(error=f"refused: {exc}")
        except TimeoutError:
            return Attempt(error=f"timeout: no answer within {self.timeout:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}"[:300])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read_some(response: aiohttp.ClientResponse) -> None:
    """Read the answer's body up to ANSWER_BYTES (a longer one is left: the connection is then closed)."""
    read = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        read += len(chunk)
        if read > ANSWER_BYTES:
            return
