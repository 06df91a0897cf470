"""Annotated dependencies: the lifespan's resources and the caller's identity."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import Depends, Header, Request

from api.auth import Caller, KeyRing
from api.limits import RateLimiter
from api.streams import StreamHub
from shared.batches import BatchStore
from shared.files import FileStore
from shared.metrics import ApiMetrics
from shared.settings import Settings
from shared.store import JobStore


class State(TypedDict):
    """What the lifespan yields; Starlette exposes it as `request.state`."""

    settings: Settings
    store: JobStore
    hub: StreamHub
    keyring: KeyRing
    limiter: RateLimiter
    metrics: ApiMetrics
    files: FileStore
    batches: BatchStore


async def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def _store(request: Request) -> JobStore:
    store: JobStore = request.state.store
    return store


async def _hub(request: Request) -> StreamHub:
    hub: StreamHub = request.state.hub
    return hub


async def _files(request: Request) -> FileStore:
    files: FileStore = request.state.files
    return files


async def _batches(request: Request) -> BatchStore:
    batches: BatchStore = request.state.batches
    return batches


async def _caller(
    request: Request,
    authorization: Annotated[str | None, Header(description="`Bearer <API key>`")] = None,
) -> Caller:
    keyring: KeyRing = request.state.keyring
    limiter: RateLimiter = request.state.limiter
    caller = keyring.authenticate(authorization)
    await limiter.check(caller.owner)
    return caller


async def _owner(caller: Annotated[Caller, Depends(_caller)]) -> str:
    """The namespace of the caller's jobs."""
    return caller.owner


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
HubDep = Annotated[StreamHub, Depends(_hub)]
FilesDep = Annotated[FileStore, Depends(_files)]
BatchesDep = Annotated[BatchStore, Depends(_batches)]
AUTHENTICATED = Depends(_caller)
"""For routers whose routes need an API key but not the caller."""
CallerDep = Annotated[Caller, Depends(_caller)]
OwnerDep = Annotated[str, Depends(_owner)]
