"""One delivery attempt (webhooks/sender.py) against real HTTP(S) servers on 127.0.0.1: what each answer means, no
redirect followed, the timeout, and the guard between the name and the connection (no DNS rebinding; SNI and the
certificate checked on the name)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import trustme
from aiohttp import web

from tests.unit.conftest import Answer, MockServer, Serve, forever, reply, stream
from webhooks.guard import Guard, Resolver
from webhooks.sender import Attempt, Sender, retry_after_seconds

LOOPBACK = frozenset({"127.0.0.1"})


def sender(allowed: frozenset[str] = LOOPBACK, timeout: float = 5.0, resolve: Resolver | None = None) -> Sender:
    guard = Guard(allowed, resolve) if resolve is not None else Guard(allowed)
    return Sender(guard, timeout, 10)


def answer(status: int, headers: dict[str, str] | None = None) -> Answer:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers=headers or {}, body=b"ok")

    return handle


async def post(server: MockServer, client: Sender, path: str = "/hook") -> Attempt:
    try:
        return await client.post(f"{server.url}{path}", {"webhook-id": "msg_1-0"}, b'{"type":"job.succeeded"}')
    finally:
        await client.aclose()


async def test_a_2xx_is_delivered_with_the_headers_and_body(serve: Serve) -> None:
    server = await serve(reply(b"", status=204, content_type=""))
    attempt = await post(server, sender())
    assert attempt.delivered
    assert attempt.final
    assert attempt.status_code == 204
    request = server.requests[0]
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.body == b'{"type":"job.succeeded"}'
    assert request.headers["webhook-id"] == "msg_1-0"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == server.url.removeprefix("http://")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_a_failed_attempt_never_followed(serve: Serve, status: int) -> None:
    target = await serve(reply(b"", status=200))
    server = await serve(answer(status, {"Location": f"{target.url}/elsewhere"}))
    attempt = await post(server, sender())
    assert attempt.status_code == status
    assert not attempt.delivered
    assert not attempt.final
    assert target.requests == []


async def test_410_gone_ends_the_retries_and_503_asks_for_later(serve: Serve) -> None:
    gone = await post(await serve(reply(b"", status=410)), sender())
    assert gone.final
    assert not gone.delivered
    later = await post(await serve(answer(503, {"Retry-After": "120"})), sender())
    assert not later.final
    assert later.retry_after == 120


async def test_a_silent_receiver_times_out(serve: Serve) -> None:
    server = await serve(stream(forever))
    began = asyncio.get_running_loop().time()
    attempt = await post(server, sender(timeout=0.3))
    assert attempt.error is not None
    assert attempt.error.startswith("timeout")
    assert asyncio.get_running_loop().time() - began < 2


async def test_an_unreachable_receiver_is_a_failed_attempt() -> None:
    client = sender()
    try:
        attempt = await client.post("http://127.0.0.1:9/hook", {}, b"{}")
    finally:
        await client.aclose()
    assert attempt.status_code is None
    assert attempt.error
    assert not attempt.final


async def test_a_loopback_receiver_not_allowed_is_refused_unsent(serve: Serve) -> None:
    server = await serve(reply(b"", status=200))
    attempt = await post(server, sender(allowed=frozenset()))
    assert attempt.final
    assert not attempt.delivered
    assert (attempt.error or "").startswith("refused: 127.0.0.1 is a loopback address")
    assert server.requests == []


async def test_the_connection_goes_to_the_address_checked(serve: Serve) -> None:
    """The guard resolves the name once per connection and the socket connects to the address it checked: the
    system's resolver, which knows nothing of `hooks.test`, is never asked (no second resolution to rebind)."""
    server = await serve(reply(b"", status=200))
    port = server.url.rpartition(":")[2]
    calls: list[str] = []

    async def resolve(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    refused = sender(allowed=frozenset(), resolve=resolve)
    try:
        attempt = await refused.post(f"http://hooks.test:{port}/hook", {}, b"{}")
    finally:
        await refused.aclose()
    assert attempt.error == (
        "refused: hooks.test resolves to a loopback address (allow the host with WEBHOOK_ALLOWED_HOSTS)"
    )
    assert server.requests == []
    client = sender(allowed=frozenset({"hooks.test"}), resolve=resolve)
    try:
        delivered = await client.post(f"http://hooks.test:{port}/hook", {}, b"{}")
        again = await client.post(f"http://hooks.test:{port}/hook", {}, b"{}")
    finally:
        await client.aclose()
    assert delivered.delivered
    assert again.delivered
    assert calls == ["hooks.test", "hooks.test"], "one resolution per client: its second delivery kept the connection"
    assert server.requests[-1].headers["host"] == f"hooks.test:{port}"


@pytest.fixture
async def https_receiver() -> AsyncIterator[tuple[str, int, trustme.CA, list[str]]]:
    """An https server on 127.0.0.1 with a certificate for `hooks.test` only; it records the SNI it was sent."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(context)
    names: list[str] = []
    context.sni_callback = lambda _socket, name, _context: names.append(name or "")

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    yield "127.0.0.1", runner.addresses[0][1], ca, names
    await runner.cleanup()


async def test_https_keeps_sni_and_verification_on_the_name(
    https_receiver: tuple[str, int, trustme.CA, list[str]],
) -> None:
    host, port, ca, names = https_receiver

    async def resolve(name: str, _port: int) -> list[str]:
        return [host] if name == "hooks.test" else []

    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    client = Sender(Guard(frozenset({"hooks.test", host}), resolve), 5.0, 10, ssl_context=trusted)
    try:
        attempt = await client.post(f"https://hooks.test:{port}/hook", {}, b"{}")
        assert attempt.delivered, attempt
        assert names == ["hooks.test"]
        # The same server under its address: the certificate does not name it, so the attempt fails.
        wrong = await client.post(f"https://127.0.0.1:{port}/hook", {}, b"{}")
        assert not wrong.delivered
        assert wrong.error is not None
        assert "CERTIFICATE" in wrong.error.upper()
    finally:
        await client.aclose()


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now.timestamp()) == 90
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
