"""The GPU table: usable memory per card, as vLLM sees it, for the serving tuner."""

from __future__ import annotations

from dataclasses import dataclass

from lorafuse.errors import UserError


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # total device memory as torch.cuda.mem_get_info() reports it
    nominal_gb: int  # the size on the box (binary GB), for people reading the table
    vendor: str = "nvidia"

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


# vLLM sizes its budget as `total × --gpu-memory-utilization`, where total is
# torch.cuda.mem_get_info()[1]: the memory the driver exposes, not the nominal size
# (an "80 GB" H100 shows about 79.1-79.3 GiB). The figures are the lower end of
# the totals PyTorch reports for each card in its out-of-memory message ("GPU 0 has a
# total capacity of X GiB"), which reads the same total; vLLM's own profiling log
# printed `total_gpu_memory 79.22GiB` for an H100 80GB. They vary by about ±0.3 GiB
# with driver, ECC and board variant: pass --gpu-memory with a measured value when
# it matters.
_TABLE = [
    Gpu("T4", 14.75, 16),
    Gpu("V100-16", 15.77, 16),
    Gpu("V100-32", 31.75, 32),
    Gpu("A10", 22.03, 24),
    Gpu("A10G", 22.03, 24),
    Gpu("L4", 22.03, 24),
    Gpu("RTX4090", 23.64, 24),
    Gpu("L40S", 44.39, 48),
    Gpu("A100-40", 39.39, 40),
    Gpu("A100-80", 79.15, 80),
    Gpu("H100-80", 79.10, 80),
    Gpu("H200", 139.72, 141),
    Gpu("MI300X", 191.69, 192, vendor="amd"),
]

GPUS: dict[str, Gpu] = {gpu.name: gpu for gpu in _TABLE}

# Common spellings (nvidia-smi names, cloud SKUs) mapped onto the table's names.
_ALIASES = {
    "H100": "H100-80",
    "H100-SXM": "H100-80",
    "H100-PCIE": "H100-80",
    "H100-80GB": "H100-80",
    "A100": "A100-80",
    "A100-80GB": "A100-80",
    "A100-40GB": "A100-40",
    "H200-141": "H200",
    "V100": "V100-16",
    "RTX-4090": "RTX4090",
    "4090": "RTX4090",
}


def _normalize(name: str) -> str:
    return name.strip().upper().replace("_", "-").replace(" ", "-")


def find_gpu(name: str) -> Gpu:
    """The table entry for `name` (case-insensitive, aliases allowed); UserError if unknown."""
    key = _normalize(name)
    key = _ALIASES.get(key, key)
    for gpu_name, gpu in GPUS.items():
        if _normalize(gpu_name) == key:
            return gpu
    known = ", ".join(GPUS)
    raise UserError(f"--gpu {name!r}: unknown GPU; known: {known} (or pass --gpu-memory GiB)")
