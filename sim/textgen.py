"""Deterministic, plausible French text: the "model" of the simulator.

A completion is fully planned before it is paced out: the same (model, prompt, seed) always
gives the same tokens, and whether it ends early (end-of-sequence) is part of that output too,
as it would be for a real model with a fixed seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        """
        Madame Monsieur votre notre vos nos demande dossier carte grise délai service nous vous avons
        avez est sont été sera serait pour dans avec sans sur sous par de du des la le les un une au aux
        et ou mais donc car que qui dont ce cette ces son sa ses leur leurs pièce pièces justificatif
        justificatives domicile identité passeport permis conduire titre séjour préfecture mairie
        administration agent agents guichet rendez en ligne site internet formulaire numéro référence
        courrier courriel réponse information informations renseignement renseignements procédure
        démarche démarches traitement instruction vérification validation envoi réception transmission
        délivrance renouvellement modification changement adresse situation état civil naissance mariage
        acte extrait copie original document documents certificat attestation déclaration impôts revenus
        taxe habitation foncière allocation aide aides prestation prestations droits droit obligation
        obligations règlement réglementation loi décret article code application cadre dispositif
        disposition dispositions mesure mesures compte espace personnel identifiant connexion accès
        portail plateforme usager usagers citoyen citoyens bénéficiaire demandeur titulaire propriétaire
        véhicule immatriculation contrôle technique cession achat vente nouveau nouvelle ancien ancienne
        actuel actuelle complet complète incomplet incomplète valide valable expiré nécessaire nécessaires
        possible impossible disponible disponibles obligatoire facultatif jours semaines mois année date
        délais prochain prochaine dernier dernière premier première suivant suivante joint jointe
        également notamment ainsi toutefois cependant néanmoins afin lors dès après avant pendant depuis
        environ selon auprès concernant relatif relative conformément informer informons prions
        remercions invitons recommandons souhaitez pouvez pouvons devez devons devrez pourrez recevrez
        transmettre fournir joindre compléter remplir signer vérifier consulter contacter adresser envoyer
        déposer présenter conserver indiquer préciser rappeler confirmer traiter examiner étudier accorder
        refuser suspendre annuler régulariser attendre patienter meilleurs sentiments salutations
        distinguées cordialement considération assurance veuillez agréer recevoir sincères bien entendu
        merci compréhension patience attention intérêt suite favorable défavorable public national
        départemental régional municipal local direction bureau pôle centre caisse sécurité sociale
        maladie retraite emploi chômage logement famille enfants enfant parents foyer ménage ressources
        montant somme paiement versement remboursement frais gratuit payant timbre fiscal électronique
        """.split()  # noqa: SIM905 -- a few hundred words read better as text than as a list literal
    )
)
_CAPITALISED: tuple[str, ...] = tuple(word[:1].upper() + word[1:] for word in _WORDS)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request will output: `pieces` is never empty (the last one carries finish_reason)."""

    pieces: tuple[str, ...]
    completion_tokens: int
    finish_reason: str
    stop_reason: str | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _seed(*parts: object) -> int:
    """A seed stable across processes (hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(orjson.dumps(parts)).digest()[:8], "big")


def _tokens(rng: random.Random) -> Iterator[str]:
    """Endless tokens: " word", "," or ".", capitalised at the start of each sentence."""
    capitalise = True
    words_since_mark = 0
    while True:
        draw = rng.random()
        if words_since_mark >= 4 and draw < 0.12:
            yield "."
            capitalise, words_since_mark = True, 0
        elif words_since_mark >= 2 and draw < 0.2:
            yield ","
            words_since_mark = 0
        else:
            yield " " + rng.choice(_CAPITALISED if capitalise else _WORDS)
            capitalise, words_since_mark = False, words_since_mark + 1


def _cut_at(pieces: list[str], end: int) -> list[str]:
    """The pieces truncated so that their concatenation is the first `end` characters."""
    kept: list[str] = []
    position = 0
    for piece in pieces:
        if position + len(piece) > end:
            kept.append(piece[: end - position])
            break
        kept.append(piece)
        position += len(piece)
    return kept


def _find_stop(text: str, start: int, stop: Sequence[str]) -> tuple[int, str] | None:
    found = [(index, s) for s in stop if (index := text.find(s, start)) >= 0]
    return min(found) if found else None


def make_plan(
    model: str,
    prompt: str,
    seed: int | None,
    max_tokens: int,
    stop: Sequence[str] = (),
    early_stop_rate: float = 0.0,
) -> Plan:
    """Plan the completion: exactly max_tokens tokens ("length") unless an end-of-sequence or a stop string comes first.

    A stop string is excluded from the output, as in vLLM; its stop_reason is the string itself.
    """
    rng = random.Random(_seed(model, prompt, seed))
    eos_rng = random.Random(_seed("eos", model, prompt, seed))
    limit, finish_reason = max_tokens, "length"
    if max_tokens >= 2 and eos_rng.random() < early_stop_rate:
        limit, finish_reason = eos_rng.randint(1, max_tokens - 1), "stop"
    longest_stop = max((len(s) for s in stop), default=0)
    pieces: list[str] = []
    text = ""
    tokens = _tokens(rng)
    for count in range(1, limit + 1):
        piece = next(tokens)
        if count == limit and finish_reason == "stop" and pieces and pieces[-1].startswith(" "):
            piece = "."  # an end-of-sequence closes the sentence, unless it follows a mark
        pieces.append(piece)
        if longest_stop:
            start = max(0, len(text) - longest_stop + 1)
            text += piece
            hit = _find_stop(text, start, stop)
            if hit is not None:
                kept = _cut_at(pieces, hit[0])
                return Plan(tuple(kept or [""]), count, "stop", hit[1])
    return Plan(tuple(pieces), limit, finish_reason, None)
