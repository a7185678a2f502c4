"""Randomly damaged safetensors headers and adapter configs: exit 0 or 2, never 1 or a hang.

Seeded, so a failure names the case that reproduces it. A run that succeeds must still
equal PEFT's merge of the same (damaged but acceptable) files.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.merger.helpers import assert_close, load_output, merge_cli, peft_merged

CASES = 300
SECONDS_PER_CASE = 20
ORACLE_CHECKS = 12  # PEFT loads take ~1 s: compare the first successful runs

ODD_VALUES = [0, -1, 1, 8, 2.5, -3.5, 2**63, 1e308, float("nan"), float("inf"), "x", "", None,
              True, False, [], [1, 2], [-1], [3, 3], {}, {"q_proj": 8}, {"q_proj": 0},
              {"v_proj": 2.0}, {"(a+)+": 4}, {"x": {"y": []}}, "q_proj|v_proj", ["q_proj"],
              "([a-z_.0-9]+)+X", "[", "F32", "F13", "BF16", "I32"]
CONFIG_FIELDS = ["r", "lora_alpha", "use_rslora", "fan_in_fan_out", "use_dora", "rank_pattern",
                 "alpha_pattern", "target_modules", "trainable_token_indices", "peft_type",
                 "init_lora_weights", "modules_to_save", "lora_bias", "task_type"]
ENTRY_FIELDS = ["dtype", "shape", "data_offsets"]


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_safetensors(path: Path, header_bytes: bytes, data: bytes) -> None:
    path.write_bytes(len(header_bytes).to_bytes(8, "little") + header_bytes + data)


def flip_bytes(rng: random.Random, data: bytes, count: int = 3) -> bytes:
    damaged = bytearray(data)
    for _ in range(count):
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    return bytes(damaged)


def damage_header(rng: random.Random, path: Path) -> str:
    header, data = header_of(path)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    kind = rng.choice(["entry", "entry", "drop", "extra", "metadata", "whole", "bytes", "length",
                       "offsets"])
    if kind == "entry":
        field = rng.choice(ENTRY_FIELDS)
        header[name][field] = rng.choice(ODD_VALUES)
    elif kind == "drop":
        del header[name][rng.choice(ENTRY_FIELDS)]
    elif kind == "extra":
        header[name + ".extra"] = dict(header[name])
    elif kind == "metadata":
        header["__metadata__"] = rng.choice(ODD_VALUES)
    elif kind == "whole":
        header = rng.choice([[], 3, "x", None, {"a": [[[[]]]]}])
    elif kind == "offsets":
        begin, end = header[name]["data_offsets"]
        shift = rng.choice([-4, -1, 1, 4])
        header[name]["data_offsets"] = [begin, end + shift]
    text = json.dumps(header).encode()
    if kind == "bytes":
        text = flip_bytes(rng, text)
    if kind == "length":
        path.write_bytes(rng.randrange(2**64).to_bytes(8, "little") + text + data)
    else:
        write_safetensors(path, text, data)
    return f"{path.name}: {kind} {name}"


def damage_config(rng: random.Random, path: Path) -> str:
    config = json.loads(path.read_text())
    kind = rng.choice(["set", "set", "set", "drop", "bytes", "nest"])
    field = rng.choice(CONFIG_FIELDS)
    if kind == "set":
        config[field] = rng.choice(ODD_VALUES)
    elif kind == "drop":
        config.pop(field, None)
    elif kind == "nest":
        config[field] = json.loads("[" * 50 + "]" * 50)
    text = json.dumps(config)
    if kind == "bytes":
        text = flip_bytes(rng, text.encode()).decode("latin-1")
    path.write_text(text, encoding="latin-1")
    return f"{path.name}: {kind} {field}={config.get(field)!r}"[:200]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_case(base: Path, adapter: Path, out: Path) -> tuple[int, str]:
    stderr = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_CASE)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = merge_cli(base, [adapter], out)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, stderr.getvalue()


def test_damaged_headers_and_configs_exit_0_or_2(tiny_base, tiny_adapter, tmp_path):
    source_base = tiny_base("llama")
    source_adapter = tiny_adapter(source_base, target_modules=["q_proj", "v_proj"])
    rng = random.Random(20261130)
    started, checked, outcomes = time.monotonic(), 0, {0: 0, 2: 0}
    for case in range(CASES):
        root = tmp_path / f"case{case}"
        base = shutil.copytree(source_base, root / "base")
        adapter = shutil.copytree(source_adapter, root / "adapter")
        target = rng.choice(["base", "adapter", "config", "config"])
        if target == "base":
            what = damage_header(rng, base / "model.safetensors")
        elif target == "adapter":
            what = damage_header(rng, adapter / "adapter_model.safetensors")
        else:
            what = damage_config(rng, adapter / "adapter_config.json")
        try:
            code, stderr = run_case(base, adapter, root / "out")
        except Hang:
            pytest.fail(f"case {case} ({what}): no answer within {SECONDS_PER_CASE} s")
        except Exception as exc:  # an internal error: exit 1 with a traceback
            raise AssertionError(f"case {case} ({what}): {type(exc).__name__}: {exc}") from exc
        assert code in (0, 2), f"case {case} ({what}): exit {code}: {stderr}"
        assert "Traceback" not in stderr, f"case {case} ({what}): {stderr}"
        outcomes[code] += 1
        if code == 2:
            assert len(stderr.strip().splitlines()) == 1, f"case {case} ({what}): {stderr}"
            assert not (root / "out").exists()
        elif checked < ORACLE_CHECKS:
            assert_close(load_output(root / "out"), peft_merged(base, adapter))
            checked += 1
        shutil.rmtree(root)
    assert outcomes[0] and outcomes[2], outcomes
    assert time.monotonic() - started < CASES * 1.0, "the fuzz run became slow"
