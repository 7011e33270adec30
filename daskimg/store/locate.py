"""Store: where the encoded bytes of each chunk are — which key (zip member or file), at
which offset, how many — read from the shard indexes of sharded arrays.

Every location is checked before it is used: a missing chunk or shard, a shard index that is
too short, damaged (crc32c) or pointing outside its shard is a
:class:`~daskimg.errors.ChecksumError` naming the store, the array and the chunk.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import ChecksumError
from .bytesource import ByteSource, LocalDir, LocalZip
from .codecs import check_crc
from .layout import ArrayLayout

__all__ = ["LEFT_OUT", "MISSING", "WRITE_EMPTY", "ChunkLocator"]

#: the offset (and size) a shard index gives an inner chunk that was never written
MISSING = np.uint64(2**64 - 1)

#: how to write the chunks zarr-python leaves out (those holding only the fill value)
WRITE_EMPTY = (
    "zarr-python leaves out a chunk that holds only the fill value unless told to write it; "
    "write the arrays with zarr.config.set({'array.write_empty_chunks': True}) (daskimg "
    "reads no chunk that is not there as zeros), or with daskimg (ImageSet(...) then to_zarr)"
)

#: what a chunk that is not there means: daskimg writes every chunk, so in its stores it is
#: damage; in another tool's, see WRITE_EMPTY
LEFT_OUT = f"the store is damaged — re-create it (if zarr-python wrote it: {WRITE_EMPTY})"


class ChunkLocator:
    """Locates the inner chunks of a store's arrays; shard indexes are read once and cached.

    Parameters
    ----------
    source
        Where the store's bytes are.
    path
        The store, as error messages name it.
    """

    def __init__(self, source: ByteSource, path: str) -> None:
        self.source = source
        self.path = path
        self._index: dict[tuple[str, int], np.ndarray] = {}
        # one fetch per shard index: threads that want the same index wait for the first
        self._fetching: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()

    def shard_index(self, lay: ArrayLayout, shard: int) -> np.ndarray:
        """The checked index of shard ``shard``: ``(offset, nbytes)`` of each inner chunk."""
        cached = self._index.get((lay.name, shard))
        if cached is not None:
            return cached
        with self._lock:
            fetching = self._fetching.setdefault((lay.name, shard), threading.Lock())
        with fetching:
            cached = self._index.get((lay.name, shard))
            if cached is not None:
                return cached
            index = self._fetch_index(lay, shard)
            self._index[(lay.name, shard)] = index
        with self._lock:
            self._fetching.pop((lay.name, shard), None)
        return index

    def _fetch_index(self, lay: ArrayLayout, shard: int) -> np.ndarray:
        key = lay.key(shard)
        n = lay.index_len
        where = f"{self.path}: array {lay.name!r}, shard {shard} ({key})"
        size = self.source.keys.get(key)
        if size is None:
            raise ChecksumError(f"{where} {self.source.absent_said(key)}")
        if size < n * 16 + 4:
            raise ChecksumError(
                f"{where} is {size} bytes, too short for its index (empty or truncated); "
                "the store is damaged — re-create it"
            )
        raw = self.source.read(key, size - (n * 16 + 4), n * 16 + 4)
        try:
            body = check_crc(raw, where + " index")
        except ChecksumError:
            raise ChecksumError(
                f"{where}: index checksum mismatch (damaged or truncated); re-create the store"
            ) from None
        index = np.frombuffer(body, dtype="<u8").reshape(n, 2)
        missing = (index[:, 0] == MISSING) & (index[:, 1] == MISSING)  # zarr: both, or neither
        offs, lens = index[~missing, 0], index[~missing, 1]
        limit = np.uint64(size - (n * 16 + 4))
        # each bound on its own first: a huge offset or length would wrap their sum around
        if (
            (offs > limit).any()
            or (lens > limit).any()
            or (offs + lens > limit).any()
            or (lens < 4).any()
        ):
            raise ChecksumError(
                f"{where}: its index points outside the shard; the store is damaged — re-create it"
            )
        # two chunks at the same (or overlapping) bytes: one chunk's rows read as another's,
        # each checksum sound (stores without chunk tables, written before 2026-12, have
        # nothing else to tell). No writer shares bytes between chunks
        order = np.argsort(offs, kind="stable")
        ends, starts = (offs + lens)[order][:-1], offs[order][1:]
        if (ends > starts).any():
            k = int(np.argmax(ends > starts))
            a, b = sorted(int(np.flatnonzero(~missing)[order[m]]) for m in (k, k + 1))
            raise ChecksumError(
                f"{where}: its index gives inner chunks {a} and {b} the same or overlapping "
                "bytes (one chunk's rows would be read as another's); the store is damaged — "
                "re-create it"
            )
        return index

    def inner(self, lay: ArrayLayout, i: int) -> tuple[str, int, int]:
        """(key, offset, nbytes) of zarr inner chunk ``i`` along axis 0 — encoded bytes incl. crc."""
        if not lay.sharded:
            key = lay.key(i)
            size = self.source.keys.get(key)
            if size is None:
                raise ChecksumError(
                    f"{self.path}: array {lay.name!r}, chunk {i} ({key}) "
                    + self.source.absent_said(key, LEFT_OUT)
                )
            return key, 0, size
        shard, j = divmod(i * lay.inner_len, lay.shard_len)
        off, nbytes = self.shard_index(lay, shard)[j // lay.inner_len]
        if off == MISSING:
            raise ChecksumError(
                f"{self.path}: array {lay.name!r}, rows {i * lay.inner_len}.. are missing from "
                f"shard {shard}; " + LEFT_OUT
            )
        return lay.key(shard), int(off), int(nbytes)

    def file_range(self, lay: ArrayLayout, c: int) -> tuple[str, int, int]:
        """(file, offset, nbytes) of read chunk ``c`` in a LOCAL store: its encoded bytes,
        checksums included."""
        a, b = lay.chunk_rows(c)
        first = self.inner(lay, a // lay.inner_len)
        last = self.inner(lay, (b - 1) // lay.inner_len)
        key, lo = first[0], first[1]
        hi = last[1] + last[2]
        src = self.source
        if isinstance(src, LocalZip):
            return src.path, src.members[key][0] + lo, hi - lo
        if isinstance(src, LocalDir):
            return os.path.join(src.path, *key.split("/")), lo, hi - lo
        raise ValueError("chunk_location is for local stores")
