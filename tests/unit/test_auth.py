"""API keys: the header, the keys file and its reload, lookup by digest, owners never holding keys."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from api.auth import Client, KeyRing, Unauthorized, read_keys_file
from shared.policy import default_policy
from shared.settings import EXAMPLE_API_KEYS, strip_bearer, weak_api_key
from tests.unit.conftest import make_settings

DEFAULT = default_policy(make_settings())


def key(name: str) -> str:
    """A key long enough for staging and prod: `name`, then dashes up to 40 characters."""
    return name.ljust(40, "-")


def write_keys(path: Path, keys: dict[str, object]) -> None:
    path.write_bytes(orjson.dumps(keys))


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api_keys.json"
    write_keys(path, {"platform": f"Bearer {key('platform')}", "dashboard": key("dashboard")})
    return path


def test_keys_file_values_may_carry_the_bearer_prefix(keys_file: Path) -> None:
    assert read_keys_file(keys_file, DEFAULT) == {
        key("platform"): Client("platform", {}),
        key("dashboard"): Client("dashboard", {}),
    }


@pytest.mark.parametrize("content", [b"[]", b'{"a": 1}', b"not json"])
def test_a_malformed_keys_file_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="API_KEYS_FILE"):
        read_keys_file(path, DEFAULT)


def test_prod_accepts_a_known_key_and_names_its_client(keys_file: Path) -> None:
    ring = KeyRing(make_settings(ENV="prod", API_KEYS_FILE=str(keys_file)))
    caller = ring.authenticate(f"Bearer {key('platform')}")
    assert caller.name == "platform"
    assert key("platform") not in caller.owner


@pytest.mark.parametrize(
    "header",
    [None, "", key("platform"), f"Basic {key('platform')}", "Bearer ", "Bearer wrong", f"Bearer {key('platform')}2"],
)
def test_prod_refuses_missing_malformed_or_unknown_credentials(keys_file: Path, header: str | None) -> None:
    ring = KeyRing(make_settings(ENV="prod", API_KEYS_FILE=str(keys_file)))
    with pytest.raises(Unauthorized):
        ring.authenticate(header)


def test_each_of_many_keys_names_its_own_client(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    write_keys(path, {f"client-{index}": key(f"{index:05d}") for index in range(5000)})
    ring = KeyRing(make_settings(ENV="prod", API_KEYS_FILE=str(path)))
    assert len(ring) == 5000
    for index in (0, 1, 2500, 4999):
        assert ring.authenticate(f"Bearer {key(f'{index:05d}')}").name == f"client-{index}"
    for near in ("0000", "000000", "KEY-00001", "05000"):
        with pytest.raises(Unauthorized):
            ring.authenticate(f"Bearer {key(near)}")


def test_keys_from_the_environment(keys_file: Path) -> None:
    ring = KeyRing(make_settings(ENV="staging", API_KEYS=f"{key('k1')}, Bearer {key('k2')}"))
    assert ring.authenticate(f"Bearer {key('k1')}").owner != ring.authenticate(f"Bearer {key('k2')}").owner
    with pytest.raises(Unauthorized):
        ring.authenticate(f"Bearer {key('k3')}")


@pytest.mark.parametrize("env", ["dev", "unittest"])
def test_dev_accepts_any_token_but_requires_the_header(env: str) -> None:
    ring = KeyRing(make_settings(ENV=env))
    assert ring.authenticate("Bearer anything").name == "dev"
    assert ring.authenticate("raw-token-as-the-seed-allowed").name == "dev"
    with pytest.raises(Unauthorized):
        ring.authenticate(None)


def test_dev_tokens_still_isolate_their_jobs() -> None:
    ring = KeyRing(make_settings(ENV="dev"))
    assert ring.authenticate("Bearer a").owner != ring.authenticate("Bearer b").owner
    assert ring.authenticate("Bearer a").owner == ring.authenticate("Bearer a").owner


def test_the_keys_file_is_reread_when_it_changes(keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.auth._RECHECK_SECONDS", 0.0)
    ring = KeyRing(make_settings(ENV="prod", API_KEYS_FILE=str(keys_file)))
    owner = ring.authenticate(f"Bearer {key('platform')}").owner
    write_keys(keys_file, {"platform": key("rotated"), "newcomer": key("new")})
    touch(keys_file)
    assert ring.authenticate(f"Bearer {key('new')}").name == "newcomer"
    assert ring.authenticate(f"Bearer {key('rotated')}").owner == owner, "the client keeps its jobs across a rotation"
    with pytest.raises(Unauthorized):
        ring.authenticate(f"Bearer {key('platform')}")


def touch(path: Path) -> None:
    """A new modification time, as a save gives, even within the file system's clock tick."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_in_dev_a_broken_keys_file_keeps_the_keys_loaded_before(
    keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.auth._RECHECK_SECONDS", 0.0)
    ring = KeyRing(make_settings(ENV="dev", API_KEYS_FILE=str(keys_file)))
    keys_file.write_text("{ half written")
    assert ring.authenticate(f"Bearer {key('platform')}").name == "platform"


