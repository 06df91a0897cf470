"""A small Llama model folder for `vllm serve FOLDER --load-format dummy`: `python -m bench.device.make_model OUT`.

vLLM with `--load-format dummy` reads only the folder's config.json and tokenizer, and fills the weights with
random values: no checkpoint is needed, nothing is downloaded (the GPU machine cannot reach the network).
The tokenizer is trained here, with the `tokenizers` package only (on the GPU machine's image; here in any
venv that has it), on French text made below (about 60 KB, but repetitive: some 900 tokens come out) of
the sentences that citizens and administrations write and the prompts of the benchmarks, with every
printable ASCII and French letter in its alphabet so that any such text encodes without <unk>.

Why a SentencePiece-style BPE without byte fallback: random weights sample every token about equally, and
with byte pieces in the vocabulary half the samples would be lone bytes of invalid UTF-8. Here every token
is a piece of text, so random generations are words. config.json's vocab_size is exactly the tokenizer's,
so that no sampled id lies outside it. EOS is a token like any other, so about one generation in
vocab_size / max_tokens ends early; the direct client and the worker see the same.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 1024, 8, 16, 8, 2816
MAX_LEN = 2048
VOCAB = 8000  # the most the trainer may keep; the corpus decides how many it finds
SPECIALS = ["<unk>", "<s>", "</s>"]
ALPHABET = [chr(code) for code in range(33, 127)] + list("àâäçéèêëîïôöùûüÿœæÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸŒÆ«»’…€")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WHO = ["Je", "Ma mère", "Mon voisin", "Notre association", "Mon fils", "Une usagère", "Le demandeur"]
_DID = [
    "ai déposé une demande de carte grise",
    "attends le renouvellement de mon titre de séjour",
    "n'ai pas reçu le remboursement de la caisse d'assurance maladie",
    "ai appelé la caisse d'allocations familiales",
    "suis allé au guichet de la préfecture",
    "ai envoyé ma déclaration de revenus en ligne",
    "ai demandé un rendez-vous à France Travail",
    "ai perdu mon permis de conduire",
]
_WHEN = ["il y a trois semaines", "le 12 mars 2024", "depuis quatre mois", "hier matin", "la semaine dernière"]
_THEN = [
    "et personne ne répond au téléphone.",
    "mais le dossier a été perdu deux fois.",
    "et l'agent a été très patient avec moi.",
    "sans aucune explication sur le retard.",
    "et j'ai attendu deux heures devant la porte.",
    "puis un conseiller m'a rappelé le lendemain.",
]
_ANSWERS = [
    "Madame, Monsieur, nous vous remercions pour votre message et comprenons votre inquiétude.",
    "Votre dossier est en cours de traitement par nos services ; une réponse vous sera adressée par courrier.",
    "Nous sommes désolés pour cette attente et travaillons à améliorer l'accueil du public.",
    "Vous pouvez suivre l'avancement de votre demande sur le site de l'Agence nationale des titres sécurisés.",
    "Un conseiller de la caisse vous contactera cette semaine pour compléter les pièces manquantes.",
    "Votre témoignage a été transmis à l'équipe, qui sera heureuse de lire ce message.",
    "L'administration vous prie de l'excuser pour ce délai et vous remercie de votre patience.",
    "Les rendez-vous en ligne permettent désormais de réduire le temps d'attente au guichet.",
]


def corpus() -> list[str]:
    """The training text: accounts of citizens, answers of administrations, the benchmarks' prompts."""
    lines = [f"{who} {did} {when} {then}" for who, did, when, then in itertools.product(_WHO, _DID, _WHEN, _THEN)]
    lines = lines[::7] + _ANSWERS * 10
    lines += [f"Question {n} : quelle est la capitale administrative de la région numéro {n} ?" for n in range(200)]
    lines += [f"Question {n} : combien de départements compte la France ?" for n in range(200)]
    return lines


def write(out: Path, *, hidden: int = HIDDEN, layers: int = LAYERS, max_len: int = MAX_LEN) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json, config.json and
    generation_config.json into `out`; returns the main sizes."""
    from tokenizers import SentencePieceBPETokenizer  # type: ignore[import-not-found, unused-ignore]
    from tokenizers.processors import TemplateProcessing  # type: ignore[import-not-found, unused-ignore]

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = SentencePieceBPETokenizer(unk_token="<unk>")
    tokenizer.train_from_iterator(
        corpus(),
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    tokenizer.add_special_tokens(SPECIALS)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tokenizer.save(str(out / "tokenizer.json"))
    vocab = int(tokenizer.get_vocab_size(with_added_tokens=True))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    heads = HEADS * hidden // HIDDEN
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": INTERMEDIATE * hidden // HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, KV_HEADS * hidden // HIDDEN),
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    generation = {"bos_token_id": bos, "eos_token_id": eos}
    files = {
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": specials,
        "config.json": config,
        "generation_config.json": generation,
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return {"vocab_size": vocab, "hidden_size": hidden, "layers": layers, "max_len": max_len}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.device.make_model", description=__doc__)
    parser.add_argument("out", type=Path, help="the model folder (replaced)")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden size ({HIDDEN})")
    parser.add_argument("--layers", type=int, default=LAYERS, help=f"layers ({LAYERS})")
    parser.add_argument("--max-len", type=int, default=MAX_LEN, help=f"context length ({MAX_LEN})")
    args = parser.parse_args()
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    sizes = write(staging, hidden=args.hidden, layers=args.layers, max_len=args.max_len)
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    print(json.dumps({"folder": str(args.out), **sizes}))


if __name__ == "__main__":
    main()
