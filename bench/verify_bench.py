"""Benchmark `job verify` (the artifact digest): one file at a time vs several in parallel.

    python bench/verify_bench.py DIR [--rounds 3]

DIR is any artifact-like directory of plain files, e.g. the 1.1B benchmark model that
merge_bench.py writes (~/.cache/lorafuse/bench/llama-1.1b-bf16). Each round is timed twice
per method: with DIR's pages dropped from the page cache (the disk's speed, as a serving
pod starting on a fresh node sees it) and warm (sha256's speed). "before" is the digest as
it was computed until November 2026: files hashed one after another with
hashlib.file_digest (256 KiB reads).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

from measure import evict_from_page_cache

from lorafuse.merger.files.digest import scan_artifact

GIB = 1024**3


def sequential_digest(directory: Path) -> str:
    """The digest before parallel hashing: same listing, one file at a time."""
    files = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in names:
            path = Path(root, name)
            with path.open("rb") as handle:
                files[path.relative_to(directory).as_posix()] = hashlib.file_digest(
                    handle, "sha256").hexdigest()
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def timed(function, directory: Path, cold: bool) -> tuple[float, str]:
    if cold:
        evict_from_page_cache(directory)
    started = time.perf_counter()
    digest = function(directory)
    return time.perf_counter() - started, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = sum(p.stat().st_size for p in args.directory.rglob("*") if p.is_file())
    methods = {"before": sequential_digest, "after": lambda d: scan_artifact(d).digest}
    print(f"{args.directory}: {size / GIB:.3f} GiB, load {os.getloadavg()[0]:.1f}")
    for cold in (True, False):
        for label, function in methods.items():
            times, digests = [], set()
            for _ in range(args.rounds):
                seconds, digest = timed(function, args.directory, cold)
                times.append(seconds)
                digests.add(digest)
            median = statistics.median(times)
            print(f"  {'cold' if cold else 'warm'} {label:<6} median {median:6.2f} s "
                  f"({size / GIB / median:5.2f} GiB/s)  runs {[round(t, 2) for t in times]}  "
                  f"digests agree: {len(digests) == 1}", flush=True)


if __name__ == "__main__":
    main()
