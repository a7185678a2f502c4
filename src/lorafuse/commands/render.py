"""`lorafuse render FILE.yaml`: print the objects a ModelDeployment would get, with no cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lorafuse.errors import UserError
from lorafuse.operator import children
from lorafuse.operator.children import Images, Owner, ServingPlan
from lorafuse.operator.planning import plan_for, plan_hash
from lorafuse.operator.sizing import Sizing, size_serving
from lorafuse.operator.spec import ModelDeployment


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a ModelDeployment manifest ('-' for stdin)")
    parser.add_argument(
        "--namespace", "-n", default=None, help="default: metadata.namespace, else 'default'"
    )
    parser.add_argument("--merger-image", default=children.naming.DEFAULT_MERGER_IMAGE)
    parser.add_argument("--operator-image", default=children.naming.DEFAULT_OPERATOR_IMAGE)
    parser.add_argument(
        "--digest",
        default="sha256:<published-by-the-merge-job>",
        help="artifact digest to show in the merged Deployment",
    )


def run(args: argparse.Namespace) -> int:
    resource = load(args.file)
    meta = resource.metadata
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise UserError(f"{args.file}: metadata.name is missing")
    owner = Owner(meta["name"], args.namespace or meta.get("namespace") or "default")
    images = Images(args.merger_image, args.operator_image)
    objects = render(resource, owner, images, args.digest)
    yaml.dump_all(objects, sys.stdout, Dumper=_Dumper, sort_keys=False)
    return 0


def load(path: Path) -> ModelDeployment:
    where = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if where == "<stdin>" else path.read_text()
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise UserError(f"{where}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML: {_one_line(str(exc))}") from exc
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise UserError(f"{where}: expected one ModelDeployment document, found {len(docs)}")
    try:
        return ModelDeployment.model_validate(docs[0])
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise UserError(f"{where}: {field}: {error['msg']}") from exc


def render(
    resource: ModelDeployment, owner: Owner, images: Images, digest: str
) -> list[dict[str, Any]]:
    """The PVC, plan ConfigMap, merge Job (merged mode), vLLM Deployment and Service."""
    spec = resource.spec
    plan = plan_for(spec)
    current = plan_hash(plan)
    mode = spec.serving.mode
    sizing = _sizing(resource, mode)
    objects = [children.persistent_volume_claim(owner, spec)]
    if mode == "merged":
        objects += [
            children.plan_config_map(owner, plan, current),
            children.merge_job(owner, spec, plan, current, images),
        ]
    serving = ServingPlan(
        mode=mode,
        sizing=sizing,
        artifact_path=plan.artifact_path() if mode == "merged" else None,
        artifact_digest=digest if mode == "merged" else None,
    )
    objects += [
        children.serving_deployment(owner, spec, serving, images),
        children.service(owner, spec),
    ]
    return [obj for obj in objects if obj is not None]


def _sizing(resource: ModelDeployment, mode: str) -> Sizing:
    """From the spec, or the tuner when the manifest's status carries the model's shape."""
    shape = resource.status.model_shape if resource.status else None
    return size_serving(resource.spec, mode, shape)  # type: ignore[arg-type]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the plan JSON) as literal blocks, so the preview reads as written."""


def _block_strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _block_strings)


def _one_line(text: str) -> str:
    return " ".join(text.split())
