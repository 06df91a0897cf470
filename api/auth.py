"""API keys: who is calling, and the namespace (owner) their jobs live in.

Keys come from API_KEYS_FILE (`{"client name": "key"}`, values may carry a `Bearer ` prefix as in the
seed's api_keys.example.json, or `{"client name": {"key": "...", <policy fields>}}` (shared/policy.py); re-read
when the file changes, policies too) and API_KEYS (comma-separated, clients with the default policy). A presented
key is looked up by its SHA-256 digest: one hash a request whatever the number of keys, and the lookup's
timing can tell at most something of a digest, which does not lead back to a key. Keys are never logged nor
stored: a job's owner is a digest of the client name.

In staging and prod every key must be 32 characters or more and not the example's (`shared.settings.weak_api_key`),
and a keys file that cannot be read or is malformed loads no key at all, even on a reload: keeping the keys loaded
before would undo the revocations of the save that broke it. In dev the keys loaded before stay.
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

from api.exceptions import SppError
from shared.policy import ClientPolicy, client_policy, default_policy
from shared.settings import MIN_API_KEY_LENGTH, Settings, strip_bearer, weak_api_key

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


def read_keys_file(path: Path, default: ClientPolicy, *, strict: bool = False) -> dict[str, Client]:
    """`{"client name": "key" | {"key": "key", <policy fields>}}` → {key: client}; raises ValueError naming the
    file, the client and the field when malformed, or (`strict`: staging and prod) when a key is weak."""
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
        key = strip_bearer(key)
        reason = weak_api_key(key) if strict else None
        if reason is not None:
            raise ValueError(
                f"API_KEYS_FILE={path}: client {name!r}: its key {reason}; use keys of {MIN_API_KEY_LENGTH} random "
                "characters or more"
            )
        if key:
            clients[key] = Client(name, overrides)
    return clients


class KeyRing:
    """The configured keys, refreshed from API_KEYS_FILE when its modification time or size changes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.default_policy = default_policy(settings)
        self._strict = not settings.open_access
        self._from_env = {
            key: Client(f"key-{hashlib.sha256(key.encode()).hexdigest()[:8]}", {}) for key in settings.api_keys
        }
        self._callers = _callers(self._from_env, self.default_policy)
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._broken: str | None = None
        """Why the file last failed to load, until it loads again (logged once)."""
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
            self._failed(f"API_KEYS_FILE={path}: {exc}", None)
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            clients = read_keys_file(path, self.default_policy, strict=self._strict)
        except ValueError as exc:
            if force:
                raise
            self._failed(str(exc), stamp)
            return
        self._callers = _callers({**clients, **self._from_env}, self.default_policy)
        self._stamp = stamp
        self._broken = None
        logger.info("API keys loaded: %d clients", len(self._callers))

    def _failed(self, reason: str, stamp: tuple[int, int] | None) -> None:
        """The file could not be loaded again: in staging and prod none of its keys is accepted any more (those of
        API_KEYS still are); in dev the keys loaded before stay. Logged once until the file changes."""
        self._stamp = stamp
        if self._strict:
            self._callers = _callers(self._from_env, self.default_policy)
        if reason == self._broken:
            return
        self._broken = reason
        if self._strict:
            logger.error("%s; no key of the file is accepted until it loads again", reason)
        else:
            logger.warning("%s; keeping the keys loaded before", reason)

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
