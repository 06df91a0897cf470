"""Acronym expansion: whole-word matching, first occurrence only, the already-explained cases, and the data file."""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

import pytest

from shared.acronyms import expand_acronyms, load_acronyms

CAF = "Caisse d'allocations familiales"
RSA = "Revenu de solidarité active"
ANTS = "Agence nationale des titres sécurisés"
DGFIP = "Direction générale des finances publiques"

# Entries written with lowercase letters, as their organisations spell them.
MIXED_CASE = {"DGFiP", "DDFiP", "DRFiP", "PreParE", "PUMa"}

# Ordinary French words in capitals, or acronyms with two common meanings: never in the list.
EXCLUDED = {"ET", "OU", "LA", "LE", "DE", "DU", "AU", "SA", "CE", "CA", "AS", "ON", "IL", "UN", "NE", "SI", "TA", "PAS"}


def many(count: int) -> dict[str, str]:
    """`count` made-up acronyms X0, X1, …, each with its own expansion."""
    return {f"X{i}": f"Expansion {i}" for i in range(count)}


# ---- expansion ----------------------------------------------------------------------------------------


def test_single_acronym_is_expanded() -> None:
    assert expand_acronyms("J'ai écrit à la CAF hier") == f"J'ai écrit à la CAF ({CAF}) hier"


def test_only_first_occurrence_is_expanded() -> None:
    text = "La CAF m'a répondu que la CAF ne pouvait rien faire, CAF oblige."

    assert expand_acronyms(text) == f"La CAF ({CAF}) m'a répondu que la CAF ne pouvait rien faire, CAF oblige."


def test_two_different_acronyms_are_both_expanded() -> None:
    text = "Mon RSA a été suspendu par la CAF."

    assert expand_acronyms(text) == f"Mon RSA ({RSA}) a été suspendu par la CAF ({CAF})."


@pytest.mark.parametrize(
    "text",
    [
        f"J'ai appelé la {CAF.lower()} : la CAF ne répond pas.",
        f"La CAF ne répond pas, pourtant la {CAF.upper()} devrait.",
        "Caisse d’allocations familiales : la CAF ne répond pas.",
    ],
    ids=["before", "after", "typographic-apostrophe"],
)
def test_acronym_with_its_expansion_nearby_is_untouched(text: str) -> None:
    assert expand_acronyms(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{CAF}. {'x' * 200} La CAF.", f"{CAF}. {'x' * 200} La CAF ({CAF})."),
        (f"La CAF. {'x' * 200} {CAF}.", f"La CAF ({CAF}). {'x' * 200} {CAF}."),
    ],
    ids=["before", "after"],
)
def test_acronym_with_its_expansion_beyond_the_window_is_expanded(text: str, expected: str) -> None:
    assert expand_acronyms(text) == expected


def test_window_bounds_the_search_for_the_expansion() -> None:
    text = "Expansion 0 ..X0"  # the expansion ends 3 characters before the acronym

    assert expand_acronyms(text, many(1), window=len("Expansion 0 ..")) == text
    assert expand_acronyms(text, many(1), window=len("Expansion 0 ..") - 1) == "Expansion 0 ..X0 (Expansion 0)"


@pytest.mark.parametrize(
    "text",
    ["La CAF (caisse des allocations) a répondu.", "La CAF(caisse) a répondu.", "La CAF\n(la caisse) puis la CAF."],
)
def test_acronym_already_followed_by_a_parenthesis_is_untouched(text: str) -> None:
    assert expand_acronyms(text) == text


@pytest.mark.parametrize("text", ["Un CAFÉ", "La MCAF", "CAF2", "CAF_1", "Les CAFs", "ÉCAF", "CAF-MSA", "ex-CAF"])
def test_acronym_inside_another_word_is_not_expanded(text: str) -> None:
    assert expand_acronyms(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Écrit à la CAF.", f"Écrit à la CAF ({CAF})."),
        ("La CAF, puis", f"La CAF ({CAF}), puis"),
        ("Merci la CAF !", f"Merci la CAF ({CAF}) !"),
        ("La CAF?", f"La CAF ({CAF})?"),
        ("CAF", f"CAF ({CAF})"),
        ("«CAF»", f"«CAF ({CAF})»"),
        ("la CAF'", f"la CAF ({CAF})'"),
        ("J'ai contacté l'ANTS.", f"J'ai contacté l'ANTS ({ANTS})."),
        ("- CAF - RSA", f"- CAF ({CAF}) - RSA ({RSA})"),
    ],
)
def test_acronym_next_to_punctuation_is_expanded(text: str, expected: str) -> None:
    assert expand_acronyms(text) == expected


