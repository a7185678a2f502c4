"""K-quants (Q4_K_M, Q5_K_M) by llama.cpp's own quantizer, through llama-cpp-python.

llama-cpp-python compiles llama.cpp, so it may live in its own virtual environment (as vLLM
does): $LORAFUSE_LLAMA_CPP_PYTHON names that interpreter. The quantizer always runs in a
child process, which also keeps llama.cpp's console output and any crash out of ours."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from lorafuse.errors import UserError

PYTHON_VARIABLE = "LORAFUSE_LLAMA_CPP_PYTHON"
INSTALL_HINT = (
    "pip install 'lorafuse[gguf-kquants]' (llama-cpp-python; it compiles llama.cpp), or set "
    f"{PYTHON_VARIABLE} to a Python that has it, or write gguf-f16 and run llama.cpp's "
    "`llama-quantize` on it"
)
_QUANTIZE = """
import ctypes, os, sys
import llama_cpp
source, target, file_type = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + file_type)
params.nthread = os.cpu_count() or 1
sys.exit(llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params)))
"""
_VERSION = "import llama_cpp; print(llama_cpp.__version__)"


def llama_cpp_python() -> str | None:
    """This Python when it has llama_cpp, else $LORAFUSE_LLAMA_CPP_PYTHON (or None)."""
    if importlib.util.find_spec("llama_cpp"):
        return sys.executable
    return os.environ.get(PYTHON_VARIABLE) or None


def find_quantizer(method: str) -> tuple[str, str]:
    """(the Python that has llama_cpp, its version), or a UserError saying what to install;
    checked before any work is done."""
    python = llama_cpp_python()
    if not python:
        raise UserError(f"{method}: needs llama.cpp's quantizer, which is not installed; "
                        + INSTALL_HINT)
    probe = subprocess.run([python, "-c", _VERSION], capture_output=True, text=True)
    if probe.returncode != 0:
        raise UserError(f"{method}: {python} cannot import llama_cpp "
                        f"({probe.stderr.strip().splitlines()[-1:]}); " + INSTALL_HINT)
    return python, probe.stdout.strip()


def quantize_file(python: str, source: Path, target: Path, file_type: str) -> None:
    """llama_model_quantize(source F16 GGUF -> target), e.g. file_type MOSTLY_Q4_K_M."""
    done = subprocess.run([python, "-c", _QUANTIZE, str(source), str(target), file_type],
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"llama_model_quantize({source.name} -> {file_type}) exited "
                           f"{done.returncode}: {' | '.join(tail)}")
