"""JSON parsed a piece at a time, so that no single call holds the GIL for long.

orjson parses a 32 MiB body in 50 to 150 ms and 16 million small values in 2 s, in one C call that holds the GIL
all along: run in a worker thread, it stops the event loop as surely as on the loop itself (the loop's thread waits
for the GIL until the call returns). `loads` returns what `orjson.loads` returns, and refuses what it refuses, but
gives orjson a document larger than PIECE_BYTES a piece at a time: the elements of a large array and the members of
a large object (several at once while they are small), a large string in slices. Between two pieces the interpreter
hands the GIL to a thread that waits for it (after `sys.getswitchinterval()`, 5 ms), so the loop keeps answering.

Only the nesting of containers larger than PIECE_BYTES is limited further than orjson does: MAX_LARGE_DEPTH.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

PIECE_BYTES = 1 << 16
"""The most bytes given to orjson at once, but for a number or literal of its own longer than this (it has no
structure to cut). 64 KiB of the densest JSON (`0,0,0...`) parse in about 4 ms on a slow 2-core machine."""
MAX_LARGE_DEPTH = 64
"""Containers larger than PIECE_BYTES nested in each other (the smaller ones have orjson's limit, 1024)."""

_WHITESPACE = re.compile(rb"[ \t\n\r]*+")
# A run of whole characters and escapes of a string's body: it stops at the closing quote, at an invalid escape, or
# at its end position (then, possibly inside a UTF-8 sequence: see `_string`). A surrogate pair is one token, so that
# a slice never separates its halves (each half alone is not valid).
_STRING_BODY = re.compile(
    rb'(?:[^"\\]++|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[0-9a-fA-F]{4}|\\u(?![dD][89abAB])[0-9a-fA-F]{4}|\\["\\/bfnrt])*+'
)
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*+")
_AFTER_SCALAR = frozenset(b" \t\n\r,]}")


class TooManyItems(ValueError):
    """The document is an array with more than `max_items` elements (raised before the others are parsed)."""

    def __init__(self, max_items: int) -> None:
        super().__init__(f"more than {max_items} items")
        self.max_items = max_items


def loads(raw: bytes, *, max_items: int | None = None) -> Any:
    """`orjson.loads(raw)`, a piece at a time when `raw` is larger than PIECE_BYTES (see the module).

    Raises orjson.JSONDecodeError for invalid JSON (its position is in `raw`), TooManyItems when `raw` is an array of
    more than `max_items` elements.
    """
    if len(raw) <= PIECE_BYTES:
        value = orjson.loads(raw)
    else:
        document = _Document(raw, max_items)
        value, end = document.value(0, 0)
        if document.skip(end) != len(raw):
            raise _error("unexpected content after document", document.skip(end))
    if max_items is not None and isinstance(value, list) and len(value) > max_items:
        raise TooManyItems(max_items)
    return value


def _error(message: str, pos: int) -> orjson.JSONDecodeError:
    return orjson.JSONDecodeError(message, "", pos)


class _Document:
    def __init__(self, raw: bytes, max_items: int | None) -> None:
        self.raw = raw
        self.view = memoryview(raw)
        self.size = len(raw)
        self.max_items = max_items

    def skip(self, pos: int) -> int:
        """The position of the first non-whitespace byte from `pos` (a window at a time)."""
        while True:
            end = _WHITESPACE.match(self.raw, pos, pos + PIECE_BYTES).end()  # type: ignore[union-attr]
            if end < pos + PIECE_BYTES or end >= self.size:
                return end
            pos = end

    def boundary(self, end: int) -> int:
        """`end`, or before it the start of the UTF-8 sequence that it would cut (orjson refuses a cut one)."""
        while end < self.size and self.raw[end] & 0xC0 == 0x80:
            end -= 1
        return end

    def offset(self, start: int, end: int, chars: int) -> int:
        """The position in `raw` of orjson's error position `chars` (a count of characters) in `raw[start:end]`."""
        data = self.raw[start:end]
        return start + (chars if data.isascii() else len(data.decode(errors="replace")[:chars].encode()))

    def parse(self, start: int, end: int) -> Any:
        """orjson on `raw[start:end]`, its errors placed in `raw`."""
        try:
            return orjson.loads(self.view[start:end])
        except orjson.JSONDecodeError as exc:
            raise _error(exc.msg, self.offset(start, end, exc.pos)) from None

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        """The value at `pos` (whitespace skipped) and the position after it."""
        pos = self.skip(pos)
        if pos >= self.size:
            raise _error("unexpected end of data", pos)
        end = self.boundary(min(pos + PIECE_BYTES, self.size))
        try:
            value = orjson.loads(self.view[pos:end])
        except orjson.JSONDecodeError as exc:
            if exc.msg == "unexpected content after document":  # the value ends in this window
                stop = self.offset(pos, end, exc.pos)
                return self.parse(pos, stop), stop
            if end == self.size:
                raise _error(exc.msg, self.offset(pos, end, exc.pos)) from None
        else:  # the value is the whole window, unless the window cut a number
            if end == self.size or self.raw[end] in _AFTER_SCALAR:
                return value, end
        first = self.raw[pos]
        if first == ord("["):
            return self.array(pos, depth + 1)
        if first == ord("{"):
            return self.object(pos, depth + 1)
        if first == ord('"'):
            return self.string(pos)
        stop = pos
        while True:  # a number or literal longer than a window: unusual, but valid
            end = _SCALAR.match(self.raw, stop, stop + PIECE_BYTES).end()  # type: ignore[union-attr]
            if end < stop + PIECE_BYTES:
                return self.parse(pos, end), end
            stop = end

    def string(self, pos: int) -> tuple[str, int]:
        """A string longer than PIECE_BYTES, decoded in slices of whole characters and escapes."""
        pieces: list[str] = []
        start = pos + 1
        while True:
            stop = _STRING_BODY.match(self.raw, start, min(start + PIECE_BYTES, self.size)).end()  # type: ignore[union-attr]
            while start < stop < self.size and self.raw[stop] & 0xC0 == 0x80:
                stop -= 1  # back to the start of the UTF-8 sequence that the window cut
            if stop == start and (stop >= self.size or self.raw[stop] != ord('"')):
                what = "unexpected end of data" if stop >= self.size else "invalid escape or character in a string"
                raise _error(what, stop)
            try:
                pieces.append(orjson.loads(b'"' + self.raw[start:stop] + b'"'))
            except orjson.JSONDecodeError as exc:
                raise _error(exc.msg, self.offset(start, stop, exc.pos - 1)) from None
            if stop < self.size and self.raw[stop] == ord('"'):
                return "".join(pieces), stop + 1
            start = stop

    def _run(self, pos: int, wrap: tuple[bytes, bytes], add: Callable[[Any], None]) -> int:
        """Parse in one orjson call the elements (or members) from `pos` up to a comma of the next window; returns the
        position of that comma, or `pos` when no run of whole elements ends at the commas tried.

        `[` + the elements up to a comma + `]` parses only if that comma separates two elements: a comma inside a
        string or a nested container leaves that string or container open. The commas tried are the last one after a
        closing bracket (arrays of objects), then the last one (arrays of numbers), each unless an odd number of
        quotes before it tells that it is inside a string (a guess, which only saves orjson a failing parse).
        """
        end = min(pos + PIECE_BYTES, self.size)
        if end == self.size:
            return pos
        tried = pos
        for token, shift in ((b"},", 1), (b"],", 1), (b",", 0)):
            comma = self.raw.rfind(token, pos, end) + shift
            if comma <= pos or comma == tried:
                continue
            tried = comma
            if (self.raw.count(b'"', pos, comma) - self.raw.count(b'\\"', pos, comma)) % 2:
                continue
            try:
                add(orjson.loads(wrap[0] + self.raw[pos:comma] + wrap[1]))
            except orjson.JSONDecodeError:
                continue
            return comma
        return pos

    def array(self, pos: int, depth: int) -> tuple[list[Any], int]:
        if depth > MAX_LARGE_DEPTH:
            raise _error(f"more than {MAX_LARGE_DEPTH} nested containers larger than {PIECE_BYTES} bytes", pos)
        items: list[Any] = []
        top = depth == 1 and self.max_items is not None
        pos = self.skip(pos + 1)
        if pos < self.size and self.raw[pos] == ord("]"):
            return items, pos + 1
        runs = True  # until a run fails: then the elements are large, and parsed one by one
        while True:
            after = self._run(pos, (b"[", b"]"), items.extend) if runs else pos
            if after == pos:
                runs = False
                item, after = self.value(pos, depth)
                items.append(item)
            if top and len(items) > self.max_items:  # type: ignore[operator]
                raise TooManyItems(self.max_items)  # type: ignore[arg-type]
            pos = self.skip(after)
            if pos >= self.size:
                raise _error("unexpected end of data", pos)
            if self.raw[pos] == ord("]"):
                return items, pos + 1
            if self.raw[pos] != ord(","):
                raise _error("expected ',' or ']'", pos)
            pos = self.skip(pos + 1)

    def object(self, pos: int, depth: int) -> tuple[dict[str, Any], int]:
        if depth > MAX_LARGE_DEPTH:
            raise _error(f"more than {MAX_LARGE_DEPTH} nested containers larger than {PIECE_BYTES} bytes", pos)
        members: dict[str, Any] = {}
        pos = self.skip(pos + 1)
        if pos < self.size and self.raw[pos] == ord("}"):
            return members, pos + 1
        runs = True
        while True:
            after = self._run(pos, (b"{", b"}"), members.update) if runs else pos
            if after == pos:
                runs = False
                if pos >= self.size or self.raw[pos] != ord('"'):
                    raise _error("expected a string key", pos)
                key, after = self.value(pos, depth)
                after = self.skip(after)
                if after >= self.size or self.raw[after] != ord(":"):
                    raise _error("expected ':'", after)
                members[key], after = self.value(after + 1, depth)
            pos = self.skip(after)
            if pos >= self.size:
                raise _error("unexpected end of data", pos)
            if self.raw[pos] == ord("}"):
                return members, pos + 1
            if self.raw[pos] != ord(","):
                raise _error("expected ',' or '}'", pos)
            pos = self.skip(pos + 1)