@pytest.mark.parametrize("text", ["la caf", "la Caf", "la cAF"])
def test_acronym_is_case_sensitive(text: str) -> None:
    assert expand_acronyms(text) == text


def test_mixed_case_acronym_matches_only_as_written() -> None:
    assert expand_acronyms("la DGFiP") == f"la DGFiP ({DGFIP})"
    assert expand_acronyms("la dgfip ou la Dgfip") == "la dgfip ou la Dgfip"


def test_variants_sharing_an_expansion_insert_it_once() -> None:
    assert expand_acronyms("la DGFiP, donc la DGFIP") == f"la DGFiP ({DGFIP}), donc la DGFIP"


def test_longest_acronym_wins() -> None:
    text = "Ma CMU-C remplace ma CMU."

    assert expand_acronyms(text) == (
        "Ma CMU-C (Couverture maladie universelle complémentaire) remplace ma CMU (Couverture maladie universelle)."
    )


def test_more_than_max_candidates_leaves_text_unchanged() -> None:
    text = " ".join(many(11))

    assert expand_acronyms(text, many(11)) == text


def test_exactly_max_candidates_are_expanded() -> None:
    text = " ".join(many(10)) + " X0 X1"  # repeats are not new candidates

    expanded = expand_acronyms(text, many(10))

    assert expanded == " ".join(f"X{i} (Expansion {i})" for i in range(10)) + " X0 X1"


def test_max_candidates_is_configurable() -> None:
    assert expand_acronyms("X0 X1", many(2), max_candidates=1) == "X0 X1"


def test_empty_mapping_leaves_text_unchanged() -> None:
    assert expand_acronyms("la CAF", {}) == "la CAF"


def test_long_text_is_expanded() -> None:
    text = ("Bonjour, j'ai écrit à la CAF au sujet de mon RSA et je n'ai aucune réponse. " * 300)[:20_000]

    expanded = expand_acronyms(text)

    assert expanded.count(f"CAF ({CAF})") == 1
    assert expanded.count(f"RSA ({RSA})") == 1
    assert len(expanded) == len(text) + len(f" ({CAF})") + len(f" ({RSA})")


# ---- data file ----------------------------------------------------------------------------------------


def test_data_file_has_enough_unique_complete_entries() -> None:
    text = resources.files("shared").joinpath("data/acronyms.csv").read_text(encoding="utf-8")
    header, *rows = csv.reader(text.splitlines())

    assert header == ["acronym", "expansion"]
    assert len(rows) >= 250
    assert all(len(row) == 2 and all(field.strip() == field != "" for field in row) for row in rows)
    assert len({acronym for acronym, _ in rows}) == len(rows)
    assert load_acronyms() == dict(rows)


def test_data_file_is_loaded_once() -> None:
    assert load_acronyms() is load_acronyms()


def test_acronyms_are_capitals_and_digits_except_known_mixed_case() -> None:
    acronyms = load_acronyms()
    mixed = {acronym for acronym in acronyms if not re.fullmatch(r"[A-Z0-9]+(?:-[A-Z0-9]+)*", acronym)}

    assert mixed == MIXED_CASE
    assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]*", acronym) for acronym in mixed)


@pytest.mark.parametrize("acronym", sorted(MIXED_CASE))
def test_mixed_case_entries_match_case_sensitively(acronym: str) -> None:
    expansion = load_acronyms()[acronym]

    assert expand_acronyms(f"la {acronym}") == f"la {acronym} ({expansion})"
    assert expand_acronyms(f"la {acronym.lower()}") == f"la {acronym.lower()}"


def test_expansions_start_with_a_capital() -> None:
    assert all(expansion[0].isupper() for expansion in load_acronyms().values())


def test_ambiguous_words_are_not_acronyms() -> None:
    assert EXCLUDED.isdisjoint(load_acronyms())


