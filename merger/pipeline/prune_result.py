"""PruneResult: what `lorafuse prune` reports (its termination message) and the operator reads."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from lorafuse.merger.pipeline.result import RESULT_LIMIT, parse_termination_message


class PruneResult(BaseModel):
    """One prune run: which artifacts are gone, which were left (busy), and the bytes freed."""

    # Fields a newer Job adds are ignored, so an operator reads results across an upgrade.
    model_config = ConfigDict(extra="ignore")

    ok: bool
    step: str = "prune"
    reason: str | None = None  # InvalidInput | Interrupted | Error (ok false)
    message: str | None = None
    pruned: list[str] = Field(default_factory=list)  # removed now, or already gone
    busy: list[str] = Field(default_factory=list)  # left alone: a merge Job is writing it
    reclaimed_bytes: int = Field(default=0, ge=0)  # file bytes freed; hard links counted once
    names_omitted: int | None = None  # names left out to fit the termination message

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":"))

    def fitted(self) -> PruneResult:
        """This result cut to a termination message: message first, then the name lists.
        A pruned name left out is found gone by the next run, which reports it again."""
        result = self.model_copy(deep=True)
        if len(result.to_json().encode()) > RESULT_LIMIT and result.message:
            result.message = result.message[:300]
        while len(result.to_json().encode()) > RESULT_LIMIT and (result.pruned or result.busy):
            (result.busy or result.pruned).pop()
            result.names_omitted = (result.names_omitted or 0) + 1
        return result


def parse_prune_result(message: str | None) -> PruneResult | None:
    """The result `lorafuse prune` wrote; a log tail (it crashed) becomes a plain failure."""
    return parse_termination_message(message, PruneResult, reason="Error")
