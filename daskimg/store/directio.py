"""Store: files written once, front to back, past the page cache (``O_DIRECT``).

A store's shards are written once and not read back while it is built. Written through
the page cache, each byte is first copied into a fresh cache page by the kernel: on this
project's 2-core VMs that copy was the largest cost of ingest after decoding (18-27% of
the process's CPU, ``copy_folio_from_iter_atomic``; 0.2-3.5 s of CPU per 600 MB, as the
guest's memory was fresh or reused), and it competes with the decoding threads for the
same cores. :class:`AppendFile` gathers the bytes in a page-aligned buffer it reuses and
hands whole aligned blocks to the disk with ``O_DIRECT`` (0.05 s of CPU per 600 MB here;
the disk, not the CPU, copies them).

A large piece whose memory lines up with its place in the file (its address and its file
offset equal modulo :data:`ALIGN`) is not copied at all: the buffer is completed up to the
piece's first whole block and written, the piece's whole blocks go to the disk straight
from its own memory, and only its last partial block is copied. An ingest lines its
chunks up so (:mod:`daskimg.store.procpool` places each in its slot at the residue its
place in the shard will have; :class:`~daskimg.store.zipformat.ZipAppender` pads a
member's local header so its data starts at the residue of its first large piece): the
copy into the buffer was the largest cost left in the process assembling a zip (3.7% of
an ingest's CPU). Where the disk refuses a direct write from that memory (``EINVAL``:
it wants another alignment), pieces are copied as before.

Where ``O_DIRECT`` is refused (tmpfs, some network file systems, macOS) or a direct
write fails with ``EINVAL``, the file is written through the page cache as before; the
bytes are the same either way. The last, partial block is written through the page
cache at :meth:`AppendFile.close`. Durability is unchanged: the caller fsyncs before it
publishes. A consequence: a store just written is not in the page cache, so its first
read comes from disk (a library larger than memory is read from disk anyway).

The file is append-only and not seekable (``seek`` raises :class:`io.UnsupportedOperation`,
an ``OSError``): :mod:`zipfile` then writes each member's sizes and CRC after its data (a
data descriptor, standard zip) instead of going back to its header.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import threading
from typing import Any

import numpy as np

from ..interrupts import held_ctrl_c

__all__ = ["ALIGN", "AppendFile", "address", "fsync_path", "write_whole"]

#: bytes gathered before a direct write (a multiple of any block size)
_BUFFER = 8 * 2**20
#: the alignment O_DIRECT needs here, in the file and in memory: the logical block size
#: and the device's memory alignment, at most a page
ALIGN = 4096
_ALIGN = ALIGN
#: pieces at least this large are written from their own memory when it lines up
IN_PLACE_FROM = 2**20


def address(data: Any) -> int:
    """The memory address of the first byte of ``data`` (a buffer)."""
    return int(np.frombuffer(data, np.uint8).__array_interface__["data"][0])


class AppendFile(io.RawIOBase):
    """A new file at ``path``, written front to back (see the module notes)."""

    def __init__(self, path: str | os.PathLike[str], *, direct: bool = True) -> None:
        super().__init__()
        self.name = os.fspath(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        odirect = getattr(os, "O_DIRECT", 0) if direct else 0
        self._fd = -1
        self._buf: mmap.mmap | None = None  # what close() looks at, should opening fail
        self._filled = 0
        # a Ctrl-C between os.open and the assignment lost the descriptor (the file stayed
        # open, deleted, for the session): held until the object is whole, which close()
        # (or its collection) then closes
        with held_ctrl_c():
            if odirect:
                try:
                    self._fd = os.open(self.name, flags | odirect, 0o644)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    odirect = 0  # the file system refuses O_DIRECT: through the page cache
            if self._fd < 0:
                self._fd = os.open(self.name, flags, 0o644)
            self._direct = bool(odirect)
            self._buf = _take_buffer() if self._direct else None
            self._in_place = self._direct  # pieces lined up are written from their memory
            self._filled = 0  # bytes of _buf not yet written
            self._pos = 0  # the file's length so far, written or buffered

    @property
    def direct(self) -> bool:
        """Whether whole blocks still go to the disk past the page cache."""
        return self._direct

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation(f"{self.name}: written front to back, not seekable")

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        done = 0
        if self._in_place and n >= IN_PLACE_FROM and self._direct:
            done = self._write_in_place(view)
        while done < n and self._direct:
            take = min(n - done, _BUFFER - self._filled)
            self._buf[self._filled : self._filled + take] = view[done : done + take]  # type: ignore[index]
            self._filled += take
            done += take
            if self._filled == _BUFFER:
                self._write_buffer()
        if done < n:
            _write_all(self._fd, view[done:])
        self._pos += n
        return n

    def _write_in_place(self, view: memoryview) -> int:
        """Write ``view``'s whole blocks from its own memory when its address lines up with
        its place in the file (the bytes before its first whole block completing the
        buffer's last block); return how many of its bytes are written (0: none, it does
        not line up). Its last partial block is left to the caller."""
        assert self._buf is not None
        head = -self._pos % _ALIGN  # the file's bytes to the next block boundary
        if (address(view) + head) % _ALIGN or view.nbytes - head < _ALIGN:
            return 0
        self._buf[self._filled : self._filled + head] = view[:head]
        self._filled += head
        self._write_buffer()  # whole blocks only: the buffer is empty after it
        if not self._direct or self._filled:
            return head  # the file went to the page cache: the caller writes the rest
        whole = (view.nbytes - head) // _ALIGN * _ALIGN
        done = 0
        while done < whole:
            try:
                written = os.write(self._fd, view[head + done : head + whole])
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._in_place = False  # the disk wants other memory: copied from now on
                break
            done += written
            if written <= 0 or written % _ALIGN:  # short, off a block: the page cache
                self._buffered()
                break
        return head + done

    def _write_buffer(self) -> None:
        """Write the buffer's whole blocks past the page cache and keep the rest; once
        direct writes fail, write all of it through the page cache."""
        assert self._buf is not None
        whole = self._filled - self._filled % _ALIGN
        with memoryview(self._buf) as view:
            written = 0
            if self._direct and whole:
                try:
                    written = os.write(self._fd, view[:whole])
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                if written < whole:  # refused or short: the page cache from here on
                    self._buffered()
            if not self._direct:
                _write_all(self._fd, view[written : self._filled])
                self._filled = 0
                return
        self._buf.move(0, written, self._filled - written)
        self._filled -= written

    def _buffered(self) -> None:
        """Write through the page cache from here on (clear ``O_DIRECT`` on the descriptor)."""
        if self._direct:
            import fcntl

            fl = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fl & ~os.O_DIRECT)
            self._direct = False

    def flush(self) -> None:
        """Nothing: the partial block is written by :meth:`close` (a reader of a file being
        built sees whole blocks only; the store is not published before it is closed)."""

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._buf is not None and self._fd >= 0 and self._filled:
                self._buffered()  # the last, partial block goes through the page cache
                self._write_buffer()
        finally:
            if self._buf is not None:
                _give_back(self._buf)
                self._buf = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            super().close()


# each thread keeps one buffer for the next file it writes (a writer thread writes shard
# after shard): fresh pages for every file would cost the kernel's zeroing again
_spare = threading.local()


def _take_buffer() -> mmap.mmap:
    buf = getattr(_spare, "buf", None)
    if buf is None:
        return mmap.mmap(-1, _BUFFER)
    _spare.buf = None
    return buf


def _give_back(buf: mmap.mmap) -> None:
    if getattr(_spare, "buf", None) is None:
        _spare.buf = buf
        return
    with contextlib.suppress(BufferError):  # a view an error's traceback holds: freed with it
        buf.close()


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < view.nbytes:
        done += os.write(fd, view[done:])


def write_whole(path: str | os.PathLike[str], pieces: list[Any], *, sync: bool = False) -> None:
    """Write a new file made of ``pieces`` (buffers, in order) past the page cache;
    ``sync``: fsynced before this returns."""
    with AppendFile(path) as fh:
        for piece in pieces:
            fh.write(piece)
    if sync:
        fsync_path(path)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder (a folder's entries: renames and new files in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
