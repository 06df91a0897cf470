"""Shared fixtures of the unit tests: settings isolated from the environment, an in-memory Redis, a job store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from shared.settings import Settings
from shared.store import JobStore

MODEL = "test-model"
BACKEND_URL = "http://backend.test"


def make_settings(**overrides: Any) -> Settings:
    """Settings for one test: no `.env` file, one model on a fake backend unless overridden."""
    values: dict[str, Any] = {"ENV": "unittest", "LLM_TABLE": f'[["{MODEL}", "{BACKEND_URL}"]]'}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every variable Settings reads, so that the shell running the tests cannot change them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings(clean_env: None) -> Settings:
    return make_settings()


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """A fresh in-memory Redis (its own server: nothing is shared between tests)."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis: fakeredis.FakeAsyncRedis, settings: Settings) -> JobStore:
    return JobStore(redis, settings)
