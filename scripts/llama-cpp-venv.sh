#!/usr/bin/env bash
# Create (or reuse) the llama-cpp-python virtual environment for GGUF K-quants and llama.cpp
# checks (LORAFUSE_LLAMA_CPP_PYTHON). llama-cpp-python compiles llama.cpp from source (about
# 25 minutes on 2 shared cores), so it is built once and cached. The last line printed is
# the venv path.
#
# Env: LORAFUSE_LLAMA_CPP_VENV (default ~/.cache/lorafuse/llama-cpp-venv), PYTHON (python3).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
VENV="${LORAFUSE_LLAMA_CPP_VENV:-$HOME/.cache/lorafuse/llama-cpp-venv}"
STAMP="$VENV/.lorafuse-stamp"
WANT="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "$VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"  # concurrent CI jobs: one builds, the others wait
flock 9
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "$VENV"
    exit 0
fi

LOG="$VENV.log"
echo "building $VENV ($WANT); pip log: $LOG" >&2
rm -f "$STAMP"
{
    "${PYTHON:-python3}" -m venv "$VENV"
    # Portable CPU build (no -march=native: the cache may move between machines); no tests
    # or examples, which only lengthen the build.
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        "$VENV/bin/pip" install --verbose "$WANT"
} >"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; echo "llama-cpp-venv: install failed, see $LOG" >&2; exit 1; }
"$VENV/bin/python" -I -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)" >&2
echo "$WANT" >"$STAMP"
echo "$VENV"
