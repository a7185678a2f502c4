"""Pydantic models of the ModelDeployment resource: spec (user input) and status (output)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from lorafuse.merger.files import prune
from lorafuse.merger.pipeline.plan import (
    SOURCE_PATTERN,
    CombineMethod,
    IgnorePattern,
    OutputDtype,
    QuantMethod,
    check_ignore_method,
    is_gguf,
)
from lorafuse.operator.naming import DEFAULT_VLLM_IMAGE

GROUP = "lorafuse.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]

# Published: a gguf-* artifact is on the volume for download; no vLLM runs on it.
Phase = Literal[
    "Pending",
    "Merging",
    "Validating",
    "Deploying",
    "Serving",
    "Published",
    "RolledBack",
    "Failed",
]
ServingMode = Literal["merged", "adapter"]
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# An image reference: no spaces or shell characters; the admin policy decides which ones.
IMAGE = r"^[a-z0-9][-a-z0-9._/:@]*$"
ARTIFACT_NAME = prune.NAME.pattern  # what MergePlan.artifact_name() makes (may hold @rev)
PERCENT_OR_NUMBER = r"^[0-9]{1,3}%$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[mkMGTPE]|[eE][0-9]+)?$"


class _Model(BaseModel):
    """camelCase on the wire (Kubernetes style), snake_case in Python; unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", serialize_by_alias=True
    )


# --- spec -------------------------------------------------------------------------------


class BaseModelSource(_Model):
    source: str = Field(
        pattern=SOURCE_PATTERN,
        description="Where the base model lives: /path (on the model volume, mounted at "
        "/models), pvc://claim/path or hf://org/name.",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        description="Commit or tag for hf:// sources; pin it so the artifact is reproducible.",
    )

    @model_validator(mode="after")
    def _revision_only_for_hub(self) -> BaseModelSource:
        if self.revision and not self.source.startswith("hf://"):
            raise ValueError("base.revision applies to hf:// sources only")
        if self.revision and "@" in self.source:
            raise ValueError("give the revision either in base.source (@rev) or base.revision")
        return self


class AdapterSpec(_Model):
    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        max_length=63,
        description="Adapter name; in adapter serving the LoRA module is called this.",
    )
    source: str = Field(pattern=SOURCE_PATTERN, description="/path, pvc://claim/path or hf://…")
    weight: float = Field(default=1.0, description="Scale of this adapter in the merge.")


class CombineSpec(_Model):
    method: CombineMethod = "linear"
    density: float | None = Field(
        default=None, gt=0, le=1, description="Fraction of weights kept (ties, dare_*)."
    )
    seed: int = Field(default=0, ge=0, description="Seed for DARE's random pruning.")


