"""Annotated dependencies: the lifespan's resources and the caller's identity."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import Depends, Request

from api.streams import StreamHub
from shared import keys
from shared.settings import Settings
from shared.store import JobStore


class State(TypedDict):
    """What the lifespan yields; Starlette exposes it as `request.state`."""

    settings: Settings
    store: JobStore
    hub: StreamHub


def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def _store(request: Request) -> JobStore:
    store: JobStore = request.state.store
    return store


def _hub(request: Request) -> StreamHub:
    hub: StreamHub = request.state.hub
    return hub


def _owner() -> str:
    """The namespace of the caller's jobs."""
    return keys.PUBLIC_OWNER


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
HubDep = Annotated[StreamHub, Depends(_hub)]
OwnerDep = Annotated[str, Depends(_owner)]
