"""`lorafuse quantize --method gguf-*`: one GGUF file (plus an Ollama Modelfile and
lorafuse.json) from a merged Hugging Face folder, published atomically as a directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from lorafuse import __version__
from lorafuse.errors import UserError
from lorafuse.fsync import fsync_path
from lorafuse.merger.engine.choices import GGUF_FILE
from lorafuse.merger.engine.provenance import (
    PROVENANCE_NAME,
    read_provenance,
    sha256_file,
    utc_now,
    write_provenance,
)
from lorafuse.merger.files.atomic import staging_dir
from lorafuse.merger.gguf import kquants
from lorafuse.merger.gguf.architecture import Architecture, add_hyperparameters, read_architecture
from lorafuse.merger.gguf.methods import GgufMethod, gguf_method
from lorafuse.merger.gguf.modelfile import MODELFILE_NAME, modelfile
from lorafuse.merger.gguf.tensors import PlannedTensor, plan_tensors, tensor_bytes, weight_files
from lorafuse.merger.gguf.vocabulary import add_vocabulary

log = logging.getLogger(__name__)

GGUF_NAME = GGUF_FILE
PROVENANCE_KEY = "lorafuse.provenance_sha256"  # sha256 of the merge's lorafuse.json


@dataclass
class GgufResult:
    out: Path
    reused: bool
    quantization: dict  # the `quantization` section of lorafuse.json


def export_gguf(model_dir: Path, out: Path, method_name: str) -> GgufResult:
    """Write `out`/model.gguf, `out`/Modelfile and `out`/lorafuse.json (all or nothing)."""
    model_dir, out = Path(model_dir), Path(out)
    method = gguf_method(method_name)
    model = read_architecture(model_dir)
    quantizer = kquants.find_quantizer(method.name) if method.llama_cpp_type else None
    reused = _reusable(out, model_dir, method)
    if reused is not None:
        return GgufResult(out=out, reused=True, quantization=reused)
    planned = plan_tensors(model, weight_files(model_dir),
                           gguf.GGMLQuantizationType[method.weight_type])
    provenance = _source_provenance(model_dir)
    with staging_dir(out) as staging:
        target = staging / GGUF_NAME
        if quantizer is None:
            write_gguf(target, model_dir, model, planned, method, provenance)
        else:
            f16 = staging / "model-f16.gguf"
            write_gguf(f16, model_dir, model, planned, method, provenance)
            kquants.quantize_file(quantizer[0], f16, target, method.llama_cpp_type)
            f16.unlink()
            fsync_path(target)
        (staging / MODELFILE_NAME).write_text(modelfile(model_dir, GGUF_NAME))
        section = _section(model_dir, method, planned, target, quantizer)
        provenance["quantization"] = section
        write_provenance(staging, provenance)
    log.info("wrote %s (%s) from %s", out / GGUF_NAME, method.name, model_dir)
    return GgufResult(out=out, reused=False, quantization=section)


def write_gguf(path: Path, model_dir: Path, model: Architecture, planned: list[PlannedTensor],
               method: GgufMethod, provenance: dict) -> None:
    """Header and metadata first, then the tensors streamed one by one, then fsync."""
    writer = gguf.GGUFWriter(path, model.name)
    _add_general(writer, model_dir, method, provenance)
    add_hyperparameters(writer, model, model_dir)
    add_vocabulary(writer, model_dir, int(model.config["vocab_size"]))
    for tensor in planned:
        _add_tensor_info(writer, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in tensor_bytes(planned, model):
        writer.write_tensor_data(data)  # checks each size against the header's
    writer.flush()
    writer.close()
    fsync_path(path)


def _add_tensor_info(writer: gguf.GGUFWriter, tensor: PlannedTensor) -> None:
    Q = gguf.GGMLQuantizationType
    if tensor.ggml_type in (Q.F32, Q.F16):
        dtype = np.dtype(np.float32 if tensor.ggml_type == Q.F32 else np.float16)
        writer.add_tensor_info(tensor.gguf_name, tensor.shape, dtype, tensor.nbytes)
    else:  # byte-encoded types: the writer takes the byte shape and the GGML type
        byte_shape = gguf.quant_shape_to_byte_shape(tensor.shape, tensor.ggml_type)
        writer.add_tensor_info(tensor.gguf_name, byte_shape, np.dtype(np.uint8), tensor.nbytes,
                               raw_dtype=tensor.ggml_type)


def _add_general(writer: gguf.GGUFWriter, model_dir: Path, method: GgufMethod,
                 provenance: dict) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_dir.name)
    writer.add_quantized_by(f"lorafuse {__version__}")
    base = (provenance.get("base") or {}).get("source")
    if base:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, str(base))
    adapters = [a.get("name") for a in provenance.get("adapters") or [] if a.get("name")]
    if adapters:
        writer.add_finetune("+".join(adapters))
    writer.add_file_type(gguf.LlamaFileType[
        "MOSTLY_F16" if method.llama_cpp_type else method.file_type])
    if method.weight_type not in ("F16", "BF16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("lorafuse.version", __version__)
    writer.add_string("lorafuse.method", method.name)
    if (model_dir / PROVENANCE_NAME).is_file():
        writer.add_string(PROVENANCE_KEY, sha256_file(model_dir / PROVENANCE_NAME))
    else:
        log.warning("%s: no %s (not a lorafuse merge); the GGUF names no provenance",
                    model_dir, PROVENANCE_NAME)


def _source_provenance(model_dir: Path) -> dict:
    if (model_dir / PROVENANCE_NAME).is_file():
        return read_provenance(model_dir)
    return {"lorafuse_version": __version__, "created": utc_now(),
            "model": {"path": str(model_dir)}}


def _section(model_dir: Path, method: GgufMethod, planned: list[PlannedTensor], target: Path,
             quantizer: tuple[str, str] | None) -> dict:
    types: dict[str, int] = {}
    for tensor in planned:
        types[tensor.ggml_type.name] = types.get(tensor.ggml_type.name, 0) + 1
    source_sha = (sha256_file(model_dir / PROVENANCE_NAME)
                  if (model_dir / PROVENANCE_NAME).is_file() else None)
    return {
        "method": method.name,
        "scheme": method.llama_cpp_type or method.weight_type,
        "format": "gguf",
        "file": GGUF_NAME,
        "file_sha256": sha256_file(target),
        "tensor_types": types if quantizer is None else {"chosen_by": "llama.cpp"},
        "source": str(model_dir),
        "source_provenance_sha256": source_sha,
        "tool": _tool(quantizer),
        "created": utc_now(),
    }


def _tool(quantizer: tuple[str, str] | None) -> str:
    tool = f"gguf {_version('gguf')}"
    return tool if quantizer is None else f"{tool} + llama-cpp-python {quantizer[1]}"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _reusable(out: Path, model_dir: Path, method: GgufMethod) -> dict | None:
    """The existing output's quantization section if it is this very export, else None."""
    if not out.exists():
        return None
    if not (out / PROVENANCE_NAME).is_file():
        raise UserError(f"{out}: already exists and is not a lorafuse artifact")
    section = read_provenance(out).get("quantization") or {}
    if section.get("method") != method.name or section.get("source") != str(model_dir):
        raise UserError(f"{out}: already exists and holds a different quantization")
    return section


