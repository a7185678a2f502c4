"""sha256 of a merge's input files: adapters in a helper process, base shards as they stream."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lorafuse.errors import UserError
from lorafuse.merger.engine.provenance import sha256_file

_CHUNK = 4 * 1024 * 1024
# The helper: hashes the files named on its command line in order, one result line each
# ("ok HEX" or "error ERRNO MESSAGE"), flushed as soon as a file is done. A separate process
# hashes at full speed beside the merge: a thread would queue for the GIL behind the import
# of torch and the merge's own Python code between every chunk.
_HELPER = """
import hashlib, sys
buffer = bytearray(CHUNK)
view = memoryview(buffer)
for path in sys.argv[1:]:
    try:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while got := handle.readinto(buffer):
                digest.update(view[:got])
        line = "ok " + digest.hexdigest()
    except OSError as exc:
        line = "error " + str(exc.errno or 0) + " " + str(exc.strerror)
    print(line, flush=True)
""".replace("CHUNK", str(_CHUNK))


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is rewritten or replaced: inode, device, size, mtime."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns


class FileHasher:
    """Hashes `paths` in order in a helper process; `streamed` files are hashed by the merge
    while it reads them (ReadAhead reports to `opened` and `hashed`), so that a large base is
    read once. `digest(path)` waits for a helper's hash, or returns the streamed one, and
    checks that the file was not changed since hashing began; files hashed neither way are
    hashed on the spot."""

    def __init__(self, paths: Sequence[Path], streamed: Sequence[Path] = ()) -> None:
        self._order = [Path(p).absolute() for p in paths]
        self._identities = {p: _identity(p) for p in self._order}
        self._streamed = {Path(p).absolute() for p in streamed} - set(self._order)
        self._identities.update({p: _identity(p) for p in self._streamed})
        self._results: dict[Path, str] = {}
        self._done = threading.Condition()
        self._finished = False
        self._process: subprocess.Popen | None = None
        if self._order and sys.executable:
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _HELPER, *map(str, self._order)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            except OSError:
                self._process = None
        self._thread = threading.Thread(target=self._collect, name="lorafuse-sha256",
                                        daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            if self._process is not None:
                for path, line in zip(self._order, self._process.stdout, strict=False):
                    with self._done:
                        self._results[path] = line.strip()
                        self._done.notify_all()
        finally:
            with self._done:
                self._finished = True
                self._done.notify_all()

    def opened(self, path: Path) -> None:
        """A stream starts reading `path`: changes are checked from now if not from earlier."""
        path = Path(path).absolute()
        with self._done:
            if path not in self._identities:
                self._identities[path] = _identity(path)
                self._streamed.add(path)

    def hashed(self, path: Path, hexdigest: str) -> None:
        """The sha256 of every byte of `path`, taken by the stream that read it."""
        path = Path(path).absolute()
        if _identity(path) != self._identities.get(path):
            raise UserError(f"{path}: changed while the merge was reading it; run it again")
        with self._done:
            self._results[path] = "ok " + hexdigest
            self._done.notify_all()

    def digest(self, path: Path) -> str:
        """The file's sha256 (hex)."""
        path = Path(path).absolute()
        if path not in self._identities:
            return sha256_file(path)
        if path in self._streamed:
            with self._done:
                result = self._results.get(path)
            hexdigest = result[3:] if result else sha256_file(path)  # not streamed: now
            if _identity(path) != self._identities[path]:
                raise UserError(f"{path}: changed while the merge was reading it; run it again")
            return hexdigest
        with self._done:
            self._done.wait_for(lambda: path in self._results or self._finished)
            result = self._results.get(path)
        if result is None or not result.startswith(("ok ", "error ")):
            hexdigest = sha256_file(path)  # the helper did not run or stopped early
        elif result.startswith("error "):
            _, number, message = result.split(" ", 2)
            raise OSError(int(number), message, str(path))
        else:
            hexdigest = result[3:]
        if _identity(path) != self._identities[path]:
            raise UserError(f"{path}: changed while the merge was reading it; run it again")
        return hexdigest

    def close(self) -> None:
        """Stop the helper if it is still hashing, and wait for it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
        self._thread.join()
        if self._process is not None:
            self._process.stdout.close()


def merge_inputs(base: Path, adapters: list[Path]) -> tuple[list[Path], list[Path]]:
    """The large files a merge reads: the adapter weights, hashed by the helper at once (their
    hashes are checked up front, and the merge reads them in no fixed order), and the base
    shards, hashed while the merge streams them: `FileHasher(*merge_inputs(...))`."""
    files = [Path(a) / "adapter_model.safetensors" for a in adapters]
    return [f for f in files if f.is_file()], sorted(Path(base).glob("*.safetensors"))
