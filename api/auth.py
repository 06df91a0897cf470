"""API keys: who is calling, and the namespace (owner) their jobs live in.

Keys come from API_KEYS_FILE (`{"client name": "key"}`, values may carry a `Bearer ` prefix as in the
seed's api_keys.example.json, or `{"client name": {"key": "...", <policy fields>}}` (shared/policy.py); re-read
when the file changes, policies too) and API_KEYS (comma-separated, clients with the default policy). A presented
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
from typing import Any

import orjson

from shared.errors import SppError
from shared.policy import ClientPolicy, client_policy, default_policy
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
    policy: ClientPolicy
    """Its share of the GPUs and its limits."""


@dataclass(frozen=True, slots=True)
class Client:
    """A client of API_KEYS_FILE: its name and its own policy values (the defaults fill the rest)."""

    name: str
    overrides: dict[str, Any]


def _owner(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()[:20]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _callers(clients: dict[str, Client], default: ClientPolicy) -> dict[bytes, Caller]:
    """{key: client} → {digest of the key: its caller}."""
    return {
        _digest(key): Caller(client.name, _owner("name", client.name), client_policy(default, client.overrides))
        for key, client in clients.items()
    }


def _strip_bearer(value: str) -> str:
    value = value.strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def read_keys_file(path: Path, default: ClientPolicy) -> dict[str, Client]:
    """`{"client name": "key" | {"key": "key", <policy fields>}}` → {key: client}; raises ValueError naming the
    file, the client and the field when malformed."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"API_KEYS_FILE={path}: {exc}") from None
    shape = '{"client name": "key" or {"key": "key", "weight": 2, ...}, ...}'
    if not isinstance(data, dict):
        raise ValueError(f"API_KEYS_FILE={path}: expected a JSON object {shape}")
    clients: dict[str, Client] = {}
    for name, entry in data.items():
        if isinstance(entry, str):
            key, overrides = entry, {}
        elif isinstance(entry, dict) and isinstance(entry.get("key"), str):
            key, overrides = entry["key"], {field: value for field, value in entry.items() if field != "key"}
            try:
                client_policy(default, overrides)
            except ValueError as exc:
                raise ValueError(f"API_KEYS_FILE={path}: client {name!r}: {exc}") from None
        else:
            raise ValueError(f"API_KEYS_FILE={path}: client {name!r}: expected a key or an object with a key; {shape}")
        if _strip_bearer(key):
            clients[_strip_bearer(key)] = Client(name, overrides)
    return clients


class KeyRing:
    """The configured keys, refreshed from API_KEYS_FILE when its modification time or size changes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.default_policy = default_policy(settings)
        self._from_env = {
            key: Client(f"key-{hashlib.sha256(key.encode()).hexdigest()[:8]}", {})
            for key in (_strip_bearer(item) for item in settings.API_KEYS.split(","))
            if key
        }
        self._callers = _callers(self._from_env, self.default_policy)
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
            clients = read_keys_file(path, self.default_policy)
        except ValueError as exc:
            if force:
                raise
            logger.warning("%s; keeping the keys loaded before", exc)
            return
        self._callers = _callers({**clients, **self._from_env}, self.default_policy)
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
            return self.identify(value) or Caller("dev", _owner("token", value), self.default_policy)
        if not bearer:
            raise Unauthorized("the Authorization header must be 'Bearer <API key>'")
        caller = self.identify(token.strip())
        if caller is None:
            raise Unauthorized("invalid API key")
        return caller