class FileRef(_Model):
    """A JSONL file given either as a ConfigMap key or as a path on the model volume."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["configMap"]}, {"required": ["path"]}]}
    )

    config_map: ConfigMapKey | None = None
    path: str | None = Field(default=None, pattern=r"^/models/.+")

    @model_validator(mode="after")
    def _exactly_one(self) -> FileRef:
        if (self.config_map is None) == (self.path is None):
            raise ValueError("give exactly one of configMap or path")
        return self


class ConfigMapKey(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=253)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class QuantizationSpec(_Model):
    method: QuantMethod = Field(
        default="none",
        description="awq, gptq, fp8: served by vLLM. gguf-*: ARTIFACT/model.gguf for llama.cpp "
        "and Ollama, for download only (no vLLM; phase Published).",
    )
    calibration: FileRef | None = Field(
        default=None, description="JSONL of {'text'} or {'prompt'} lines (awq, gptq)."
    )
    samples: int = Field(default=64, ge=1, le=65536)
    seq_len: int = Field(default=512, ge=16, le=1_048_576)
    ignore: list[IgnorePattern] = Field(
        default_factory=list,
        max_length=64,
        description="Linear layers to keep unquantized (awq, gptq, fp8), besides lm_head: "
        "module names, class names, or 're:' and a regex on the module name.",
    )


class ValidationSpec(_Model):
    eval: FileRef | None = Field(
        default=None, description="JSONL of {'prompt', 'expected'} lines to score the merge on."
    )
    max_delta: float = Field(
        default=0.01, ge=0, description="Largest allowed score loss versus base + adapters."
    )
    max_new_tokens: int = Field(default=50, ge=1, le=4096)
    min_token_agreement: float = Field(
        default=0.5, ge=0, le=1, description="Below this, the merge is broken whatever the scores."
    )
    max_mean_kl: float = Field(
        default=0.25, ge=0, description="Above this, the merge is broken whatever the scores."
    )


class GpuSpec(_Model):
    resource_name: str = Field(default="nvidia.com/gpu", min_length=1)
    count: int = Field(default=1, ge=0, le=64, description="GPUs per serving pod (0: none).")
    type: str | None = Field(
        default=None, description="GPU model for the serving tuner, e.g. H100-80GB."
    )
    memory_gib: float | None = Field(
        default=None,
        alias="memoryGiB",
        gt=0,
        le=4096,
        description="Memory per GPU, when type is not known.",
    )


class ProbeSpec(_Model):
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=10,
        description="How long vLLM may take to load the model before the pod is restarted.",
    )
    period_seconds: int = Field(default=10, ge=1, le=300)
    readiness_timeout_seconds: int = Field(
        default=5, ge=1, le=300, description="A loaded vLLM can answer /health slowly."
    )
    liveness_timeout_seconds: int = Field(
        default=10, ge=1, le=300, description="Longer than readiness: a timeout here restarts vLLM."
    )


Surge = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=PERCENT_OR_NUMBER)]


class RolloutSpec(_Model):
    """How the serving Deployment replaces pods; a full GPU pool needs maxSurge 0."""

    max_surge: Surge = Field(default=1, description="Extra pods during a rollout (n or n%).")
    max_unavailable: Surge = Field(
        default=0, description="Pods that may be missing during a rollout (n or n%)."
    )


# vLLM's Prometheus metrics an autoscaler can follow (per pod, averaged over the pods).
# KV-cache use is vllm:kv_cache_usage_perc since vLLM 0.10; vllm:gpu_cache_usage_perc is
# its old name, hidden by default from 0.11 on (for older images only).
AutoscalingMetric = Literal[
    "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"
]
# A target that keeps a little headroom: 5 waiting requests per pod, 80% of the KV cache.
DEFAULT_AUTOSCALING_TARGETS: dict[str, str] = {
    "vllm:num_requests_waiting": "5",
    "vllm:kv_cache_usage_perc": "800m",
    "vllm:gpu_cache_usage_perc": "800m",
}


class AutoscalingSpec(_Model):
    """A HorizontalPodAutoscaler on a vLLM pod metric; it owns the Deployment's replicas."""

    min_replicas: int = Field(
        default=1, ge=1, le=1000, description="Fewest serving pods the autoscaler keeps."
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most serving pods the autoscaler adds.")
    metric: AutoscalingMetric = Field(
        default="vllm:num_requests_waiting",
        description="vLLM metric to scale on, averaged per pod: vllm:num_requests_waiting "
        "(queue length) or vllm:kv_cache_usage_perc (KV-cache use, 0 to 1; "
        "vllm:gpu_cache_usage_perc on vLLM before 0.10). The Prometheus adapter serves it "
        "to the HPA with ':' turned into '_' (see docs/operator.md).",
    )
    target: str | None = Field(
        default=None,
        pattern=QUANTITY,
        description="Average value per pod to keep the metric at (a quantity, e.g. 5 or "
        "800m); default 5 waiting requests, or 800m (80%) of the KV cache.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas exceeds autoscaling.maxReplicas")
        return self

    def target_value(self) -> str:
        return self.target or DEFAULT_AUTOSCALING_TARGETS[self.metric]


class DisruptionBudgetSpec(_Model):
    """The PodDisruptionBudget rendered when at least two serving pods run."""

    max_unavailable: Surge = Field(
        default=1,
        description="Serving pods a drain may evict at a time (n or n%); the budget exists "
        "only with replicas (or autoscaling.minReplicas) above 1.",
    )


class IngressSpec(_Model):
    """A networking.k8s.io/v1 Ingress to the serving Service."""

    host: str = Field(
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        max_length=253,
        description="Host name clients use, e.g. llm.example.com.",
    )
    path: str = Field(default="/", pattern=r"^/[^\s]*$", description="Path prefix routed to vLLM.")
    class_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="IngressClass; the cluster's default class when unset.",
    )
    tls_secret_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="TLS Secret for host; must match the operator's allowed Secrets.",
    )


