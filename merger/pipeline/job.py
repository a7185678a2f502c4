"""The merge Job's steps on a shared work directory: fetch, merge, quantize, validate, publish.

Every step is idempotent: it finds its own output in the work directory and returns
without touching anything, so a Job restarted at any point resumes where it stopped.
Outputs appear atomically (a directory renamed into place, a JSON file replaced), so a
step killed half-way leaves nothing that a later step could mistake for its input.

    WORKDIR/plan.json         the plan this work directory belongs to
    WORKDIR/sources.json      fetch: where each source resolved to (and its commit)
    WORKDIR/merged/           merge: the merged checkpoint with lorafuse.json
    WORKDIR/quantized/        quantize: the compressed-tensors checkpoint, or for gguf-*
                              model.gguf + Modelfile + lorafuse.json (if asked for)
    WORKDIR/validation.json   validate: the full report (passed or not)
    WORKDIR/result.json       publish: the Job result
    ARTIFACT_ROOT/NAME/       publish: the artifact, renamed into place complete

This module imports no torch at load time: `verify` runs in the slim serving image.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lorafuse.errors import UserError, ValidationFailed, failure_reason, first_error
from lorafuse.jsonfile import read_json, write_json
from lorafuse.merger.files.digest import scan_artifact, verify_artifact
from lorafuse.merger.pipeline.completion import adoption_conflict, completed, write_record
from lorafuse.merger.pipeline.plan import MergePlan, is_gguf
from lorafuse.merger.pipeline.result import (
    AdapterDigest,
    ArtifactResult,
    JobResult,
    ProvenanceSummary,
    SourceCommit,
    ValidationSummary,
)
from lorafuse.merger.pipeline.steps import STEPS

log = logging.getLogger(__name__)


@dataclass
class Workdir:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def sources(self) -> Path:
        return self.root / "sources.json"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def quantized(self) -> Path:
        return self.root / "quantized"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"


def load_plan(path: Path) -> MergePlan:
    from pydantic import ValidationError

    data = read_json(path)
    try:
        return MergePlan.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: {first_error(exc)}") from None


def default_workdir(plan: MergePlan) -> Path:
    """Beside the artifacts on the same volume, so publishing is a rename, not a copy."""
    return Path(plan.artifact_root).parent / "work" / plan.artifact_name()


def claim_workdir(plan: MergePlan, root: Path) -> Workdir:
    """The work directory for `plan`; one that already belongs to another plan is refused."""
    work = Workdir(Path(root))
    try:
        work.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{work.root}: cannot create the work directory ({exc.strerror})") from None
    if work.plan.is_file():
        recorded = read_json(work.plan).get("content_hash")
        if recorded != plan.content_hash():
            raise UserError(f"{work.root}: holds the work of another plan ({recorded})")
    else:
        write_json(work.plan, {"content_hash": plan.content_hash(),
                               "plan": plan.model_dump(mode="json")})
    return work


def run_step(step: str, plan: MergePlan, work: Workdir) -> JobResult:
    """Run one step; returns its result (the full Job result for publish)."""
    steps = {"fetch": fetch, "merge": merge, "quantize": quantize, "validate": validate,
             "publish": publish}
    if step not in steps:
        raise UserError(f"step {step!r}: unknown; choose one of {', '.join(STEPS)}")
    return steps[step](plan, work)


# --- fetch ------------------------------------------------------------------------------


def fetch(plan: MergePlan, work: Workdir) -> JobResult:
    """Resolve every source to a local directory (downloading hf:// ones) and check inputs."""
    from lorafuse.merger.pipeline.sources import resolve_source

    if work.sources.is_file():
        resolved = read_json(work.sources)
        _check_sources(resolved)
        found = _ok("fetch", f"sources already resolved in {work.sources}")
        return _with_commits(found, resolved)
    _check_inputs(plan)
    base = resolve_source(plan.base)
    adapters = [{"name": a.name, **resolve_source(a.source).to_dict()} for a in plan.adapters]
    for adapter in adapters:
        if not (Path(adapter["path"]) / "adapter_config.json").is_file():
            raise UserError(f"{adapter['source']}: not a PEFT adapter (no adapter_config.json)")
    if not (Path(base.path) / "config.json").is_file():
        raise UserError(f"{plan.base}: not a model directory (no config.json)")
    resolved = {"base": base.to_dict(), "adapters": adapters}
    write_json(work.sources, resolved)
    return _with_commits(_ok("fetch", f"resolved {1 + len(adapters)} sources"), resolved)


def _with_commits(result: JobResult, resolved: dict) -> JobResult:
    """The fetch result with each hf:// source's commit (the operator pins adapter serving)."""
    sources = [resolved["base"], *resolved["adapters"]]
    commits = [
        SourceCommit(source=s["source"], commit=s["commit"]) for s in sources if s.get("commit")
    ]
    return result.model_copy(update={"sources": commits or None}).fitted()


def _check_inputs(plan: MergePlan) -> None:
    """Read the eval and calibration files now, so a typo fails the first step, not the fourth."""
    from lorafuse.jsonl import read_records, text_field
    from lorafuse.merger.pipeline.calibration import load_calibration

    if plan.validation.eval:
        path = Path(plan.validation.eval)
        for number, record in read_records(path, "eval"):
            text_field(path, number, record, ("prompt",))
            text_field(path, number, record, ("expected",))
    quant = plan.quantization
    if is_gguf(quant.method):
        from lorafuse.merger.pipeline.gguf_step import check_gguf_export

        check_gguf_export(quant.method)
    if quant.method in ("awq", "gptq"):
        if not quant.calibration:
            raise UserError(f"quantization.calibration: required for {quant.method}")
        load_calibration(Path(quant.calibration), quant.samples, quant.seq_len)


def _check_sources(sources: dict) -> None:
    for entry in [sources["base"], *sources["adapters"]]:
        if not Path(entry["path"]).is_dir():
            raise UserError(f"{entry['source']}: {entry['path']} is gone; remove "
                            "sources.json from the work directory to fetch again")


def _sources(work: Workdir) -> dict:
    if not work.sources.is_file():
        raise UserError(f"{work.root}: the fetch step has not run")
    sources = read_json(work.sources)
    _check_sources(sources)
    return sources


# --- merge ------------------------------------------------------------------------------


def merge(plan: MergePlan, work: Workdir) -> JobResult:
    import torch

    from lorafuse.merger.engine.merge import MergeOptions
    from lorafuse.merger.engine.merge import merge as merge_models

    if completed(work.root, "merge", plan.content_hash(), work.merged):
        return _ok("merge", f"already merged in {work.merged}")
    sources = _sources(work)
    base = sources["base"]
    if work.merged.exists():  # no record: a crash before the record, never a finished step
        shutil.rmtree(work.merged)
    result = merge_models(MergeOptions(
        base=Path(base["path"]),
        adapters=[Path(a["path"]) for a in sources["adapters"]],
        out=work.merged,
        weights=[a.weight for a in plan.adapters],
        combine=plan.combine,
        density=plan.density,
        seed=plan.seed,
        dtype=plan.dtype,
        adapter_names=[a.name for a in plan.adapters],
        device="cuda" if torch.cuda.is_available() else "cpu",
        extra_provenance={
            "base": {"source": plan.base, "revision": base.get("commit")},
            "adapters": [{"source": a["source"], "revision": a.get("commit")}
                         for a in sources["adapters"]],
        },
    ))
    write_record(work.root, "merge", plan.content_hash(), work.merged)
    return _ok("merge", f"merged {result.tensors_merged} tensors into {work.merged}")


# --- quantize ---------------------------------------------------------------------------


def quantize(plan: MergePlan, work: Workdir) -> JobResult:
    from lorafuse.merger.pipeline.quantize import QuantizeOptions
    from lorafuse.merger.pipeline.quantize import quantize as quantize_model

    quant = plan.quantization
    if quant.method == "none":
        return _ok("quantize", "no quantization asked for")
    if completed(work.root, "quantize", plan.content_hash(), work.quantized):
        return _ok("quantize", f"already quantized in {work.quantized}")
    if not completed(work.root, "merge", plan.content_hash(), work.merged):
        raise UserError(f"{work.root}: the merge step has not run")
    if work.quantized.exists():  # no record: a crash before the record, never a finished step
        shutil.rmtree(work.quantized)
    if is_gguf(quant.method):
        from lorafuse.merger.pipeline.gguf_step import export

        export(work.merged, work.quantized, quant.method)
        write_record(work.root, "quantize", plan.content_hash(), work.quantized)
        return _ok("quantize", f"exported {quant.method} into {work.quantized}")
    calibration = Path(quant.calibration) if quant.calibration else None
    quantize_model(QuantizeOptions(
        model=work.merged, out=work.quantized, method=quant.method, calibration=calibration,
        samples=quant.samples, seq_len=quant.seq_len, ignore=tuple(quant.ignore),
    ))
    write_record(work.root, "quantize", plan.content_hash(), work.quantized)
    return _ok("quantize", f"quantized with {quant.method} into {work.quantized}")


def candidate_dir(plan: MergePlan, work: Workdir) -> Path:
    return work.merged if plan.quantization.method == "none" else work.quantized


# --- validate ---------------------------------------------------------------------------


def validate(plan: MergePlan, work: Workdir) -> JobResult:
    """Compare the candidate with base + adapters; a failure is recorded and reported again."""
    report = read_json(work.validation) if work.validation.is_file() else {}
    if report.get("content_hash") != plan.content_hash():  # not this plan's: validate again
        report = {**_run_validation(plan, work), "content_hash": plan.content_hash()}
        write_json(work.validation, report)
    if not report["passed"]:
        raise ValidationFailed("; ".join(report["reasons"]))
    result = _ok("validate", "candidate passed validation")
    return result.model_copy(update={"validation": _summary(report)})


def _run_validation(plan: MergePlan, work: Workdir) -> dict:
    from lorafuse.merger.pipeline.validate import Thresholds, load_eval
    from lorafuse.merger.pipeline.validate import validate as validate_model

    candidate = candidate_dir(plan, work)
    step = "merge" if candidate == work.merged else "quantize"
    if not completed(work.root, step, plan.content_hash(), candidate):
        raise UserError(f"{work.root}: the {step} step has not run")
    sources = _sources(work)
    check = plan.validation
    report = validate_model(
        base=Path(sources["base"]["path"]),
        adapters=[Path(a["path"]) for a in sources["adapters"]],
        candidate=candidate,
        items=load_eval(Path(check.eval)) if check.eval else None,
        weights=[a.weight for a in plan.adapters],
        max_new_tokens=check.max_new_tokens,
        thresholds=Thresholds(check.max_delta, check.min_token_agreement, check.max_mean_kl),
    )
    return {**report.to_dict(), "eval": check.eval}


def _summary(report: dict) -> ValidationSummary:
    return ValidationSummary.model_validate(report)


# --- publish ----------------------------------------------------------------------------


def publish(plan: MergePlan, work: Workdir) -> JobResult:
    """Rename the validated candidate into ARTIFACT_ROOT/NAME and build the Job result."""
    from lorafuse.merger.engine.provenance import read_provenance, write_provenance
    from lorafuse.merger.files.atomic import TargetExists, staging_dir

    target = Path(plan.artifact_path())
    if target.exists():
        return _existing_result(plan, work, target)
    report = read_json(work.validation) if work.validation.is_file() else {}
    if report.get("content_hash") != plan.content_hash():
        raise UserError(f"{work.root}: the validate step has not run")
    if not report["passed"]:
        raise ValidationFailed("not published: " + "; ".join(report["reasons"]))
    candidate = candidate_dir(plan, work)
    try:
        with staging_dir(target) as staging:
            _link_tree(candidate, staging)
            provenance = read_provenance(staging)
            provenance["validation"] = {**_summary(report).model_dump(),
                                        "reasons": report["reasons"],
                                        "thresholds": report["thresholds"],
                                        "eval": report.get("eval"), "prompts": report["prompts"]}
            provenance["plan"] = {"content_hash": plan.content_hash(), "artifact": target.name}
            write_provenance(staging, provenance)
            result = _job_result(plan, target, scan_artifact(staging), report, provenance,
                                 staging)
    except TargetExists:  # another Job of this plan published first: use its artifact
        return _existing_result(plan, work, target)
    # the last step checks what it reports: the published files, read back, hash to it
    verify_artifact(target, result.artifact.digest)
    write_json(work.result, result.model_dump(mode="json"))
    return result


def _existing_result(plan: MergePlan, work: Workdir, target: Path) -> JobResult:
    """The artifact is there already (a repeated step, or a Job for the same plan); it is
    used only if its provenance names this plan and a passed validation."""
    from lorafuse.merger.engine.provenance import read_provenance

    provenance = read_provenance(target) if target.is_dir() else {}
    conflict = adoption_conflict(provenance, plan.content_hash())
    if conflict:
        raise UserError(f"{target}: already exists but is not this plan's validated artifact "
                        f"({conflict}); refusing to adopt it")
    if work.result.is_file():
        result = JobResult.model_validate(read_json(work.result))
        if result.artifact and result.artifact.path == str(target):
            return result
    report = provenance.get("validation") or {}
    result = _job_result(plan, target, scan_artifact(target), report, provenance, target)
    write_json(work.result, result.model_dump(mode="json"))
    return result


def _link_tree(source: Path, staging: Path) -> None:
    """Hard-link the candidate's files (same volume: no copy), copying across file systems."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir():
            (staging / relative).mkdir(exist_ok=True)
            continue
        try:
            os.link(path, staging / relative)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(path, staging / relative)


def _job_result(
    plan, target: Path, scan, report: dict, provenance: dict, model_dir: Path
) -> JobResult:
    from lorafuse.serving.model_shape import read_model_shape

    base = provenance.get("base") or {}
    result = JobResult(
        ok=True,
        step="publish",
        message=f"published {target.name}",
        artifact=ArtifactResult(name=target.name, path=str(target), digest=scan.digest,
                                bytes=scan.bytes, quantization=plan.quantization.method),
        validation=_summary(report) if report else None,
        provenance=ProvenanceSummary(
            base=plan.base,
            base_revision=base.get("revision"),
            adapters=[AdapterDigest(name=a.get("name"), sha256=_adapter_sha256(a))
                      for a in provenance.get("adapters", [])],
        ),
        # A GGUF artifact is for download: no config.json, nothing for vLLM's tuner to size.
        model_shape=None if is_gguf(plan.quantization.method)
        else read_model_shape(model_dir).model_dump(mode="json"),
    )
    return result.fitted()


def _adapter_sha256(adapter: dict) -> str | None:
    """The adapter's weights file hash (what `sha256sum adapter_model.safetensors` prints)."""
    files = adapter.get("files") or {}
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if name in files:
            return files[name]
    return next(iter(files.values()), None)


# --- results ----------------------------------------------------------------------------


def _ok(step: str, message: str) -> JobResult:
    return JobResult(ok=True, step=step, message=message)


def failure_result(step: str, exc: BaseException, work: Workdir | None = None) -> JobResult:
    """What a failed step reports: which step, why (a reason word) and a one-line message."""
    reason = failure_reason(exc)
    message = " ".join(str(exc).split()) or type(exc).__name__
    validation = None
    if reason == "ValidationFailed" and work and work.validation.is_file():
        validation = _summary(read_json(work.validation))
    result = JobResult(ok=False, step=step, reason=reason, message=message, validation=validation)
    return result.fitted()


# --- verify -----------------------------------------------------------------------------


def verify(artifact: Path, digest: str) -> JobResult:
    """What serving pods run before vLLM starts: the artifact's files hash to `digest`."""
    scan = verify_artifact(artifact, digest)
    return JobResult(
        ok=True,
        step="verify",
        message=f"{artifact}: digest verified ({len(scan.files)} files)",
        artifact=ArtifactResult(path=str(artifact), digest=scan.digest, bytes=scan.bytes),
    )
