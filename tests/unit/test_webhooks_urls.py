"""Webhook URLs at submission (shared/webhooks.py): their form, and literal addresses that are not public, refused
unless WEBHOOK_ALLOWED_HOSTS names them; the same ranges at delivery for every address a name resolves to
(webhooks/guard.py, with the resolver replaced)."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from shared.models import JobCreate
from shared.webhooks import WebhookSpec, allowed_hosts_context, check_url, literal_ip, refused_address
from webhooks.guard import Guard, Refused, Resolver

REFUSED_LITERALS = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.8.9.10:8080/hook", "loopback"),
    ("http://127.1/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),
    ("http://0x7f000001/hook", "loopback"),
    ("http://017700000001/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://0/hook", "unspecified"),
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://192.168.1.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://100.64.0.1/hook", "non-public"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://240.0.0.1/hook", "private"),
    ("http://255.255.255.255/hook", "private"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::]/hook", "unspecified"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fe80::1%25eth0]/hook", "link-local"),
    ("http://[fc00::1]/hook", "private"),
    ("http://[fd12:3456::1]/hook", "private"),
    ("http://[ff02::1]/hook", "multicast"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),
    ("http://[::ffff:7f00:1]/hook", "loopback"),
    ("http://[64:ff9b::7f00:1]/hook", "loopback"),
    ("http://[2002:7f00:1::1]/hook", "loopback"),
    ("https://localhost/hook", "loopback"),
    ("https://LOCALHOST./hook", "loopback"),
    ("https://api.localhost/hook", "loopback"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_LITERALS)
def test_addresses_that_are_not_public_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_url(url, frozenset())


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/hook",
        "http://93.184.215.14:8080/hook?x=1",
        "https://[2606:4700:4700::1111]/hook",
        "https://hooks.example.com:8443/a/b#c",
    ],
)
def test_public_addresses_and_names_are_accepted(url: str) -> None:
    assert check_url(url, frozenset()) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.org/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://example.org/", "http:// or https://"),
        ("example.org/hook", "http:// or https://"),
        ("https://user:secret@example.org/hook", "credentials"),
        ("https://token@example.org/hook", "credentials"),
        ("https:///hook", "no host"),
        ("https://example.org:99999/hook", "malformed"),
        ("https://example.org:0/hook", "port"),
        ("https://exa mple.org/hook", "spaces or control"),
        ("https://example.org/\nhook", "spaces or control"),
    ],
)
def test_malformed_urls_are_refused_whoever_the_host(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_url(url, frozenset({"example.org"}))
    with pytest.raises(ValueError, match=message):
        check_url(url, None)


def test_allowed_hosts_accept_their_private_addresses_only() -> None:
    allowed = frozenset({"127.0.0.1", "::1", "hooks.internal"})
    assert check_url("http://127.0.0.1:9000/hook", allowed)
    assert check_url("http://[::1]:9000/hook", allowed)
    with pytest.raises(ValueError, match="loopback"):
        check_url("http://127.0.0.2:9000/hook", allowed)
    with pytest.raises(ValueError, match="loopback"):
        check_url("http://localhost:9000/hook", allowed)


def test_the_form_alone_when_no_address_check_is_asked() -> None:
    assert check_url("http://10.0.0.1/hook", None)


def test_the_spec_reads_the_allowed_hosts_from_the_validation_context() -> None:
    body = {"url": "http://127.0.0.1:9000/hook"}
    with pytest.raises(ValidationError) as raised:
        WebhookSpec.model_validate(body)
    assert raised.value.errors()[0]["loc"] == ("url",)
    assert "loopback" in str(raised.value)
    spec = WebhookSpec.model_validate(body, context=allowed_hosts_context({"127.0.0.1"}))
    assert spec.events == ["succeeded", "failed", "cancelled"]


def test_a_job_with_a_refused_webhook_names_the_field() -> None:
    with pytest.raises(ValidationError) as raised:
        JobCreate.model_validate({"prompt": "x", "webhook": {"url": "http://169.254.169.254/"}})
    assert raised.value.errors()[0]["loc"] == ("webhook", "url")


@pytest.mark.parametrize("events", [[], ["started"], ["succeeded", "done"]])
def test_events_are_among_the_job_ends(events: list[str]) -> None:
    with pytest.raises(ValidationError):
        WebhookSpec.model_validate({"url": "https://example.org/", "events": events})


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("[::1]", "::1")],
)
def test_literal_addresses_in_every_form_the_resolver_reads(host: str, address: str) -> None:
    assert literal_ip(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.org", "cafe", "dead.beef1", "1.2.3.4.example.org"])
def test_names_are_not_literal_addresses(host: str) -> None:
    assert literal_ip(host) is None


def test_refused_address_covers_ipv4_in_ipv6() -> None:
    assert refused_address(ipaddress.ip_address("::ffff:192.168.0.1")) == "private"
    assert refused_address(ipaddress.ip_address("2001:4860:4860::8888")) is None
    assert refused_address(ipaddress.ip_address("8.8.8.8")) is None


# ---- at delivery: every address a name resolves to ------------------------------------------------------------


def resolver(table: dict[str, list[str]]) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return table.get(host, [])

    return resolve


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["127.0.0.1"], "loopback"),
        (["93.184.215.14", "10.0.0.7"], "private"),
        (["::1"], "loopback"),
        (["fe80::1%2"], "link-local"),
        (["::ffff:169.254.169.254"], "link-local"),
        (["169.254.169.254"], "link-local"),
        (["0.0.0.0"], "unspecified"),
    ],
)
async def test_a_name_resolving_to_a_refused_address_is_refused(addresses: list[str], reason: str) -> None:
    guard = Guard(frozenset(), resolver({"hooks.example.org": addresses}))
    with pytest.raises(Refused, match=reason) as raised:
        await guard.addresses("hooks.example.org", 443)
    for address in addresses:
        assert address not in str(raised.value), "the internal address is not shown to the client"


async def test_a_name_resolving_to_public_addresses_gives_them_all_in_order() -> None:
    guard = Guard(frozenset(), resolver({"hooks.example.org": ["93.184.215.14", "2606:2800:21f:cb07::1"]}))
    assert await guard.addresses("hooks.example.org", 443) == ["93.184.215.14", "2606:2800:21f:cb07::1"]


async def test_an_allowed_name_may_resolve_to_private_addresses() -> None:
    table = {"hooks.internal": ["10.0.0.7"], "other.internal": ["10.0.0.8"]}
    guard = Guard(frozenset({"hooks.internal"}), resolver(table))
    assert await guard.addresses("HOOKS.internal.", 80) == ["10.0.0.7"]
    with pytest.raises(Refused):
        await guard.addresses("other.internal", 80)


async def test_a_literal_address_is_not_resolved() -> None:
    guard = Guard(frozenset({"127.0.0.1"}), resolver({}))
    assert await guard.addresses("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(Refused, match="loopback"):
        await guard.addresses("2130706433", 80)


async def test_a_name_without_addresses_is_refused() -> None:
    with pytest.raises(Refused, match="no address"):
        await Guard(frozenset(), resolver({})).addresses("nowhere.example.org", 80)
