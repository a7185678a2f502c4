"""The reference merge: transformers loads, PEFT merges and unloads, save_pretrained writes.

Usage: python bench/peft_merge.py BASE_DIR ADAPTER_DIR OUT_DIR
"""

from __future__ import annotations

import sys


def peft_merge(base: str, adapter: str, out: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    peft_merge(*sys.argv[1:])
