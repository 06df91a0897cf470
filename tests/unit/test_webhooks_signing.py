"""Signatures and secrets (shared/webhooks.py), checked by an independent implementation: the `standardwebhooks`
package's `Webhook(secret).verify`."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.policy import client_policy, default_policy
from shared.webhooks import check_secret, derived_secret, sign, signing_secret
from tests.unit.conftest import make_settings

Change = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def test_the_signature_is_verified_by_the_standard_webhooks_package() -> None:
    body = orjson.dumps({"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00.000Z", "data": {"id": "a"}})
    now = int(time.time())
    assert Webhook(SECRET).verify(body, headers(SECRET, "msg_1712-0", now, body)) == orjson.loads(body)


def test_the_signature_is_the_specifications_example() -> None:
    """The signature the package computes for the same id, time and body: the scheme, byte for byte."""
    body = b'{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52"}}'
    expected = Webhook(SECRET).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", datetime.fromtimestamp(1674087231, UTC), body)
    assert sign(SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1674087231, body) == expected


@pytest.mark.parametrize(
    "change",
    [
        lambda h, b: (h | {"webhook-id": "msg_other"}, b),
        lambda h, b: (h | {"webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: (h, b + b" "),
        lambda h, b: (h | {"webhook-signature": sign("whsec_" + base64.b64encode(b"x" * 32).decode(), "m", 1, b)}, b),
    ],
)
def test_any_change_fails_verification(change: Change) -> None:
    body = b'{"type":"job.failed"}'
    sent = headers(SECRET, "msg_1-0", int(time.time()), body)
    changed_headers, changed_body = change(sent, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(changed_body, changed_headers)


def test_derived_secrets_are_standard_per_client_and_per_key() -> None:
    first = derived_secret("k" * 32, "owner-a")
    assert first == derived_secret("k" * 32, "owner-a")
    assert first != derived_secret("k" * 32, "owner-b")
    assert first != derived_secret("j" * 32, "owner-a"), "rotating the key changes every derived secret"
    assert check_secret(first) == first
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    body = b"{}"
    Webhook(first).verify(body, headers(first, "msg_1-0", int(time.time()), body))


def test_a_policy_secret_wins_over_the_derived_one() -> None:
    settings = make_settings(WEBHOOK_SECRET_KEY="s" * 40)
    default = default_policy(settings)
    own = client_policy(default, {"webhook_secret": SECRET})
    assert signing_secret(own, "owner-a", settings) == SECRET
    assert signing_secret(default, "owner-a", settings) == derived_secret("s" * 40, "owner-a")
    assert signing_secret(None, "owner-a", settings) == derived_secret("s" * 40, "owner-a")


def test_dev_without_a_key_still_derives_distinct_secrets() -> None:
    settings = make_settings(WEBHOOK_SECRET_KEY="")
    assert signing_secret(None, "a", settings) != signing_secret(None, "b", settings)


@pytest.mark.parametrize("env", ["staging", "prod"])
@pytest.mark.parametrize("key", ["", "too-short", " " * 40])
def test_staging_and_prod_require_a_long_secret_key(env: str, key: str) -> None:
    with pytest.raises(ValidationError, match=f"ENV={env} needs WEBHOOK_SECRET_KEY"):
        make_settings(ENV=env, API_KEYS="k" * 32, WEBHOOK_SECRET_KEY=key)
    assert env == make_settings(ENV=env, API_KEYS="k" * 32, WEBHOOK_SECRET_KEY="k" * 32).ENV


def test_the_secret_key_is_not_shown() -> None:
    assert "k" * 32 not in repr(make_settings(WEBHOOK_SECRET_KEY="k" * 32))


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),
        "whsec_" + base64.b64encode(b"x" * 65).decode(),
        "whsec_not base64!",
        base64.b64encode(b"x" * 32).decode(),
    ],
)
def test_malformed_secrets_are_refused_without_being_shown(secret: str) -> None:
    with pytest.raises(ValueError, match="24 to 64") as raised:
        check_secret(secret)
    if len(secret) > 8:
        assert secret not in str(raised.value)
