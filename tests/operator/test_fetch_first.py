"""Explicit adapter mode with hf:// sources: a Job of the fetch step alone resolves them to
commits first, and only then is a Deployment rendered, pinned to those commits."""

from __future__ import annotations

from lorafuse.commands.render import render
from lorafuse.merger.pipeline.result import JobResult
from lorafuse.operator import naming
from lorafuse.operator.children.common import Images
from lorafuse.operator.children.desired import desired_objects
from lorafuse.operator.lifecycle import JobObservation, Rollout, conditions, decide, phase_of
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.pinning import pin_sources, unresolved
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    SourceCommitStatus,
)

BASE_COMMIT = "1" * 40
ADAPTER_COMMIT = "2" * 40
ADAPTER = ServingTarget("adapter", Sizing(2048, 16, "set"))
NOTHING = Rollout()
OLD_PODS = Rollout(exists=True, replicas=1, total=1, ready=1, updated=1, current=True)
SOURCES = (("hf://acme/tiny-llama@main", BASE_COMMIT), ("hf://acme/support@v3", ADAPTER_COMMIT))


def _spec(raw_spec, adapter: str = "hf://acme/support@v3", **base) -> ModelDeploymentSpec:
    raw_spec["base"] = base or {"source": "hf://acme/tiny-llama", "revision": "main"}
    raw_spec["adapters"] = [{"name": "support", "source": adapter}]
    raw_spec["serving"]["mode"] = "adapter"
    return ModelDeploymentSpec.model_validate(raw_spec)


def _fetch(spec: ModelDeploymentSpec, state: str, **fields) -> JobObservation:
    current = plan_hash(plan_for(spec))
    name = naming.fetch_job_name("support-bot", current)
    return JobObservation(name, current, state, **fields)  # type: ignore[arg-type]


def _decide(spec: ModelDeploymentSpec, fetch=None, status=None, retry=None):
    status = status or ModelDeploymentStatus()
    current = plan_hash(plan_for(spec))
    return decide(spec, status, current, None, fetch=fetch, retry_token=retry)


def _ready(decision, rollout: Rollout = NOTHING):
    return next(c for c in conditions(decision, rollout, 1, []) if c.type == "Ready")


def _rendered(owner, spec, decision, fetch=None):
    """What the reconcile applies for `decision`: pinned spec, fetch Job or Deployment."""
    pinned = pin_sources(spec, decision.harvested.get("resolved_sources", []))
    serving = ADAPTER if decision.serve == "adapter" else None
    start_fetch = decision.fetch_job and fetch is None
    return desired_objects(
        owner, pinned, plan_for(spec), Images(), merge=False, serving=serving, fetch=start_fetch
    )


def test_hub_sources_without_commits_run_the_fetch_job_and_serve_nothing_yet(owner, raw_spec):
    spec = _spec(raw_spec)
    decision = _decide(spec)
    assert decision.fetch_job and decision.serve is None and not decision.create_job
    assert phase_of(decision, NOTHING) == "Pending"
    ready = _ready(decision)
    assert (ready.status, ready.reason) == ("False", "Fetching")
    assert "hf://acme/tiny-llama@main, hf://acme/support@v3" in (ready.message or "")

    objects = _rendered(owner, spec, decision)
    assert not [o for o in objects if o["kind"] in ("Deployment", "Service")]
    (job,) = [o for o in objects if o["kind"] == "Job"]
    current = plan_hash(plan_for(spec))
    assert job["metadata"]["name"] == f"support-bot-fetch-{current[:10]}"
    assert job["metadata"]["name"] != naming.job_name("support-bot", current)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["initContainers"] == [] and container["name"] == "fetch"
    assert container["command"] == ["lorafuse", "job", "fetch"]
    # the merge plan's own ConfigMap and work directory: a later merge finds it fetched
    workdir = container["args"][container["args"].index("--workdir") + 1]
    assert workdir == f"{naming.WORK_ROOT}/{plan_for(spec).artifact_name()}"
    (plan_volume,) = [v for v in pod["volumes"] if v["name"] == "plan"]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert plan_volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_a_running_fetch_job_is_waited_on_not_started_again(raw_spec):
    spec = _spec(raw_spec)
    decision = _decide(spec, _fetch(spec, "Running", step="fetch"))
    assert decision.fetch_job and decision.serve is None and not decision.rerun_job
    assert _fetch(spec, "Running").name in _ready(decision).message


