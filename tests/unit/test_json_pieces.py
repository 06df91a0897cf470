"""`json_pieces.loads` is `orjson.loads`, parsed a piece at a time: the same values, the same refusals, and no
single orjson call given more than PIECE_BYTES of structure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import json_pieces
from api.json_pieces import TooManyItems, loads

_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_TEXT, children, max_size=6),
    max_leaves=40,
)


def _spaced(raw: bytes, every: int) -> bytes:
    """`raw` with whitespace after every `every`-th comma or colon outside strings, as a pretty printer might."""
    out, in_string, escaped, count = bytearray(), False, False, 0
    for byte in raw:
        out.append(byte)
        if in_string:
            in_string = escaped or byte != ord('"')
            escaped = not escaped and byte == ord("\\")
        elif byte == ord('"'):
            in_string = True
        elif byte in b",:":
            count += 1
            if count % every == 0:
                out += b" \n\t "
    return bytes(out)


@pytest.fixture(params=[16, 24, 64])
def small_pieces(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """PIECE_BYTES made tiny, so that small documents take every path of the large ones (a piece must hold the
    longest token that cannot be cut: a surrogate pair's two escapes, 12 bytes)."""
    monkeypatch.setattr(json_pieces, "PIECE_BYTES", request.param)
    return int(request.param)


@settings(max_examples=300, deadline=None, database=None)
@given(value=_JSON, every=st.integers(1, 5))
def test_any_document_parses_as_orjson_parses_it(value: Any, every: int) -> None:
    for pieces in (16, 24, 64):
        json_pieces.PIECE_BYTES = pieces
        try:
            for raw in (orjson.dumps(value), _spaced(orjson.dumps(value), every)):
                assert loads(raw) == orjson.loads(raw)
        finally:
            json_pieces.PIECE_BYTES = 1 << 16


@pytest.mark.parametrize(
    "raw",
    [
        b'[{"a": "x,y"}, {"b": [1, 2, "],"]}, "\\u00e9\\ud83d\\ude00 \\"q\\", fin", 123456789012345678901234567890]',
        b'{"prompt": "' + "ééé, ùù ".encode() * 20 + b'", "metadata": {"k": [1, 2.5e10, true, false, null]}}',
        b'  [ "' + b"\\n\\t\\\\" * 30 + b'" , 1e-7 , -0.0 , {} , [] , [[]] ]  ',
        b'{"a": 1, "a": 2, "b": {"a": 3, "a": 4}}',  # duplicate keys: the last wins, as with orjson
    ],
)
def test_tricky_documents(raw: bytes, small_pieces: int) -> None:
    assert loads(raw) == orjson.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2, 3",
        b"[1, 2,, 3]",
        b'{"a": 1 "b": 2}',
        b'{"a" 1}',
        b'{1: 2, "long enough to be cut": 3}',
        b'["unterminated string',
        b'["bad escape \\x in here", 1, 2, 3]',
        b'["lone surrogate \\ud83d in here", 1, 2]',
        b'["' + "é".encode()[:1] + b' invalid UTF-8", 1, 2]',
        b"[1, 2] trailing",
        b"[" * 3000 + b"]" * 3000,
        b"[tru, 1, 2, 3, 4, 5]",
        b"[NaN, 1, 2, 3, 4, 5]",
        b"",
    ],
)
def test_invalid_documents_are_refused(raw: bytes, small_pieces: int) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    with pytest.raises(orjson.JSONDecodeError):
        loads(raw)


def test_an_array_with_too_many_items_is_refused_before_the_rest_is_parsed(small_pieces: int) -> None:
    raw = b"[" + b",".join(b"1" for _ in range(10_000)) + b", oops]"  # invalid only after the limit
    with pytest.raises(TooManyItems):
        loads(raw, max_items=10)
    assert loads(b"[1, 2, 3]", max_items=3) == [1, 2, 3]


def test_no_orjson_call_is_given_more_than_a_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_pieces, "PIECE_BYTES", 1024)
    sizes: list[int] = []
    real = orjson.loads

    def spy(data: Any) -> Any:
        sizes.append(len(data))
        return real(data)

    monkeypatch.setattr(orjson, "loads", spy)
    jobs = [{"prompt": "Ma demande à la CAF, " * 200, "metadata": {"n": index}} for index in range(50)]
    raw = orjson.dumps({"jobs": jobs, "zeros": [0] * 5000, "long": "x" * 10_000})
    assert loads(raw) == real(raw)
    assert len(raw) > 100_000
    # A piece, plus the two brackets around a run of elements.
    assert max(sizes) <= 1024 + 2
