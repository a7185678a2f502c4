"""Which output tensor comes from which base tensor, and what each adapter does to it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from lorafuse.errors import UserError
from lorafuse.merger.engine.adapters import Adapter, TokenRows
from lorafuse.merger.engine.basemodel import BaseCheckpoint
from lorafuse.merger.engine.lora import Contribution, expected_shape
from lorafuse.merger.files.header import FLOAT_DTYPES
from lorafuse.merger.files.reader import TensorRef
from lorafuse.merger.files.writer import OutputTensor

log = logging.getLogger(__name__)


@dataclass
class TensorRecipe:
    """One output tensor: its base source and the changes to apply, in this order."""

    name: str
    source: str
    dtype: str
    shape: tuple[int, ...]
    replacement: TensorRef | None = None
    replaced_by: str | None = None
    token_rows: list[TokenRows] = field(default_factory=list)
    low_rank: list[Contribution] = field(default_factory=list)
    dora: Contribution | None = None
    bias: list[Contribution] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.replacement is not None or self.token_rows or self.low_rank
                    or self.dora or self.bias)

    def adapters(self) -> list[str]:
        names = [c.adapter for c in (*self.low_rank, *self.bias)]
        names += [self.dora.adapter] if self.dora else []
        names += [self.replaced_by] if self.replaced_by else []
        return sorted(set(names))


@dataclass
class MergeLayout:
    by_source: dict[str, list[TensorRecipe]]
    outputs: list[OutputTensor]
    config_updates: dict[str, object]
    tokenizer_from: Adapter | None

    @property
    def tensors_merged(self) -> int:
        return sum(p.changed for recipes in self.by_source.values() for p in recipes)


def lay_out_merge(base: BaseCheckpoint, adapters: list[Adapter], weights: list[float],
                  combine: str, dtype: str) -> MergeLayout:
    """Every output tensor in base file order, each with the recipe that makes it."""
    changes: dict[str, TensorRecipe] = {}
    for adapter in adapters:
        _add_replacements(base, changes, adapter)
    for adapter, weight in zip(adapters, weights, strict=True):
        _add_adapter(base, changes, adapter, weight, combine)
    _refuse_conflicts(changes)
    _drop_noop_replacements(base, changes)
    config_updates: dict[str, object] = {}
    extra = _resolve_tied_embeddings(base, changes, config_updates)
    by_source: dict[str, list[TensorRecipe]] = {}
    outputs: list[OutputTensor] = []
    for header in base.headers:
        for entry in header.in_file_order():
            recipe = changes.get(entry.name) or TensorRecipe(entry.name, entry.name, entry.dtype,
                                                         entry.shape)
            recipes = [recipe] + ([extra] if extra and extra.source == entry.name else [])
            for item in recipes:
                item.dtype = _output_dtype(item.dtype, dtype)
                outputs.append(OutputTensor(item.name, item.dtype, item.shape))
            by_source[entry.name] = recipes
    _check_vocab(base, by_source, config_updates)
    if dtype != "auto":
        config_updates["dtype"] = dtype
    return MergeLayout(by_source, outputs, config_updates, _tokenizer_source(adapters))


def _output_dtype(source_dtype: str, requested: str) -> str:
    if requested == "auto" or source_dtype not in FLOAT_DTYPES:
        return source_dtype
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[requested]


def _recipe_for(base: BaseCheckpoint, changes: dict[str, TensorRecipe], key: str) -> TensorRecipe:
    if key not in changes:
        entry = base.entry(key)
        source = key
        if entry is None:  # the output embedding of a tied model, stored once
            source = base.input_embedding
            entry = base.entry(source)
        changes[key] = TensorRecipe(key, source, entry.dtype, entry.shape)
    return changes[key]


def _has_tensor(base: BaseCheckpoint, key: str) -> bool:
    return key in base.locations or (base.virtual_output_embedding and key == base.output_embedding)


def _missing(adapter: Adapter, what: str, key: str) -> UserError:
    return UserError(f"{adapter.weights_file}: {what} targets {key!r}, which the base model "
                     "does not have")


def _add_replacements(base: BaseCheckpoint, changes: dict[str, TensorRecipe],
                      adapter: Adapter) -> None:
    for key, tensor in sorted(adapter.replacements.items()):
        if not _has_tensor(base, key):
            raise _missing(adapter, f"tensor {key!r}", key)
        _add_replacement(base, _recipe_for(base, changes, key), adapter, tensor)


def _add_adapter(base: BaseCheckpoint, changes: dict[str, TensorRecipe], adapter: Adapter,
                 weight: float, combine: str) -> None:
    for key, rows in sorted(adapter.token_rows.items()):
        if not _has_tensor(base, key):
            raise _missing(adapter, "trainable_token_indices", key)
        _recipe_for(base, changes, key).token_rows.append(rows)
    for key, part in sorted(adapter.lora.items()):
        if not _has_tensor(base, key):
            raise _missing(adapter, f"LoRA module {part.module!r}", key)
        recipe = _recipe_for(base, changes, key)
        transposed = part.embedding or part.module in base.transposed_modules or (
            not base.modules_known and adapter.config.fan_in_fan_out)
        contribution = Contribution(adapter.name, weight, part, transposed)
        _check_shape(adapter, recipe, expected_shape(contribution), part.module)
        if part.magnitude is not None:
            _add_dora(adapter, recipe, contribution, combine)
        else:
            recipe.low_rank.append(contribution)
        if part.bias is not None:
            _add_lora_bias(base, changes, adapter, contribution)


def _check_shape(adapter: Adapter, recipe: TensorRecipe, shape: tuple[int, ...], what: str) -> None:
    if tuple(shape) != tuple(recipe.shape):
        raise UserError(f"{adapter.weights_file}: {what} expects {recipe.name} of shape "
                        f"{list(shape)}, the base has {list(recipe.shape)} "
                        "(adapter trained for another base model?)")


def _add_replacement(base: BaseCheckpoint, recipe: TensorRecipe, adapter: Adapter,
                     tensor: TensorRef) -> None:
    shape = tuple(tensor.shape)
    resizable = recipe.name in (base.input_embedding, base.output_embedding)
    if shape != recipe.shape and not (resizable and shape[1:] == recipe.shape[1:]):
        raise UserError(f"{adapter.weights_file}: {recipe.name} has shape {list(shape)}, "
                        f"the base has {list(recipe.shape)} "
                        "(adapter trained for another base model?)")
    if recipe.replacement is not None:
        if recipe.replacement.shape != tensor.shape or not torch.equal(recipe.replacement.load(),
                                                                     tensor.load()):
            raise UserError(f"{adapter.weights_file}: {recipe.name} is replaced by both "
                            f"{recipe.replaced_by} and {adapter.name} with different values")
        return
    if not tensor.dtype.is_floating_point:
        raise UserError(f"{adapter.weights_file}: {recipe.name} has unsupported dtype "
                        f"{tensor.dtype}")
    recipe.replacement, recipe.replaced_by, recipe.shape = tensor, adapter.name, shape


def _add_dora(adapter: Adapter, recipe: TensorRecipe, contribution: Contribution,
              combine: str) -> None:
    if contribution.weight != 1.0 or combine != "linear":
        raise UserError(f"{adapter.path}: DoRA adapters merge exactly only alone with weight 1.0 "
                        f"and --combine linear ({recipe.name})")
    if recipe.dora is not None:
        raise UserError(f"{recipe.name}: DoRA adapters {recipe.dora.adapter} and {adapter.name} "
                        "both change it; several DoRA adapters on one layer cannot be merged "
                        "exactly")
    features = recipe.shape[1] if contribution.transposed else recipe.shape[0]
    if tuple(contribution.part.magnitude.shape) != (features,):
        raise UserError(f"{adapter.weights_file}: DoRA magnitude of {contribution.part.module} "
                        f"has shape {list(contribution.part.magnitude.shape)}, "
                        f"expected [{features}]")
    recipe.dora = contribution


def _add_lora_bias(base: BaseCheckpoint, changes: dict[str, TensorRecipe], adapter: Adapter,
                   contribution: Contribution) -> None:
    key = contribution.part.bias_key
    if key not in base.locations:
        raise UserError(f"{adapter.weights_file}: lora_bias on {contribution.part.module}, "
                        "but that layer of the base model has no bias")
    recipe = _recipe_for(base, changes, key)
    _check_shape(adapter, recipe, tuple(contribution.part.bias.shape), f"lora_B.bias of "
                 f"{contribution.part.module}")
    recipe.bias.append(contribution)


def _refuse_conflicts(changes: dict[str, TensorRecipe]) -> None:
    for recipe in changes.values():
        if (recipe.low_rank or recipe.dora or recipe.bias or recipe.token_rows) and (
                recipe.dtype not in {*FLOAT_DTYPES, "F64"}):
            raise UserError(f"{recipe.name}: the base stores it as {recipe.dtype}; an adapter "
                            "update can only be merged into a floating-point tensor")
        if recipe.dora and (recipe.low_rank or len({recipe.dora.adapter, *recipe.adapters()}) > 1):
            others = sorted(set(recipe.adapters()) - {recipe.dora.adapter}) or [recipe.dora.adapter]
            raise UserError(f"{recipe.name}: DoRA adapter {recipe.dora.adapter} and {others} both "
                            "change it; several adapters on one DoRA layer cannot be merged "
                            "exactly")
        seen: set[int] = set()
        for rows in recipe.token_rows:
            if seen & set(rows.indices):
                raise UserError(f"{recipe.name}: trainable tokens of several adapters overlap "
                                f"({sorted(seen & set(rows.indices))})")
            seen |= set(rows.indices)
            if rows.values.shape[1:] != recipe.shape[1:] or max(rows.indices) >= recipe.shape[0]:
                raise UserError(f"{recipe.name}: trainable token rows do not fit the tensor "
                                f"of shape {list(recipe.shape)}")


def _drop_noop_replacements(base: BaseCheckpoint, changes: dict[str, TensorRecipe]) -> None:
    """PEFT saves embedding layers next to their LoRA even when unchanged: equal to the base
    tensor, such a 'replacement' changes nothing and must not untie or resize anything."""
    from safetensors import safe_open

    for recipe in changes.values():
        if recipe.replacement is None:
            continue
        header, entry = base.locations[recipe.source]
        if tuple(recipe.replacement.shape) != entry.shape:
            continue
        with safe_open(header.path, "pt") as handle:
            original = handle.get_tensor(recipe.source)
        if torch.equal(recipe.replacement.to(dtype=original.dtype), original):
            recipe.replacement, recipe.replaced_by = None, None


def _resolve_tied_embeddings(base: BaseCheckpoint, changes: dict[str, TensorRecipe],
                             config_updates: dict) -> TensorRecipe | None:
    """Keep the tie when both sides end up identical; otherwise untie (and write both).

    Returns the recipe of an output embedding that must now be written although the base
    stores it only once (as the input embedding)."""
    if not base.tied or not base.input_embedding or not base.output_embedding:
        return None
    inputs = changes.get(base.input_embedding)
    if inputs is not None and inputs.token_rows:
        # PEFT ties trainable tokens of a tied input embedding to the output embedding.
        outputs = _recipe_for(base, changes, base.output_embedding)
        if not outputs.token_rows:
            outputs.token_rows = list(inputs.token_rows)
    outputs = changes.get(base.output_embedding)
    if _same_changes(inputs, outputs):
        if base.virtual_output_embedding:
            changes.pop(base.output_embedding, None)
        return None
    config_updates["tie_word_embeddings"] = False
    log.info("an adapter changes one side of the tied embeddings only: writing both, untied")
    if base.virtual_output_embedding:
        return changes.pop(base.output_embedding, None) or _recipe_for(
            base, {}, base.output_embedding)
    return None


def _same_changes(first: TensorRecipe | None, second: TensorRecipe | None) -> bool:
    if first is None or second is None:
        return first is None and second is None
    if first.dora or second.dora or first.bias or second.bias:
        return False
    if (first.replacement is None) != (second.replacement is None):
        return False
    if first.replacement is not None and not (
        first.replacement.shape == second.replacement.shape
        and torch.equal(first.replacement.load(), second.replacement.load())
    ):
        return False
    if len(first.token_rows) != len(second.token_rows) or any(
        a.indices != b.indices or not torch.equal(a.values.load(), b.values.load())
        for a, b in zip(first.token_rows, second.token_rows, strict=True)
    ):
        return False
    if len(first.low_rank) != len(second.low_rank):
        return False
    cpu = torch.device("cpu")
    for a, b in zip(first.low_rank, second.low_rank, strict=True):
        if a.alpha != b.alpha:
            return False
        (a_left, a_right), (b_left, b_right) = a.factors(cpu), b.factors(cpu)
        if not (torch.equal(a_left, b_left) and torch.equal(a_right, b_right)):
            return False
    return True


def _check_vocab(base: BaseCheckpoint, by_source: dict[str, list[TensorRecipe]],
                 config_updates: dict) -> None:
    shapes = {recipe.name: recipe.shape for recipes in by_source.values() for recipe in recipes}
    rows = {key: shapes[key][0] for key in (base.input_embedding, base.output_embedding)
            if key in shapes}
    if len(set(rows.values())) > 1:
        raise UserError(f"the merged input and output embeddings would have different vocabulary "
                        f"sizes ({rows}); resize both in the adapter")
    if rows:
        vocab = next(iter(rows.values()))
        if vocab != base.config.get("vocab_size", vocab):
            config_updates["vocab_size"] = vocab


def _tokenizer_source(adapters: list[Adapter]) -> Adapter | None:
    """An adapter that ships a tokenizer wins over the base's; several must agree."""
    with_tokenizer = [a for a in adapters if a.tokenizer_files]
    if not with_tokenizer:
        return None
    first = with_tokenizer[0]
    signature = {f.name: first.files[f.name] for f in first.tokenizer_files}
    for other in with_tokenizer[1:]:
        if {f.name: other.files[f.name] for f in other.tokenizer_files} != signature:
            raise UserError(f"{other.path}: its tokenizer files differ from those of "
                            f"{first.path}; only one tokenizer can go into the merged model")
    return first
