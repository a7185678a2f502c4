"""`lorafuse run`: a ModelDeployment executed on this machine, no cluster.

The same plan and Job steps the operator would run, on a local models directory standing
in for the model volume (`/models/...` in the manifest means MODELS_ROOT/...), then vLLM
started with the operator's arguments, asked for one completion, and stopped.
"""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafuse.errors import UserError, ValidationFailed
from lorafuse.jsonfile import read_json
from lorafuse.merger.pipeline import job
from lorafuse.merger.pipeline.manifest import plan_from_spec, read_manifest
from lorafuse.serving import local as local_serving

MODELS_MOUNT = "/models"


@dataclass
class RunOptions:
    manifest: Path
    models_root: Path
    serve: bool = True
    port: int | None = None
    timeout: float = 600.0
    prompt: str | None = None
    keep_serving: bool = False


def run_manifest(options: RunOptions, say: Callable[[str], None] = print) -> int:
    document = read_manifest(options.manifest)
    name = document["metadata"]["name"]
    spec = localize(document["spec"], options.models_root, options.manifest.parent)
    serving = spec.get("serving") or {}
    mode = serving.get("mode", "merged")
    plan = plan_from_spec(spec, artifact_root=str(options.models_root.absolute() / "artifacts"),
                          resolve_file=_local_file)
    work = job.claim_workdir(plan, job.default_workdir(plan))
    say(f"{name}: plan {plan.content_hash()[:12]}, artifact {plan.artifact_name()}")
    say(f"work directory: {work.root}")
    if mode == "merged":
        result = _run_steps(plan, work, say)
        model, lora_modules = result["artifact"]["path"], None
    else:
        say(f"[fetch] {job.fetch(plan, work)['message']}")
        sources = read_json(work.sources)
        model = sources["base"]["path"]
        lora_modules = _lora_modules(name, serving, sources)
    return _serve(options, name, serving, model, lora_modules, plan, say)


def localize(spec: Mapping[str, Any], models_root: Path, manifest_dir: Path) -> dict:
    """The spec with /models/... paths under `models_root` and relative paths made absolute."""
    local = copy.deepcopy(dict(spec))

    def path(value: str) -> str:
        if value.startswith(("hf://", "pvc://")):
            return value
        if value == MODELS_MOUNT or value.startswith(MODELS_MOUNT + "/"):
            return str(models_root.absolute() / value[len(MODELS_MOUNT):].lstrip("/"))
        return str((manifest_dir / value).absolute()) if not value.startswith("/") else value

    if isinstance(local.get("base"), dict) and isinstance(local["base"].get("source"), str):
        local["base"]["source"] = path(local["base"]["source"])
    for adapter in local.get("adapters") or []:
        if isinstance(adapter, dict) and isinstance(adapter.get("source"), str):
            adapter["source"] = path(adapter["source"])
    for section, key in (("validation", "eval"), ("quantization", "calibration")):
        ref = (local.get(section) or {}).get(key)
        if isinstance(ref, dict) and isinstance(ref.get("path"), str):
            ref["path"] = path(ref["path"])
    return local


def _local_file(kind: str, ref: Mapping[str, Any]) -> str:
    if ref.get("configMap"):
        raise UserError(f"spec: the {kind} file is a ConfigMap, which needs a cluster; "
                        "give a path for `lorafuse run`")
    if not ref.get("path"):
        raise UserError(f"spec: the {kind} file needs a path")
    return ref["path"]


def _run_steps(plan, work, say) -> dict:
    steps = [s for s in job.STEPS if s != "quantize" or plan.quantization.method != "none"]
    result: dict = {}
    for step in steps:
        try:
            result = job.run_step(step, plan, work)
        except ValidationFailed as exc:
            say(f"[{step}] validation failed: {exc}")
            say("nothing was published (a cluster with rollback.onFailure would serve the "
                "base model with the adapters)")
            raise
        say(f"[{step}] {result['message']}")
    check = result.get("validation") or {}
    say(f"artifact: {result['artifact']['path']}")
    say(f"digest:   {result['artifact']['digest']} ({result['artifact']['bytes']} bytes)")
    if check:
        score = ("no eval set" if check["score_candidate"] is None else
                 f"task score {check['score_candidate']:.3f} "
                 f"(reference {check['score_reference']:.3f})")
        say(f"validation: token agreement {check['token_agreement']:.3f}, "
            f"mean KL {check['mean_kl']:.2e}, {score}")
    return result


def _lora_modules(name: str, serving: Mapping[str, Any], sources: dict) -> list[str]:
    """As the operator names them: one adapter is served under the served name itself."""
    served = serving.get("servedModelName") or name
    adapters = sources["adapters"]
    names = [served] if len(adapters) == 1 else [a["name"] for a in adapters]
    return [f"{n}={a['path']}" for n, a in zip(names, adapters, strict=True)]


def _serve(options: RunOptions, name: str, serving: Mapping[str, Any], model: str,
           lora_modules: list[str] | None, plan, say) -> int:
    if not options.serve:
        return 0
    python = local_serving.find_vllm_python()
    if python is None:
        say(f"vLLM not found (set {local_serving.VLLM_PYTHON_ENV} or run scripts/vllm-venv.sh); "
            "not serving")
        return 0
    served = serving.get("servedModelName") or name
    port = options.port or local_serving.free_port()
    args = local_serving.vllm_args(serving, served, port, model, lora_modules,
                                   gpus_present=shutil.which("nvidia-smi") is not None)
    env = {str(v["name"]): str(v.get("value", "")) for v in serving.get("env") or []
           if isinstance(v, dict) and "name" in v}
    log_path = job.default_workdir(plan) / "vllm.log"
    say(f"starting vLLM: {python} -m vllm.entrypoints.openai.api_server {' '.join(args)}")
    server = local_serving.start_vllm(python, args, log_path, env)
    try:
        local_serving.wait_ready(server, options.timeout)
        say(f"endpoint: {server.endpoint} (model {served!r})")
        prompt = options.prompt or _first_prompt(plan) or "Hello"
        ask = lora_modules[0].split("=", 1)[0] if lora_modules else served
        text = local_serving.complete(server, ask, prompt)
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


def _first_prompt(plan) -> str | None:
    if not plan.validation.eval:
        return None
    from lorafuse.merger.pipeline.validate import load_eval

    return load_eval(Path(plan.validation.eval))[0].prompt
