"""`lorafuse render FILE.yaml`: print the objects a ModelDeployment would get, with no cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from lorafuse.merger.pipeline.plan import is_gguf
from lorafuse.operator import naming
from lorafuse.operator.children.common import Images, Owner
from lorafuse.operator.children.desired import desired_objects
from lorafuse.operator.manifest import read_model_deployment
from lorafuse.operator.merge_plan import plan_for
from lorafuse.operator.pinning import pin_sources, unresolved
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing, size_serving
from lorafuse.operator.spec import ModelDeployment


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a ModelDeployment manifest ('-' for stdin)")
    parser.add_argument(
        "--namespace", "-n", default=None, help="default: metadata.namespace, else 'default'"
    )
    parser.add_argument("--merger-image", default=naming.DEFAULT_MERGER_IMAGE)
    parser.add_argument("--operator-image", default=naming.DEFAULT_OPERATOR_IMAGE)
    parser.add_argument(
        "--digest",
        default="sha256:<published-by-the-merge-job>",
        help="artifact digest to show in the merged Deployment",
    )


def run(args: argparse.Namespace) -> int:
    resource = read_model_deployment(args.file)
    meta = resource.metadata
    owner = Owner(meta["name"], args.namespace or meta.get("namespace") or "default")
    images = Images(args.merger_image, args.operator_image)
    objects = render(resource, owner, images, args.digest)
    yaml.dump_all(objects, sys.stdout, Dumper=_Dumper, sort_keys=False)
    return 0


def render(
    resource: ModelDeployment, owner: Owner, images: Images, digest: str
) -> list[dict[str, Any]]:
    """The PVC, plan ConfigMap, merge Job (merged mode) or fetch Job (adapter mode with
    unresolved hf:// sources), vLLM Deployment and Service."""
    spec = resource.spec
    plan = plan_for(spec)
    mode = spec.serving.mode
    target = ServingTarget(
        mode=mode,
        sizing=_sizing(resource, mode),
        artifact_path=plan.artifact_path() if mode == "merged" else None,
        artifact_digest=digest if mode == "merged" else None,
    )
    if is_gguf(spec.quantization.method):  # a file for download: no vLLM Deployment
        return desired_objects(owner, spec, plan, images, merge=True, serving=None)
    # Adapter mode: hf:// sources at the commits status records, else the fetch Job first.
    resolved = resource.status.resolved_sources if resource.status else []
    fetch = mode == "adapter" and bool(unresolved(spec, resolved))
    return desired_objects(
        owner, pin_sources(spec, resolved), plan, images, merge=mode == "merged",
        serving=target, fetch=fetch,
    )


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
