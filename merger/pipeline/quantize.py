"""Quantization with llm-compressor (AWQ W4A16, GPTQ W4A16, FP8 dynamic) to compressed-tensors.

The model quantized is the merged one: calibration sees the activations the served model
will produce, which is the point of merging before quantizing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lorafuse import __version__
from lorafuse.errors import UserError, first_line
from lorafuse.merger.engine.provenance import (
    PROVENANCE_NAME,
    read_provenance,
    utc_now,
    write_provenance,
)
from lorafuse.merger.files.atomic import staging_dir
from lorafuse.merger.pipeline.calibration import CalibrationSet, load_calibration
from lorafuse.merger.pipeline.plan import check_ignore_pattern

log = logging.getLogger(__name__)

METHODS = ("awq", "gptq", "fp8")
SCHEMES = {"awq": "W4A16", "gptq": "W4A16", "fp8": "FP8_DYNAMIC"}
CALIBRATED = ("awq", "gptq")
# 4-bit weights are scaled per group of input columns; vLLM's kernels take 128, 64 or 32.
GROUP_SIZES = (128, 64, 32)
IGNORE = ["lm_head"]  # the output head stays in the model dtype, as in llm-compressor's examples
# vLLM loads each of these groups as one fused layer, in one precision: keep all or none.
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# Files the quantized model writes itself; everything else in the source (tokenizer, chat
# template, ...) is copied as it is.
WRITTEN = {"config.json", "generation_config.json", "model.safetensors.index.json",
           "recipe.yaml", PROVENANCE_NAME}


@dataclass
class QuantizeOptions:
    model: Path
    out: Path
    method: str
    calibration: Path | None = None
    samples: int = 64
    seq_len: int = 512
    ignore: tuple[str, ...] = ()  # layers kept unquantized besides IGNORE (llm-compressor's form)


@dataclass
class QuantizeResult:
    out: Path
    reused: bool
    quantization: dict  # the `quantization` section of lorafuse.json


def quantize(options: QuantizeOptions) -> QuantizeResult:
    """Quantize `options.model` into `options.out` (atomic: all of it or nothing)."""
    model_dir, out = Path(options.model), Path(options.out)
    method = _check_method(options.method)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json)")
    ignore = _check_patterns(options.ignore)
    calibration = _calibration(options, method)
    reused = _reusable(out, model_dir, method, calibration, ignore)
    if reused is not None:
        return QuantizeResult(out=out, reused=True, quantization=reused)
    compressor = _import_llmcompressor()
    model = _load(model_dir)
    quantized = _quantized_layers(model, model_dir, ignore)
    widths = {layer.in_features for layer in quantized.values()}
    group_size = _group_size(widths, model_dir) if SCHEMES[method] == "W4A16" else None
    recipe = _recipe(compressor, method, group_size, ignore)
    dataset = _dataset(model_dir, calibration) if calibration else None
    _run_oneshot(compressor, model, recipe, dataset, calibration, model_dir, method)
    section = {
        "method": method,
        "scheme": SCHEMES[method],
        "group_size": group_size,
        "ignore": ignore,
        "calibration": calibration.provenance() if calibration else None,
        "source": str(model_dir),
        "tool": f"llmcompressor {compressor.version}",
        "created": utc_now(),
    }
    with staging_dir(out) as staging:
        model.save_pretrained(staging, save_compressed=True)
        _copy_side_files(model_dir, staging)
        write_provenance(staging, _provenance(model_dir, section))
    log.info("quantized %s with %s into %s", model_dir, method, out)
    return QuantizeResult(out=out, reused=False, quantization=section)


def _check_method(method: str) -> str:
    if method not in METHODS:
        choices = ", ".join(METHODS)
        raise UserError(f"quantization method {method!r}: unknown; choose one of {choices}")
    return method


def _check_patterns(patterns: tuple[str, ...]) -> list[str]:
    try:
        return [*IGNORE, *(check_ignore_pattern(p) for p in patterns if p not in IGNORE)]
    except ValueError as exc:
        raise UserError(f"quantization ignore {exc}") from None


def _calibration(options: QuantizeOptions, method: str) -> CalibrationSet | None:
    if method not in CALIBRATED:
        if options.calibration:
            log.info("%s needs no calibration data; %s is not used", method, options.calibration)
        return None
    if options.calibration is None:
        raise UserError(f"{method} needs a calibration set (--calibration FILE.jsonl)")
    return load_calibration(options.calibration, options.samples, options.seq_len)


def _reusable(
    out: Path, model_dir: Path, method: str, calibration, ignore: list[str]
) -> dict | None:
    """The existing output's quantization section if it is this very quantization, else None."""
    if not out.exists():
        return None
    if not (out / PROVENANCE_NAME).is_file():
        raise UserError(f"{out}: already exists and is not a lorafuse artifact")
    section = read_provenance(out).get("quantization") or {}
    wanted_calibration = calibration.provenance() if calibration else None
    same = (
        section.get("method") == method
        and section.get("source") == str(model_dir)
        and section.get("calibration") == wanted_calibration
        and section.get("ignore", IGNORE) == ignore
    )
    if not same:
        raise UserError(f"{out}: already exists and holds a different quantization")
    return section


@dataclass
class _Compressor:
    version: str
    oneshot: object
    awq: type
    gptq: type
    quantization: type
    scheme_args: tuple[type, type]


