"""llama.cpp's own C++ server, `llama-server`: the one most llama.cpp users run, built from the llama.cpp sources
vendored in the llama-cpp-python sdist that llama_server.py uses (the same commit; nothing else is downloaded).

Only the `llama-server` target is built (cmake, CPU only, no web UI), once per machine and version, in
`<cache>/llama-server-<version>/` (install.py; 4 to 6 minutes on 2 cores). It serves the same GGUF tiny model as
llama_server.py, with 2 slots of the model's whole context each (`--ctx-size` is shared by the slots).

How it differs from vLLM (llama.cpp 0c1e57098, which calls itself "build 1" since the sdist's git history is
one commit deep; checked by hand; the suite skips a feature listed as missing):

- Over-long prompts: a prompt of at least the slot's context is answered `400` before any streaming,
  `{"error": {"code": 400, "type": "exceed_context_size_error", "message": "request (N tokens) exceeds the
  available context size (512 tokens), try increasing it", "n_prompt_tokens": N, "n_ctx": 512}}`, as vLLM does.
  But a prompt that fits with `max_tokens` past the context is answered `200`: the generation stops when the
  context is full, with finish_reason `length` (vLLM answers `400`).
- Usage: `/v1/completions` puts `usage` on the last chunk (the one with finish_reason), always, whatever
  `stream_options`; `/v1/chat/completions` sends it as vLLM does, in a last chunk with empty `choices`, and only
  when asked `stream_options.include_usage`. Both add llama.cpp's own `timings` beside it.
- A streamed request gets its status and headers only with its first token (a request waiting for a slot has
  none yet); an error after that is a last `data: {"error": {...}}` chunk, with no `[DONE]`. A stream silent
  for 30 s gets `:` comment lines (pings).
- `model` is not checked: any name, or none, is served by the one model (vLLM answers `404`). `max_tokens: 0`
  gives one token.
- `X-Request-Id` is accepted (any form) and not used: the response's `id` is `chatcmpl-<random>` on both
  endpoints. The first chat chunk is `{"role": "assistant", "content": null}`; `system_fingerprint` is
  `b1-0c1e570`.
- `--api-key`: a missing or wrong `Authorization: Bearer` is a `401` `{"error": {"message": "Invalid API Key",
  "type": "authentication_error", "code": 401}}`, on `/v1/models` too; `/health` needs no key.
- `stop` strings are left out of the text; `seed` is per request (each slot has its own sampler); the slots
  generate side by side and further requests wait in a queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stack.processes import spawn, wait_until
from tests.conformance import install, llama_server, tiny_model
from tests.conformance.servers import RealServer, answers_models

#: The llama-cpp-python sdist whose vendored llama.cpp is built; its CHANGELOG names the llama.cpp commit.
VERSION = llama_server.VERSION
COMMIT = "0c1e57098"  # 0c1e57098bba43ac29e6e3b677cdceebdd22334f
NAME = f"llama.cpp llama-server ({COMMIT}, from llama-cpp-python {VERSION})"
MODEL = "tiny-llama"
API_KEY = "conformance-llama-cpp-key"
#: A release CPU build of the server alone: portable code (no -march=native), static libraries, no OpenSSL (this
#: llama.cpp has no LLAMA_CURL any more: it fetches models through cpp-httplib, with TLS from OpenSSL), and no web
#: UI (by default its assets are downloaded from a model hub at build time).
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
#: Slots: requests generated side by side, as vLLM does, each with the model's whole context.
PARALLEL = 2


def install_server() -> tuple[Path, Path]:
    """The `llama-server` binary (built once), and the unpacked sdist (for the GGUF converter)."""
    sources = install.unpacked(install.sdist("llama-cpp-python", VERSION))
    llama_cpp = sources / "vendor" / "llama.cpp"
    build = install.cmake_build(f"llama-server-{VERSION}", llama_cpp, CMAKE_OPTIONS, "llama-server")
    binary = build / "bin" / "llama-server"
    if not binary.is_file():
        raise install.InstallError(f"the build in {build} made no {binary.name}")
    return binary, sources


@contextmanager
def start(workdir: Path, port: int) -> Iterator[RealServer]:
    binary, sources = install_server()
    model = tiny_model.gguf_model(sources / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py")
    n_ctx = tiny_model.context_length(tiny_model.hf_model())
    args = [str(binary), "--model", str(model), "--alias", MODEL, "--api-key", API_KEY]
    args += ["--host", "127.0.0.1", "--port", str(port), "--ctx-size", str(n_ctx * PARALLEL)]
    args += ["--parallel", str(PARALLEL), "--threads", "1"]
    url = f"http://127.0.0.1:{port}"
    service = spawn("llama-server", args, log=workdir / f"llama-cpp-server-{port}.log")
    try:
        wait_until(lambda: answers_models(url, API_KEY), 120, NAME, service.process)
        yield RealServer(
            name=NAME,
            version=f"{COMMIT} (llama-cpp-python {VERSION})",
            url=url,
            model=MODEL,
            api_key=API_KEY,
            n_ctx=n_ctx,
            features=frozenset({"completions", "chat", "usage_chunk", "seed", "stop", "overflow_4xx"}),
        )
    finally:
        service.stop()
