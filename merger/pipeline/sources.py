"""Model and adapter sources: /path, pvc://claim/path (a mounted claim) and hf://org/name@revision."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from lorafuse.errors import UserError

log = logging.getLogger(__name__)

PVC_ROOT_ENV = "LORAFUSE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/sources"  # where the operator mounts pvc:// claims in Job pods

# Never fetched from the Hub: pickled weights (never unpickled here) and duplicate formats.
# A PersistentVolumeClaim name as the operator mounts it: one DNS label (RFC 1123).
CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack", "*.onnx",
              "*.gguf", "original/*"]


@dataclass
class ResolvedSource:
    source: str  # as written in the plan
    path: str  # a local directory holding the files
    revision: str | None = None  # hf:// only: the revision asked for
    commit: str | None = None  # hf:// only: the commit it resolved to

    def to_dict(self) -> dict:
        return asdict(self)


def pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def local_path(source: str) -> Path | None:
    """The directory a /path or pvc:// source names (no I/O); None for hf:// sources."""
    if source.startswith("pvc://"):
        claim, _, rest = source.removeprefix("pvc://").partition("/")
        if not claim:
            raise UserError(f"{source}: expected pvc://CLAIM/PATH")
        if not CLAIM_NAME.match(claim):
            raise UserError(f"{source}: claim name {claim!r} is not a DNS label "
                            "(lower-case letters, digits and '-', at most 63)")
        return pvc_root() / claim / _contained(source, rest)
    if source.startswith("hf://"):
        return None
    if not source.startswith("/"):
        raise UserError(f"{source}: expected /path, pvc://claim/path or hf://org/name@revision")
    return Path("/") / _contained(source, source)


def _contained(source: str, path: str) -> PurePosixPath:
    """A path without '..' parts (the operator mounts only what a source names)."""
    relative = PurePosixPath(path.lstrip("/"))
    if ".." in relative.parts or "\0" in path:
        raise UserError(f"{source}: '..' is not allowed in a source path")
    return relative


def parse_hub(source: str) -> tuple[str, str]:
    """hf://org/name@revision -> (org/name, revision); the revision defaults to main."""
    repo, _, revision = source.removeprefix("hf://").partition("@")
    repo = repo.strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"{source}: expected hf://org/name@revision")
    return repo, revision or "main"


def resolve_source(source: str, cache_dir: Path | None = None) -> ResolvedSource:
    """A local directory for `source`, downloading hf:// sources into the Hugging Face cache."""
    path = local_path(source)
    if path is None:
        return _download(source, cache_dir)
    if not path.is_dir():
        where = f" ({path})" if str(path) != source else ""
        raise UserError(f"{source}: no such directory{where}")
    if source.startswith("pvc://"):
        _inside_claim(source, path)
    return ResolvedSource(source=source, path=str(path))


def _inside_claim(source: str, path: Path) -> None:
    """Links inside a claim may not lead out of it (into another claim or the pod)."""
    claim_root = os.path.realpath(pvc_root() / source.removeprefix("pvc://").split("/", 1)[0])
    real = os.path.realpath(path)
    if real != claim_root and not real.startswith(claim_root.rstrip("/") + "/"):
        raise UserError(f"{source}: leads outside its claim (to {real})")


def _download(source: str, cache_dir: Path | None) -> ResolvedSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse_hub(source)
    if revision == "main":
        log.warning("%s: no revision pinned; the artifact follows whatever main is now", source)
    try:
        folder = snapshot_download(
            repo, revision=revision, cache_dir=cache_dir, ignore_patterns=HUB_IGNORE
        )
    except RevisionNotFoundError:
        raise UserError(f"{source}: revision {revision!r} not found on the Hub") from None
    except GatedRepoError:
        raise UserError(f"{source}: gated repository; HF_TOKEN must grant access") from None
    except RepositoryNotFoundError:
        raise UserError(f"{source}: repository not found (or private without HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"{source}: the Hugging Face Hub cannot be reached (offline?) and the revision is not "
            "(completely) in the local cache"
        ) from None
    except HFValidationError:
        raise UserError(f"{source}: not a valid Hugging Face repository id") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"{source}: download failed ({type(exc).__name__})") from None
    # snapshot folders are named after the commit they hold: that is the pinned revision.
    return ResolvedSource(
        source=source, path=folder, revision=revision, commit=Path(folder).name
    )
