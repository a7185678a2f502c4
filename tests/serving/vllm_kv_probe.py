"""Standalone: start vLLM's engine on CPU for each model spec and print its KV-cache config.

Run with the vLLM virtual environment's python (it imports vllm, not lorafuse):
    VLLM_CPU_KVCACHE_SPACE=1 <venv>/bin/python -I vllm_kv_probe.py '[{"name": ..., "model": ...}]'
Each spec is printed between `@@probe-begin NAME` and `@@probe-end NAME {json}` (or
`@@probe-error NAME message`), so vLLM's own log lines in between belong to that spec.
"""

import gc
import json
import sys

ENGINE_KEYS = ("model", "max_model_len", "max_num_batched_tokens", "kv_cache_dtype", "max_num_seqs")


def probe(spec: dict) -> dict:
    from vllm import LLM

    kwargs = {key: spec[key] for key in ENGINE_KEYS if spec.get(key) is not None}
    llm = LLM(enforce_eager=True, seed=0, **kwargs)
    try:
        config = llm.llm_engine.vllm_config
        return {
            "num_blocks": config.cache_config.num_gpu_blocks,
            "block_size": config.cache_config.block_size,
            "kv_cache_size_tokens": config.cache_config.kv_cache_size_tokens,
            "max_concurrency": config.cache_config.kv_cache_max_concurrency,
            "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
            "dtype": str(config.model_config.dtype).removeprefix("torch."),
        }
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def main() -> int:
    failures = 0
    for spec in json.loads(sys.argv[1]):
        print(f"@@probe-begin {spec['name']}", flush=True)
        try:
            result = probe(spec)
        except Exception as exc:  # report and go on with the next spec
            failures += 1
            print(f"@@probe-error {spec['name']} {exc!r}", flush=True)
            continue
        print(f"@@probe-end {spec['name']} {json.dumps(result)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