def _import_llmcompressor() -> _Compressor:
    # llm-compressor logs to stdout through loguru, from import on; keep stdout for results
    # (its sink is replaced by one on stderr below).
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    try:
        import llmcompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier
    except ImportError as exc:
        raise UserError(
            f"llm-compressor is not installed ({exc.name}); install lorafuse's `quantize` extra"
        ) from None
    from loguru import logger

    logger.remove()
    level = "DEBUG" if log.isEnabledFor(logging.DEBUG) else "WARNING"
    logger.add(sys.stderr, level=level)
    return _Compressor(
        version=llmcompressor.__version__,
        oneshot=oneshot,
        awq=AWQModifier,
        gptq=GPTQModifier,
        quantization=QuantizationModifier,
        scheme_args=(QuantizationArgs, QuantizationScheme),
    )


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{model_dir}: cannot load the model ({first_line(exc)})") from None
    if getattr(model.config, "quantization_config", None):
        raise UserError(f"{model_dir}: already quantized; quantize the merged model instead")
    return model.eval()


def _quantized_layers(model, model_dir: Path, ignore: list[str]) -> dict[str, torch.nn.Linear]:
    """The linear layers the recipe will quantize, by name, after checking `ignore`."""
    from compressed_tensors.utils import is_match

    linears = {
        name: module for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    for pattern in ignore[len(IGNORE):]:
        if not any(is_match(name, module, pattern) for name, module in linears.items()):
            raise UserError(
                f"quantization ignore {pattern!r}: matches no linear layer of {model_dir}"
            )
    kept = {name for name, module in linears.items() if is_match(name, module, ignore)}
    _check_fused_groups(kept, linears, model_dir)
    quantized = {name: module for name, module in linears.items() if name not in kept}
    if not quantized and ignore == IGNORE:
        raise UserError(
            f"{model_dir}: {type(model).__name__} has no torch.nn.Linear layers, the only kind "
            "llm-compressor quantizes (GPT-2 style Conv1D layers are not supported)"
        )
    if not quantized:
        raise UserError(f"quantization ignore: keeps every linear layer of {model_dir}; nothing "
                        "is left to quantize")
    log.info("quantizing %d linear layers, keeping %d in %s", len(quantized), len(kept),
             model.dtype)
    return quantized


def _check_fused_groups(kept: set[str], linears: dict, model_dir: Path) -> None:
    for name in sorted(kept):
        prefix, _, leaf = name.rpartition(".")
        group = next((group for group in FUSED if leaf in group), ())
        shards = [f"{prefix}.{shard}" for shard in group]
        split = [shard for shard in shards if shard in linears and shard not in kept]
        if split:
            raise UserError(
                f"quantization ignore: keeps {name} but not {split[0]} of {model_dir}; vLLM "
                f"serves {', '.join(group)} as one layer, so ignore all of them or none"
            )


def _group_size(widths: set[int], model_dir: Path) -> int:
    """The largest group size vLLM supports that divides every quantized layer's inputs."""
    for size in GROUP_SIZES:
        if all(width % size == 0 for width in widths):
            return size
    odd = min(width for width in widths if width % GROUP_SIZES[-1])
    raise UserError(
        f"{model_dir}: a layer with {odd} input features cannot be split into groups of "
        f"{', '.join(map(str, GROUP_SIZES))} for 4-bit quantization"
    )


def _recipe(compressor: _Compressor, method: str, group_size: int | None, ignore: list[str]):
    if method == "fp8":
        return compressor.quantization(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)
    args_type, scheme_type = compressor.scheme_args
    weights = args_type(num_bits=4, type="int", strategy="group", group_size=group_size,
                        symmetric=True, dynamic=False)
    groups = {"group_0": scheme_type(targets=["Linear"], weights=weights)}
    if method == "gptq":
        return compressor.gptq(config_groups=groups, ignore=ignore)
    return [compressor.awq(), compressor.quantization(config_groups=groups, ignore=ignore)]


def _dataset(model_dir: Path, calibration: CalibrationSet):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(calibration.texts, truncation=True, max_length=calibration.seq_len)
    return Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    )


def _run_oneshot(compressor, model, recipe, dataset, calibration, model_dir: Path, method: str):
    arguments = {}
    if dataset is not None:
        arguments = dict(
            dataset=dataset,
            num_calibration_samples=calibration.samples,
            max_seq_length=calibration.seq_len,
            shuffle_calibration_samples=False,
        )
    torch.manual_seed(0)
    try:
        with _no_pinning_without_accelerator():
            compressor.oneshot(model=model, recipe=recipe, **arguments)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        # What llm-compressor rejects is the model it was given (architecture, shapes).
        log.debug("llm-compressor failed", exc_info=True)
        raise UserError(
            f"{model_dir}: llm-compressor cannot quantize {type(model).__name__} with {method} "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None


@contextlib.contextmanager
def _no_pinning_without_accelerator():
    """Skip llm-compressor's memory pinning when there is no accelerator.

    llm-compressor 0.14's AWQ pins its cached activations before each smoothing grid search
    (IntermediatesCache.pin_memory) so that copies to the GPU can be asynchronous. Torch
    cannot pin memory without an accelerator ("Cannot access accelerator device when none
    is available"), which makes AWQ fail on CPU-only machines although nothing else in it
    needs a GPU. Pinning only speeds up host-to-device copies, so on CPU it is skipped.
    """
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def _copy_side_files(model_dir: Path, staging: Path) -> None:
    for path in model_dir.iterdir():
        wanted = path.is_file() and path.suffix != ".safetensors" and path.name not in WRITTEN
        if wanted and not (staging / path.name).exists():
            shutil.copy2(path, staging / path.name)


def _provenance(model_dir: Path, section: dict) -> dict:
    """The source's lorafuse.json (a merge's inputs) with the quantization section added."""
    if (model_dir / PROVENANCE_NAME).is_file():
        data = read_provenance(model_dir)
    else:
        data = {"lorafuse_version": __version__, "created": utc_now(),
                "model": {"path": str(model_dir)}}
    data["quantization"] = section
    return data
