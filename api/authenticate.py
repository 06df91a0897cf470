"""Authentication and rate limiting, once for every route: an ASGI middleware that puts the caller in the scope.

Every request but those of the public routes (marked `PUBLIC` in api/deps.py, the docs and their assets) must
carry `Authorization: Bearer <API key>`. The middleware refuses an address past AUTH_FAILURES_PER_MINUTE, checks the
key (api/auth.py), counts the request against the caller's rate limit (once, whatever the route asks for), and
hands the route the `Caller` as `scope["caller"]` (`caller_of`, `CallerDep`, `OwnerDep`). A refusal is answered by
the error handlers of api/errors.py, with the same bodies and headers as a route's.

A request without a valid key to a path that no route serves goes on to the router, which answers 404, 405 or
a redirect as it would to anyone: a failure is counted against the address only on a route that exists.
"""

from __future__ import annotations

from fastapi.routing import iter_route_contexts
from redis.exceptions import OutOfMemoryError
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from api import errors
from api.auth import Caller, Unauthorized
from api.deps import State, is_public, route_path
from api.exceptions import SppError
from shared.connection import REDIS_ERRORS

_ANSWERED: tuple[type[Exception], ...] = (SppError, OutOfMemoryError, *REDIS_ERRORS)


class Authenticate:
    """Puts the `Caller` of every request to a route that is not public in `scope["caller"]`, or answers the
    refusal (401, 429, 503) itself."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        """`routes`: the application's, read at its first request (Starlette builds its middleware then), when
        every router has been included."""
        self.app = app
        contexts = list(iter_route_contexts(routes))
        # (the route that matches a scope, the route the application declared: the one the metrics name)
        self.routes = [(context.route, context.original_route) for context in contexts]
        every = [(context.path, context.original_route) for context in contexts]
        self.public = frozenset(path for path, route in every if path is not None and is_public(route))
        self.public_prefixes = tuple(f"{path}/" for path, route in every if isinstance(route, Mount))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            if path not in self.public and not path.startswith(self.public_prefixes):
                try:
                    scope["caller"] = await self._caller(scope)
                except Unauthorized as exc:
                    if "route" not in scope:  # no route serves the path: the router answers, as to anyone
                        await self.app(scope, receive, send)
                        return
                    await self._refuse(scope, receive, send, exc)
                    return
                except _ANSWERED as exc:
                    self._place_route(scope)
                    await self._refuse(scope, receive, send, exc)
                    return
        await self.app(scope, receive, send)

    async def _caller(self, scope: Scope) -> Caller:
        state: State = scope["state"]
        client = scope.get("client")
        address = client[0] if client else ""
        failures = state["auth_failures"]
        failures.check(address)
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = state["keyring"].authenticate(authorization)
        except Unauthorized:
            if self._place_route(scope) and authorization:  # a credential that failed; none guesses nothing
                await failures.failed(address)
            raise
        await state["limiter"].check(caller.owner, caller.policy)
        return caller

    def _place_route(self, scope: Scope) -> bool:
        """Puts the route the router would pick in `scope["route"]`, so that a refusal is counted under its
        template in spp_http_requests_total: the first full match, else the first partial one (another method).
        Whether a route serves this path."""
        partial = None
        for matcher, declared in self.routes:
            match = matcher.matches(scope)[0]
            if match is Match.FULL:
                scope["route"] = declared
                return True
            if match is Match.PARTIAL and partial is None:
                partial = declared
        if partial is None:
            return False
        scope["route"] = partial
        return True

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        response = await errors.answer(Request(scope, receive), exc)
        await response(scope, receive, send)
