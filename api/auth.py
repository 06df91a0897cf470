"""API keys: who is calling, and the namespace (owner) their jobs live in.

Keys come from API_KEYS_FILE (`{"client name": "key"}`, values may carry a `Bearer ` prefix as in the
seed's api_keys.example.json; re-read when the file changes) and API_KEYS (comma-separated). A presented
key is looked up by its SHA-256 digest: one hash a request whatever the number of keys, and the lookup's
timing can tell at most something of a digest, which does not lead back to a key. Keys are never logged nor
stored: a job's owner is a digest of the client name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from shared.errors import SppError
from shared.settings import Settings

logger = logging.getLogger(__name__)

_RECHECK_SECONDS = 1.0


class Unauthorized(SppError):
    """Missing or wrong credentials: answered 401 with `WWW-Authenticate: Bearer`."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    owner: str
    """The namespace of the caller's jobs in Redis: a digest, never the key itself."""


def _owner(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:20]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _callers(keys: dict[str, str]) -> dict[bytes, Caller]:
    """{key: client name} → {digest of the key: its caller}."""
    return {_digest(key): Caller(name, _owner("name", name)) for key, name in keys.items()}


def _strip_bearer(value: str) -> str:
    value = value.strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def read_keys_file(path: Path) -> dict[str, str]:
    """`{"client name": "key"}` → {key: client name}; raises ValueError naming the file when malformed."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"API_KEYS_FILE={path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f'API_KEYS_FILE={path}: expected a JSON object {{"client name": "key", ...}}')
    return {_strip_bearer(key): name for name, key in data.items() if _strip_bearer(key)}


class KeyRing:
    """The configured keys, refreshed from API_KEYS_FILE when its modification time or size changes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._from_env = {
            key: f"key-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
            for key in (_strip_bearer(item) for item in settings.API_KEYS.split(","))
            if key
        }
        self._callers = _callers(self._from_env)
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._refresh(force=True)

    def __len__(self) -> int:
        return len(self._callers)

    def _refresh(self, *, force: bool = False) -> None:
        path = self._settings.API_KEYS_FILE
        now = time.monotonic()
        if path is None or (not force and now - self._checked < _RECHECK_SECONDS):
            return
        self._checked = now
        try:
            stat = os.stat(path)
        except OSError as exc:
            if force:
                raise ValueError(f"API_KEYS_FILE={path}: {exc}") from None
            logger.warning("API_KEYS_FILE unreadable, keeping the keys loaded before: %s", exc)
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            keys = read_keys_file(path)
        except ValueError as exc:
            if force:
                raise
            logger.warning("%s; keeping the keys loaded before", exc)
            return
        self._callers = _callers({**keys, **self._from_env})
        self._stamp = stamp
        logger.info("API keys loaded: %d clients", len(self._callers))

    def identify(self, token: str) -> Caller | None:
        """The caller whose key is `token`, if any."""
        self._refresh()
        return self._callers.get(_digest(token))

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request from its `Authorization` header."""
        if not authorization:
            raise Unauthorized("missing Authorization header: send 'Authorization: Bearer <API key>'")
        scheme, _, token = authorization.strip().partition(" ")
        bearer = scheme.lower() == "bearer" and token.strip()
        if self._settings.open_access:
            # As in the seed: any token, but the header is required. Each token still has its own jobs.
            value = token.strip() if bearer else authorization.strip()
            return self.identify(value) or Caller("dev", _owner("token", value))
        if not bearer:
            raise Unauthorized("the Authorization header must be 'Bearer <API key>'")
        caller = self.identify(token.strip())
        if caller is None:
            raise Unauthorized("invalid API key")
        return caller
