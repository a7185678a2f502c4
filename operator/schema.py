"""Pydantic JSON Schema → Kubernetes structural OpenAPI v3 schema (apiextensions.k8s.io/v1)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
# Keys pydantic emits that a structural schema has no use for.
DROPPED = {"title", "$defs", "discriminator"}


def structural_schema(model: type[BaseModel], defaults: bool = True) -> dict[str, Any]:
    """The model's schema as Kubernetes accepts it: no $ref, no null, OpenAPI v3.0 ranges.

    `defaults=False` leaves defaults out (for status, which only the operator writes).
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    converted = _convert(raw, raw.get("$defs", {}))
    return converted if defaults else _without_defaults(converted)


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _inline_ref(node, defs)
    if "anyOf" in node:
        node = _collapse_any_of(node, defs)
        if INT_OR_STRING in node:
            return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or key == "additionalProperties" and value is False:
            continue
        if key == "properties":
            out[key] = {name: _convert(child, defs) for name, child in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out[PRESERVE] = True
            else:
                out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12 gives the bound; OpenAPI v3.0 a flag next to minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default":
            default = _default(value, node)
            if default is not None:
                out[key] = default
        else:
            out[key] = copy.deepcopy(value)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out[PRESERVE] = True
    return out


def _inline_ref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _inline_ref(merged, defs)


def _collapse_any_of(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`X | None` becomes X (absent means unset); `int | "auto"` becomes int-or-string."""
    options = [_inline_ref(o, defs) for o in node["anyOf"] if o.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(options) == 1:
        return {**options[0], **rest}
    types = {option.get("type") for option in options}
    if types != {"integer", "string"}:
        raise ValueError(f"no structural form for anyOf {types}")
    integer = next(o for o in options if o["type"] == "integer")
    string = next(o for o in options if o["type"] == "string")
    words = string.get("enum") or ([string["const"]] if "const" in string else None)
    out = {
        INT_OR_STRING: True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        # pattern checks strings only and minimum numbers only, so together they say
        # "one of these words (or strings of this pattern), or a number in range".
        "pattern": "^(" + "|".join(words) + ")$" if words else string["pattern"],
    }
    for bound in ("minimum", "maximum"):
        if bound in integer:
            out[bound] = integer[bound]
    for key in ("description", "default"):
        if key in rest and rest[key] is not None:
            out[key] = rest[key]
    return out


def _default(value: Any, node: dict[str, Any]) -> Any:
    """Object defaults become {} so the API server fills in the nested defaults itself."""
    if isinstance(value, dict) and value and ("properties" in node or "$ref" in node):
        return {}
    return copy.deepcopy(value)
