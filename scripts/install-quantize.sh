#!/usr/bin/env bash
# Install llm-compressor for `lorafuse quantize` beside the project's transformers.
#
# llmcompressor 0.14.0.1 declares transformers<=5.17.0, but its AWQ, GPTQ and FP8 paths run
# with transformers 5.24 (what lorafuse is tested with; tests/merger/test_quantize.py), so
# pip would downgrade transformers for nothing. It is installed with --no-deps; its other
# dependencies come from lorafuse's `quantize` extra (pyproject.toml), pinned to match.
#
# Env: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LLMCOMPRESSOR_VERSION=0.14.0.1

"$PYTHON" -m pip install --quiet -e ".[quantize]"
"$PYTHON" -m pip install --quiet --no-deps "llmcompressor==$LLMCOMPRESSOR_VERSION"
LLM_COMPRESSOR_LOG_LEVEL=ERROR "$PYTHON" -c \
    "import llmcompressor, compressed_tensors; print('llmcompressor', llmcompressor.__version__, 'compressed-tensors', compressed_tensors.__version__)"
