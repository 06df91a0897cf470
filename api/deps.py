"""Annotated dependencies: the lifespan's resources and the caller (identified by api/authenticate.py)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict, cast

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import Scope

from api.auth import Caller, KeyRing
from api.batches import BatchStore
from api.estimate import Estimator
from api.files import FileStore
from api.jobs import ApiJobStore
from api.leases import StreamLeases
from api.limits import AuthFailures, RateLimiter
from api.listing import JobIndex
from api.queue_events import QueueWatch
from api.streams import StreamHub
from shared.metrics import ApiMetrics
from shared.settings import Settings


class State(TypedDict):
    """What the lifespan yields; Starlette exposes it as `request.state`."""

    settings: Settings
    store: ApiJobStore
    index: JobIndex
    hub: StreamHub
    keyring: KeyRing
    limiter: RateLimiter
    auth_failures: AuthFailures
    metrics: ApiMetrics
    files: FileStore
    batches: BatchStore
    estimator: Estimator
    queue_watch: QueueWatch
    leases: StreamLeases


def resources(request: Request) -> State:
    """The lifespan's resources, read without a dependency by the hot routes (submission, polling): FastAPI
    resolves each dependency on every request, ~15-20 µs each here."""
    return cast(State, request.scope["state"])


def route_path(scope: Scope) -> str:
    """The path the routes see: `scope["path"]` without the `root_path` (API_ROOT_PATH) it may begin with."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


async def _settings(request: Request) -> Settings:
    return resources(request)["settings"]


async def _store(request: Request) -> ApiJobStore:
    return resources(request)["store"]


async def _hub(request: Request) -> StreamHub:
    return resources(request)["hub"]


async def _files(request: Request) -> FileStore:
    return resources(request)["files"]


async def _batches(request: Request) -> BatchStore:
    return resources(request)["batches"]


async def _caller(request: Request) -> Caller:
    return caller_of(request)


def caller_of(request: Request) -> Caller:
    """The caller (name, owner, policy) that api/authenticate.py identified and counted against its rate limit.
    Called by the hot routes (submission, polling) rather than taken as `CallerDep`, whose resolution by FastAPI
    costs them ~20 µs a request."""
    caller: Caller = request.scope["caller"]
    return caller


def owner_of(request: Request) -> str:
    """The namespace of the caller's jobs, for the hot routes: see `caller_of`."""
    return caller_of(request).owner


async def _owner(request: Request) -> str:
    return owner_of(request)


def is_public(route: BaseRoute) -> bool:
    """Whether `route` answers without an API key: a route marked `PUBLIC`, one left out of OpenAPI (`/docs`),
    and Starlette's own (`/openapi.json`, the docs' assets)."""
    if isinstance(route, APIRoute):
        return not route.include_in_schema or (route.openapi_extra or {}).get("security") == []
    return True


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ApiJobStore, Depends(_store)]
HubDep = Annotated[StreamHub, Depends(_hub)]
FilesDep = Annotated[FileStore, Depends(_files)]
BatchesDep = Annotated[BatchStore, Depends(_batches)]
PUBLIC: dict[str, Any] = {"security": []}
"""`openapi_extra` of the routes that need no API key (`is_public`); OpenAPI documents every other one with
`APIKey`."""
CallerDep = Annotated[Caller, Depends(_caller)]
OwnerDep = Annotated[str, Depends(_owner)]
