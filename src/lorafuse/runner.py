"""`lorafuse run`: a ModelDeployment executed on this machine, no cluster.

The same reader, plan, Job steps and vLLM arguments as the operator, on a local models
directory standing in for the model volume (`/models/...` in the manifest means
MODELS_ROOT/...), then vLLM started on loopback, asked for one completion, and stopped.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorafuse.errors import UserError, ValidationFailed
from lorafuse.merger.pipeline import job
from lorafuse.merger.pipeline.plan import MergePlan, is_gguf
from lorafuse.merger.pipeline.result import JobResult
from lorafuse.merger.pipeline.sources import local_path
from lorafuse.merger.pipeline.steps import steps_for
from lorafuse.operator import naming
from lorafuse.operator.download import download_message
from lorafuse.operator.lifecycle import artifact_from_result
from lorafuse.operator.manifest import read_model_deployment
from lorafuse.operator.merge_plan import JobPaths, plan_for
from lorafuse.operator.serving_target import ServingTarget, vllm_options
from lorafuse.operator.sizing import size_serving
from lorafuse.operator.spec import FileRef, ModelDeploymentSpec
from lorafuse.serving import local as local_serving
from lorafuse.serving.vllm_args import VllmOptions, vllm_args

LOCAL_HOST = "127.0.0.1"


@dataclass
class RunOptions:
    manifest: Path
    models_root: Path
    serve: bool = True
    port: int | None = None
    timeout: float = 600.0
    prompt: str | None = None
    keep_serving: bool = False


@dataclass(frozen=True)
class LocalPaths(JobPaths):
    """The Job's paths on this machine: /models/... is MODELS_ROOT/...; inputs must be files."""

    models_root: Path = Path()

    @classmethod
    def under(cls, models_root: Path) -> LocalPaths:
        root = models_root.absolute()
        return cls(artifact_root=str(root / "artifacts"), models_root=root)

    def source(self, source: str) -> str:
        mount = naming.MODELS_MOUNT
        if source == mount or source.startswith(mount + "/"):
            return str(self.models_root / source[len(mount):].lstrip("/"))
        return source

    def input_file(self, kind: str, ref: FileRef) -> str:
        if ref.config_map is not None:
            raise UserError(f"spec: the {kind} file is a ConfigMap, which needs a cluster; "
                            "give a path for `lorafuse run`")
        return self.source(super().input_file(kind, ref))

    def serving_ref(self, source: str) -> tuple[str, str | None]:
        """What local vLLM gets: a hub id as the operator gives it, other sources as found here."""
        if source.startswith("hf://"):
            return naming.serving_ref(source)
        return str(local_path(self.source(source))), None


def run_manifest(options: RunOptions, say: Callable[[str], None] = print) -> int:
    resource = read_model_deployment(options.manifest)
    name, spec = resource.metadata["name"], resource.spec
    paths = LocalPaths.under(options.models_root)
    plan = plan_for(spec, paths)
    work = job.claim_workdir(plan, job.default_workdir(plan))
    say(f"{name}: plan {plan.content_hash()[:12]}, artifact {plan.artifact_name()}")
    say(f"work directory: {work.root}")
    mode = spec.serving.mode
    # No model shape: `auto` sizes are left to vLLM (the tuner sizes for a GPU; this may be a CPU).
    sizing = size_serving(spec, mode, None)
    if mode == "merged":
        result = _run_steps(plan, work, say)
        assert result.artifact is not None
        if is_gguf(plan.quantization.method):  # as the operator: published, not served
            say(download_message(artifact_from_result(result.artifact, plan.content_hash())))
            return 0
        target = ServingTarget("merged", sizing, artifact_path=result.artifact.path)
    else:
        say(f"[fetch] {job.fetch(plan, work).message}")
        target = ServingTarget("adapter", sizing)
    if not options.serve:
        return 0
    return _serve(options, name, spec, target, paths, plan, say)


def local_vllm_options(
    name: str, spec: ModelDeploymentSpec, target: ServingTarget, paths: LocalPaths, port: int
) -> VllmOptions:
    """The operator's vLLM options, on loopback, with sources where they are on this machine."""
    return vllm_options(name, spec, target, host=LOCAL_HOST, port=port, locate=paths.serving_ref,
                        gpu_present=shutil.which("nvidia-smi") is not None)


def _run_steps(plan: MergePlan, work: job.Workdir, say) -> JobResult:
    result = JobResult(ok=False)
    for step in steps_for(plan):
        try:
            result = job.run_step(step, plan, work)
        except ValidationFailed as exc:
            say(f"[{step}] validation failed: {exc}")
            say("nothing was published (a cluster with rollback.onFailure would serve the "
                "base model with the adapters)")
            raise
        say(f"[{step}] {result.message}")
    artifact, check = result.artifact, result.validation
    assert artifact is not None
    say(f"artifact: {artifact.path}")
    say(f"digest:   {artifact.digest} ({artifact.bytes} bytes)")
    if check:
        score = ("no eval set" if check.score_candidate is None else
                 f"task score {check.score_candidate:.3f} "
                 f"(reference {check.score_reference:.3f})")
        say(f"validation: token agreement {check.token_agreement:.3f}, "
            f"mean KL {check.mean_kl:.2e}, {score}")
    return result


def _serve(options: RunOptions, name: str, spec: ModelDeploymentSpec, target: ServingTarget,
           paths: LocalPaths, plan: MergePlan, say) -> int:
    python = local_serving.find_vllm_python()
    if python is None:
        say(f"vLLM not found (set {local_serving.VLLM_PYTHON_ENV} or run scripts/vllm-venv.sh); "
            "not serving")
        return 0
    port = options.port or local_serving.free_port()
    vllm = local_vllm_options(name, spec, target, paths, port)
    args = vllm_args(vllm)
    env = {str(v["name"]): str(v.get("value", "")) for v in spec.serving.env if "name" in v}
    log_path = job.default_workdir(plan) / "vllm.log"
    say(f"starting vLLM: {python} -m vllm.entrypoints.openai.api_server {' '.join(args)}")
    server = local_serving.start_vllm(python, args, log_path, env)
    try:
        local_serving.wait_ready(server, options.timeout)
        say(f"endpoint: {server.endpoint} (model {vllm.served_name!r})")
        prompt = options.prompt or _first_prompt(plan) or "Hello"
        text = local_serving.complete(server, _model_to_ask(vllm), prompt)
        say(f"completion for {prompt!r}: {text!r}")
        if options.keep_serving:
            say("serving until interrupted (Ctrl-C)")
            server.process.wait()
    except KeyboardInterrupt:
        print("stopping vLLM", file=sys.stderr)
    finally:
        local_serving.stop(server)
        say("vLLM stopped")
    return 0


def _model_to_ask(vllm: VllmOptions) -> str:
    """The merged model, or the first adapter (the base alone would not show the adapters)."""
    return vllm.lora_modules[0].split("=", 1)[0] if vllm.lora_modules else vllm.served_name


def _first_prompt(plan: MergePlan) -> str | None:
    if not plan.validation.eval:
        return None
    from lorafuse.merger.pipeline.validate import load_eval

    return load_eval(Path(plan.validation.eval))[0].prompt
