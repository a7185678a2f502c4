"""sha256 of a merge's input files in a helper process, started before the merge needs them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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
    """Hashes files in the given order in a helper process. `digest(path)` waits for that
    file's hash and checks that the file was not changed since hashing began (the merge
    reads it separately); files not in the list are hashed on the spot."""

    def __init__(self, paths: list[Path]) -> None:
        self._order = [Path(p).absolute() for p in paths]
        self._identities = {p: _identity(p) for p in self._order}
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

    def digest(self, path: Path) -> str:
        """The file's sha256 (hex)."""
        path = Path(path).absolute()
        if path not in self._identities:
            return sha256_file(path)
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



def merge_inputs(base: Path, adapters: list[Path]) -> list[Path]:
    """The large files a merge reads, in the order it needs their hashes: adapter weights
    (checked up front), then the base shards (in file-name order, as they are streamed)."""
    files = [Path(a) / "adapter_model.safetensors" for a in adapters]
    files = [f for f in files if f.is_file()]
    return files + sorted(Path(base).glob("*.safetensors"))
