"""The one reader of ModelDeployment files (`lorafuse render`, `lorafuse run`): YAML in, the
typed resource out, so a file is refused exactly where the CRD would refuse it."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from lorafuse.errors import UserError, first_error
from lorafuse.operator.spec import KIND, ModelDeployment

STDIN = "-"


def read_model_deployment(path: Path) -> ModelDeployment:
    """The ModelDeployment in a YAML file ('-': stdin); every problem is one UserError line."""
    where = "<stdin>" if str(path) == STDIN else str(path)
    documents = [doc for doc in _documents(path, where) if isinstance(doc, dict)]
    found = [doc for doc in documents if doc.get("kind") == KIND]
    if not found:
        raise UserError(f"{where}: no {KIND} in this file")
    if len(found) > 1:
        raise UserError(f"{where}: {len(found)} {KIND}s in this file; give one per file")
    try:
        resource = ModelDeployment.model_validate(found[0])
    except ValidationError as exc:
        raise UserError(f"{where}: {first_error(exc)}") from None
    if not isinstance(resource.metadata.get("name"), str) or not resource.metadata["name"]:
        raise UserError(f"{where}: metadata.name: required")
    return resource


def _documents(path: Path, where: str) -> list[object]:
    try:
        text = sys.stdin.read() if where == "<stdin>" else Path(path).read_text()
        return list(yaml.safe_load_all(text))
    except FileNotFoundError:
        raise UserError(f"{where}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: unreadable ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise UserError(f"{where}{line}: not valid YAML ({problem})") from None