@pytest.mark.parametrize("env", ["staging", "prod"])
@pytest.mark.parametrize(
    "breakage",
    [
        lambda path: path.write_text("{ half written"),
        lambda path: path.unlink(),
        lambda path: write_keys(path, {"platform": key("platform"), "weak": "short"}),
    ],
    ids=["malformed", "gone", "a weak key"],
)
def test_a_keys_file_that_no_longer_loads_accepts_no_key_of_it_until_fixed(
    keys_file: Path, monkeypatch: pytest.MonkeyPatch, env: str, breakage: Callable[[Path], None]
) -> None:
    """Keeping the keys loaded before would undo the revocations of the save that broke the file."""
    monkeypatch.setattr("api.auth._RECHECK_SECONDS", 0.0)
    ring = KeyRing(make_settings(ENV=env, API_KEYS_FILE=str(keys_file), API_KEYS=key("from-env")))
    assert ring.authenticate(f"Bearer {key('platform')}").name == "platform"

    breakage(keys_file)
    if keys_file.exists():
        touch(keys_file)

    with pytest.raises(Unauthorized):
        ring.authenticate(f"Bearer {key('platform')}")
    assert ring.authenticate(f"Bearer {key('from-env')}"), "API_KEYS still holds"
    write_keys(keys_file, {"platform": key("platform")})
    touch(keys_file)
    assert ring.authenticate(f"Bearer {key('platform')}").name == "platform"


@pytest.mark.parametrize("env", ["staging", "prod"])
@pytest.mark.parametrize("weak", ["x" * 31, "change-me-to-a-long-random-key", "Bearer change-me-to-a-long-random-key"])
def test_staging_and_prod_refuse_a_short_or_example_key(tmp_path: Path, env: str, weak: str) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, {"platform": key("platform"), "careless": weak})
    with pytest.raises(ValueError, match="client 'careless': its key is") as info:
        KeyRing(make_settings(ENV=env, API_KEYS_FILE=str(path)))
    assert strip_bearer(weak) not in str(info.value), "the key is never shown"
    with pytest.raises(ValidationError, match="key 2 of API_KEYS is") as refused:
        make_settings(ENV=env, API_KEYS=f"{key('a')},{weak}")
    assert strip_bearer(weak) not in refused.value.errors()[0]["msg"]


def test_dev_takes_any_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, {"platform": "short"})
    assert KeyRing(make_settings(ENV="dev", API_KEYS_FILE=str(path), API_KEYS="k1")).identify("short")


def test_the_example_keys_file_holds_only_keys_refused_in_prod() -> None:
    """EXAMPLE_API_KEYS follows api_keys.example.json."""
    example = orjson.loads((Path(__file__).parents[2] / "api_keys.example.json").read_bytes())
    assert {strip_bearer(value) for value in example.values()} == EXAMPLE_API_KEYS
    assert all(weak_api_key(key) for key in EXAMPLE_API_KEYS)


def test_a_client_may_have_its_own_policy_the_defaults_fill_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, {"big": {"key": key("big"), "weight": 3, "max_queued_jobs": 50}, "small": key("small")})
    ring = KeyRing(make_settings(ENV="prod", API_KEYS_FILE=str(path), CLIENT_MAX_RUNNING_JOBS=7))

    big, small = ring.authenticate(f"Bearer {key('big')}"), ring.authenticate(f"Bearer {key('small')}")

    assert (big.name, big.policy.weight, big.policy.max_queued_jobs) == ("big", 3, 50)
    assert big.policy.max_running_jobs == small.policy.max_running_jobs == 7, "the CLIENT_* settings"
    assert small.policy == ring.default_policy


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"key": "k", "weight": 0}, "weight"),
        ({"key": "k", "max_priorty": 3}, "max_priorty: unknown"),
        ({"key": "k", "max_priority": 12}, "max_priority"),
        ({"weight": 2}, "expected a key"),
    ],
)
def test_a_wrong_policy_names_the_client_and_the_field(tmp_path: Path, entry: dict[str, object], named: str) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, {"platform": entry})
    with pytest.raises(ValueError, match="API_KEYS_FILE") as info:
        read_keys_file(path, DEFAULT)
    assert "'platform'" in str(info.value)
    assert named in str(info.value)


def test_a_reload_changes_a_client_s_policy(keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.auth._RECHECK_SECONDS", 0.0)
    ring = KeyRing(make_settings(ENV="prod", API_KEYS_FILE=str(keys_file)))
    assert ring.authenticate(f"Bearer {key('platform')}").policy.weight == 1
    write_keys(keys_file, {"platform": {"key": key("platform"), "weight": 4.5}})
    touch(keys_file)
    assert ring.authenticate(f"Bearer {key('platform')}").policy.weight == 4.5
