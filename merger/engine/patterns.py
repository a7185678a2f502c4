"""Adapter config regexes (target_modules, rank_pattern, alpha_pattern) tried with a time bound.

PEFT matches these with `re`, which can backtrack for ever (`(a+)+$`) and cannot be
interrupted from Python: a pattern that does not finish matching every module name within
MATCH_SECONDS in a helper process is refused, so neither the merge nor PEFT (validation)
ever runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from lorafuse.errors import UserError

MATCH_SECONDS = 5.0
MAX_PATTERN_CHARS = 1000
# Reads {"patterns": [[field, regex, full]], "names": [...]} and matches each pattern as
# PEFT does: rank/alpha patterns with re.match, a target_modules string with re.fullmatch.
_HELPER = """
import json, re, sys
job = json.load(sys.stdin)
for field, pattern, full in job["patterns"]:
    compiled = re.compile(pattern)
    match = compiled.fullmatch if full else compiled.match
    for name in job["names"]:
        match(name)
    print(field, flush=True)
"""


def peft_patterns(config) -> list[tuple[str, str, bool]]:
    """(field, regex as PEFT runs it, whether it must match whole names)."""
    found = [(f"rank_pattern key {key!r}", _suffix_pattern(key), False)
             for key in (config.rank_pattern or {})]
    found += [(f"alpha_pattern key {key!r}", _suffix_pattern(key), False)
              for key in (config.alpha_pattern or {})]
    target = (config.model_extra or {}).get("target_modules")
    if isinstance(target, str):
        found.append((f"target_modules {target!r}", target, True))
    return found


def _suffix_pattern(key: str) -> str:
    """peft.utils.other.get_pattern_key's regex for one rank_pattern/alpha_pattern key."""
    return rf"(.*\.)?({key})$"


def check_patterns(path: Path, config, names: Iterable[str]) -> None:
    """Refuse patterns that do not compile or do not match every name within MATCH_SECONDS."""
    patterns = peft_patterns(config)
    if not patterns:
        return
    for field, pattern, _ in patterns:
        if len(pattern) > MAX_PATTERN_CHARS:
            raise UserError(f"{path}: {field} is longer than {MAX_PATTERN_CHARS} characters")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise UserError(f"{path}: {field} is not a valid regular expression ({exc})") from None
    _match_in_helper(path, patterns, sorted(set(names)))


def _match_in_helper(path: Path, patterns: list[tuple[str, str, bool]], names: list[str]) -> None:
    job = json.dumps({"patterns": patterns, "names": names})
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _HELPER], input=job,
                              capture_output=True, text=True, timeout=MATCH_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        finished = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        slow = patterns[len((finished or "").splitlines())][0]
        raise UserError(f"{path}: {slow} takes over {MATCH_SECONDS:.0f} s to match the model's "
                        "module names (catastrophic backtracking); simplify it") from None
    if done.returncode != 0:
        raise UserError(f"{path}: the adapter's patterns cannot be matched "
                        f"({done.stderr.strip().splitlines()[-1:]})")


def module_names(tensor_keys: Iterable[str]) -> set[str]:
    """Every module name a model with these tensors has (each dotted prefix of a key)."""
    names = set()
    for key in tensor_keys:
        parts = key.split(".")
        names.update(".".join(parts[:end]) for end in range(1, len(parts)))
    return names
