"""Acronyms of French public administration, spelled out in a citizen's text before it goes into a prompt.

Citizens write "la CAF", "mon RSA", "l'ANTS" without explaining them; inserting each expansion in parentheses
once, where the acronym first appears, lets the model understand the message without otherwise altering it.
The list is `shared/data/acronyms.csv`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import re
from collections.abc import Iterable, Mapping
from importlib import resources

DATA_FILE = "data/acronyms.csv"
HEADER = ["acronym", "expansion"]

# Whole words only, case-sensitive. `\w` is Unicode-aware, so "CAFÉ", "MCAF" and "CAF2" do not contain "CAF",
# while apostrophes and punctuation are boundaries ("l'ANTS", "la CAF."). A hyphenated compound is one word:
# "CMU-C" is not "CMU", so that no expansion is ever inserted inside a compound. An acronym is therefore always
# a whole compound, `\w+(?:-\w+)*`, and the text is read as such compounds, each looked up in the mapping.
_WORD = re.compile(r"\w+(?:-\w+)*")
_PARENTHESIS_NEXT = re.compile(r"\s*\(")


@functools.cache
def load_acronyms() -> dict[str, str]:
    """The packaged acronym list, read once: acronym -> expansion. Callers must not mutate the shared dict.

    Raises ValueError on a malformed file (header, field count, empty field, duplicate acronym, an acronym that
    is not a word: letters, digits and inner hyphens).
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
        if not _WORD.fullmatch(acronym):
            raise ValueError(f"{DATA_FILE}, line {reader.line_num}: acronym {acronym!r} is not a word")
        acronyms[acronym] = expansion
    return acronyms


@functools.cache
def acronyms_version() -> str:
    """The first 12 hex digits of the SHA-256 of the packaged list's bytes: which version of the list expanded a
    job's text (its provenance), read once."""
    return hashlib.sha256(resources.files("shared").joinpath(DATA_FILE).read_bytes()).hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def _scanner(acronyms: frozenset[str]) -> re.Pattern[str]:
    """One regex matching the compounds of a text that may be one of `acronyms`: one linear scan of the text.

    A match starts at the start of a compound (neither after a word character nor after one and a hyphen), with a
    character that starts some acronym, and spans the whole compound, made only of characters found in acronyms:
    any other compound cannot be one. The first character comes before the lookbehinds so that the regex engine
    skips in C to the next such character (most of a French text, in lower case, is never tried); possessive
    quantifiers reject a compound that goes on with another character without backtracking.

    Cached on the set of acronyms rather than on the mapping's identity: a mapping edited in place, or a new one
    at a recycled id, can never be matched with a stale pattern, and building the key costs microseconds.
    Raises ValueError for an acronym that is not a word (letters, digits, inner hyphens).
    """
    for acronym in acronyms:
        if not _WORD.fullmatch(acronym):
            raise ValueError(f"acronym {acronym!r} is not a word (letters, digits, inner hyphens)")
    first = _charset(acronym[0] for acronym in acronyms)
    inner = _charset(char for acronym in acronyms for char in acronym if char != "-")
    body = f"{inner}*+(?:-{inner}++)*+" if inner else ""
    return re.compile(rf"{first}(?<!\w.)(?<!\w-.){body}(?!\w)(?!-\w)", re.DOTALL)


def _charset(chars: Iterable[str]) -> str:
    """A regex character class of `chars` (sorted, so that equal sets give equal patterns); "" when empty."""
    distinct = sorted(set(chars))
    return f"[{''.join(re.escape(char) for char in distinct)}]" if distinct else ""


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

    The text is read once, in time linear in its length. Raises ValueError when `acronyms` holds an acronym that
    is not a word (letters, digits, inner hyphens).
    """
    mapping = load_acronyms() if acronyms is None else acronyms
    if not mapping:
        return text
    first: dict[str, re.Match[str]] = {}  # in order of first occurrence
    for match in _scanner(known := frozenset(mapping)).finditer(text):
        word = match[0]
        if word in known and word not in first:
            first[word] = match
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
