"""Input shards read front to back on a background thread, hashed as read, a few pieces ahead."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lorafuse.errors import UserError

# Pieces up to this size share a few reusable buffers; a larger piece (a whole tensor that is
# merged in one go) gets the one large buffer, sized for the largest such piece.
SMALL_PIECE_BYTES = 8 * 1024 * 1024
SMALL_BUFFERS = 4  # what the reader may run ahead of the merge, in pieces
_POLL_S = 0.1
# O_DIRECT needs block-aligned addresses, sizes and offsets; 4096 suits 512-byte and 4K devices.
ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class StreamHashes(Protocol):
    """Where the sha256 of each file, taken while it was read, is reported."""

    def opened(self, path: Path) -> None: ...

    def hashed(self, path: Path, hexdigest: str) -> None: ...


@dataclass(frozen=True)
class PlannedFile:
    """A file read as `data_start` bytes (hashed only, e.g. a safetensors header) and then the
    consecutive pieces the consumer takes, in order; they must end exactly at the end of file."""

    path: Path
    data_start: int
    pieces: tuple[int, ...]


class _Buffer:
    """A reusable page-aligned buffer (O_DIRECT reads land in it), back in its pool once
    every holder has released it."""

    def __init__(self, size: int, pool: queue.SimpleQueue):
        self.data = mmap.mmap(-1, size + 2 * ALIGN)  # a piece plus its unaligned ends
        self._pool = pool
        self._holders = 0
        self._lock = threading.Lock()

    def hold(self, holders: int) -> None:
        self._holders = holders

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            free = self._holders == 0
        if free:
            self._pool.put(self)


class Piece:
    """Bytes `offset` .. `offset + len(view)` of the file at index `file`; the view is valid
    until `release()` (call it once, when nothing reads the bytes any more)."""

    __slots__ = ("_buffer", "file", "offset", "view")

    def __init__(self, file: int, offset: int, view: memoryview, buffer: _Buffer):
        self.file, self.offset, self.view, self._buffer = file, offset, view, buffer

    def release(self) -> None:
        self._buffer.release()


_END = object()


class ReadAhead:
    """Reads the planned files in order on one thread, while the consumer merges earlier
    pieces, and hashes every byte (sha256 per file) on another as it arrives.

    One read serves both the merge and its provenance: the bytes hashed are the bytes merged,
    and a cold input is read from the device once. Reads and sha256 release the GIL, so both
    threads run beside the merge's kernels. Memory stays bounded: the reader waits for a free
    buffer, and a buffer is free once the consumer released it and its hash was taken."""

    def __init__(self, files: list[PlannedFile], hashes: StreamHashes | None = None,
                 small_buffers: int = SMALL_BUFFERS):
        self._files = files
        self._hashes = hashes
        self._stop = threading.Event()
        self._ready: queue.Queue = queue.Queue()
        self._small: queue.SimpleQueue = queue.SimpleQueue()
        self._large: queue.SimpleQueue = queue.SimpleQueue()
        sizes = [n for f in files for n in f.pieces]
        small = max((n for n in sizes if n <= SMALL_PIECE_BYTES), default=0)
        large = max((n for n in sizes if n > SMALL_PIECE_BYTES), default=0)
        for _ in range(small_buffers if small else 0):
            self._small.put(_Buffer(small, self._small))
        if large:
            self._large.put(_Buffer(large, self._large))
        self._error: BaseException | None = None
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafuse-sha256")
        self._thread = threading.Thread(target=self._run, name="lorafuse-read", daemon=True)
        self._thread.start()

    # -- the reading thread

    def _run(self) -> None:
        try:
            for index, planned in enumerate(self._files):
                if not self._read_file(index, planned):
                    return
        except BaseException as exc:
            self._ready.put(exc)
        else:
            self._ready.put(_END)

    def _read_file(self, index: int, planned: PlannedFile) -> bool:
        hashes = self._hashes
        digest = hashlib.sha256() if hashes is not None else None
        if hashes is not None:
            hashes.opened(planned.path)
        with _InputFile(planned.path) as source:
            if planned.data_start:
                head = bytearray(planned.data_start)
                source.read_into(memoryview(head), 0)
                if digest is not None:
                    self._hashing.submit(self._update, digest, head, None)
            offset = planned.data_start
            for length in planned.pieces:
                buffer = self._take_buffer(length)
                if buffer is None:
                    return False  # stopped
                buffer.hold(2 if digest is not None else 1)
                try:
                    view = source.read_piece(buffer.data, offset, length)
                except BaseException:
                    buffer.hold(1)
                    buffer.release()
                    raise
                if digest is not None:
                    self._hashing.submit(self._update, digest, view, buffer)
                self._ready.put(Piece(index, offset, view, buffer))
                offset += length
            if source.size() != offset:
                raise _changed(planned.path, f"{source.size()} bytes, the header describes "
                               f"{offset}")
        if digest is not None:
            self._hashing.submit(self._finish, planned.path, digest)
        return True

    def _take_buffer(self, length: int) -> _Buffer | None:
        pool = self._small if length <= SMALL_PIECE_BYTES else self._large
        while not self._stop.is_set():
            try:
                return pool.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    # -- the hashing thread

    def _update(self, digest, data, buffer: _Buffer | None) -> None:
        try:
            if self._error is None:
                digest.update(data)
        except BaseException as exc:
            self._error = exc
        finally:
            if buffer is not None:
                buffer.release()

    def _finish(self, path: Path, digest) -> None:
        if self._error is not None:
            return
        try:
            self._hashes.hashed(path, digest.hexdigest())
        except BaseException as exc:
            self._error = exc

    # -- the consumer

    def take(self, file: int, offset: int, length: int) -> Piece:
        """The next piece, which must be bytes offset .. offset + length of file `file`."""
        item = self._ready.get()
        if isinstance(item, BaseException):
            self._ready.put(item)  # every later take raises it too
            raise item
        if item is _END:
            self._ready.put(item)
            raise RuntimeError("read past the planned pieces")
        if (item.file, item.offset, len(item.view)) != (file, offset, length):
            item.release()
            raise RuntimeError(f"pieces taken out of plan: expected file {file} bytes {offset}+"
                               f"{length}, read file {item.file} bytes {item.offset}+"
                               f"{len(item.view)}")
        if self._error is not None:
            item.release()
            raise self._error
        return item

    def finish(self) -> None:
        """Wait until every byte read is hashed and reported; raise what went wrong."""
        self._thread.join()
        self._hashing.shutdown(wait=True)
        if self._error is not None:
            raise self._error
        leftover = self._ready.get() if not self._ready.empty() else _END
        if isinstance(leftover, BaseException):
            raise leftover
        if leftover is not _END:
            leftover.release()
            raise RuntimeError("pieces were read but not taken")

    def close(self) -> None:
        """Stop reading (after a failure elsewhere) and wait for both threads."""
        self._stop.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(_POLL_S)
        self._drain()
        self._hashing.shutdown(wait=True)

    def _drain(self) -> None:
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Piece):
                item.release()


class _InputFile:
    """One input read with O_DIRECT, past the page cache, unless it is already cached.

    Filling the page cache with a large cold input is the most expensive part of reading it
    on a VM: a buffered read of 13.5 GB cost 19 s of system time beside the merge here, a
    direct read 0.9 s. A file whose pages are cached (read or written just before) is read
    from the cache instead; where O_DIRECT is refused, every read goes through the cache."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._direct = -1
        try:
            if _O_DIRECT and not self._cached():
                with contextlib.suppress(OSError):
                    self._direct = os.open(path, os.O_RDONLY | _O_DIRECT
                                           | getattr(os, "O_CLOEXEC", 0))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _InputFile:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _cached(self) -> bool:
        """Whether a few pages across the file are in the page cache. A miss starts a read of
        that page alone: read-ahead is off while probing."""
        size = self.size()
        if not _RWF_NOWAIT or not size:
            return False
        _advise(self._fd, "POSIX_FADV_RANDOM")
        try:
            probe = bytearray(1)
            for offset in sorted({0, size // 2, size - 1}):
                try:
                    if not os.preadv(self._fd, [probe], offset, _RWF_NOWAIT):
                        return False
                except OSError:  # EAGAIN: not cached; EOPNOTSUPP: cannot tell
                    return False
            return True
        finally:
            _advise(self._fd, "POSIX_FADV_SEQUENTIAL")

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill `view` with the bytes at `offset` (through the page cache)."""
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if not got:
                raise UserError(f"{self.path}: file ended early (truncated while reading)")
            done += got

    def read_piece(self, buffer: mmap.mmap, offset: int, length: int) -> memoryview:
        """Bytes offset .. offset + length, read into `buffer`; the view of them."""
        start = offset - offset % ALIGN
        whole = memoryview(buffer)
        view = whole[offset - start: offset - start + length]
        if self._direct >= 0 and length:
            end = -(-(offset + length) // ALIGN) * ALIGN
            try:
                got = _read_all(self._direct, whole[: end - start], start)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                os.close(self._direct)  # O_DIRECT refused after all: read through the cache
                self._direct = -1
            else:
                if got < offset + length - start:
                    raise UserError(f"{self.path}: file ended early (truncated while reading)")
                return view
        self.read_into(view, offset)
        return view

    def close(self) -> None:
        for fd in (self._direct, self._fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._direct = self._fd = -1


def _advise(fd: int, advice: str) -> None:
    if hasattr(os, "posix_fadvise") and hasattr(os, advice):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, getattr(os, advice))


def _read_all(fd: int, view: memoryview, offset: int) -> int:
    """Read until `view` is full or the file ends; the bytes read."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            break
        done += got
    return done


def _changed(path: Path, why: str) -> UserError:
    return UserError(f"{path}: changed while the merge was reading it ({why}); run it again")
