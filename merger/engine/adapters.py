"""Reading LoRA adapters: adapter_config.json, weights, key normalisation, refusals by name."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    FiniteFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from lorafuse.errors import UserError, first_error
from lorafuse.jsonfile import loads_json
from lorafuse.merger.engine.patterns import check_patterns, module_names
from lorafuse.merger.engine.provenance import sha256_file
from lorafuse.merger.files.contain import contained_file
from lorafuse.merger.files.header import read_header
from lorafuse.merger.files.reader import TensorRef

PEFT_PREFIX = "base_model.model."
FLOAT32_MAX = torch.finfo(torch.float32).max
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
    "chat_template.json",
)
# Initialisations that change the base weights while training: the adapter is only right
# on top of that changed base, so merging it into the original base would be wrong.
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")
# Config fields that switch on LoRA variants whose merge differs from W + s*B@A (or DoRA).
UNSUPPORTED_VARIANTS = {
    "target_parameters": "LoRA on parameters (target_parameters, e.g. MoE experts)",
    "layer_replication": "layer_replication (it changes the number of layers)",
    "use_qalora": "QALoRA",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "monteclora_config": "MonteCLoRA",
    "velora_config": "VeLoRA",
}

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A"
    r"|lora_embedding_B|lora_magnitude_vector(?:\.weight)?|token_adapter\.trainable_tokens_delta)$"
)


class AdapterConfig(BaseModel):
    """The adapter_config.json fields the merge reads; the rest is checked as a plain dict."""

    model_config = ConfigDict(extra="allow")

    peft_type: str
    r: PositiveInt = 8
    lora_alpha: FiniteFloat = 8
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    rank_pattern: dict[str, PositiveInt] | None = None
    alpha_pattern: dict[str, FiniteFloat] | None = None
    modules_to_save: list[str] | None = None
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    init_lora_weights: bool | str = True
    ensure_weight_tying: bool = False
    base_model_name_or_path: str | None = None

    @field_validator("trainable_token_indices")
    @classmethod
    def _token_indices(cls, value):
        """Each list of token rows: non-empty, non-negative, no row twice."""
        for indices in value.values() if isinstance(value, dict) else [value]:
            if indices is not None and not indices:
                raise ValueError("an empty list of token indices")
            if indices and min(indices) < 0:
                raise ValueError(f"negative token index {min(indices)}")
            if indices and len(set(indices)) != len(indices):
                raise ValueError("a token index listed twice")
        return value


@dataclass
class LoraPart:
    """One module's low-rank update from one adapter."""

    module: str
    embedding: bool  # lora_embedding_A/B: delta is (B @ A).T
    a: TensorRef
    b: TensorRef
    scaling: float
    bias: TensorRef | None = None  # lora_bias: lora_B.bias, added to the base bias
    magnitude: TensorRef | None = None  # DoRA

    @property
    def weight_key(self) -> str:
        return f"{self.module}.weight"

    @property
    def bias_key(self) -> str:
        return f"{self.module}.bias"


@dataclass
class TokenRows:
    """trainable_token_indices: rows of an embedding replaced by trained values."""

    indices: list[int]
    values: TensorRef


@dataclass
class Adapter:
    name: str
    path: Path
    weights_file: Path
    config: AdapterConfig
    files: dict[str, str]  # file name -> sha256
    lora: dict[str, LoraPart] = field(default_factory=dict)  # keyed by base weight key
    replacements: dict[str, TensorRef] = field(default_factory=dict)  # base key -> tensor
    token_rows: dict[str, TokenRows] = field(default_factory=dict)  # base weight key -> rows
    tokenizer_files: list[Path] = field(default_factory=list)
    training_run: str | None = None

    def touched_keys(self) -> set[str]:
        keys = set(self.lora) | set(self.replacements) | set(self.token_rows)
        keys |= {part.bias_key for part in self.lora.values() if part.bias is not None}
        return keys


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_adapter(path: Path, name: str, allow_pickle: bool = False,
                 sha256: Callable[[Path], str] = sha256_file,
                 base_modules: set[str] | frozenset[str] = frozenset()) -> Adapter:
    """Read and check one adapter directory; every problem is a UserError naming the file.
    `sha256` hashes the weights file (e.g. FileHasher.digest, started earlier);
    `base_modules` are the names the config's regexes must match in bounded time."""
    if not path.is_dir():
        raise UserError(f"{path}: adapter directory not found")
    config_path = path / "adapter_config.json"
    config_bytes = _read_bytes(config_path, path, "adapter_config.json is missing")
    config = _parse_config(config_path, config_bytes)
    weights_file, tensors, weights_sha = _load_weights(path, allow_pickle, sha256)
    adapter_modules = module_names(key.removeprefix(PEFT_PREFIX) + ".x" for key in tensors)
    check_patterns(config_path, config, base_modules | adapter_modules)
    adapter = Adapter(
        name=name,
        path=path,
        weights_file=weights_file,
        config=config,
        files={config_path.name: sha256_bytes(config_bytes), weights_file.name: weights_sha},
        tokenizer_files=_tokenizer_files(path),
        training_run=_training_run(config),
    )
    for file in adapter.tokenizer_files:
        adapter.files[file.name] = sha256_bytes(_read_bytes(file, path, "missing"))
    _sort_tensors(adapter, tensors)
    return adapter


