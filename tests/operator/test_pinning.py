"""Adapter serving pinned to commits: the fetch step's resolved commits reach status, and the
serving pods fetch exactly those commits instead of a branch or tag written in the spec."""

from __future__ import annotations

import json
from types import SimpleNamespace

from lorafuse.merger.pipeline.result import JobResult, SourceCommit
from lorafuse.operator.children.common import Images
from lorafuse.operator.children.desired import desired_objects
from lorafuse.operator.kube import _fetched_sources
from lorafuse.operator.lifecycle import JobObservation, decide
from lorafuse.operator.merge_plan import plan_for, plan_hash
from lorafuse.operator.pinning import pin_sources
from lorafuse.operator.serving_target import ServingTarget
from lorafuse.operator.sizing import Sizing
from lorafuse.operator.spec import ModelDeploymentSpec, ModelDeploymentStatus, SourceCommitStatus

BASE_COMMIT = "1" * 40
ADAPTER_COMMIT = "2" * 40
ADAPTER = ServingTarget("adapter", Sizing(2048, 16, "set"))


def _hub_spec(raw_spec) -> ModelDeploymentSpec:
    raw_spec["base"] = {"source": "hf://acme/tiny-llama", "revision": "main"}
    raw_spec["adapters"] = [
        {"name": "support", "source": "hf://acme/support@v3"},
        {"name": "local", "source": "/models/adapters/local"},
    ]
    return ModelDeploymentSpec.model_validate(raw_spec)


RESOLVED = [
    SourceCommitStatus(source="hf://acme/tiny-llama@main", commit=BASE_COMMIT),
    SourceCommitStatus(source="hf://acme/support@v3", commit=ADAPTER_COMMIT),
]


def test_known_commits_replace_the_revisions_of_hub_sources(raw_spec):
    pinned = pin_sources(_hub_spec(raw_spec), RESOLVED)
    assert (pinned.base.source, pinned.base.revision) == ("hf://acme/tiny-llama", BASE_COMMIT)
    assert [a.source for a in pinned.adapters] == [
        f"hf://acme/support@{ADAPTER_COMMIT}",
        "/models/adapters/local",
    ]


def test_a_source_whose_revision_changed_since_is_not_pinned(raw_spec):
    spec = _hub_spec(raw_spec)
    stale = [SourceCommitStatus(source="hf://acme/support@v2", commit=ADAPTER_COMMIT)]
    assert pin_sources(spec, stale) == spec


def test_adapter_serving_pods_fetch_and_load_the_resolved_commits(owner, raw_spec):
    spec = _hub_spec(raw_spec)
    objects = desired_objects(
        owner, pin_sources(spec, RESOLVED), plan_for(spec), Images(), merge=False, serving=ADAPTER
    )
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    cached = f"/cache/adapters/acme--support--{ADAPTER_COMMIT}"
    assert fetch["args"] == ["acme/support", ADAPTER_COMMIT, cached]
    args = pod["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "acme/tiny-llama"
    assert args[args.index("--revision") + 1] == BASE_COMMIT
    rendered = json.dumps(objects)
    assert f"support={cached}" in rendered  # the LoRA module vLLM loads is that folder
    assert "@v3" not in rendered and "--v3" not in rendered


def test_the_fetch_steps_commits_are_harvested_into_status(raw_spec):
    spec = _hub_spec(raw_spec)
    current = plan_hash(plan_for(spec))
    sources = (("hf://acme/tiny-llama@main", BASE_COMMIT),)
    job = JobObservation("job", current, "Running", step="merge", sources=sources)
    decision = decide(spec, ModelDeploymentStatus(), current, job)
    assert decision.harvested["resolved_sources"] == RESOLVED[:1]


def _container(name: str, message: str, exit_code: int = 0) -> SimpleNamespace:
    terminated = SimpleNamespace(exit_code=exit_code, message=message)
    return SimpleNamespace(name=name, state=SimpleNamespace(terminated=terminated))


def _pod(*init_containers: SimpleNamespace) -> SimpleNamespace:
    status = SimpleNamespace(init_container_statuses=list(init_containers), container_statuses=[])
    return SimpleNamespace(status=status)


def test_the_commits_are_read_from_the_fetch_steps_termination_message():
    fetched = JobResult(
        ok=True,
        step="fetch",
        sources=[SourceCommit(source="hf://acme/support@v3", commit=ADAPTER_COMMIT)],
    )
    failed_merge = JobResult(ok=False, step="merge", reason="Error")
    pod = _pod(
        _container("fetch", fetched.to_json()), _container("merge", failed_merge.to_json(), 1)
    )
    assert _fetched_sources(pod) == (("hf://acme/support@v3", ADAPTER_COMMIT),)
    assert _fetched_sources(None) == ()
