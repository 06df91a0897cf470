"""`pack_in_pieces`, the GIL-friendly encoder of large commands, writes what hiredis writes."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis import exceptions

from api.multiplex import pack_in_pieces

ARGUMENT = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(st.lists(ARGUMENT, min_size=1, max_size=20))
def test_the_same_bytes_as_hiredis(args: list[str | bytes | int | float]) -> None:
    command = ("EVALSHA", *args)
    assert pack_in_pieces(command) == hiredis.pack_command(command)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrong", [None, True, [1]])
def test_what_redis_cannot_take_is_refused(wrong: object) -> None:
    with pytest.raises(exceptions.DataError, match="cannot send"):
        pack_in_pieces(("SET", "key", wrong))  # type: ignore[arg-type]
