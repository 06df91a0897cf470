"""A client's webhook fields in API_KEYS_FILE (shared/policy.py, parsed by api/auth.py): its default webhook, the
events it wants and its own signing secret, which is never serialized (`GET /v1/usage` returns the policy)."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from api.auth import KeyRing, read_keys_file
from api.routes.usage import ClientUsage, UsagePublic
from shared.policy import client_policy, default_policy
from shared.webhooks import WebhookSpec, job_webhook
from tests.unit.conftest import make_settings

DEFAULT = default_policy(make_settings())
SECRET = "whsec_" + base64.b64encode(b"\x07" * 24).decode()


def keys_file(tmp_path: Path, clients: dict[str, object]) -> Path:
    path = tmp_path / "api_keys.json"
    path.write_bytes(orjson.dumps(clients))
    return path


def test_webhook_fields_default_to_none() -> None:
    assert (DEFAULT.webhook_url, DEFAULT.webhook_events, DEFAULT.webhook_secret) == (None, None, None)


def test_the_keys_file_gives_a_client_its_webhook_and_secret(tmp_path: Path) -> None:
    path = keys_file(
        tmp_path,
        {
            "caf": {
                "key": "key-caf",
                "webhook_url": "https://hooks.caf.example/spp",
                "webhook_events": ["failed"],
                "webhook_secret": SECRET,
            },
            "plain": "key-plain",
        },
    )
    ring = KeyRing(make_settings(ENV="unittest", API_KEYS_FILE=str(path)))
    caf = ring.identify("key-caf")
    assert caf is not None
    assert caf.policy.webhook_url == "https://hooks.caf.example/spp"
    assert caf.policy.webhook_events == ["failed"]
    assert caf.policy.webhook_secret == SECRET
    plain = ring.identify("key-plain")
    assert plain is not None
    assert plain.policy.webhook_url is None
    assert plain.policy.webhook_secret is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"webhook_url": "ftp://hooks.example/"}, "webhook_url"),
        ({"webhook_url": "https://user:pw@hooks.example/"}, "webhook_url"),
        ({"webhook_events": ["started"]}, "webhook_events"),
        ({"webhook_events": []}, "webhook_events"),
        ({"webhook_secret": "not-a-secret"}, "webhook_secret"),
        ({"webhook_secret": "whsec_" + base64.b64encode(b"x" * 8).decode()}, "webhook_secret"),
    ],
)
def test_a_wrong_webhook_field_is_named_with_its_client(tmp_path: Path, fields: dict[str, object], named: str) -> None:
    path = keys_file(tmp_path, {"caf": {"key": "key-caf", **fields}})
    with pytest.raises(ValueError, match=f"client 'caf': {named}") as raised:
        read_keys_file(path, DEFAULT)
    assert "not-a-secret" not in str(raised.value)


def test_a_private_default_webhook_is_the_operators_choice() -> None:
    """The keys file is the operator's: its webhook_url's address is checked at delivery (WEBHOOK_ALLOWED_HOSTS)."""
    policy = client_policy(DEFAULT, {"webhook_url": "http://10.0.0.5:8080/hook"})
    assert policy.webhook_url == "http://10.0.0.5:8080/hook"


def test_the_secret_is_never_serialized() -> None:
    policy = client_policy(DEFAULT, {"webhook_url": "https://hooks.example/", "webhook_secret": SECRET})
    assert "webhook_secret" not in policy.model_dump()
    assert SECRET not in policy.model_dump_json()
    assert SECRET not in repr(policy)
    usage = ClientUsage(queued_jobs=0, tokens_today=0, active_batches=0, stored_bytes=0, streams=0, uploads=0)
    shown = UsagePublic(client="caf", policy=policy, usage=usage).model_dump_json()
    assert SECRET not in shown
    assert "https://hooks.example/" in shown


def test_the_secret_survives_a_policy_built_on_another() -> None:
    """client_policy starts from a dump of the default policy, which leaves the secret out."""
    own = client_policy(DEFAULT, {"webhook_secret": SECRET})
    assert client_policy(own, {"weight": 2}).webhook_secret == SECRET


def test_a_job_without_a_webhook_gets_its_clients_default() -> None:
    policy = client_policy(DEFAULT, {"webhook_url": "https://hooks.example/", "webhook_events": ["failed"]})
    spec = job_webhook(None, policy)
    assert spec is not None
    assert (spec.url, spec.events) == ("https://hooks.example/", ["failed"])
    everything = job_webhook(None, client_policy(DEFAULT, {"webhook_url": "https://hooks.example/"}))
    assert everything is not None
    assert everything.events == ["succeeded", "failed", "cancelled"]
    own = WebhookSpec(url="https://own.example/")
    assert job_webhook(own, policy) is own
    assert job_webhook(None, DEFAULT) is None
