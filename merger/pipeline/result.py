"""JobResult: what a Job step reports (its termination message) and the operator reads back."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

RESULT_LIMIT = 4096  # Kubernetes cuts termination messages at 4096 bytes
ResultT = TypeVar("ResultT", bound=BaseModel)


class _Part(BaseModel):
    # Fields a newer Job adds are ignored, so an operator reads results across an upgrade.
    model_config = ConfigDict(extra="ignore")


class ArtifactResult(_Part):
    """The published artifact (publish), or the one checked (verify: no name, no quantization)."""

    name: str | None = None
    path: str
    digest: str | None = None
    bytes: int | None = None
    quantization: str | None = None  # the plan's quantization method


class ValidationSummary(_Part):
    """The scores of the validate step, as status shows them."""

    passed: bool
    score_candidate: float | None = None
    score_reference: float | None = None
    delta: float | None = None
    token_agreement: float | None = None
    mean_kl: float | None = None
    max_logit_diff: float | None = None


class AdapterDigest(_Part):
    name: str | None = None
    sha256: str | None = None  # cut to 16 hex digits when the result would not fit


class ProvenanceSummary(_Part):
    """What the artifact was made from (the whole record is lorafuse.json in the artifact)."""

    base: str
    base_revision: str | None = None
    adapters: list[AdapterDigest] = []
    adapters_omitted: int | None = None  # adapters left out to fit the termination message


class SourceCommit(_Part):
    """An hf:// source as the plan names it, and the commit the fetch step resolved it to."""

    source: str
    commit: str


class JobResult(_Part):
    """One step's outcome; a failure has ok false, a reason word and a one-line message."""

    ok: bool
    step: str | None = None
    reason: str | None = None  # ValidationFailed | InvalidInput | Interrupted | Error
    message: str | None = None
    artifact: ArtifactResult | None = None
    validation: ValidationSummary | None = None
    provenance: ProvenanceSummary | None = None
    # The serving tuner's ModelShape as JSON; the operator keeps it in status and the tuner
    # validates it when it sizes, so this contract does not pin the tuner's fields.
    model_shape: dict[str, Any] | None = None
    # fetch: the commit of every hf:// source, so adapter serving loads exactly these.
    sources: list[SourceCommit] | None = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))

    def size(self) -> int:
        return len(self.to_json().encode())

    def fitted(self) -> JobResult:
        """This result shrunk until it fits a termination message: message, hashes, lists, shape."""
        result = self.model_copy(deep=True)
        if result.size() > RESULT_LIMIT and result.message:
            result.message = result.message[:500]
        provenance = result.provenance
        if provenance and result.size() > RESULT_LIMIT:
            for adapter in provenance.adapters:
                adapter.sha256 = (adapter.sha256 or "")[:16] or None
        while provenance and result.size() > RESULT_LIMIT and len(provenance.adapters) > 1:
            provenance.adapters.pop()
            provenance.adapters_omitted = (provenance.adapters_omitted or 0) + 1
        if result.size() > RESULT_LIMIT:
            result.model_shape = None
        if result.size() > RESULT_LIMIT:  # unpinned then: adapter serving uses the revisions
            result.sources = None
        return result


def parse_result(message: str | None) -> JobResult | None:
    """The result a step wrote; a log tail (the step crashed) becomes a plain failure message."""
    return parse_termination_message(message, JobResult)


def parse_termination_message(
    message: str | None, model: type[ResultT], **failure: Any
) -> ResultT | None:
    """A container's JSON result as `model`; a log tail (it crashed) or JSON of another shape
    becomes a failure with its last 500 characters (and the `failure` fields)."""
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return model(ok=False, message=message.strip()[-500:], **failure)
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except ValueError:  # pydantic's ValidationError: JSON, but not this kind of result
        return model(ok=False, message=message.strip()[-500:], **failure)