class LocalObjectReference(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=253, description="Secret name.")


class PodTemplateSpec(_Model):
    """Scheduling and identity of the pods, merged over what the operator renders.

    Unknown fields are kept (not pruned by the API server) so that an attempt to set what
    the operator owns (containers, image, command, volumes, securityContext, ...) is
    reported in a condition instead of silently dropped."""

    model_config = ConfigDict(extra="allow")

    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra pod labels; keys the operator sets (lorafuse.dev/*, "
        "app.kubernetes.io/name, managed-by, component) are refused.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Extra pod annotations; lorafuse.dev/* keys are refused.",
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="Node, pod and pod anti-affinity, as in a PodSpec.",
    )
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list,
        description="As in a PodSpec; select the pods by lorafuse.dev/deployment and "
        "lorafuse.dev/component labels.",
    )
    priority_class_name: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=253, description="PriorityClass of the pods."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        description="Secrets to pull the images with; must match the operator's allowed Secrets.",
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="ServiceAccount the pods run as (the namespace's default when unset).",
    )
    runtime_class_name: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=253, description="RuntimeClass of the pods."
    )


ModelLen = Annotated[int, Field(ge=16)] | Literal["auto"]
NumSeqs = Annotated[int, Field(ge=1)] | Literal["auto"]


class ServingSpec(_Model):
    mode: ServingMode = Field(
        default="merged", description="merged: serve the artifact; adapter: base + LoRA."
    )
    image: str = Field(
        default=DEFAULT_VLLM_IMAGE,
        pattern=IMAGE,
        description="vLLM image; must match the operator's allowed image patterns.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Serving pods; `kubectl scale mdep` sets it. Ignored while autoscaling "
        "is set (the HorizontalPodAutoscaler owns the count).",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="Scale the serving pods with a HorizontalPodAutoscaler (autoscaling/"
        "v2beta2) on a vLLM metric from the Prometheus adapter.",
    )
    served_model_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$",
        max_length=253,
        description="Model name clients ask for; defaults to the resource's name.",
    )
    gpu: GpuSpec = GpuSpec()
    max_model_len: ModelLen = Field(
        default="auto", description="auto (the tuner sizes it for the GPU) or a number."
    )
    max_num_seqs: NumSeqs = Field(
        default="auto", description="auto (the tuner sizes it for the GPU) or a number."
    )
    target_context: int | None = Field(
        default=None, ge=16, description="Context the tuner should aim for (auto mode)."
    )
    target_concurrency: int | None = Field(
        default=None, ge=1, description="Concurrent sequences the tuner should aim for."
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    max_lora_rank: int = Field(
        default=64, ge=1, le=512, description="Adapter mode: the largest adapter rank."
    )
    runtime_adapters: bool = Field(
        default=True,
        description="Adapter mode: adding or removing an adapter loads or unloads it in the "
        "running vLLM pods (vLLM's runtime LoRA API, VLLM_ALLOW_RUNTIME_LORA_UPDATING) instead "
        "of rolling them; new and restarted pods start with the current set. That API has no "
        "authentication: whoever reaches the pods' port can load and unload adapters. false: "
        "the API stays off and every change of the adapters rolls the pods.",
    )
    port: int = Field(default=8000, ge=1, le=65535)
    extra_args: list[str] = Field(
        default_factory=list,
        description="Appended to vLLM's args; arguments the operator owns (--model, "
        "--lora-modules, --trust-remote-code, ...) are refused.",
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra environment variables for vLLM."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Container resources (GPUs are added from gpu)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    probes: ProbeSpec = ProbeSpec()
    rollout: RolloutSpec = RolloutSpec()
    pod_template: PodTemplateSpec = Field(
        default_factory=PodTemplateSpec,
        description="Placement and identity of the vLLM pods (affinity, topology spread, "
        "priority, pull secrets, service account, runtime class, labels, annotations).",
    )
    ingress: IngressSpec | None = Field(
        default=None, description="Expose the Service outside the cluster through an Ingress."
    )
    disruption_budget: DisruptionBudgetSpec = Field(
        default=DisruptionBudgetSpec(),
        description="Limits voluntary evictions (node drains) of serving pods.",
    )


class RollbackSpec(_Model):
    on_failure: bool = Field(
        default=True,
        description="When a new plan fails: serve the last validated artifact, or base + "
        "adapters when there is none (never after a deliberate refusal).",
    )
    to: str | None = Field(
        default=None,
        pattern=ARTIFACT_NAME,
        max_length=253,
        description="Serve this artifact from status.history instead of the current plan's.",
    )


class CredentialsSpec(_Model):
    """The hub token, for fetching hf:// sources and for vLLM in adapter mode."""

    secret_name: str = Field(pattern=DNS_LABEL, max_length=253)
    key: str = Field(default="token", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class StorageSpec(_Model):
    existing_claim: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="Use this PersistentVolumeClaim (kept when the resource is deleted).",
    )
    size: str = Field(default="100Gi", pattern=QUANTITY)
    storage_class_name: str | None = None
    access_modes: list[Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"], min_length=1
    )
    keep_artifacts: int = Field(
        default=3,
        ge=1,
        le=5,  # half of HISTORY_LIMIT
        description="Artifacts of status.history kept on the volume, newest first; older ones "
        "and their work directories are removed by a prune Job. The served artifact, the "
        "one spec.rollback.to names and those other ModelDeployments record are always kept. "
        "At most 5: the rest of the history's 10 entries is room for plans published while "
        "a prune runs.",
    )


class JobSpec(_Model):
    image: str | None = Field(
        default=None, pattern=IMAGE, description="Merger image; the operator's default."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Empty: the operator's default requests."
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra environment of the steps, e.g. HF_TOKEN from a Secret (valueFrom).",
    )
    backoff_limit: int = Field(default=1, ge=0, le=20)
    active_deadline_seconds: int = Field(default=7200, ge=60)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    pod_template: PodTemplateSpec = Field(
        default_factory=PodTemplateSpec,
        description="Placement and identity of the merge Job's pod (as serving.podTemplate).",
    )


class ModelDeploymentSpec(_Model):
    base: BaseModelSource
    adapters: list[AdapterSpec] = Field(min_length=1, max_length=64)
    combine: CombineSpec = CombineSpec()
    dtype: OutputDtype = "auto"
    quantization: QuantizationSpec = QuantizationSpec()
    validation: ValidationSpec = ValidationSpec()
    serving: ServingSpec = ServingSpec()
    rollback: RollbackSpec = RollbackSpec()
    storage: StorageSpec = StorageSpec()
    job: JobSpec = JobSpec()
    credentials: CredentialsSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelDeploymentSpec:
        names = [adapter.name for adapter in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {names}")
        if self.combine.method != "linear" and self.combine.density is None:
            raise ValueError(f"combine.density is required for {self.combine.method}")
        if self.quantization.method in ("awq", "gptq") and self.quantization.calibration is None:
            raise ValueError(f"quantization.calibration is required for {self.quantization.method}")
        check_ignore_method(self.quantization.method, self.quantization.ignore)
        if is_gguf(self.quantization.method) and self.serving.mode == "adapter":
            raise ValueError(
                f"quantization.method {self.quantization.method} publishes a GGUF file for "
                "download and serves nothing; serving.mode adapter serves base + adapters "
                "without a merge: choose one"
            )
        gpus = self.serving.gpu.count
        if gpus and self.serving.tensor_parallel_size > gpus:
            raise ValueError("serving.tensorParallelSize exceeds serving.gpu.count")
        return self


# --- status -----------------------------------------------------------------------------

HISTORY_LIMIT = 10


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str | None = None  # Kubernetes' apply turns an empty string into null
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ArtifactStatus(_Model):
    name: str
    path: str
    digest: str | None = None
    bytes: int | None = Field(default=None, ge=0)
    quantization: str | None = None
    plan_hash: str | None = Field(default=None, description="Content hash of the plan it is for.")


class ValidationStatus(_Model):
    passed: bool
    score_candidate: float | None = None
    score_reference: float | None = None
    delta: float | None = None
    token_agreement: float | None = None
    mean_kl: float | None = None
    max_logit_diff: float | None = None


class PodAdaptersStatus(_Model):
    """The LoRA adapters one serving pod serves (adapter mode with runtime adapters)."""

    name: str = Field(description="The serving pod.")
    adapters: list[str] = Field(
        default_factory=list,
        description="LoRA names the pod serves, as its /v1/models last listed them.",
    )
    message: str | None = Field(
        default=None,
        description="Why the pod's adapters may differ from spec.adapters: the last list, "
        "load or unload that failed (retried).",
    )


class ServingStatus(_Model):
    mode: ServingMode | None = None
    models: list[str] = Field(default_factory=list, description="Model names clients can use.")
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    why: str | None = None
    endpoint: str | None = None
    replicas: int | None = None
    selector: str | None = Field(
        default=None,
        description="Label selector of the serving pods (the scale subresource's, for HPAs).",
    )
    ready_replicas: int = 0
    updated_replicas: int = 0
    previous: str | None = Field(
        default=None, description="What old pods still serve while this rolls out."
    )
    previous_ready_replicas: int = 0
    pods: list[PodAdaptersStatus] | None = Field(
        default=None,
        description="Adapter mode with runtime adapters: the LoRA adapters each ready "
        "serving pod serves.",
    )


class MergeStatus(_Model):
    """The merge Job for the current plan and how it went."""

    job: str
    plan_hash: str
    state: Literal["Running", "Succeeded", "Failed"]
    step: str | None = None
    reason: str | None = None
    message: str | None = None
    retry: str | None = Field(default=None, description="lorafuse.dev/retry it ran under.")
    attempt: int = Field(default=0, ge=0, description="Retries after transient failures.")
    transient: bool | None = Field(
        default=None, description="The failure was evicted, OOMKilled, deadline or node lost."
    )
    finished_at: str | None = None


class HistoryEntry(_Model):
    """A published, validated artifact of this resource (newest last)."""

    name: str
    path: str
    plan_hash: str | None = None
    digest: str | None = None
    bytes: int | None = Field(default=None, ge=0)
    quantization: str | None = None
    validation: ValidationStatus | None = None
    published_at: str | None = None


class RetentionStatus(_Model):
    """Superseded artifacts removed from the volume (spec.storage.keepArtifacts)."""

    reclaimed_bytes: int = Field(
        default=0, ge=0, description="File bytes freed by prune Jobs so far, in total."
    )
    pruned_artifacts: int = Field(
        default=0, ge=0, description="Artifacts removed from the volume so far, in total."
    )
    runs: int = Field(default=0, ge=0, description="Prune Jobs finished and counted here.")
    job: str | None = Field(default=None, description="The latest prune Job.")
    state: Literal["Running", "Succeeded", "Failed"] | None = Field(
        default=None, description="How the latest prune Job went."
    )
    last_pruned: list[str] = Field(
        default_factory=list, description="Artifacts the latest prune Job removed."
    )
    busy: list[str] = Field(
        default_factory=list,
        description="Artifacts the latest prune Job left because a merge Job was writing them.",
    )
    message: str | None = Field(default=None, description="What the latest prune Job said.")


class SourceCommitStatus(_Model):
    """An hf:// source as the spec names it (with its @revision) and the commit it was."""

    source: str
    commit: str


class ModelDeploymentStatus(_Model):
    phase: Phase = "Pending"
    serving_mode: ServingMode | None = None
    artifact: ArtifactStatus | None = None
    provenance: dict[str, Any] | None = None
    validation: ValidationStatus | None = None
    model_shape: dict[str, Any] | None = Field(
        default=None, description="Shape of the served model, as the serving tuner reads it."
    )
    merge: MergeStatus | None = None
    serving: ServingStatus | None = None
    history: list[HistoryEntry] = Field(default_factory=list, max_length=HISTORY_LIMIT)
    retention: RetentionStatus | None = Field(
        default=None,
        description="Removal of superseded artifacts from the volume, and the bytes it freed.",
    )
    resolved_sources: list[SourceCommitStatus] = Field(
        default_factory=list,
        description="The commit each hf:// source resolved to in the latest fetch (the merge "
        "Job's first step, or adapter mode's fetch Job); adapter serving downloads exactly "
        "these commits.",
    )
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class ModelDeployment(_Model):
    """The whole resource, as `lorafuse render` reads it from a file."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["lorafuse.dev/v1alpha1"] = "lorafuse.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any]
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


FileRef.model_rebuild()
