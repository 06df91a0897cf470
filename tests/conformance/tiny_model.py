"""The tiny model every real server of the conformance suite serves, made here: nothing from a model hub.

A Llama of 2 layers, hidden size 64, random weights, with a sentencepiece tokenizer trained on a few lines of
French and English (`_make_tiny_model.py`, run in the cached model-tools venv: torch and transformers stay out
of the project's venv). `hf_model()` gives the Hugging Face directory (safetensors, tokenizer, chat template);
`gguf_model()` converts it with the converter that ships in llama.cpp's sources. Both are made once per
machine, in the cache, keyed by the maker's source and the tools' versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from tests.conformance import install

TOOLS_REQUIREMENTS = [
    install.TORCH,
    "transformers==4.57.6",  # the version llama.cpp's converter pins
    "sentencepiece==0.2.2",
    "protobuf>=4.21,<5",
    "numpy~=2.2.6",
    "safetensors",
    "pyyaml",  # the converter's gguf-py
    "tqdm",
    "requests",
]
_MAKER = Path(__file__).with_name("_make_tiny_model.py")
#: Offline: nothing may be fetched from a model hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def tools_python() -> Path:
    """The python of the venv with torch, transformers and sentencepiece (built once)."""
    return install.venv("tiny-model-tools-torch2.13.0-transformers4.57.6", TOOLS_REQUIREMENTS)


def _digest() -> str:
    source = _MAKER.read_bytes() + json.dumps(TOOLS_REQUIREMENTS).encode()
    return hashlib.sha256(source).hexdigest()[:12]


def _run(args: list[str], log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE}, check=False, timeout=600
        )
    if result.returncode != 0:
        raise install.InstallError(f"{args[1]} exited with {result.returncode}: {log.read_text()[-3000:]}")


def hf_model() -> Path:
    """The directory of the tiny Hugging Face Llama: config.json, model.safetensors, tokenizer files."""
    home = install.cache_root() / "models" / f"tiny-llama-{_digest()}"
    target = home / "hf"
    python = tools_python()
    with install.locked(f"model-{home.name}"):
        if not (target / "config.json").is_file():
            home.mkdir(parents=True, exist_ok=True)
            _run([str(python), str(_MAKER), str(target)], home / "make.log")
    return target


def gguf_model(converter: Path) -> Path:
    """The tiny model as a GGUF file (f32), converted by `converter` (llama.cpp's convert_hf_to_gguf.py)."""
    hf = hf_model()
    tag = hashlib.sha256(str(converter.resolve()).encode()).hexdigest()[:8]
    target = hf.parent / f"tiny-llama-{tag}.gguf"
    with install.locked(f"gguf-{hf.parent.name}-{tag}"):
        if not target.is_file():
            partial = target.with_suffix(".partial")
            args = [str(tools_python()), str(converter), str(hf), "--outfile", str(partial), "--outtype", "f32"]
            _run(args, hf.parent / f"convert-{tag}.log")
            partial.rename(target)
    return target


def context_length(model_dir: Path) -> int:
    """The context the model was made for (its `max_position_embeddings`)."""
    length: int = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    return length