# ---- malformed data file --------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make `load_acronyms` read `<tmp_path>/data/acronyms.csv` instead of the packaged file."""
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(resources, "files", lambda _package: tmp_path)
    load_acronyms.cache_clear()
    yield tmp_path / "data"
    load_acronyms.cache_clear()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sigle,expansion\nCAF,Caisse\n", "header"),
        ("acronym,expansion\nCAF,\n", "line 2"),
        ("acronym,expansion\nCAF,Caisse,extra\n", "line 2"),
        ("acronym,expansion\nCAF,Caisse\nRSA,Revenu\nCAF,Autre\n", "duplicate acronym 'CAF'"),
    ],
    ids=["header", "empty-field", "extra-field", "duplicate"],
)
def test_malformed_data_file_is_rejected(data_dir: Path, content: str, message: str) -> None:
    (data_dir / "acronyms.csv").write_text(content, encoding="utf-8")

    with pytest.raises(ValueError, match=message):
        load_acronyms()


# ---- one linear scan, as the former regex alternation did -------------------------------------------------


def _reference(text: str, acronyms: Mapping[str, str], *, max_candidates: int = 10, window: int = 150) -> str:
    """The former implementation (one alternation of every acronym tried at every position), kept as the oracle."""
    alternatives = "|".join(re.escape(acronym) for acronym in sorted(acronyms, key=lambda a: (-len(a), a)))
    pattern = re.compile(rf"(?<!\w)(?<!\w-)(?:{alternatives})(?!\w)(?!-\w)")

    def fold(value: str) -> str:
        return value.casefold().replace("\u2019", "'")

    first: dict[str, re.Match[str]] = {}
    for match in pattern.finditer(text):
        first.setdefault(match.group(), match)
        if len(first) > max_candidates:
            return text
    pieces: list[str] = []
    copied = 0
    inserted: set[str] = set()
    for acronym, match in first.items():
        expansion = acronyms[acronym]
        if expansion in inserted or re.compile(r"\s*\(").match(text, match.end()):
            continue
        if fold(expansion) in fold(text[max(0, match.start() - window) : match.end() + window]):
            continue
        pieces += (text[copied : match.end()], f" ({expansion})")
        copied = match.end()
        inserted.add(expansion)
    pieces.append(text[copied:])
    return "".join(pieces)


_JOINERS = [
    " ",
    " ",
    " ",
    "",
    "-",
    "--",
    "'",
    "\u2019",
    ".",
    ", ",
    " (",
    "(",
    ")",
    "\n",
    " \n(",
    "«",
    "»",
    "_",
    "2",
    "é",
]
_WORDS = ["la", "caf", "Caf", "écrit", "CAFÉ", "Élan", "x", "ÉCAF", "ex", "C", "MU", "Fi", "P", "dgfip", "1"]


def _random_text(rng: random.Random, acronyms: Mapping[str, str]) -> str:
    """Acronyms, their variants, their expansions and other words, glued by spaces, hyphens, accents, punctuation."""
    names = list(acronyms)
    pieces: list[str] = []
    for _ in range(rng.randint(0, 40)):
        acronym = rng.choice(names)
        pieces.append(
            rng.choice(
                [
                    acronym,
                    acronym,
                    acronym,
                    acronym.lower(),
                    acronym[:-1],
                    acronym + rng.choice("Ss2É_-"),
                    acronyms[acronym],
                    acronyms[acronym].upper(),
                    rng.choice(_WORDS),
                    rng.choice(_WORDS),
                ]
            )
        )
        pieces.append(rng.choice(_JOINERS))
    return "".join(pieces)


@pytest.mark.parametrize("seed", range(8))
def test_expansion_matches_the_former_implementation_on_random_texts(seed: int) -> None:
    rng = random.Random(seed)
    table = load_acronyms()
    # A few acronyms at a time, so that texts often stay under max_candidates and are expanded.
    pools = [dict(rng.sample(sorted(table.items()), 6)) for _ in range(20)]
    pools.append({key: table[key] for key in ("CMU", "CMU-C", "DGFiP", "DGFIP", "CSS", "C2S", "CAF", "RSA")})
    pools.append({"X": "Ex", "X-Y": "Ex-y", "Y": "Why", "XY": "Ex y", "É": "E accent", "_a": "Under", "2": "Deux"})
    for _ in range(400):
        pool = rng.choice(pools)
        text = _random_text(rng, pool)
        window = rng.choice([150, 150, 5, 0])
        max_candidates = rng.choice([10, 10, 2])
        for acronyms in (pool, table):
            expected = _reference(text, acronyms, max_candidates=max_candidates, window=window)
            assert expand_acronyms(text, acronyms, max_candidates=max_candidates, window=window) == expected, text


def test_acronym_that_is_not_a_word_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a word"):
        expand_acronyms("R&D", {"R&D": "Recherche et développement"})
