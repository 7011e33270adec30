"""Write back: rows placed by store index (``order="index"``), in any order, in bounded memory.

When the number of samples ``N`` is known (``mode="a"``: the store's; ``mode="w"`` with
``num_samples=``), every batch says which samples its rows are (``append(..., index=)``),
and rows may arrive in any order — DataLoader workers interleaving batches, say. Each
array being written is a :class:`PlacedColumn` with a staging file of ``N`` rows in
``<path>.partial/``: ``rows-<array>.bin`` (raw rows; for text, an ``(offset, length)``
pair per row into the append-only ``text-<array>.bin`` of UTF-8 bytes) and ``crc-<array>.bin``,
the crc32c of each row's bytes (of its UTF-8 for text), checked when the row is read back
into a shard, so a staging file damaged between a kill and the resume is named, never
published. Rows are written
there with ``pwrite`` (nothing is mapped, so the memory in use does not grow with ``N``
or with how scattered the rows are). A bitmap in memory (one byte per sample) says
which samples have their row; an index written twice, or out of range, is refused.

When every sample of a shard has its row, the shard is read back from the staging file,
compressed and written to the store in the background (:class:`~.shards.ShardPool`), so
compression overlaps the model's work and :meth:`Placed.finish` has little left to do. A
checkpoint fsyncs the staging files and the shards written since the previous one, then
saves the bitmap to ``filled-<k>.bin``; ``writer.json`` naming it is the durable point.
Resuming reloads that bitmap: rows written after it are ignored (their samples count as
missing), shards of samples not all covered by it are deleted, and the shards it covers
must be on disk (they were written and fsynced before it; a missing one, or one that
does not read back as its staged rows, is rewritten).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import zarr

from ..errors import DaskImgError
from ..store.location import fsync_path, remove_path
from .checks import PADDED_REPEATS, TEXT, check_range
from .shards import ShardPool, pwrite_all

__all__ = ["Placed", "PlacedColumn"]

logger = logging.getLogger("daskimg")


class PlacedColumn:
    """One array whose rows are placed by index into ``rows-<name>.bin`` (and ``text-<name>.bin``)."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        shard_len: int,
        arr: zarr.Array,
        staging: Path,
        num_samples: int,
        checked: bool = True,
    ) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.shard_len = shard_len
        self.arr: Any = arr
        self.n = num_samples
        self.text = dtype == TEXT
        self.row_bytes = 16 if self.text else int(np.prod(shape)) * dtype.itemsize
        self.dir = staging / "store" / name
        self.rows_path = staging / f"rows-{name}.bin"
        self.text_path = staging / f"text-{name}.bin"
        self.num_shards = -(-num_samples // shard_len)
        self.written = np.zeros(self.num_shards, dtype=bool)  # shards in the store
        self.unsynced: set[int] = set()
        self.text_bytes = 0  # end of the text file
        self.fd = os.open(self.rows_path, os.O_RDWR | os.O_CREAT, 0o644)
        self.text_fd = os.open(self.text_path, os.O_RDWR | os.O_CREAT, 0o644) if self.text else None
        #: each row's crc32c (a staging folder from before version 3 has none: unchecked)
        self.crc_path = staging / f"crc-{name}.bin"
        self.crc_fd = os.open(self.crc_path, os.O_RDWR | os.O_CREAT, 0o644) if checked else None

    def create(self) -> None:
        """Size the new staging files: ``N`` rows (sparse: disk is used as rows arrive)."""
        os.ftruncate(self.fd, self.n * self.row_bytes)
        if self.crc_fd is not None:
            os.ftruncate(self.crc_fd, self.n * 4)

    def reopen(self, text_bytes: int) -> None:
        """Resume: check the staging file's size; cut the text file to its checkpointed end."""
        # (a file deleted since the checkpoint is there again, empty: opened with O_CREAT)
        checks = [(self.rows_path, self.fd, self.n * self.row_bytes, "")]
        if self.text_fd is not None:
            checks.append((self.text_path, self.text_fd, text_bytes, "at least "))
        if self.crc_fd is not None:
            checks.append((self.crc_path, self.crc_fd, self.n * 4, ""))
        for path, fd, want, least in checks:
            size = os.fstat(fd).st_size
            if size < want or (size > want and not least):
                raise DaskImgError(
                    f"cannot resume {str(self.rows_path.parent)!r}: the staging file "
                    f"{path.name!r} of {self.name!r} is {size} bytes, {least}{want} expected "
                    "(truncated, removed or replaced since the checkpoint); pass resume=False "
                    "to start over"
                )
        if self.text_fd is not None:
            os.ftruncate(self.text_fd, text_bytes)
        self.text_bytes = text_bytes

    def close(self) -> None:
        """Close the staging files (again: nothing)."""
        for fd in (self.fd, self.text_fd, self.crc_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd = -1
        self.text_fd = None if self.text_fd is None else -1
        self.crc_fd = None if self.crc_fd is None else -1

    def shard_rows(self, s: int) -> tuple[int, int]:
        return s * self.shard_len, min(self.n, (s + 1) * self.shard_len)

    def shard_path(self, s: int) -> Path:
        return self.dir.joinpath("c", str(s), *["0"] * len(self.shape))

    def put(self, idx: np.ndarray, data: np.ndarray) -> None:
        """Write the rows ``data`` at the samples ``idx`` (distinct) of the staging file."""
        if not len(idx):
            return
        order = np.argsort(idx, kind="stable")
        idx, data = idx[order], data[order]
        if self.text:
            assert self.text_fd is not None
            encoded = [x.encode("utf-8") for x in data]
            lengths = np.array([len(e) for e in encoded], dtype=np.uint64)
            starts = self.text_bytes + np.cumsum(lengths) - lengths
            pwrite_all(self.text_fd, b"".join(encoded), self.text_bytes)
            self.text_bytes += int(lengths.sum())
            raw = np.stack([starts, lengths], axis=1).astype("<u8").tobytes()
            crcs = [crc32c.crc32c(e) for e in encoded]
        else:
            raw = np.ascontiguousarray(data).tobytes()
            rows, step = memoryview(raw), self.row_bytes
            crcs = [crc32c.crc32c(rows[k : k + step]) for k in range(0, len(raw), step)]
        view, rb = memoryview(raw), self.row_bytes
        sums = memoryview(np.array(crcs, dtype="<u4").tobytes())
        breaks = [0, *(np.flatnonzero(np.diff(idx) != 1) + 1).tolist(), len(idx)]
        for a, b in itertools.pairwise(breaks):  # one write per run of samples
            pwrite_all(self.fd, view[a * rb : b * rb], int(idx[a]) * rb)
            if self.crc_fd is not None:
                pwrite_all(self.crc_fd, sums[a * 4 : b * 4], int(idx[a]) * 4)

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``a..b-1`` from the staging file, checked against their crc32c."""
        rb = self.row_bytes
        raw = _pread_exact(self.fd, (b - a) * rb, a * rb, self.rows_path)
        if not self.text:
            rows = memoryview(raw)
            self._check(a, [rows[k : k + rb] for k in range(0, len(raw), rb)])
            return np.frombuffer(raw, self.dtype).reshape(b - a, *self.shape)
        assert self.text_fd is not None
        table = np.frombuffer(raw, "<u8").reshape(b - a, 2)
        pieces = []
        for start, length in table.tolist():
            if start + length > self.text_bytes:
                raise DaskImgError(
                    f"{str(self.rows_path)!r} points past the end of {self.text_path.name}: "
                    "the staging is damaged; pass resume=False to start over"
                )
            pieces.append(_pread_exact(self.text_fd, length, start, self.text_path))
        self._check(a, pieces)
        out = np.empty(b - a, dtype=object)
        for k, data in enumerate(pieces):
            out[k] = data.decode("utf-8")
        return out

    def _check(self, a: int, rows: list[bytes] | list[memoryview]) -> None:
        """Refuse rows (samples ``a, a+1, ...``) whose bytes differ from when written."""
        if self.crc_fd is None:
            return
        want = np.frombuffer(_pread_exact(self.crc_fd, 4 * len(rows), 4 * a, self.crc_path), "<u4")
        got = np.array([crc32c.crc32c(r) for r in rows], dtype="<u4")
        bad = np.flatnonzero(got != want)
        if len(bad):
            raise DaskImgError(
                f"the staged row of sample {a + int(bad[0])} of {self.name!r} "
                f"({self.rows_path.name} in {str(self.rows_path.parent)!r}; {len(bad)} row(s) "
                "of this shard) does not match its checksum: the staging file was damaged "
                "after it was written. Pass resume=False to discard the write and start over"
            )

    def write_shard(self, s: int) -> None:
        """Compress and write shard ``s`` (all of its samples have their rows)."""
        a, b = self.shard_rows(s)
        self.arr[a:b] = self.read(a, b)

    def sync(self) -> None:
        """fsync the staging files and the shards written since the last checkpoint."""
        for fd in (self.fd, self.text_fd, self.crc_fd):
            if fd is not None:
                os.fsync(fd)
        for s in sorted(self.unsynced):
            fsync_path(self.shard_path(s))
            for parent in self.shard_path(s).parents:
                fsync_path(parent)
                if parent == self.dir:
                    break
        self.unsynced.clear()

    def restore(self, filled: np.ndarray, pool: ShardPool) -> None:
        """Resume: keep the shards whose samples the bitmap covers (rewriting any missing),
        delete the others and anything zarr left half-written."""
        for f in self.dir.rglob("*"):
            if f.is_file() and f.name.endswith(".partial"):  # zarr's own temporary files
                f.unlink()
        full = self._full_shards(filled)
        chunk_dir = self.dir / "c"
        for entry in chunk_dir.iterdir() if chunk_dir.is_dir() else ():
            if not (
                entry.name.isdigit() and int(entry.name) < self.num_shards and full[int(entry.name)]
            ):
                remove_path(str(entry))
        for s in np.flatnonzero(full).tolist():
            self.written[s] = True
            there = self.shard_path(s).is_file()
            if there and self._holds_its_rows(s):
                continue
            if there:
                logger.warning(
                    "%s: shard %d of %r in the staging folder does not read back as the rows "
                    "staged for it (damaged since the checkpoint); it is written again from "
                    "them",
                    self.dir.parent.parent,
                    s,
                    self.name,
                )
            self.unsynced.add(s)
            pool.run(functools.partial(self.write_shard, s))

    def _holds_its_rows(self, s: int) -> bool:
        """Whether shard ``s`` on disk reads back (its crc32c checked by zarr) as its staged
        rows (theirs checked too): a shard damaged between the kill and the resume was kept
        and published, and the store then failed its first read."""
        a, b = self.shard_rows(s)
        want = self.read(a, b)  # a damaged staging file is named here
        try:
            got = np.asarray(self.arr[a:b])
        except Exception:  # its bytes fail their checksum, or do not parse
            return False
        if self.text:
            return got.shape == want.shape and list(got) == list(want)
        return got.shape == want.shape and got.tobytes() == np.asarray(want).tobytes()

    def _full_shards(self, filled: np.ndarray) -> np.ndarray:
        pad = self.num_shards * self.shard_len - self.n
        padded = np.concatenate([filled, np.ones(pad, bool)])
        return np.asarray(padded.reshape(self.num_shards, -1).all(1))


class Placed:
    """The columns of a writer whose rows are placed by store index, and the bitmap of
    which samples have their row."""

    def __init__(
        self,
        columns: Mapping[str, PlacedColumn],
        pool: ShardPool,
        filled: np.ndarray,
        where: str,
    ) -> None:
        self.columns = dict(columns)
        self.pool = pool
        self.filled = filled
        self.n = len(filled)
        self.rows = int(filled.sum())
        self.where = where
        #: why rows since the last checkpoint are lost (a failed background write), or None
        self.lost: str | None = None

    @property
    def step(self) -> int:
        """Rows per piece when a dask batch is computed in pieces."""
        return max(c.shard_len for c in self.columns.values())

    def check(self, idx: np.ndarray) -> None:
        """Refuse indices out of range, or of samples that have their row already."""
        check_range(idx, self.n, self.where)
        again = idx[self.filled[idx]]
        if len(again):
            raise ValueError(
                f"index {int(again[0])} was written already (by an earlier append); every "
                "sample gets exactly one row (missing() lists those still to write). "
                + PADDED_REPEATS
            )

    def add(
        self, pieces: Iterable[tuple[np.ndarray | None, Mapping[str, np.ndarray]]], idx: np.ndarray
    ) -> None:
        """Place the pieces of one batch (``(indices, arrays)``, together ``idx``, checked).

        All or nothing: the samples count as written only once every piece is placed.
        Shards that this completes are then written in the background.
        """
        for sub, piece in pieces:
            assert sub is not None
            for name, col in self.columns.items():
                col.put(sub, piece[name])
        self.filled[idx] = True
        self.rows += len(idx)
        try:
            for col in self.columns.values():
                for s in np.unique(idx // col.shard_len).tolist():
                    a, b = col.shard_rows(s)
                    if not col.written[s] and self.filled[a:b].all():
                        col.written[s] = True
                        col.unsynced.add(s)
                        self.pool.run(functools.partial(col.write_shard, s))
        except BaseException as e:
            self.lost = f"writing a shard failed ({e!r})"
            raise

    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.filled)

    def sync(self) -> None:
        self.pool.drain()
        for col in self.columns.values():
            col.sync()

    def finish(self) -> None:
        """Wait until every shard is written (each was, when its last row arrived)."""
        self.pool.drain()
        for col in self.columns.values():
            if not col.written.all():
                raise DaskImgError(f"{self.where}: array {col.name!r} has shards not written")

    def close(self) -> None:
        for col in self.columns.values():
            col.close()


def _pread_exact(fd: int, n: int, offset: int, path: Path) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise DaskImgError(f"{str(path)!r} is shorter than expected; the staging is damaged")
        data += more
    return data
