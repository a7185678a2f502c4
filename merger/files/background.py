"""Background work for the streaming merge: ordered I/O on one thread, row blocks on a pool."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

# File writes and torch kernels release the GIL, so these threads run in parallel.


class OrderedIO:
    """File writes on one background thread, run in submission order (writing a large model
    takes about as long as the merge).

    A buffer handed to tasks is 'fenced' until they ran; `wait(buffer)` blocks until the
    buffer may be overwritten. The first failure (e.g. a full disk) is raised by the next
    `submit`, `wait` or `drain`, and later tasks are skipped."""

    def __init__(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafuse-write")
        self._fences: dict[int, tuple[object, list[Future]]] = {}
        self._last: Future | None = None
        self._error: BaseException | None = None

    def submit(self, function: Callable, *args, fence: object | None = None) -> None:
        self._raise_error()
        future = self._writer.submit(self._run, function, *args)
        self._last = future
        if fence is not None:
            entry = self._fences.setdefault(id(fence), (fence, []))
            entry[1].append(future)

    def _run(self, function: Callable, *args) -> None:
        if self._error is not None:
            return
        try:
            function(*args)
        except BaseException as exc:
            self._error = exc

    def wait(self, fence: object) -> None:
        entry = self._fences.pop(id(fence), None)
        for future in entry[1] if entry else ():
            future.result()
        self._raise_error()

    def drain(self) -> None:
        if self._last is not None:
            self._last.result()
        self._fences.clear()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._fences.clear()


def worker_count() -> int:
    """CPUs this process may use, capped: the row blocks are memory-bound beyond a few."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


class RowPool:
    """Runs a function over disjoint row ranges of one tensor on several threads."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorafuse-rows")

    def map_rows(self, rows: int, step: int, function: Callable[[int, int, int], object]) -> list:
        """function(worker_index, start, stop) for about equal ranges aligned to `step`."""
        blocks = -(-rows // step)
        parts = min(self.workers, blocks)
        bounds = [min(rows, (blocks * i // parts) * step) for i in range(parts + 1)]
        if parts == 1:
            return [function(0, 0, rows)]
        futures = [self._executor.submit(function, i, bounds[i], bounds[i + 1])
                   for i in range(parts)]
        return [future.result() for future in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: importing torch and merging make few cycles, and
    the collector would walk torch's many long-lived objects again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
