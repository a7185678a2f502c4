"""sha256 of a merge's input files on a background thread, started before the merge needs them."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from lorafuse.errors import UserError

_CHUNK = 2 * 1024 * 1024


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten or replaced: inode, device, size, mtime."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns


class FileHasher:
    """Hashes files in the given order on one thread (hashlib and reads release the GIL, so
    this runs beside imports and the merge). `digest(path)` waits for that file's hash and
    checks that the file was not changed since hashing began (the merge reads it separately)."""

    def __init__(self, paths: list[Path]) -> None:
        self._order = [Path(p).absolute() for p in paths]
        self._results: dict[Path, tuple[tuple, str] | BaseException] = {}
        self._done = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lorafuse-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        for path in self._order:
            try:
                result: tuple[tuple, str] | BaseException = self._hash(path, buffer, view)
            except BaseException as exc:  # reported to whoever asks for this file
                result = exc
            with self._done:
                self._results[path] = result
                self._done.notify_all()
                if self._stop:
                    return

    def _hash(self, path: Path, buffer: bytearray, view: memoryview) -> tuple[tuple, str]:
        digest = hashlib.sha256()
        with path.open("rb", buffering=0) as handle:
            before = _identity(path)
            while not self._stop and (got := handle.readinto(buffer)):
                digest.update(view[:got])
        return before, digest.hexdigest()

    def digest(self, path: Path) -> str:
        """The file's sha256; hashed now if it was not in the list."""
        path = Path(path).absolute()
        if path not in self._order:
            return sha256_now(path)
        with self._done:
            self._done.wait_for(lambda: path in self._results)
            result = self._results[path]
        if isinstance(result, BaseException):
            raise result
        identity, hexdigest = result
        try:
            changed = _identity(path) != identity
        except OSError:
            changed = True
        if changed:
            raise UserError(f"{path}: changed while the merge was reading it; run it again")
        return hexdigest

    def close(self) -> None:
        """Stop hashing (the result of a file cut short is never handed out) and wait."""
        with self._done:
            self._stop = True
        self._thread.join()


def sha256_now(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while got := handle.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()


def merge_inputs(base: Path, adapters: list[Path]) -> list[Path]:
    """The large files a merge reads, in the order it needs their hashes: adapter weights
    (checked up front), then the base shards (in file-name order, as they are streamed)."""
    files = [Path(a) / "adapter_model.safetensors" for a in adapters]
    files = [f for f in files if f.is_file()]
    return files + sorted(Path(base).glob("*.safetensors"))