def _tokenizer_files(folder: Path) -> list[Path]:
    """The adapter's tokenizer files; a link leaving the adapter folder is refused."""
    listed = [folder / name for name in TOKENIZER_FILES]
    return [contained_file(p, folder) for p in listed if p.is_file() or p.is_symlink()]


def _read_bytes(path: Path, folder: Path, missing: str) -> bytes:
    if path.is_symlink() or path.exists():
        contained_file(path, folder)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc


def _parse_config(path: Path, raw: bytes) -> AdapterConfig:
    data = loads_json(raw, path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    if "peft_type" not in data:
        raise UserError(f"{path}: not a PEFT adapter config (no peft_type)")
    try:
        config = AdapterConfig.model_validate(data)
    except ValidationError as exc:
        problem = first_error(exc)
        raise UserError(f"{path}: invalid field {problem.field!r}: {problem.message}") from exc
    _refuse_unsupported(path, config, data)
    return config


def _refuse_unsupported(path: Path, config: AdapterConfig, data: dict) -> None:
    if config.peft_type != "LORA":
        raise UserError(f"{path}: peft_type {config.peft_type} is not supported "
                        "(lorafuse merges LoRA adapters)")
    for key, label in UNSUPPORTED_VARIANTS.items():
        if data.get(key):
            raise UserError(f"{path}: {label} cannot be merged exactly into the base weights")
    init = str(config.init_lora_weights).lower()
    if init == "mica":
        raise UserError(f"{path}: MiCA adapters cannot be merged exactly into the base weights")
    if init.startswith(BASE_CHANGING_INITS):
        raise UserError(f"{path}: init_lora_weights={config.init_lora_weights!r} trains against a "
                        "modified base; convert it to a plain LoRA adapter first")


def _training_run(config: AdapterConfig) -> str | None:
    extra = config.model_extra or {}
    for key in ("training_run", "training_run_id", "run_id"):
        if isinstance(extra.get(key), str):
            return extra[key]
    return None


def _load_weights(path: Path, allow_pickle: bool, sha256: Callable[[Path], str]
                  ) -> tuple[Path, dict[str, TensorRef], str]:
    safetensors_path = path / SAFETENSORS_NAME
    if safetensors_path.is_file() or safetensors_path.is_symlink():
        contained_file(safetensors_path, path)
        # Only the header is kept; each tensor is read when its target is merged.
        header = read_header(safetensors_path)
        tensors = {name: TensorRef.in_file(header, entry) for name, entry in header.tensors.items()}
        return safetensors_path, tensors, sha256(safetensors_path)
    pickle_path = path / PICKLE_NAME
    if pickle_path.is_file() or pickle_path.is_symlink():
        contained_file(pickle_path, path)
        if not allow_pickle:
            raise UserError(f"{pickle_path}: pickle weights are refused (they can run code); "
                            "convert to safetensors or pass --allow-pickle")
        tensors = {k: TensorRef.in_memory(k, v) for k, v in _load_pickle(pickle_path).items()}
        return pickle_path, tensors, sha256(pickle_path)
    raise UserError(f"{path}: no {SAFETENSORS_NAME} (or {PICKLE_NAME}) in the adapter directory")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise UserError(f"{path}: cannot load with weights_only=True "
                        f"({type(exc).__name__})") from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise UserError(f"{path}: expected a dict of tensors")
    return tensors


def _sort_tensors(adapter: Adapter, tensors: dict[str, TensorRef]) -> None:
    """Group the adapter's tensors by module and kind; unknown keys are errors."""
    parts: dict[str, dict[str, TensorRef]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise UserError(f"{adapter.weights_file}: tensor {key!r} lacks the "
                            f"{PEFT_PREFIX!r} prefix PEFT writes")
        inner = key[len(PEFT_PREFIX):]
        match = _LORA_KEY.match(inner)
        if match:
            part = match["part"]
            if "magnitude" in part:  # older PEFT saved it with a ".weight" suffix
                part = part.removesuffix(".weight")
            parts.setdefault(match["module"], {})[part] = tensor
        elif "lora_" in inner or "trainable_tokens" in inner:
            raise UserError(f"{adapter.weights_file}: unrecognised adapter tensor {key!r}")
        elif ".original_module." not in inner:  # the untrained copy of a modules_to_save layer
            _add_replacement(adapter, key, inner, tensor)
    for module, found in parts.items():
        if "token_adapter.trainable_tokens_delta" in found:
            _add_token_rows(adapter, module, found.pop("token_adapter.trainable_tokens_delta"))
        if found:
            adapter.lora[f"{module}.weight"] = _lora_part(adapter, module, found)


# Infixes PEFT leaves in the names of whole saved layers: modules_to_save copies and the
# embedding layers saved next to their LoRA (save_embedding_layers).
_WRAPPER_INFIXES = re.compile(r"\.(?:modules_to_save(?:\.default)?|base_layer)\.")


def _add_replacement(adapter: Adapter, key: str, inner: str, tensor: TensorRef) -> None:
    """modules_to_save layers, saved embedding layers and trained biases replace base tensors."""
    target = _WRAPPER_INFIXES.sub(".", inner)
    known = adapter.replacements.get(target)
    if known is not None and not (known.shape == tensor.shape
                                  and torch.equal(known.load(), tensor.load())):
        raise UserError(f"{adapter.weights_file}: {key!r} and another saved copy of {target!r} "
                        "differ")
    adapter.replacements[target] = tensor


def _lora_part(adapter: Adapter, module: str, found: dict[str, TensorRef]) -> LoraPart:
    embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight",
                                                                              "lora_B.weight")
    if a_key not in found or b_key not in found:
        missing = a_key if a_key not in found else b_key
        raise UserError(f"{adapter.weights_file}: {module} has no {missing} tensor")
    a, b = found[a_key], found[b_key]
    if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
        raise UserError(f"{adapter.weights_file}: {module}: lora A {list(a.shape)} and "
                        f"B {list(b.shape)} do not form a low-rank pair")
    rank = a.shape[0]
    for tensor in (a, b, *(t for t in (found.get("lora_B.bias"),
                                       found.get("lora_magnitude_vector")) if t is not None)):
        _require_float(adapter, tensor)
    bias = found.get("lora_B.bias")
    magnitude = found.get("lora_magnitude_vector")
    if magnitude is not None and not adapter.config.use_dora:
        raise UserError(f"{adapter.weights_file}: {module} has a DoRA magnitude but "
                        "use_dora is false in adapter_config.json")
    if adapter.config.use_dora and magnitude is None:
        raise UserError(f"{adapter.weights_file}: use_dora is true but {module} has no "
                        "lora_magnitude_vector")
    return LoraPart(module, embedding, a, b, _scaling(adapter, module, rank), bias, magnitude)


def _require_float(adapter: Adapter, tensor: TensorRef) -> None:
    if not tensor.dtype.is_floating_point:
        raise UserError(f"{adapter.weights_file}: {tensor.name!r} is {tensor.dtype}, "
                        "not a floating-point tensor")


def _scaling(adapter: Adapter, module: str, rank: int) -> float:
    """PEFT's scaling for one module, with rank_pattern/alpha_pattern resolved as PEFT does."""
    config = adapter.config
    rank_pattern, alpha_pattern = config.rank_pattern or {}, config.alpha_pattern or {}
    r = rank_pattern.get(get_pattern_key(list(rank_pattern), module), config.r)
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), config.lora_alpha)
    if r != rank:
        raise UserError(f"{adapter.weights_file}: {module} has rank {rank} but "
                        f"adapter_config.json gives r={r}")
    scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    if not abs(scaling) <= FLOAT32_MAX:
        raise UserError(f"{adapter.path / 'adapter_config.json'}: {module}: scaling "
                        f"{scaling:g} (lora_alpha {alpha:g}, r {r}) is beyond float32")
    return scaling


def get_pattern_key(pattern_keys: list[str], key_to_match: str) -> str:
    """peft.utils.other.get_pattern_key (importing peft costs seconds): the first pattern that
    matches the end of the module name at a dot boundary, else the name itself."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key_to_match):
            return pattern
    return key_to_match


def _add_token_rows(adapter: Adapter, module: str, values: TensorRef) -> None:
    spec = adapter.config.trainable_token_indices
    if isinstance(spec, dict):
        names = [k for k in spec if module == k or module.endswith(f".{k}")]
        if len(names) != 1:
            raise UserError(f"{adapter.path / 'adapter_config.json'}: trainable_token_indices "
                            f"has no single entry for {module}")
        indices = spec[names[0]]
    elif spec:
        indices = list(spec)
    else:
        raise UserError(f"{adapter.weights_file}: {module} has trainable tokens but "
                        "adapter_config.json has no trainable_token_indices")
    if values.dim() != 2 or values.shape[0] != len(indices):
        raise UserError(f"{adapter.weights_file}: {module}: trainable token rows "
                        f"{list(values.shape)} for {len(indices)} indices")
    _require_float(adapter, values)
    adapter.token_rows[f"{module}.weight"] = TokenRows(list(indices), values)
