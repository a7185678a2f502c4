"""Run a command in a fresh process and measure its wall time, CPU time and own peak RSS,
optionally inside a memory cgroup (v2, or the v1 memory hierarchy) with a hard limit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measurement:
    label: str
    wall_s: float
    cpu_s: float  # user + system time of the child: less sensitive to other load than wall
    peak_rss_bytes: int  # exact: the kernel's high-water mark (anon + file-backed mapped pages)
    returncode: int  # negative: killed by that signal (-9: SIGKILL, the OOM killer's)
    load_average: float = 0.0  # 1-minute load average when the run ended
    # Sampled every SAMPLE_S: the split of RSS into anonymous memory and mapped file pages.
    peak_rss_anon_bytes: int = 0
    peak_rss_file_bytes: int = 0
    cgroup_peak_bytes: int | None = None  # the cgroup's own high-water mark (page cache included)
    cgroup_peak_anon_bytes: int | None = None  # sampled; what the limit cannot reclaim
    oom_kills: int | None = None
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


SAMPLE_S = 0.02


class _PeakSampler(threading.Thread):
    """Polls /proc/PID/status (and the cgroup's memory.stat) for peaks ru_maxrss cannot split."""

    def __init__(self, pid: int, cgroup: MemoryCgroup | None):
        super().__init__(daemon=True)
        self.pid, self.cgroup = pid, cgroup
        self.anon = self.file = self.cgroup_anon = 0
        self.done = threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.done.is_set():
            fields = _kib_fields(_read(status, ""))
            self.anon = max(self.anon, fields.get("RssAnon", 0))
            self.file = max(self.file, fields.get("RssFile", 0) + fields.get("RssShmem", 0))
            if self.cgroup:
                self.cgroup_anon = max(self.cgroup_anon, self.cgroup.anon_bytes())
            self.done.wait(SAMPLE_S)


def _kib_fields(status: str) -> dict[str, int]:
    found = re.findall(r"^(\w+):\s+(\d+) kB$", status, re.MULTILINE)
    return {name: int(kib) * 1024 for name, kib in found}


# The per-run wrapper: a bare interpreter (-I -S: no site, no imports beyond the stdlib
# modules below) that spawns the command, reports its pid, waits for it, and reports
# RUSAGE_CHILDREN: with exactly one child that is the command's own usage.
#
# Why a wrapper: ru_maxrss of an exec'd child starts from the high-water mark of the
# memory image it was forked (or vfork'd) from. A benchmark process that has imported
# torch or compared two checkpoints would pass its own peak on to every later child;
# the wrapper's image is a few MiB, far below anything measured here.
_WRAPPER = """
import json, os, resource, sys, time
devnull = os.open(os.devnull, os.O_WRONLY)
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
print(pid, flush=True)
_, status = os.waitpid(pid, 0)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "maxrss_kib": usage.ru_maxrss,
                  "returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


def run_measured(label: str, command: list[str], cgroup: MemoryCgroup | None = None) -> Measurement:
    """Run `command` (an absolute executable first) under the wrapper; collect its figures."""
    wrapper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WRAPPER, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=cgroup.enter if cgroup else None,  # the command inherits the cgroup
    )
    # Drain stderr on the side so a chatty command never blocks on a full pipe.
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(wrapper.stderr.read()))
    reader.start()
    sampler = _PeakSampler(int(wrapper.stdout.readline()), cgroup)
    sampler.start()
    report = json.loads(wrapper.stdout.read())
    wrapper.wait()
    sampler.done.set()
    sampler.join()
    reader.join()
    stderr = b"".join(stderr_chunks).decode(errors="replace")
    result = Measurement(
        label=label,
        wall_s=report["wall_s"],
        cpu_s=report["cpu_s"],
        peak_rss_bytes=report["maxrss_kib"] * 1024,
        returncode=report["returncode"],
        load_average=os.getloadavg()[0],
        peak_rss_anon_bytes=sampler.anon,
        peak_rss_file_bytes=sampler.file,
        stderr_tail="\n".join(stderr.strip().splitlines()[-5:]),
    )
    if cgroup:
        result.cgroup_peak_bytes = cgroup.peak_bytes()
        result.cgroup_peak_anon_bytes = sampler.cgroup_anon
        result.oom_kills = cgroup.oom_kills()
    return result


def _own_cgroup_dir(controller: str | None) -> Path | None:
    """This process's directory in the v2 hierarchy (controller None) or a v1 one."""
    membership = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller is None and controllers == "" or controller in controllers.split(","):
            membership = path
    if membership is None:
        return None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        root, mount_point = fields[3], fields[4]
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        v2 = controller is None and fstype == "cgroup2"
        v1 = controller is not None and fstype == "cgroup" and controller in options
        if (v2 or v1) and membership.startswith(root):
            return Path(mount_point) / membership[len(root) :].lstrip("/")
    return None


class MemoryCgroup:
    """A child memory cgroup with a hard limit and no swap; the cgroup v2 interface when
    the memory controller is available there, else the v1 memory hierarchy."""

    def __init__(self, name: str, limit_bytes: int):
        self.limit_bytes = limit_bytes
        parent = _own_cgroup_dir(None)
        if parent and "memory" in _read(parent / "cgroup.controllers", "").split():
            self.version = 2
        else:
            parent = _own_cgroup_dir("memory")
            if parent is None:
                raise RuntimeError("no memory cgroup controller (v2 or v1) is mounted here")
            self.version = 1
        self.path = parent / name
        self.path.mkdir(exist_ok=True)
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # only with swap accounting; equal limits mean no swap
                memsw.write_text(str(limit_bytes))

    def enter(self) -> None:
        """Move the calling process into the cgroup (used between fork and exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return int(_read(self.path / name, "0"))

    def anon_bytes(self) -> int:
        """Anonymous memory charged now: what no limit can reclaim without swap."""
        key = "anon" if self.version == 2 else "total_rss"
        match = re.search(rf"^{key} (\d+)$", _read(self.path / "memory.stat", ""), re.MULTILINE)
        return int(match.group(1)) if match else 0

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        match = re.search(r"oom_kill (\d+)", _read(self.path / name, ""))
        return int(match.group(1)) if match else 0

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 {self.path}: memory.max={self.limit_bytes}, memory.swap.max=0"
        return (
            f"cgroup v1 {self.path}: memory.limit_in_bytes={self.limit_bytes}"
            f" (memory.memsw.limit_in_bytes equal: no swap)"
        )

    def remove(self) -> None:
        for pid in _read(self.path / "cgroup.procs", "").split():
            os.kill(int(pid), signal.SIGKILL)
        if self.version == 1 and (self.path / "memory.force_empty").exists():
            # Hand the charged page cache back to the parent so rmdir succeeds.
            with contextlib.suppress(OSError):
                (self.path / "memory.force_empty").write_text("0")
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def evict_from_page_cache(directory: Path) -> None:
    """Drop clean cached pages of every file under `directory` (POSIX_FADV_DONTNEED).

    A page is charged to the cgroup that first faults it in, so inputs already cached
    by an earlier run would be read for free inside the cgroup and hide its real need.
    """
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
