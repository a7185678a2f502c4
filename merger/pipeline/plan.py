"""MergePlan: the contract between the operator and the Job steps, and the artifact naming."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lorafuse import __version__
from lorafuse.merger.engine.choices import (
    GGUF_FILE,
    CombineMethod,
    OutputDtype,
    QuantMethod,
    is_gguf,
)

SOURCE_PATTERN = r"^(/|pvc://|hf://).+"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdapterRef(_Strict):
    """One adapter: a name (used for adapter serving), where it lives, and its weight."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", max_length=63)
    source: str = Field(
        pattern=SOURCE_PATTERN, description="/path, pvc://claim/path or hf://org/name@rev"
    )
    weight: float = 1.0


def check_ignore_pattern(pattern: str) -> str:
    """A layer to keep unquantized: a module name, a class name, or `re:` and a regex."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"{pattern!r}: not a regular expression ({exc})") from None
    return pattern


def check_ignore_method(method: str, ignore: list[str]) -> None:
    """Layers are kept unquantized by llm-compressor's methods only."""
    if ignore and (method == "none" or is_gguf(method)):
        raise ValueError(f"quantization.ignore applies to awq, gptq and fp8, not to {method}")


IgnorePattern = Annotated[
    str, Field(min_length=1, max_length=256), AfterValidator(check_ignore_pattern)
]


class Quantization(_Strict):
    method: QuantMethod = "none"
    calibration: str | None = Field(default=None, description="JSONL of {'text'} or {'prompt'}")
    samples: int = Field(default=64, ge=1)
    seq_len: int = Field(default=512, ge=16)
    ignore: list[IgnorePattern] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _ignore_needs_a_method(self) -> Quantization:
        check_ignore_method(self.method, self.ignore)
        return self


class Validation(_Strict):
    eval: str | None = Field(default=None, description="JSONL file of {'prompt', 'expected'}")
    max_delta: float = Field(default=0.01, ge=0)
    max_new_tokens: int = Field(default=50, ge=1)
    # "Clearly broken" limits, applied whatever the task scores (see pipeline/validate.py).
    min_token_agreement: float = Field(default=0.5, ge=0, le=1)
    max_mean_kl: float = Field(default=0.25, ge=0)


class MergePlan(_Strict):
    """Everything a Job needs to turn base + adapters into a published artifact."""

    base: str = Field(pattern=SOURCE_PATTERN)
    adapters: list[AdapterRef] = Field(min_length=1)
    combine: CombineMethod = "linear"
    density: float | None = Field(default=None, gt=0, le=1)
    seed: int = 0
    dtype: OutputDtype = "auto"
    quantization: Quantization = Quantization()
    validation: Validation = Validation()
    artifact_root: str = Field(default="/models/artifacts", pattern=r"^/")

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, adapters: list[AdapterRef]) -> list[AdapterRef]:
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {names}")
        return adapters

    def content_hash(self) -> str:
        """sha256 of the fields that decide the artifact's bytes (not where it is stored)."""
        payload = self.model_dump(mode="json", exclude={"artifact_root"})
        if not payload["quantization"]["ignore"]:  # plans from before the field hash the same
            del payload["quantization"]["ignore"]
        payload["lorafuse_format"] = 1
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def artifact_name(self) -> str:
        """Readable parts plus a content hash, e.g. `llama3-8b--support-v3--awq--8cde5ca01b2f`."""
        parts = [_slug(_source_label(self.base))]
        parts += [_slug(adapter.name) for adapter in self.adapters[:3]]
        if self.quantization.method != "none":
            parts.append(self.quantization.method)
        return "--".join(parts + [self.content_hash()[:12]])

    def artifact_path(self) -> str:
        return f"{self.artifact_root.rstrip('/')}/{self.artifact_name()}"


def _source_label(source: str) -> str:
    """The last path component of a source, with an hf revision kept as `@rev`."""
    body = source.split("://", 1)[-1].rstrip("/")
    name, _, revision = body.partition("@")
    label = name.rsplit("/", 1)[-1]
    return f"{label}@{revision[:7]}" if revision else label


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9@._-]+", "-", text).strip("-").lower()[:40] or "x"


__all__ = ["GGUF_FILE", "AdapterRef", "MergePlan", "QuantMethod", "Quantization", "Validation",
           "__version__", "is_gguf"]
