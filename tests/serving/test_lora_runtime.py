"""The runtime LoRA client against real vLLM on CPU: list, load, replace, unload, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafuse.serving.local import (
    complete,
    find_vllm_python,
    free_port,
    start_vllm,
    stop,
    wait_ready,
)
from lorafuse.serving.lora_runtime import RUNTIME_LORA_ENV, LoraRuntime, LoraRuntimeError
from lorafuse.serving.vllm_args import VllmOptions, lora_config_text, vllm_args

PROMPT = "Please reset my password. Where is my"


def test_an_unreachable_server_is_a_one_line_error():
    with pytest.raises(LoraRuntimeError) as caught:
        LoraRuntime(f"http://127.0.0.1:{free_port()}", list_timeout=2).loaded()
    message = str(caught.value)
    assert message.startswith("GET http://127.0.0.1:") and "/v1/models: " in message
    assert "\n" not in message


def test_the_config_file_carries_the_modules_instead_of_the_command_line(tmp_path):
    options = VllmOptions(
        model="/m",
        served_name="bot",
        host="0.0.0.0",
        port=8000,
        lora_modules=["a=/x", "b=/y"],
        lora_config_file="/etc/lora/vllm.yaml",
    )
    args = vllm_args(options)
    assert "--lora-modules" not in args and "--max-loras" not in args
    assert args[args.index("--config") + 1] == "/etc/lora/vllm.yaml"
    import yaml  # vLLM reads the file with yaml.safe_load

    assert yaml.safe_load(lora_config_text(options)) == {
        "lora-modules": ["a=/x", "b=/y"],
        "max-loras": 2,
    }


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    from lorafuse.merger.demo.tiny import build_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("lora-runtime")
    # head_dim 32: vLLM's CPU attention has no kernel for the default 16
    base = build_tiny_model(root / "base", arch="llama", head_dim=32)
    return {
        "base": base,
        "support": build_adapter(base, root / "support", seed=1),
        "billing": build_adapter(base, root / "billing", seed=2),
    }


@pytest.fixture(scope="module")
def server(adapters, tmp_path_factory):
    """vLLM started as a serving pod starts it: the modules in a --config file."""
    python = find_vllm_python()
    if python is None:
        pytest.skip("no vLLM: run scripts/vllm-venv.sh or set LORAFUSE_VLLM_PYTHON")
    work = tmp_path_factory.mktemp("vllm")
    options = VllmOptions(
        model=str(adapters["base"]),
        served_name="bot",
        host="127.0.0.1",
        port=free_port(),
        lora_modules=[f"support={adapters['support']}"],
        max_lora_rank=8,
        max_model_len=128,
        max_num_seqs=4,
        lora_config_file=str(work / "lora.yaml"),
        extra_args=["--dtype", "float32", "--enforce-eager"],
    )
    Path(options.lora_config_file or "").write_text(lora_config_text(options))
    env = {
        RUNTIME_LORA_ENV: "True",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    running = start_vllm(python, vllm_args(options), work / "vllm.log", env)
    try:
        wait_ready(running, 600)
        yield running
    finally:
        stop(running)


@pytest.mark.vllm
def test_adapters_load_and_unload_in_a_running_server(server, adapters):
    runtime = LoraRuntime(server.endpoint.removesuffix("/v1"))
    assert runtime.loaded() == {"support": str(adapters["support"])}  # from the --config file

    # A second adapter, beyond --max-loras 1 of the start: loaded, listed and answering.
    runtime.load("billing", str(adapters["billing"]))
    assert runtime.loaded() == {
        "support": str(adapters["support"]),
        "billing": str(adapters["billing"]),
    }
    billing = complete(server, "billing", PROMPT, max_tokens=8)
    support = complete(server, "support", PROMPT, max_tokens=8)
    assert billing != support  # two adapters really answer, not one under two names

    # In place: the same name, other weights.
    runtime.load("billing", str(adapters["support"]), replace=True)
    assert runtime.loaded()["billing"] == str(adapters["support"])
    assert complete(server, "billing", PROMPT, max_tokens=8) == support

    runtime.unload("billing")
    assert runtime.loaded() == {"support": str(adapters["support"])}


@pytest.mark.vllm
def test_refusals_are_one_line_errors_and_change_nothing(server, adapters):
    runtime = LoraRuntime(server.endpoint.removesuffix("/v1"))
    before = runtime.loaded()

    with pytest.raises(LoraRuntimeError) as missing:
        runtime.load("ghost", "/nonexistent/adapter")
    assert "/v1/load_lora_adapter ghost: 404" in str(missing.value)
    assert "/nonexistent/adapter" in str(missing.value)  # vLLM's own reason
    assert "\n" not in str(missing.value)

    with pytest.raises(LoraRuntimeError, match="already been loaded"):
        runtime.load("support", str(adapters["support"]))

    with pytest.raises(LoraRuntimeError, match="404.*cannot be found"):
        runtime.unload("ghost")

    assert runtime.loaded() == before
