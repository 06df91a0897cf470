"""Make the tiny Hugging Face Llama of the conformance suite: `python _make_tiny_model.py OUT_DIR`.

Run by `tiny_model.py` with the python of the cached model-tools venv (torch, transformers, sentencepiece),
never imported by the project. Deterministic: a sentencepiece tokenizer trained here on the text below (with
byte fallback, as Llama's, so any text can be encoded) and random weights from a fixed seed. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

N_CTX = 512
SEED = 20261202

#: A plain template that every server renders the same way (no special tokens needed).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = """\
Bonjour, ma carte grise n'a pas été reçue malgré ma demande faite il y a trois semaines.
Je vous remercie pour votre message et je comprends votre inquiétude concernant ce retard.
La préfecture a bien enregistré votre dossier ; il est en cours de traitement par nos services.
Vous pouvez suivre l'avancement de votre demande sur le site de l'Agence nationale des titres sécurisés.
J'ai attendu deux heures au guichet de la mairie pour renouveler ma carte d'identité.
Nous sommes désolés pour cette attente et nous travaillons à améliorer l'accueil du public.
Les rendez-vous en ligne permettent désormais de réduire le temps d'attente au guichet.
Mon dossier de retraite a été perdu deux fois par la caisse, personne ne répond au téléphone.
La caisse d'assurance retraite a retrouvé votre dossier et un conseiller vous contactera cette semaine.
Merci à l'agent de France Travail qui m'a aidé à remplir ma déclaration, il a été très patient.
Votre témoignage sera transmis à l'équipe, qui sera heureuse de lire ce message.
Le service des impôts m'a remboursé rapidement après ma réclamation, c'est une bonne surprise.
Hello, my residence permit renewal has been pending for four months and I cannot work.
Thank you for your message; your application is being reviewed and a decision will be sent by mail.
The tax office answered my question within two days, which was faster than I expected.
We are sorry for the inconvenience and we will look into the delay with the relevant department.
Please find below the steps to follow in order to complete your request online.
Numbers, dates and amounts: 12 mars 2024, 3 500 euros, 45 jours, 0 800 123 456, 75015 Paris.
Les allocations familiales ont été versées avec un mois de retard, sans aucune explication.
L'administration vous prie de l'excuser pour ce délai et vous remercie de votre patience.
Citizens post their experience with a public service, and the administration drafts an answer.
Les usagers publient leur expérience d'un service public ; l'administration y répond.
"""


def _readable(model: LlamaForCausalLM, pieces: spm.SentencePieceProcessor) -> None:
    """Make the random model write words, and never end by itself.

    The output layer's rows of byte pieces (43% of the vocabulary), unknown and control tokens (EOS) are
    zeroed and the others scaled up: their logits then spread far above 0, so that sampling picks words,
    not lone bytes of invalid UTF-8, and every generation runs to `max_tokens` or a stop string.
    """
    with torch.no_grad():
        weight = model.lm_head.weight
        weight.normal_(0.0, 0.5)
        for piece in range(pieces.get_piece_size()):
            if pieces.is_byte(piece) or pieces.is_control(piece) or pieces.is_unknown(piece):
                weight[piece].zero_()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sentences = [line for line in CORPUS.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 4),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=600,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    tokenizer = LlamaTokenizer(vocab_file=str(out / "tokenizer.model"), legacy=False, add_bos_token=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = N_CTX

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=N_CTX,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    _readable(model, spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config_json = json.loads((out / "tokenizer_config.json").read_text())
    config_json["chat_template"] = CHAT_TEMPLATE  # where llama.cpp's converter reads it, whatever the version
    (out / "tokenizer_config.json").write_text(json.dumps(config_json, indent=2))


if __name__ == "__main__":
    target = Path(sys.argv[1])
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    main(staging)
    staging.rename(target)
