"""The base checkpoint: config, safetensors shards and headers, layer kinds, tied embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.jsonfile import loads_json, read_json
from lorafuse.merger.files.contain import contained_file, relative_name
from lorafuse.merger.files.header import SafetensorsHeader, TensorEntry, read_header

INDEX_NAME = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
QUANT_HINTS = ("bitsandbytes", "gptq", "awq", "compressed-tensors", "compressed_tensors")


@dataclass
class BaseCheckpoint:
    path: Path
    config: dict
    config_file: Path
    headers: list[SafetensorsHeader]  # in file-name order
    locations: dict[str, tuple[SafetensorsHeader, TensorEntry]] = field(default_factory=dict)
    transposed_modules: set[str] = field(default_factory=set)  # Conv1D: weight stored (in, out)
    input_embedding: str | None = None  # weight key, e.g. model.embed_tokens.weight
    output_embedding: str | None = None  # weight key, e.g. lm_head.weight
    tied: bool = False
    modules_known: bool = False  # the layer layout is known from the model type

    def entry(self, key: str) -> TensorEntry | None:
        found = self.locations.get(key)
        return found[1] if found else None

    @property
    def virtual_output_embedding(self) -> bool:
        """Tied and stored once: the output embedding is the input embedding's tensor."""
        return bool(self.tied and self.output_embedding
                    and self.output_embedding not in self.locations)

    def other_files(self) -> list[Path]:
        """Top-level files to carry over as they are (config is written separately); a link
        leaving the base folder is refused, so nothing outside it reaches an artifact."""
        skip = {INDEX_NAME, "config.json", "lorafuse.json"}
        return sorted(
            contained_file(p, self.path) for p in self.path.iterdir()
            if (p.is_file() or p.is_symlink()) and not p.name.startswith(".")
            and p.name not in skip
            and not p.name.endswith(WEIGHT_SUFFIXES) and not p.name.endswith(".index.json")
        )


def load_base(path: Path) -> BaseCheckpoint:
    if not path.exists():
        raise UserError(f"{path}: base model directory not found")
    if not path.is_dir():
        raise UserError(f"{path}: base model must be a directory")
    config_file = path / "config.json"
    if config_file.is_file() or config_file.is_symlink():
        contained_file(config_file, path)
    config = read_json(config_file, missing="missing (not a Hugging Face model directory)")
    _refuse_quantized(config_file, config)
    headers = [read_header(p) for p in _weight_files(path)]
    base = BaseCheckpoint(path, config, config_file, headers)
    for header in headers:
        for name, entry in header.tensors.items():
            if name in base.locations:
                raise UserError(f"{header.path}: tensor {name!r} also appears in "
                                f"{base.locations[name][0].path.name}")
            base.locations[name] = (header, entry)
    _inspect_modules(base)
    return base


def _refuse_quantized(config_file: Path, config: dict) -> None:
    quant = config.get("quantization_config")
    if not quant:
        text_config = config.get("text_config")
        quant = text_config.get("quantization_config") if isinstance(text_config, dict) else None
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise UserError(f"{config_file}: the base model is quantized ({method}); merge into the "
                        "unquantized base model the adapter was trained from (the QLoRA path) "
                        "and quantize the merged model afterwards")


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        contained_file(index, path)
        try:
            weight_map = loads_json(index.read_bytes(), index)["weight_map"]
            names = sorted(set(weight_map.values()), key=str)
        except (OSError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{index}: invalid safetensors index ({exc})") from exc
        files = [path / relative_name(name, f"{index}: weight_map entry") for name in names]
        for file in files:
            if not file.is_file() and not file.is_symlink():
                raise UserError(f"{index}: lists {file.name}, which is missing")
            contained_file(file, path)
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise UserError(f"{path}: the base model has only pickle weights; convert it to "
                            "safetensors first")
        raise UserError(f"{path}: no *.safetensors weights in the base model directory")
    if len(files) > 1:
        raise UserError(f"{path}: several safetensors files but no {INDEX_NAME}")
    return [contained_file(file, path) for file in files]


# Architectures whose projection layers are transformers' Conv1D (weight stored (in, out)),
# and the names of those layers; everything else is a Linear (out, in).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp"}
CONV1D_LAYERS = {"c_attn", "c_proj", "c_fc", "q_attn"}
INPUT_EMBEDDINGS = (
    "model.embed_tokens.weight", "transformer.wte.weight",
    "model.language_model.embed_tokens.weight",
    "language_model.model.embed_tokens.weight", "gpt_neox.embed_in.weight",
    "transformer.word_embeddings.weight", "model.decoder.embed_tokens.weight",
    "transformer.embedding.word_embeddings.weight", "model.embed_in.weight", "embed_tokens.weight",
)
OUTPUT_EMBEDDINGS = ("lm_head.weight", "embed_out.weight", "language_model.lm_head.weight",
                     "transformer.output_layer.weight")


def _inspect_modules(base: BaseCheckpoint) -> None:
    """Layer layout and weight tying from config.json and the checkpoint's keys.

    Importing transformers' model classes takes seconds; a merge needs only these facts."""
    model_type = str(base.config.get("model_type", ""))
    if model_type in CONV1D_MODEL_TYPES:
        base.modules_known = True
        base.transposed_modules = {
            key.removesuffix(".weight") for key in base.locations
            if key.endswith(".weight") and key.rsplit(".", 2)[-2] in CONV1D_LAYERS
        }
    elif model_type:
        base.modules_known = True
    base.input_embedding = next((k for k in INPUT_EMBEDDINGS if k in base.locations), None)
    base.output_embedding = next((k for k in OUTPUT_EMBEDDINGS if k in base.locations),
                                 OUTPUT_EMBEDDINGS[0])
    tie = _config_value(base.config, "tie_word_embeddings")
    if tie is None:  # not recorded: a missing output embedding means the model ties it
        tie = base.output_embedding not in base.locations
    base.tied = bool(tie and base.input_embedding)


def _config_value(config: dict, key: str):
    if key in config:
        return config[key]
    text_config = config.get("text_config")
    return text_config.get(key) if isinstance(text_config, dict) else None
