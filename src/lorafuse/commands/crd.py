"""`lorafuse crd`: print the CustomResourceDefinitions as YAML (for kubectl apply, the chart)."""

from __future__ import annotations

import argparse
import sys

import yaml

from lorafuse.operator.crd import all_crds


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-peering",
        action="store_true",
        help="only ModelDeployment, without kopf's peering CRDs (leader election)",
    )


def run(args: argparse.Namespace) -> int:
    docs = all_crds(peering=not args.no_peering)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False, width=100)
    return 0
