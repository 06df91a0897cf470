"""Hugging Face `transformers serve` (transformers 5.x, CPU torch): a second real OpenAI-compatible server.

Installed from PyPI into a venv of the cache, once per machine and version (install.py): torch is the CPU
wheel that pip's constraints on this machine allow, never a CUDA build. The tiny model of `tiny_model.py` is
served under the name `tiny-llama` from a Hugging Face hub cache laid out in the work directory (symlinks to the
model's files), with the hub offline: the server then lists it in `/v1/models` and loads it like a downloaded
model, without any request to a hub.

How it differs from vLLM (transformers 5.18.0, checked by hand; the suite skips a feature listed as missing):

- No authentication at all: any `Authorization` header, or none, is accepted (`api_key` is None).
- `/v1/models` lists the models of the hub cache, not the one served, hence the cache laid out here.
- Streams end without `data: [DONE]`; the last chunk carries both `finish_reason` and `usage`, always:
  `stream_options` is ignored and there is no separate usage chunk with empty `choices`.
- `stop`: generation halts and `finish_reason` is `stop`, but the text *includes* the stop string (OpenAI and
  vLLM leave it out), so "stop" is not in `features`.
- No context limit: a prompt longer than `max_position_embeddings` is answered `200` and generated (the rotary
  positions extrapolate) where vLLM answers `400`.
- `seed` reseeds torch's global generator: two requests with the same seed give the same text when they run one
  after the other, not when other requests sample meanwhile (vLLM's seed is per request).
- Errors are FastAPI's `{"detail": "..."}`: an unknown field is a `422`, another model than the one served and
  a `prompt` list a `400`, a malformed `messages` a `500` in plain text. Parameters that `generate()` refuses
  (`max_tokens: 0`) answer `200` and a stream chunk `data: {"error": "<text>"}` (a string, no `code`).
- Ignored: `max_completion_tokens` (the default of 1024 new tokens applies), `n`, `presence_penalty`,
  `logprobs`, `user`. A `temperature` of 0 means greedy; above 0 it samples only when the model's
  `generation_config.json` says `do_sample` (real chat models do; the served copy here does too).
- Requests run one at a time (`model.generate()` on one inference thread); the response's `model` is
  `tiny-llama@main` and its `id` the request's `X-Request-Id`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from stack.processes import spawn, wait_until
from tests.conformance import install, tiny_model
from tests.conformance.servers import RealServer

VERSION = "5.18.0"
NAME = f"Hugging Face transformers serve {VERSION}"
MODEL = "tiny-llama"
REQUIREMENTS = [
    install.TORCH,
    f"transformers[serving,sentencepiece]=={VERSION}",  # sentencepiece: the tiny model's tokenizer.model
    "requests",  # imported by the `transformers` command line, not declared by the wheel
]
#: Sampling as real chat models ship it (`do_sample`), with no top-k cut, as vLLM's default.
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 1.0, "top_k": 0}
READY_SECONDS = 180


def install_server() -> Path:
    """The python of the server's venv (built once); the `transformers` command lies beside it."""
    return install.venv(f"transformers-{VERSION}-{install.TORCH.replace('==', '')}", REQUIREMENTS)


def hub_cache(root: Path, model_dir: Path) -> Path:
    """A Hugging Face hub cache under `root` holding `model_dir` as the repository `MODEL` at `main`.

    The files are symlinks to the model's, except `generation_config.json` (see GENERATION_CONFIG).
    """
    commit = hashlib.sha1(str(model_dir.resolve()).encode()).hexdigest()
    repo = root / f"models--{MODEL}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for source in model_dir.iterdir():
        link = snapshot / source.name
        if source.name != "generation_config.json" and not link.is_symlink():
            link.symlink_to(source.resolve())
    (snapshot / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=1))
    return root


def _ready(url: str) -> bool:
    try:
        answer = httpx.get(f"{url}/v1/models", timeout=1.0)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and any(entry.get("id") == MODEL for entry in answer.json().get("data", []))


@contextmanager
def start(workdir: Path, port: int) -> Iterator[RealServer]:
    python = install_server()
    model_dir = tiny_model.hf_model()
    hub = hub_cache(workdir / "hf-hub", model_dir)
    args = [str(python.with_name("transformers")), "serve", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--device", "cpu", "--log-level", "info"]
    env = {
        **os.environ,
        **tiny_model.OFFLINE,
        "HF_HOME": str(workdir / "hf-home"),
        "HF_HUB_CACHE": str(hub),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",  # a tiny model; the machine's cores are shared with the stack under test
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://127.0.0.1:{port}"
    service = spawn("transformers serve", args, env=env, log=workdir / f"hf-server-{port}.log")
    try:
        wait_until(lambda: _ready(url), READY_SECONDS, NAME, service.process)
        yield RealServer(
            name=NAME,
            version=VERSION,
            url=url,
            model=MODEL,
            api_key=None,
            n_ctx=tiny_model.context_length(model_dir),
            features=frozenset({"completions", "chat", "usage_chunk", "seed"}),
        )
    finally:
        service.stop()
