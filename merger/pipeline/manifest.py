"""ModelDeployment spec (camelCase, as in the YAML) -> MergePlan: one translation for all callers.

The operator passes its validated spec (`spec.model_dump(by_alias=True)`), `lorafuse run`
the spec read from a file; both get the same plan, hence the same artifact name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lorafuse.errors import UserError
from lorafuse.merger.pipeline.plan import MergePlan

API_VERSION = "lorafuse.dev/v1alpha1"
KIND = "ModelDeployment"
INPUTS_MOUNT = "/inputs"  # where the merge Job mounts eval/calibration ConfigMaps

# (kind, FileRef) -> the path the Job reads it from; kind is "eval" or "calibration".
FileResolver = Callable[[str, Mapping[str, Any]], str]


def job_input_path(kind: str, ref: Mapping[str, Any]) -> str:
    """In the Job pod: a ConfigMap key is mounted at /inputs/KIND/KEY, a path is used as is."""
    config_map = ref.get("configMap")
    if config_map:
        return f"{INPUTS_MOUNT}/{kind}/{config_map['key']}"
    return ref["path"]


def plan_from_spec(
    spec: Mapping[str, Any],
    artifact_root: str = "/models/artifacts",
    resolve_file: FileResolver = job_input_path,
) -> MergePlan:
    """The MergePlan for a ModelDeployment's spec (serving, storage and job fields not needed)."""
    base = _section(spec, "base")
    quant = _section(spec, "quantization")
    check = _section(spec, "validation")
    combine = _section(spec, "combine")
    fields: dict[str, Any] = {
        "base": _base_source(base),
        "adapters": [
            {key: adapter[key] for key in ("name", "source", "weight") if key in adapter}
            for adapter in spec.get("adapters") or []
        ],
        "combine": combine.get("method", "linear"),
        "density": combine.get("density"),
        "seed": combine.get("seed", 0),
        "dtype": spec.get("dtype", "auto"),
        "quantization": _pick(quant, method="method", samples="samples", seq_len="seqLen"),
        "validation": _pick(check, max_delta="maxDelta", max_new_tokens="maxNewTokens",
                            min_token_agreement="minTokenAgreement", max_mean_kl="maxMeanKl"),
        "artifact_root": artifact_root,
    }
    if quant.get("calibration"):
        fields["quantization"]["calibration"] = resolve_file("calibration", quant["calibration"])
    if check.get("eval"):
        fields["validation"]["eval"] = resolve_file("eval", check["eval"])
    try:
        return MergePlan.model_validate(fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise UserError(f"spec.{where}: {problem['msg']}") from None


def read_manifest(path: Path) -> dict:
    """The ModelDeployment in a YAML file (the first one, when the file holds several)."""
    path = Path(path)
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == KIND:
            if document.get("apiVersion") != API_VERSION:
                raise UserError(f"{path}: apiVersion {document.get('apiVersion')!r}, "
                                f"expected {API_VERSION}")
            if not isinstance(document.get("spec"), dict):
                raise UserError(f"{path}: the ModelDeployment has no spec")
            if not (document.get("metadata") or {}).get("name"):
                raise UserError(f"{path}: the ModelDeployment has no metadata.name")
            return document
    raise UserError(f"{path}: no {KIND} in this file")


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise UserError(f"spec.{key}: expected a mapping")
    return value


def _base_source(base: Mapping[str, Any]) -> str:
    source, revision = base.get("source"), base.get("revision")
    if not isinstance(source, str):
        raise UserError("spec.base.source: required")
    if revision:
        if not source.startswith("hf://"):
            raise UserError("spec.base.revision: applies to hf:// sources only")
        if "@" in source:
            raise UserError("spec.base: give the revision either in source (@rev) or revision")
        return f"{source}@{revision}"
    return source


def _pick(section: Mapping[str, Any], **names: str) -> dict[str, Any]:
    """snake_case plan fields from the camelCase keys present in `section`."""
    return {field: section[key] for field, key in names.items() if key in section}
