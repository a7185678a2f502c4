"""The Job result: what a step writes to its termination message and the operator reads back."""

from lorafuse.merger.pipeline.result import JobResult, parse_result


def test_a_crashed_step_log_tail_reads_as_a_failure_with_that_tail():
    result = parse_result("Traceback (most recent call last):\n  ...\nMemoryError\n")
    assert result is not None
    assert result.ok is False
    assert result.message is not None and result.message.endswith("MemoryError")


def test_fields_a_newer_job_adds_are_ignored():
    result = parse_result('{"ok": true, "step": "publish", "new_field": 1}')
    assert result == JobResult(ok=True, step="publish")


def test_a_written_result_reads_back_the_same():
    written = JobResult(ok=False, step="validate", reason="ValidationFailed", message="score fell")
    assert parse_result(written.to_json()) == written


def test_commits_that_would_not_fit_the_termination_message_are_left_out():
    from lorafuse.merger.pipeline.result import RESULT_LIMIT, SourceCommit

    few = [SourceCommit(source=f"hf://acme/a{i}@main", commit="c" * 40) for i in range(3)]
    many = [SourceCommit(source=f"hf://acme/a{i}@main", commit="c" * 40) for i in range(64)]
    assert JobResult(ok=True, step="fetch", sources=few).fitted().sources == few
    fitted = JobResult(ok=True, step="fetch", sources=many).fitted()
    assert fitted.sources is None and fitted.size() <= RESULT_LIMIT
