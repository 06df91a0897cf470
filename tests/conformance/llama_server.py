"""llama.cpp's OpenAI-compatible server, as `llama-cpp-python[server]` ships it, built from its sdist.

The sdist vendors llama.cpp: pip compiles it (about 10 minutes on 2 cores) into a venv of the cache, once per
machine and version (install.py). The converter in the same sources turns the tiny model into GGUF.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stack.processes import spawn, wait_until
from tests.conformance import install, tiny_model
from tests.conformance.servers import RealServer, answers_models

VERSION = "0.3.36"
NAME = f"llama.cpp (llama-cpp-python {VERSION})"
MODEL = "tiny-llama"
API_KEY = "conformance-llama-key"
#: Only what the server needs: no multimodal (mtmd) library, no llama.cpp tools, tests or examples.
CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
    "-DLLAMA_BUILD_SERVER=OFF"
)


def install_server() -> tuple[Path, Path]:
    """The python of the server's venv, and the unpacked sources (for the GGUF converter)."""
    archive = install.sdist("llama-cpp-python", VERSION)
    requirement = f"llama-cpp-python[server] @ {archive.as_uri()}"
    python = install.venv(f"llama-cpp-python-{VERSION}", [requirement], env={"CMAKE_ARGS": CMAKE_ARGS})
    return python, install.unpacked(archive)


@contextmanager
def start(workdir: Path, port: int) -> Iterator[RealServer]:
    python, sources = install_server()
    model = tiny_model.gguf_model(sources / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py")
    n_ctx = tiny_model.context_length(tiny_model.hf_model())
    args = [str(python), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL]
    args += ["--host", "127.0.0.1", "--port", str(port), "--api_key", API_KEY, "--n_ctx", str(n_ctx)]
    # By default a new request makes the one streaming end at once with [DONE] and no finish_reason: a
    # truncated answer that looks complete. vLLM runs requests side by side; here they wait their turn.
    args += ["--interrupt_requests", "False", "--n_threads", "1"]
    url = f"http://127.0.0.1:{port}"
    env = {**tiny_model.OFFLINE, "PYTHONUNBUFFERED": "1"}
    service = spawn("llama.cpp", args, env={**os.environ, **env}, log=workdir / f"llama-server-{port}.log")
    try:
        wait_until(lambda: answers_models(url, API_KEY), 120, NAME, service.process)
        yield RealServer(
            name=NAME,
            version=VERSION,
            url=url,
            model=MODEL,
            api_key=API_KEY,
            n_ctx=n_ctx,
            features=frozenset({"completions", "chat", "seed", "stop"}),
        )
    finally:
        service.stop()
