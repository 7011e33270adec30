"""Write back: rows stored in the order they arrive (``order="store"``), shard by shard.

Each array being written is a :class:`Column`: rows are copied into a buffer the size of
one shard; when it fills, the whole shard goes to a :class:`ShardPool`, which compresses
and writes it in background threads (at most ``threads`` in flight, so compression
overlaps the caller's work, e.g. the model's next forward pass), and the rows go on into
a fresh or reused buffer. In memory are the unfinished shard per array and at most
``threads`` shards being written. A column also does its part of a checkpoint (fsync
the shards written since the previous one; save the new rows of the unfinished shard to
``tail-<array>-<shard>.bin``: raw rows, or for text length-prefixed UTF-8 records),
rewinds to a batch's start when the batch fails, restores a checkpoint's state on resume
and writes the last, partial shard on close. :class:`Appended` holds the columns of one
writer and appends a batch to all of them, all or nothing.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import zarr

from ..errors import DaskImgError
from ..store.format import CHUNK_BYTES
from ..store.location import fsync_path, remove_path
from .checks import TEXT

__all__ = [
    "SHARD_BYTES",
    "SHARD_CHUNKS_MAX",
    "Appended",
    "Column",
    "ShardPool",
    "decode_records",
    "encode_records",
    "pwrite_all",
]

#: default shard size per array: about this many bytes (whole chunks, at least one) ...
SHARD_BYTES = CHUNK_BYTES
#: ... and at most this many chunks (each costs 16 bytes of shard index)
SHARD_CHUNKS_MAX = 64


class Column:
    """One array being written: whole shards go to zarr, the unfinished one stays in ``buf``."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        shard_len: int,
        arr: zarr.Array,
        staging: Path,
        pool: ShardPool,
    ) -> None:
        self.name = name
        self.shape = shape
        self.shard_len = shard_len
        self.arr: Any = arr
        self.staging = staging
        self.dir = self.staging / "store" / name
        self.pool = pool
        self.buf = np.empty((shard_len, *shape), dtype)
        self.spare: list[np.ndarray] = []  # buffers whose shard is written, to reuse
        self.text = dtype == TEXT
        self.row_bytes = int(np.prod(shape)) * dtype.itemsize
        self.shards = 0  # whole shards written
        self.fill = 0  # rows in buf
        self.saved = (0, 0)  # (shards, fill) at the last checkpoint
        self.saved_bytes = 0  # bytes of the tail file at the last checkpoint
        self.tail_bytes = 0  # bytes of the tail file now (after sync)
        self.saved_crc = 0  # crc32c of the tail file's bytes at the last checkpoint ...
        self.tail_crc = 0  # ... and now (after sync): resume checks the rows it reloads
        self.unsynced: set[int] = set()

    def shard_path(self, s: int) -> Path:
        return self.dir.joinpath("c", str(s), *["0"] * len(self.shape))

    def tail_path(self, s: int) -> Path:
        return self.staging / f"tail-{self.name}-{s}.bin"

    def extend(self, data: np.ndarray) -> None:
        # always copied: the caller may reuse its array (or tensor) once append returns
        i, n, size = 0, len(data), self.shard_len
        while i < n:
            k = min(size - self.fill, n - i)
            self.buf[self.fill : self.fill + k] = data[i : i + k]
            self.fill += k
            i += k
            if self.fill == size:
                self._write_shard()

    def _write_shard(self) -> None:
        s, size, full = self.shards, self.shard_len, self.buf
        if self.arr.shape[0] < (s + 1) * size:
            self.arr.resize(((s + 1) * size, *self.shape))  # metadata only: grows, deletes nothing

        def write() -> None:
            self.arr[s * size : (s + 1) * size] = full
            self.spare.append(full)

        self.pool.run(write)
        self.buf = self.spare.pop() if self.spare else np.empty_like(full)
        self.shards += 1
        self.fill = 0
        self.unsynced.add(s)

    def rewind(self, shards: int, fill: int) -> None:
        if self.shards != shards and fill:
            # the unfinished rows went into shard `shards`, which was written whole
            s = shards * self.shard_len
            self.buf[:fill] = self.arr[s : s + fill]
        self.unsynced = {s for s in self.unsynced if s < shards}
        self.shards, self.fill = shards, fill

    def sync(self) -> None:
        """fsync the shards written since the last checkpoint and save the unfinished rows."""
        for s in sorted(self.unsynced):
            fsync_path(self.shard_path(s))
            for parent in self.shard_path(s).parents:
                fsync_path(str(parent))
                if parent == self.dir:
                    break
        self.tail_bytes = self.tail_crc = 0
        if self.fill:
            same = self.saved[0] == self.shards
            start = self.saved[1] if same else 0
            rows = self.buf[start : self.fill]
            if self.text:
                offset, data = (self.saved_bytes if same else 0), encode_records(rows)
            else:
                offset, data = start * self.row_bytes, rows.tobytes()
            fd = os.open(self.tail_path(self.shards), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                pwrite_all(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.tail_bytes = offset + len(data)
            # the file's bytes before `offset` are the last checkpoint's (same shard)
            self.tail_crc = crc32c.crc32c(data, self.saved_crc if offset else 0)

    def checkpointed(self) -> None:
        for s in range(self.saved[0], self.shards):
            self.tail_path(s).unlink(missing_ok=True)
        self.saved = (self.shards, self.fill)
        self.saved_bytes = self.tail_bytes
        self.saved_crc = self.tail_crc
        self.unsynced.clear()

    def drop_shards(self, first: int) -> None:
        """Delete shard ``first`` and all after it (and zarr's temporary files)."""
        chunk_dir = self.dir / "c"
        for entry in chunk_dir.iterdir() if chunk_dir.is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) >= first:
                remove_path(str(entry))

    def restore(
        self, shards: int, fill: int, tail_bytes: int | None = None, tail_crc: int | None = None
    ) -> None:
        """Back to a checkpoint: drop shards written after it, reload the unfinished rows
        (checked against their crc32c when the checkpoint recorded it)."""
        self.drop_shards(shards)
        want = fill * self.row_bytes if tail_bytes is None else tail_bytes
        crc = 0
        if fill:
            data = self.tail_path(shards).read_bytes()[:want]
            try:
                if len(data) != want:
                    raise ValueError("short")
                crc = crc32c.crc32c(data)
                if tail_crc is not None and crc != tail_crc:
                    raise ValueError("checksum")
                if self.text:
                    self.buf[:fill] = decode_records(data, fill)
                else:
                    rows = np.frombuffer(data, self.buf.dtype).reshape(fill, *self.shape)
                    self.buf[:fill] = rows
            except ValueError as e:
                why = "do not match their checksum" if str(e) == "checksum" else "are truncated"
                raise DaskImgError(
                    f"cannot resume {str(self.staging)!r}: the saved rows of {self.name!r} "
                    f"({self.tail_path(shards).name}) {why}: the file is damaged. Pass "
                    "resume=False to discard the write and start over"
                ) from None
        self.shards, self.fill = shards, fill
        self.saved = (shards, fill)
        self.saved_bytes = self.tail_bytes = want if fill else 0
        self.saved_crc = self.tail_crc = crc

    def finish(self, n: int) -> None:
        """Write the unfinished shard and size the array to ``n`` rows exactly."""
        self.drop_shards(self.shards)  # any left by a batch that was undone
        self.arr.resize((n, *self.shape))
        if self.fill:
            self.arr[self.shards * self.shard_len : n] = self.buf[: self.fill]


class Appended:
    """The columns of a writer whose rows are stored in the order appended: a batch goes to
    every column, all or nothing."""

    def __init__(self, columns: Mapping[str, Column], pool: ShardPool, rows: int) -> None:
        self.columns = dict(columns)
        self.pool = pool
        self.rows = rows
        #: why rows since the last checkpoint are lost (a failed background write), or None
        self.lost: str | None = None

    @property
    def step(self) -> int:
        """Rows per piece when a dask batch is computed in pieces."""
        return max(c.shard_len for c in self.columns.values())

    def add(self, pieces: Iterable[Mapping[str, np.ndarray]]) -> None:
        """Append the pieces of one batch; if any fails, undo them all and re-raise.

        If they cannot be undone (a shard of this or an earlier batch failed in the
        background: its rows are lost), :attr:`lost` says why and the writer must stop.
        """
        marks = self.rows, {n: (c.shards, c.fill) for n, c in self.columns.items()}
        try:
            for piece in pieces:
                n = 0
                for name, col in self.columns.items():
                    col.extend(piece[name])
                    n = len(piece[name])
                self.rows += n
        except BaseException:
            self._undo(marks)
            raise

    def _undo(self, marks: tuple[int, dict[str, tuple[int, int]]]) -> None:
        try:
            self.pool.drain()
            if self.pool.failed is not None:
                raise self.pool.failed
            for name, col in self.columns.items():
                col.rewind(*marks[1][name])
            self.rows = marks[0]
        except BaseException as e:
            self.lost = f"writing failed ({e!r})"

    def state(self) -> dict[str, list[int]]:
        """Each column's ``[shards, fill, tail bytes, tail crc32c]`` (after :meth:`Column.sync`)."""
        return {n: [c.shards, c.fill, c.tail_bytes, c.tail_crc] for n, c in self.columns.items()}


class ShardPool:
    """Runs shard writes in background threads, at most ``threads`` at a time."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(threads, "daskimg-writer") if threads else None
        self.limit = max(1, threads)
        self.pending: deque[Future[None]] = deque()
        #: the first error of a background write: the rows it held are lost
        self.failed: BaseException | None = None

    def run(self, fn: Callable[[], None]) -> None:
        if self.executor is None:
            fn()  # a failure here leaves the shard's rows in their buffer: undoable
            return
        while len(self.pending) >= self.limit:
            self._wait_oldest()
        self.pending.append(self.executor.submit(fn))

    def drain(self) -> None:
        """Wait for every write; raise the first error."""
        while self.pending:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future = self.pending[0]
        try:
            future.result()
        except BaseException as e:
            if future.done():  # the write failed (not an interrupt while waiting)
                self.pending.popleft()
                self.failed = self.failed or e
            raise
        self.pending.popleft()

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def encode_records(strings: Iterable[str]) -> bytes:
    """Strings as length-prefixed UTF-8 records (a little-endian uint32, then the bytes)."""
    out = bytearray()
    for x in strings:
        raw = x.encode("utf-8")
        out += struct.pack("<I", len(raw))
        out += raw
    return bytes(out)


def decode_records(data: bytes, count: int) -> np.ndarray:
    """``count`` strings from :func:`encode_records`'s bytes (``ValueError`` if they do not fit)."""
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(data):
            raise ValueError("truncated records")
        (k,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + k > len(data):
            raise ValueError("truncated records")
        out[i] = data[pos + 4 : pos + 4 + k].decode("utf-8")
        pos += 4 + k
    if pos != len(data):
        raise ValueError("trailing bytes")
    return out


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less, e.g. past 2 GiB)."""
    view = memoryview(data).cast("B")
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
