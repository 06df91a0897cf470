"""Acronyms of French public administration, spelled out in a citizen's text before it goes into a prompt.

Citizens write "la CAF", "mon RSA", "l'ANTS" without explaining them; inserting each expansion in parentheses
once, where the acronym first appears, lets the model understand the message without otherwise altering it.
The list is `shared/data/acronyms.csv`.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Mapping
from importlib import resources

DATA_FILE = "data/acronyms.csv"
HEADER = ["acronym", "expansion"]

# Whole words only, case-sensitive. `\w` is Unicode-aware, so "CAFÉ", "MCAF" and "CAF2" do not contain "CAF",
# while apostrophes and punctuation are boundaries ("l'ANTS", "la CAF."). A hyphenated compound is one word:
# "CMU-C" is not "CMU", so that no expansion is ever inserted inside a compound.
_BEFORE = r"(?<!\w)(?<!\w-)"
_AFTER = r"(?!\w)(?!-\w)"
_PARENTHESIS_NEXT = re.compile(r"\s*\(")


@functools.cache
def load_acronyms() -> dict[str, str]:
    """The packaged acronym list, read once: acronym -> expansion. Callers must not mutate the shared dict.

    Raises ValueError on a malformed file (header, field count, empty field, duplicate acronym).
    """
    text = resources.files("shared").joinpath(DATA_FILE).read_text(encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header != HEADER:
        raise ValueError(f"{DATA_FILE}: header must be {','.join(HEADER)}, got {header!r}")
    acronyms: dict[str, str] = {}
    for row in reader:
        fields = [field.strip() for field in row]
        if len(fields) != 2 or not all(fields):
            raise ValueError(f"{DATA_FILE}, line {reader.line_num}: expected two non-empty fields, got {row!r}")
        acronym, expansion = fields
        if acronym in acronyms:
            raise ValueError(f"{DATA_FILE}, line {reader.line_num}: duplicate acronym {acronym!r}")
        acronyms[acronym] = expansion
    return acronyms


@functools.lru_cache(maxsize=16)
def _pattern(acronyms: frozenset[str]) -> re.Pattern[str]:
    """One regex matching any of `acronyms` as a whole word, longest first ("CMU-C" before "CMU").

    Cached on the set of acronyms rather than on the mapping's identity: a mapping edited in place, or a new one
    at a recycled id, can never be matched with a stale pattern, and building the key costs microseconds.
    """
    alternatives = "|".join(re.escape(acronym) for acronym in sorted(acronyms, key=lambda a: (-len(a), a)))
    return re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}")


def _fold(text: str) -> str:
    """Case-insensitive form for comparisons; accents stay significant, the typographic apostrophe is the plain one."""
    return text.casefold().replace("\u2019", "'")


def expand_acronyms(
    text: str,
    acronyms: Mapping[str, str] | None = None,
    *,
    max_candidates: int = 10,
    window: int = 150,
) -> str:
    """`text` with each known acronym followed by ` (its expansion)` at its first occurrence, and nothing else changed.

    `acronyms` defaults to `load_acronyms()`. Acronyms match as whole words, case-sensitively: "CAF" is
    expanded, "caf" and "Caf" are not. Only the first occurrence of an acronym is considered, and it is left
    alone when the text already explains it there: when the next non-blank character is "(", or when the
    expansion appears (case-insensitively) within `window` characters before or after it. Later occurrences
    are never touched, and an expansion is inserted at most once even when variants share it ("DGFiP" and
    "DGFIP", "CSS" and "C2S").

    The candidates are the distinct known acronyms found in the text, whether or not they would be expanded;
    repeating an acronym does not add a candidate. A text with more than `max_candidates` of them is returned
    unchanged: so dense a text is more likely a list, a table or a code excerpt than a citizen's prose, and
    a parenthesis after every other word would make it harder to read, not easier.
    """
    mapping = load_acronyms() if acronyms is None else acronyms
    if not mapping:
        return text
    first: dict[str, re.Match[str]] = {}  # in order of first occurrence
    for match in _pattern(frozenset(mapping)).finditer(text):
        first.setdefault(match.group(), match)
        if len(first) > max_candidates:
            return text
    pieces: list[str] = []
    copied = 0
    inserted: set[str] = set()
    for acronym, match in first.items():
        expansion = mapping[acronym]
        if expansion in inserted or _PARENTHESIS_NEXT.match(text, match.end()):
            continue
        nearby = text[max(0, match.start() - window) : match.end() + window]
        if _fold(expansion) in _fold(nearby):
            continue
        pieces += (text[copied : match.end()], f" ({expansion})")
        copied = match.end()
        inserted.add(expansion)
    pieces.append(text[copied:])
    return "".join(pieces)