def test_the_fetched_commits_give_a_deployment_pinned_to_them(owner, raw_spec):
    spec = _spec(raw_spec)
    result = JobResult(ok=True, step="fetch", message="resolved 2 sources")
    decision = _decide(spec, _fetch(spec, "Succeeded", step="fetch", result=result,
                                    sources=SOURCES))
    assert decision.serve == "adapter" and not decision.fetch_job
    assert decision.harvested["resolved_sources"] == [
        SourceCommitStatus(source=s, commit=c) for s, c in SOURCES
    ]
    objects = _rendered(owner, spec, decision)
    assert not [o for o in objects if o["kind"] == "Job"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["args"][:2] == ["acme/support", ADAPTER_COMMIT]
    args = pod["containers"][0]["args"]
    assert args[args.index("--revision") + 1] == BASE_COMMIT


def test_commits_already_in_status_serve_at_once(raw_spec):
    spec = _spec(raw_spec)
    known = ModelDeploymentStatus(
        resolved_sources=[SourceCommitStatus(source=s, commit=c) for s, c in SOURCES]
    )
    decision = _decide(spec, status=known)
    assert decision.serve == "adapter" and not decision.fetch_job
    assert decision.rollback is not None and decision.rollback.reason == "Requested"


def test_local_sources_and_written_commits_need_no_fetch_job(owner, raw_spec):
    local = _spec(raw_spec, "/models/adapters/support", source="/models/base")
    decision = _decide(local)
    assert decision.serve == "adapter" and not decision.fetch_job and decision.fetch is None
    kinds = [o["kind"] for o in _rendered(owner, local, decision)]
    assert "Job" not in kinds and "Deployment" in kinds

    pinned = _spec(raw_spec, f"hf://acme/support@{ADAPTER_COMMIT}", source="hf://acme/tiny-llama",
                   revision=BASE_COMMIT)
    assert unresolved(pinned, []) == []
    assert _decide(pinned).serve == "adapter"


def test_a_changed_source_is_fetched_again(raw_spec):
    spec = _spec(raw_spec, "hf://acme/support@v4")
    old = ModelDeploymentStatus(
        resolved_sources=[SourceCommitStatus(source=s, commit=c) for s, c in SOURCES]
    )
    decision = _decide(spec, status=old)
    assert decision.fetch_job and decision.serve is None
    assert unresolved(spec, old.resolved_sources) == ["hf://acme/support@v4"]
    # the pods of the previous spec are left alone, and status says they still serve
    assert "1 pod(s) of the previous spec still serve" in _ready(decision, OLD_PODS).message


def test_a_failed_fetch_is_reported_and_nothing_is_served(raw_spec):
    spec = _spec(raw_spec)
    result = JobResult(
        ok=False, step="fetch", reason="InvalidInput",
        message="hf://acme/support@v3: revision 'v3' not found on the Hub",
    )
    failed = _fetch(spec, "Failed", step="fetch", result=result, reason="BackoffLimitExceeded")
    decision = _decide(spec, failed)
    assert decision.serve is None and decision.phase == "Failed" and not decision.rerun_job
    ready = _ready(decision)
    assert (ready.status, ready.reason) == ("False", "FetchFailed")
    assert ready.message == (
        f"job {failed.name} failed: InvalidInput: hf://acme/support@v3: revision 'v3' not "
        "found on the Hub"
    )
    # a new lorafuse.dev/retry value runs it again
    again = _decide(spec, failed, retry="2")
    assert again.rerun_job and again.fetch_job and again.phase == "Pending"


def test_a_fetch_job_without_its_result_runs_again(raw_spec):
    spec = _spec(raw_spec)
    decision = _decide(spec, _fetch(spec, "Succeeded"))  # its pod is gone
    assert decision.rerun_job and decision.serve is None


def test_merged_mode_never_asks_for_a_fetch_job(raw_spec):
    spec = _spec(raw_spec)
    merged = spec.model_copy(update={"serving": spec.serving.model_copy(update={"mode": "merged"})})
    decision = _decide(merged)
    assert decision.create_job and not decision.fetch_job and decision.fetch is None


def test_render_shows_the_fetch_job_then_the_commits_status_records(owner, raw_spec):
    spec = _spec(raw_spec)
    resource = ModelDeployment(metadata={"name": owner.name}, spec=spec)
    kinds = [o["kind"] for o in render(resource, owner, Images(), "sha256:x")]
    assert "Job" in kinds  # the fetch Job (no merge in adapter mode)

    status = ModelDeploymentStatus(
        resolved_sources=[SourceCommitStatus(source=s, commit=c) for s, c in SOURCES]
    )
    resource = ModelDeployment(metadata={"name": owner.name}, spec=spec, status=status)
    objects = render(resource, owner, Images(), "sha256:x")
    assert "Job" not in [o["kind"] for o in objects]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--revision") + 1] == BASE_COMMIT
