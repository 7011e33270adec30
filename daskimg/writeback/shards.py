"""Write back: the per-array shard buffers behind :class:`daskimg.writer.ArrayWriter`.
Each array being written is a :class:`Column`: rows are copied into a buffer the size of
one shard; when it fills, the whole shard goes to a :class:`ShardPool`, which compresses
and writes it in background threads (at most ``threads`` in flight, so compression
overlaps the caller's work, e.g. the model's next forward pass), and the rows go on into
a fresh or reused buffer. In memory are the unfinished shard per array and at most
``threads`` shards being written. A column also does its part of a checkpoint (fsync
the shards written since the previous one; save the new rows of the unfinished shard to
``tail-<array>-<shard>.bin``), rewinds to a batch's start when the batch fails, restores
a checkpoint's state on resume and writes the last, partial shard on close.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import DaskImgError
from ..store.format import CHUNK_BYTES
from ..store.location import fsync_path, remove_path

__all__ = ["SHARD_BYTES", "SHARD_CHUNKS_MAX", "Column", "ShardPool"]

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
        self.row_bytes = int(np.prod(shape)) * dtype.itemsize
        self.shards = 0  # whole shards written
        self.fill = 0  # rows in buf
        self.saved = (0, 0)  # (shards, fill) at the last checkpoint
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
        if self.fill:
            start = self.saved[1] if self.saved[0] == self.shards else 0
            fd = os.open(self.tail_path(self.shards), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, self.buf[start : self.fill].tobytes(), start * self.row_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)

    def checkpointed(self) -> None:
        for s in range(self.saved[0], self.shards):
            self.tail_path(s).unlink(missing_ok=True)
        self.saved = (self.shards, self.fill)
        self.unsynced.clear()

    def drop_shards(self, first: int) -> None:
        """Delete shard ``first`` and all after it (and zarr's temporary files)."""
        chunk_dir = self.dir / "c"
        for entry in chunk_dir.iterdir() if chunk_dir.is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) >= first:
                remove_path(str(entry))

    def restore(self, shards: int, fill: int) -> None:
        """Back to a checkpoint: drop shards written after it, reload the unfinished rows."""
        self.drop_shards(shards)
        if fill:
            want = fill * self.row_bytes
            data = self.tail_path(shards).read_bytes()[:want]
            if len(data) != want:
                raise DaskImgError(
                    f"cannot resume {str(self.staging)!r}: the saved rows of {self.name!r} are "
                    "truncated; pass resume=False to start over"
                )
            self.buf[:fill] = np.frombuffer(data, self.buf.dtype).reshape(fill, *self.shape)
        self.shards, self.fill = shards, fill
        self.saved = (shards, fill)

    def finish(self, n: int) -> None:
        """Write the unfinished shard and size the array to ``n`` rows exactly."""
        self.drop_shards(self.shards)  # any left by a batch that was undone
        self.arr.resize((n, *self.shape))
        if self.fill:
            self.arr[self.shards * self.shard_len : n] = self.buf[: self.fill]


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
