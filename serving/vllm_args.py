"""vLLM's command line from plain options: one builder for the serving pods and `lorafuse run`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VllmOptions:
    """What vLLM serves and how; None leaves a setting to vLLM's default."""

    model: str  # a path, or a hub id
    served_name: str
    host: str
    port: int
    revision: str | None = None  # of a hub id
    lora_modules: list[str] = field(default_factory=list)  # `name=path`; empty: no LoRA
    max_lora_rank: int = 64
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None  # None: no GPU to size for
    tensor_parallel_size: int = 1
    extra_args: list[str] = field(default_factory=list)  # the user's, appended last
    # A YAML file (vLLM's --config) holding --lora-modules and --max-loras, so the adapter
    # set can change without changing the command line (lora_config_text writes it).
    lora_config_file: str | None = None


def vllm_args(options: VllmOptions) -> list[str]:
    """With LoRA modules the model is served as `NAME-base`; clients ask for the modules."""
    if options.lora_modules:
        args = ["--model", options.model, "--served-model-name", f"{options.served_name}-base"]
    else:
        args = ["--model", options.model, "--served-model-name", options.served_name]
    if options.revision:
        args += ["--revision", options.revision]
    if options.lora_modules:
        args += ["--enable-lora", "--max-lora-rank", str(options.max_lora_rank)]
        if options.lora_config_file:
            args += ["--config", options.lora_config_file]
        else:
            args += ["--max-loras", str(len(options.lora_modules))]
            args += ["--lora-modules", *options.lora_modules]
    args += ["--host", options.host, "--port", str(options.port)]
    if options.max_model_len is not None:
        args += ["--max-model-len", str(options.max_model_len)]
    if options.max_num_seqs is not None:
        args += ["--max-num-seqs", str(options.max_num_seqs)]
    if options.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(options.gpu_memory_utilization)]
        args += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    return args + [str(arg) for arg in options.extra_args]


def lora_config_text(options: VllmOptions) -> str:
    """The --config file of `options.lora_config_file`: the LoRA modules vLLM starts with.

    JSON, which YAML (vLLM reads the file with yaml.safe_load) takes as it is."""
    config = {"lora-modules": options.lora_modules, "max-loras": len(options.lora_modules)}
    return json.dumps(config, indent=2) + "\n"
