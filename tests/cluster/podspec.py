"""Reading a pod spec like a kubelet: $(VAR) expansion, env resolution, downward API, quantities."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal

from kubernetes.utils import parse_quantity

# (kind, namespace, name) -> the object as the API serves it, or None when it does not exist.
ObjectGetter = Callable[[str, str, str], dict | None]


class ContainerConfigError(Exception):
    """A container cannot be configured yet (kubelet: CreateContainerConfigError)."""


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: `$$` escapes; unknown or unclosed references stay as is."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            out.append(variables.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: dict, field_path: str) -> str:
    """Value of a downward-API fieldRef (the paths Kubernetes 1.20 accepts)."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
    }
    if field_path in simple:
        return simple[field_path]
    match = _LABEL_REF.match(field_path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ContainerConfigError(f"unsupported fieldRef {field_path!r}")


def resource_value(container: dict, ref: dict) -> str:
    """Value of a downward-API resourceFieldRef, e.g. limits.cpu with divisor 1m."""
    section, _, name = ref["resource"].partition(".")
    quantity = (container.get("resources", {}).get(section) or {}).get(name)
    if quantity is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(Decimal(parse_quantity(quantity)) / Decimal(divisor)))


def _data_value(obj: dict, kind: str, key: str) -> str | None:
    if kind == "secret":
        raw = (obj.get("data") or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()
    return (obj.get("data") or {}).get(key)


def _key_ref(pod: dict, kind: str, ref: dict, get: ObjectGetter) -> str | None:
    namespace = pod["metadata"]["namespace"]
    obj = get(kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
    value = _data_value(obj, kind, ref["key"])
    if value is None and not optional:
        raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return value


def _env_from(pod: dict, source: dict, get: ObjectGetter) -> dict[str, str]:
    kind, ref = (
        ("secret", source["secretRef"])
        if "secretRef" in source
        else (
            "configmap",
            source["configMapRef"],
        )
    )
    obj = get(kind, pod["metadata"]["namespace"], ref["name"])
    if obj is None:
        if ref.get("optional"):
            return {}
        raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
    prefix = source.get("prefix", "")
    return {prefix + key: _data_value(obj, kind, key) or "" for key in obj.get("data") or {}}


def container_env(
    pod: dict, container: dict, base: Mapping[str, str], get: ObjectGetter
) -> dict[str, str]:
    """The container's environment: `base`, then envFrom, then env (values expanded in order)."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        env.update(_env_from(pod, source, get))
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secret" if "secretKeyRef" in source else "configmap"
            value = _key_ref(
                pod, kind, source.get("secretKeyRef") or source["configMapKeyRef"], get
            )
            if value is not None:
                env[name] = value
    return env


def pod_requests(pod: dict) -> dict[str, Decimal]:
    """Effective resource requests: max(sum of containers, largest init container), as scheduled."""

    def requests_of(container: dict) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        # A limit without a request counts as the request (the API server defaults it too).
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: Decimal(parse_quantity(value)) for name, value in merged.items()}

    total: dict[str, Decimal] = {}
    for container in pod["spec"].get("containers", []):
        for name, value in requests_of(container).items():
            total[name] = total.get(name, Decimal(0)) + value
    for container in pod["spec"].get("initContainers") or []:
        for name, value in requests_of(container).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    return total
