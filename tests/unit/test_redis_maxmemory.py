"""REDIS_MAXMEMORY: what `make run`'s redis-server is given."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.unit.conftest import make_settings


@pytest.mark.parametrize(
    ("value", "expected"), [("1gb", "1gb"), (" 512MB ", "512mb"), ("2097152", "2097152"), ("", None), ("0", None)]
)
def test_redis_maxmemory_as_redis_takes_it(value: str, expected: str | None) -> None:
    assert make_settings(REDIS_MAXMEMORY=value).redis_maxmemory == expected


def test_the_default_is_one_gigabyte() -> None:
    assert make_settings().redis_maxmemory == "1gb"


@pytest.mark.parametrize("value", ["1 tb", "lots", "-1", "1.5gb"])
def test_a_value_redis_would_not_take_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="REDIS_MAXMEMORY"):
        make_settings(REDIS_MAXMEMORY=value)
