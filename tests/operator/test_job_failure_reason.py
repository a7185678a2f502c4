"""Why a merge Job failed, as the operator reads it from the Job: a Job that ran out its
deadline is a deadline failure (and so retried), whichever reason the Job controller wrote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from lorafuse.operator.kube import _failure_reason
from lorafuse.operator.lifecycle import JobObservation, transient_failure

START = datetime(2026, 1, 1, tzinfo=UTC)


def _reason(deadline: int | None, ran_for: float, written: str) -> str | None:
    spec = SimpleNamespace(active_deadline_seconds=deadline)
    status = SimpleNamespace(start_time=START)
    failed = SimpleNamespace(
        reason=written, last_transition_time=START + timedelta(seconds=ran_for)
    )
    return _failure_reason(spec, status, failed)


def test_a_job_killed_at_its_deadline_but_reported_past_its_backoff_limit_is_a_deadline_failure():
    reason = _reason(deadline=60, ran_for=61, written="BackoffLimitExceeded")
    assert reason == "DeadlineExceeded"
    assert transient_failure(JobObservation("job", "hash", "Failed", reason=reason))


def test_a_step_that_failed_before_the_deadline_keeps_the_backoff_limit_reason():
    reason = _reason(deadline=7200, ran_for=30, written="BackoffLimitExceeded")
    assert reason == "BackoffLimitExceeded"
    assert not transient_failure(JobObservation("job", "hash", "Failed", reason=reason))


def test_a_job_without_a_deadline_keeps_the_controllers_reason():
    assert _reason(deadline=None, ran_for=10_000, written="BackoffLimitExceeded") == (
        "BackoffLimitExceeded"
    )
