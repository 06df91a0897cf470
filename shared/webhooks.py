"""Webhooks: what a job or a batch may ask to be called back with, shared by the API (validation, storage, the
client's secret) and the delivery process (`python -m webhooks`: the address checks and the signature).

Deliveries follow the Standard Webhooks specification (https://www.standardwebhooks.com): a POST of
`{"type", "timestamp", "data"}` with the headers `webhook-id`, `webhook-timestamp` and `webhook-signature`,
`v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`. Each client has its own secret, `whsec_<base64>`:
its policy's `webhook_secret`, else one derived from the server's WEBHOOK_SECRET_KEY and the client.

Addresses: a URL is checked twice. At submission, its form (http or https, a host, no credentials) and, when its
host is a literal IP address, the address's range; at delivery (webhooks/guard.py) every address its host resolves
to, and the connection goes to the address checked. Private, loopback, link-local, multicast, reserved and
unspecified addresses are refused unless the host is one of WEBHOOK_ALLOWED_HOSTS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Collection
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from shared.policy import ClientPolicy
    from shared.settings import Settings

JobEvent = Literal["succeeded", "failed", "cancelled"]
"""The ends of a job a webhook may ask for; delivered as Standard Webhooks `type` `job.<event>`."""

JOB_EVENTS: tuple[JobEvent, ...] = ("succeeded", "failed", "cancelled")

BatchEvent = Literal["completed", "failed", "expired", "cancelled"]
"""The ends of a batch a webhook may ask for; delivered as `batch.<event>`."""

BATCH_EVENTS: tuple[BatchEvent, ...] = ("completed", "failed", "expired", "cancelled")

ALLOWED_HOSTS_CONTEXT = "webhook_allowed_hosts"
"""The validation context key (a collection of host names, WEBHOOK_ALLOWED_HOSTS) under which `WebhookSpec`
accepts URLs whose host is a private address. Without it, none is accepted."""

SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)
"""A signing secret's length in bytes: the specification's minimum (192 bits) to a reasonable maximum."""

_DERIVATION_LABEL = b"albert-spp webhook signing secret\0"


def allowed_hosts_context(hosts: Collection[str]) -> dict[str, frozenset[str]]:
    """The validation context that lets `WebhookSpec` accept the URLs of `hosts` (Settings.webhook_allowed_hosts)."""
    return {ALLOWED_HOSTS_CONTEXT: frozenset(hosts)}


def normal_host(host: str) -> str:
    """A host as WEBHOOK_ALLOWED_HOSTS names it: lower case, without the brackets of an IPv6 address."""
    return host.strip().lower().removeprefix("[").removesuffix("]")


def literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` names by itself, without DNS: an IPv4 or IPv6 address, including the forms the C
    resolver reads as IPv4 (`127.1`, `2130706433`, `0x7f000001`: what `http://2130706433/` connects to); None for a
    name."""
    host = normal_host(host)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(char in "0123456789abcdefx." for char in host) and any(char.isdigit() for char in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to: IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002::/16), Teredo, NAT64
    (64:ff9b::/96)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a webhook may not be sent to `address` (e.g. "loopback"), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and (reason := refused_address(embedded)) is not None:
            return reason
    for reason, flagged in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),
    ):
        if flagged:
            return reason
    return None


def check_url(url: str, allowed_hosts: Collection[str] | None) -> str:
    """`url` if a webhook may be sent there, else ValueError saying why: http or https, a host, no credentials,
    and, unless `allowed_hosts` is None (the form alone) or names the host, no literal IP address that is not
    public. Host names are checked at delivery, against the addresses they resolve to then."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise ValueError("the webhook URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"the webhook URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the webhook URL must be http:// or https://, not {parts.scheme or 'without a scheme'}")
    if "@" in parts.netloc:
        raise ValueError("the webhook URL must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise ValueError("the webhook URL has no host")
    if port == 0:
        raise ValueError("the webhook URL's port must be 1 to 65535")
    name = normal_host(host).rstrip(".")
    if allowed_hosts is None or name in allowed_hosts:
        return url
    if name == "localhost" or name.endswith(".localhost"):
        raise ValueError(f"the webhook URL's host {host} is loopback (allow it with WEBHOOK_ALLOWED_HOSTS)")
    address = literal_ip(host)
    if address is not None and (reason := refused_address(address)) is not None:
        raise ValueError(f"the webhook URL's host {host} is a {reason} address (allow it with WEBHOOK_ALLOWED_HOSTS)")
    return url


class WebhookSpec(BaseModel):
    """`webhook` of a job (or a batch): where to POST its end, and for which ends."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http(s) URL called when the job ends (Standard Webhooks).")
    events: list[JobEvent] = Field(
        default_factory=lambda: list(JOB_EVENTS), min_length=1, description="Which ends are delivered."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str, info: ValidationInfo) -> str:
        return check_url(url, (info.context or {}).get(ALLOWED_HOSTS_CONTEXT, frozenset()))


class BatchWebhookSpec(BaseModel):
    """`webhook` of a batch: where to POST its end (`batch.<event>`, the batch object as `data`)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http(s) URL called when the batch ends (Standard Webhooks).")
    events: list[BatchEvent] = Field(
        default_factory=lambda: list(BATCH_EVENTS), min_length=1, description="Which ends are delivered."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str, info: ValidationInfo) -> str:
        return check_url(url, (info.context or {}).get(ALLOWED_HOSTS_CONTEXT, frozenset()))


def job_webhook(spec: WebhookSpec | None, policy: ClientPolicy) -> WebhookSpec | None:
    """The webhook of a job: its own, else its client's default (`webhook_url`, `webhook_events`), if any. The
    default is the operator's configuration, not the client's input: its address is checked at delivery only."""
    if spec is not None or policy.webhook_url is None:
        return spec
    return WebhookSpec.model_construct(url=policy.webhook_url, events=list(policy.webhook_events or JOB_EVENTS))


def check_secret(secret: str) -> str:
    """`secret` if it is a Standard Webhooks symmetric secret (`whsec_` and the base64 of 24 to 64 bytes), else
    ValueError (which never shows the secret)."""
    low, high = SECRET_BYTES
    try:
        raw = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not secret.startswith(SECRET_PREFIX) or not low <= len(raw) <= high:
        raise ValueError(f"a webhook secret is '{SECRET_PREFIX}' and the base64 of {low} to {high} random bytes")
    return secret


def derived_secret(key: str, owner: str) -> str:
    """The signing secret of client `owner` derived from the server's WEBHOOK_SECRET_KEY: HMAC-SHA256 of the client
    under the key, 32 bytes. Changing the key changes every client's derived secret."""
    digest = hmac.new(key.encode(), _DERIVATION_LABEL + owner.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def signing_secret(policy: ClientPolicy | None, owner: str, settings: Settings) -> str:
    """The secret that signs client `owner`'s deliveries: its policy's `webhook_secret` if set, else derived from
    WEBHOOK_SECRET_KEY (see `derived_secret`: rotating the key changes every derived secret, and clients must then
    fetch theirs again from `GET /v1/webhooks/secret`)."""
    if policy is not None and policy.webhook_secret is not None:
        return policy.webhook_secret
    return derived_secret(settings.webhook_secret_key, owner)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` of one attempt: `v1,` and the base64 of HMAC-SHA256 of `<id>.<timestamp>.<body>`
    under the secret's bytes (`timestamp`: the attempt's unix seconds, its `webhook-timestamp`)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
