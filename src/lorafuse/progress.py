"""Progress of a long step: a tqdm bar on a terminal, a few plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("lorafuse.progress")


class Progress:
    """Counts bytes; draws a bar when stderr is a TTY, else logs about every 10%."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self._stream = stream or sys.stderr
        self._bar = None
        self._next_log = 0.1
        self._started = self._last_log = time.monotonic()

    def __enter__(self) -> Progress:
        if self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.label, unit="B", unit_scale=True,
                             file=self._stream, leave=False)
        return self

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.done / self.total >= self._next_log and (
            self.done >= self.total or time.monotonic() - self._last_log >= 2.0
        ):
            self._last_log = time.monotonic()
            log.info("%s: %d%% (%.0f MB, %.1f s)", self.label, 100 * self.done // self.total,
                     self.done / 1e6, time.monotonic() - self._started)
            while self._next_log <= self.done / self.total:
                self._next_log += 0.1

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
