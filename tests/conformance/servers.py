"""The interface shared by the real model servers of the conformance suite.

Each server module (`llama_server.py`, `hf_server.py`, ...) exposes a context manager
`start(workdir: Path, port: int) -> Iterator[RealServer]`: it installs what it needs (from the cache of
`install.py`), makes the tiny model (`tiny_model.py`), starts the server on 127.0.0.1:`port`, waits
until it answers, yields its description, and stops it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

#: What a server may support; the suite checks what a server lacks the other way round, or skips it.
#: - "completions", "chat": /v1/completions, /v1/chat/completions (streamed);
#: - "usage_chunk": a last chunk with `usage` when asked `stream_options.include_usage`;
#: - "seed": the same `seed` at temperature > 0 samples the same text;
#: - "stop": `stop` strings end the text before them, finish_reason "stop";
#: - "overflow_4xx": a streamed request whose prompt is past the context is answered with a 4xx, as vLLM does,
#:   not with a 200 stream that breaks (which the worker cannot tell from a crash, so it retries).
FEATURES = frozenset({"completions", "chat", "usage_chunk", "seed", "stop", "overflow_4xx"})


@dataclass(frozen=True)
class RealServer:
    name: str  # "llama.cpp (llama-cpp-python 0.3.x)"
    version: str
    url: str  # root URL, no /v1
    model: str  # the model name to put in LLM_TABLE / the request
    api_key: str | None  # key the server requires, if it was started with one
    n_ctx: int  # context length (to make a too-long prompt)
    features: frozenset[str]  # of FEATURES

    def __post_init__(self) -> None:
        unknown = self.features - FEATURES
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")


class ServerModule(Protocol):
    """What the suite needs of a server module."""

    def start(self, workdir: Path, port: int) -> AbstractContextManager[RealServer]: ...


def answers_models(url: str, api_key: str | None = None) -> bool:
    """Whether the server at `url` answers `GET /v1/models` (with its key) with a 200: it is ready."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        answer = httpx.get(f"{url}/v1/models", headers=headers, timeout=1.0)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200
