"""The `lorafuse` command line: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lorafuse import __version__
from lorafuse.errors import UserError, ValidationFailed

# name -> (module, help). Each module defines `configure(parser)` and `run(args) -> int`.
# Heavy modules (torch, kubernetes) are imported only for the command that needs them.
COMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("lorafuse.commands.crd", "print the ModelDeployment CRD (and kopf's peering CRDs)"),
    "render": ("lorafuse.commands.render", "print the objects a ModelDeployment would get"),
    "operator": ("lorafuse.commands.operator", "run the ModelDeployment operator"),
    "merge": ("lorafuse.commands.merge", "merge LoRA adapters into their base model"),
    "demo": ("lorafuse.commands.demo", "build a tiny model and adapter, merge, compare"),
    "tune": ("lorafuse.commands.tune", "size vLLM's max_model_len and max_num_seqs for a GPU"),
    "quantize": ("lorafuse.commands.quantize", "quantize a model (AWQ, GPTQ W4A16, FP8 dynamic)"),
    "validate": ("lorafuse.commands.validate", "check a merged/quantized model against PEFT"),
    "job": ("lorafuse.commands.job", "run one step of the merge Job, or verify an artifact"),
    "prune": ("lorafuse.commands.prune", "remove superseded artifacts from the model volume"),
    "run": ("lorafuse.commands.run", "execute a ModelDeployment manifest locally, no cluster"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorafuse", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lorafuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"lorafuse {known.command}", description=help_text)
    module.configure(sub_parser)
    args = sub_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (UserError, ValidationFailed) as exc:
        print(f"lorafuse {known.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lorafuse {known.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
