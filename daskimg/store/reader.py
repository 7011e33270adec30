"""Store: the checked reader — every chunk daskimg hands out is read and checked here.

zarr-python's array API costs about 40% of the throughput on whole-chunk reads, fills a
missing chunk with the fill value (zeros for pixels, ``''`` for paths), and its ZipStore
shares one file handle across forked DataLoader workers (zarr-python #1218). This reader
locates each chunk itself (zip member, shard index), reads it through a
:class:`~daskimg.store.bytesource.ByteSource` (local file or folder, or a URL), checks
its crc32c and its framing, and decodes it straight into the caller's buffer. A
missing, empty, truncated, damaged or crafted chunk is a
:class:`~daskimg.errors.ChecksumError` naming the store, the array and the chunk —
never zeros and never a crash.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import crc32c
import numpy as np
from dask.base import tokenize
from numcodecs import blosc

from ..errors import ChecksumError, MetadataError
from .bytesource import ByteSource, LocalDir, LocalZip, open_source
from .chunktable import TABLE, check_place, decode_table
from .codecs import blosc_header, check_crc, check_crc_of, decode_chunk, flat_bytes, raw_frame
from .jpeg import JpegChunk, decode_chunk_into, parse_chunk
from .layout import ArrayLayout, parse_layout
from .locate import LEFT_OUT, MISSING, ChunkLocator

__all__ = ["ArrayLayout", "RawChunk", "StoreReader"]


#: the most bytes a ``zarr.json`` may take (a root's chunk tables for a million samples
#: take about 1 MiB): larger, it is damage, refused before it is read
MAX_JSON = 256 << 20


class StoreReader:
    """Reads chunks of a daskimg store along axis 0, checked, from wherever it lives.

    Safe to pickle and to use after ``fork`` (each process opens its own files) and from
    several threads at once (``os.pread`` has no shared offset).

    Parameters
    ----------
    source
        A :class:`~daskimg.store.bytesource.ByteSource`, or the path of a local store
        (``*.zarr.zip`` or ``*.zarr``).

    Examples
    --------
    >>> reader = StoreReader("out/train.zarr.zip")  # doctest: +SKIP
    >>> block = reader.read_chunk("images", 0)  # doctest: +SKIP
    """

    def __init__(self, source: ByteSource | str | os.PathLike[str]) -> None:
        if not isinstance(source, ByteSource):
            path = os.path.abspath(os.fspath(source)).rstrip("/")
            source = open_source(path, "zip" if os.path.isfile(path) else "dir")
        self.source = source
        self.path = source.where
        self.is_zip = isinstance(source, LocalZip)
        self._local = threading.local()
        self._locate = ChunkLocator(source, self.path)  # shard indexes, cached
        self._layouts: dict[str, ArrayLayout] = {}
        self._attrs: dict[str, Any] | None = None
        self._tables: dict[str, np.ndarray | None] = {}
        self._token: str | None = None

    def root_token(self) -> str:
        """A token of this store (its path and root ``zarr.json``, which holds every chunk's
        crc32c), computed once: what names its dask arrays."""
        if self._token is None:
            self._token = tokenize(self.path, self.read_bytes("zarr.json"))
        return self._token

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"])  # type: ignore[misc]

    def close(self) -> None:
        self.source.close()

    def _scratch(self, nbytes: int) -> np.ndarray:
        """A per-thread reusable read buffer of exactly ``nbytes`` (no allocation per chunk)."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = self._local.buf = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
        return cast(np.ndarray, buf[:nbytes])

    # -- metadata ----------------------------------------------------------------------
    def read_bytes(self, key: str, start: int = 0, length: int | None = None) -> bytes | None:
        """Bytes of a store key (a range of it with ``start``/``length``); None if missing
        (something else at its path, such as a named pipe or a folder, is damage, named)."""
        if key not in self.source.keys:
            if self.source.in_the_way(key):
                raise MetadataError(f"{self.path}: {key} {self.source.absent_said(key)}")
            return None
        if key.rsplit("/", 1)[-1] == "zarr.json" and self.source.size_of(key) > MAX_JSON:
            # a damaged or crafted size: read whole, it would fill memory before any check
            raise MetadataError(
                f"{self.path}: {key} claims {self.source.size_of(key):,} bytes, more than "
                f"the {MAX_JSON >> 20} MiB a store's metadata may take; the store's metadata "
                "is damaged — re-create the store"
            )
        return self.source.read(key, start, length)

    def json(self, key: str) -> Any:
        """A JSON object of the store (a ``zarr.json``), or None if missing; damage raises
        (what is no JSON object too: a ``null`` there was taken for a missing file)."""
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as e:  # bad JSON or UTF-8; 5,000 nested [ or digits
            raise MetadataError(
                f"{self.path}: {key} cannot be parsed ({e}); the store's metadata is damaged — "
                "re-create the store"
            ) from None
        if not isinstance(value, dict):
            raise MetadataError(
                f"{self.path}: {key} holds {json.dumps(value)[:40]}, not a JSON object; the "
                "store's metadata is damaged — re-create the store"
            )
        return value

    def array_names(self) -> list[str]:
        """Names of the arrays the store holds (folders with a ``zarr.json``), sorted."""
        return sorted(
            k[: -len("/zarr.json")]
            for k in self.source.keys
            if k.endswith("/zarr.json") and k.count("/") == 1
        )

    def layout(self, name: str) -> ArrayLayout:
        lay = self._layouts.get(name)
        if lay is None:
            meta = self.json(f"{name}/zarr.json")
            if meta is None:
                raise MetadataError(
                    f"{self.path}: array {name!r} is missing ({name}/zarr.json not found); "
                    "the store is damaged — re-create it"
                )
            lay = parse_layout(self.path, name, meta, self._store_read_len())
            self._layouts[name] = lay
        return lay

    def _root_attrs(self) -> dict[str, Any]:
        """The ``daskimg`` root attributes as stored (checked by whoever opens the store)."""
        if self._attrs is None:
            root = self.json("zarr.json")
            attrs = ((root or {}).get("attributes") or {}) if isinstance(root, dict) else {}
            value = attrs.get("daskimg") if isinstance(attrs, dict) else None
            self._attrs = value if isinstance(value, dict) else {}
        return self._attrs

    def _store_read_len(self) -> int | None:
        value = self._root_attrs().get("chunk_len")
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else None

    def chunk_table(self, lay: ArrayLayout) -> np.ndarray | None:
        """The crc32c the store recorded for each inner chunk of ``lay``'s array, or None
        (stores written before the table existed; see :mod:`~daskimg.store.chunktable`)."""
        if lay.name not in self._tables:
            arrays = self._root_attrs().get("arrays")
            entry = arrays.get(lay.name) if isinstance(arrays, dict) else None
            value = entry.get(TABLE) if isinstance(entry, dict) else None
            self._tables[lay.name] = None if value is None else decode_table(self.path, lay, value)
        return self._tables[lay.name]

    def _place(self, lay: ArrayLayout, i: int, stored: Any, where: str) -> None:
        """Inner chunk ``i`` (its crc32c ``stored``, checked against its bytes) is the one
        the store recorded there."""
        check_place(self.chunk_table(lay), i, stored, where)

    # -- where chunks are --------------------------------------------------------------
    def chunk_location(self, name: str, c: int) -> tuple[str, int, int]:
        """(file, offset, nbytes) of chunk ``c`` of ``name`` in a LOCAL store: encoded bytes incl.
        checksum (for tests and tools that damage stores on purpose)."""
        lay = self.layout(name)
        if not 0 <= c < lay.num_chunks:
            raise IndexError(f"chunk {c} out of range 0..{lay.num_chunks - 1} for {name!r}")
        return self._locate.file_range(lay, c)

    # -- chunks ------------------------------------------------------------------------
    def _where(self, lay: ArrayLayout, c: int) -> str:
        a, b = lay.chunk_rows(c)
        return f"{self.path}: array {lay.name!r}, chunk {c} (rows {a}..{b - 1})"

    def _encoded(self, lay: ArrayLayout, i: int) -> np.ndarray:
        """Encoded bytes of inner chunk ``i`` in this thread's scratch buffer."""
        key, off, nbytes = self._locate.inner(lay, i)
        buf = self._scratch(nbytes)
        self.source.readinto(key, off, [buf])
        return buf

    def read_chunk(self, name: str, c: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``c`` of array ``name`` (rows ``c*L .. (c+1)*L``), checked and decoded.

        ``out``, if given, must be a C-contiguous array of the chunk's exact shape/dtype.
        """
        lay = self.layout(name)
        if not 0 <= c < lay.num_chunks:
            raise IndexError(f"chunk {c} out of range 0..{lay.num_chunks - 1} for {name!r}")
        a, b = lay.chunk_rows(c)
        out = _chunk_out(lay, a, b, out)
        where = self._where(lay, c)
        if lay.per_sample:
            unit = self.read_unit(name, c)
            self.decode_rows(name, unit, range(b - a), out, range(b - a), first=a)
            return out
        if lay.inner_len == lay.chunk_len:
            if lay.kind == "raw" and b - a == lay.chunk_len:
                # straight from the file into the caller's buffer, checked there: no copy
                key, off, nbytes = self._locate.inner(lay, c)
                if nbytes != out.nbytes + 4:
                    raise ChecksumError(
                        f"{where}: holds {nbytes} bytes, expected {out.nbytes + 4}; "
                        "the store is damaged — re-create it"
                    )
                crc = bytearray(4)
                flat = flat_bytes(out)
                self.source.readinto(key, off, [flat, crc])
                check_crc_of(flat, crc, where)
                self._place(lay, c, crc, where)
                return out
            key, off, nbytes = self._locate.inner(lay, c)
            # compressed chunks are decoded straight from the (lease-protected) page cache
            with self.source.view(key, off, nbytes, self._scratch(nbytes)) as buf:
                self._place(lay, c, buf[-4:], where)
                if lay.kind == "jpeg":
                    decode_chunk_into(check_crc(buf, where), out, where)  # only out's rows
                elif b - a == lay.chunk_len:
                    decode_chunk(buf, lay.kind, out, where)
                else:  # zarr encodes the last, partial chunk at full chunk size
                    full = np.empty((lay.chunk_len, *lay.shape[1:]), dtype=lay.dtype)
                    decode_chunk(buf, lay.kind, full, where)
                    out[...] = full[: b - a]
            return out
        # a read unit of several inner chunks (e.g. 1-D columns in other stores)
        full = np.empty((lay.inner_len, *lay.shape[1:]), dtype=lay.dtype)
        for i in range(a // lay.inner_len, -(-b // lay.inner_len)):
            lo, hi = max(a, i * lay.inner_len), min(b, (i + 1) * lay.inner_len)
            buf = self._encoded(lay, i)
            self._place(lay, i, buf[-4:], where + f", inner chunk {i}")
            decode_chunk(buf, lay.kind, full, where + f", inner chunk {i}")
            out[lo - a : hi - a] = full[lo - i * lay.inner_len : hi - i * lay.inner_len]
        return out

    def read_array(self, name: str) -> np.ndarray:
        """A whole array, chunk by chunk, checked (for small arrays: labels, paths)."""
        lay = self.layout(name)
        out = np.empty(lay.shape, dtype=lay.dtype)
        for c in range(lay.num_chunks):
            a, b = lay.chunk_rows(c)
            self.read_chunk(name, c, out[a:b])
        return out

    def will_need(self, name: str, c: int) -> None:
        """Ask the kernel to start reading chunk ``c`` into the page cache (local stores).

        One large read-ahead per chunk instead of page-by-page reads when the store is not
        in memory (measured 2-2.5x faster cold epochs).
        """
        src = self.source
        if not isinstance(src, (LocalZip, LocalDir)) or not hasattr(os, "posix_fadvise"):
            return
        try:
            file, offset, nbytes = self.chunk_location(name, c)
            os.posix_fadvise(src.files.fd(file), offset, nbytes, os.POSIX_FADV_WILLNEED)
        except (ChecksumError, MetadataError, OSError):
            return  # the read itself reports it

    def view_chunk(self, name: str, c: int) -> RawChunk | JpegChunk | None:
        """Chunk ``c`` ready to be copied or decoded straight into batch rows.

        Uncompressed full chunks (codec ``"none"``, or lz4 chunks stored raw in their Blosc
        frame: most photos, see :func:`daskimg.store.encode.blosc_encode`): a
        :class:`RawChunk` that reads its rows straight into their batch rows and checks
        them there. JPEG chunks: a
        :class:`~daskimg.store.jpeg.JpegChunk` that decodes any sample into any row.
        None for anything else (use :meth:`read_chunk`).
        """
        lay = self.layout(name)
        if lay.kind not in ("raw", "jpeg", "blosc") or lay.inner_len != lay.chunk_len:
            return None
        a, b = lay.chunk_rows(c)
        if lay.kind in ("raw", "blosc") and b - a != lay.chunk_len:
            return None  # zarr pads the last chunk: read_chunk cuts it
        where = self._where(lay, c)
        key, off, nbytes = self._locate.inner(lay, c)
        if lay.kind == "blosc":  # one stored raw in its Blosc frame reads as uncompressed
            expected = (b - a) * lay.row_bytes
            if nbytes != expected + 16 + 4 or not isinstance(self.source, (LocalZip, LocalDir)):
                # compressed: read_chunk decompresses it; at a URL, reading its header
                # first would be a second request for the chunk: read_chunk makes one
                return None
            head = bytearray(16)
            self.source.readinto(key, off, [head])
            if not raw_frame(head, expected):
                return None  # read_chunk checks it and names what is wrong
            return RawChunk(
                self.source, key, off, (b - a, *lay.shape[1:]), lay.dtype, where,
                self.chunk_table(lay), c, bytes(head),
            )  # fmt: skip
        if lay.kind == "raw":
            expected = (b - a) * lay.row_bytes
            if nbytes != expected + 4:
                raise ChecksumError(f"{where}: holds {nbytes - 4} bytes, expected {expected}")
            return RawChunk(
                self.source, key, off, (b - a, *lay.shape[1:]), lay.dtype, where,
                self.chunk_table(lay), c,
            )  # fmt: skip
        data = bytearray(nbytes)
        self.source.readinto(key, off, [data])
        self._place(lay, c, data[-4:], where)
        chunk = parse_chunk(check_crc(data, where), where)  # JPEG: checked before decoding
        if len(chunk) < b - a:
            raise ChecksumError(f"{where}: JPEG chunk holds {len(chunk)} samples, expected {b - a}")
        return chunk

    # -- stores with one inner chunk per sample ------------------------------------------
    def read_unit(
        self, name: str, c: int, into: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The encoded bytes of the samples of chunk ``c``, read at once: ``(buf, offsets, sizes)``.

        Nothing is decoded; :meth:`decode_rows` decodes samples (checking each crc32c)
        into any destination, e.g. their rows of a batch. ``into``, a uint8 array of at
        least the chunk's encoded size, is filled instead of a new buffer.
        """
        lay = self.layout(name)
        a, b = lay.chunk_rows(c)
        shard, j0 = divmod(a, lay.shard_len)
        index = self._locate.shard_index(lay, shard)[j0 : j0 + (b - a)]
        offs, sizes = index[:, 0], index[:, 1]
        missing = np.flatnonzero(offs == MISSING)
        if len(missing):
            raise ChecksumError(
                f"{self.path}: array {name!r}, sample {a + int(missing[0])} (chunk {c}) is missing "
                "from its shard; " + LEFT_OUT
            )
        lo, hi = int(offs.min()), int((offs + sizes).max())
        buf = (
            np.empty(hi - lo, dtype=np.uint8)
            if into is None or len(into) < hi - lo
            else into[: hi - lo]
        )
        self.source.readinto(lay.key(shard), lo, [buf])
        return buf, (offs - lo).astype(np.int64), sizes.astype(np.int64)

    def decode_rows(
        self,
        name: str,
        unit: tuple[np.ndarray, np.ndarray, np.ndarray],
        rows: Sequence[int] | np.ndarray,
        dest: np.ndarray,
        dest_rows: Sequence[int] | np.ndarray,
        first: int = 0,
    ) -> None:
        """Decode samples ``rows`` of a :meth:`read_unit` into ``dest[dest_rows]``, checking each crc32c.

        The hot loop of the loader: each sample goes from the read buffer straight into its
        row of the batch. ``first`` is the unit's first sample (for error messages).
        """
        lay = self.layout(name)
        buf, offs, sizes = unit
        view = memoryview(cast(Any, buf))
        row_bytes = lay.row_bytes
        blosc_kind = lay.kind == "blosc"
        offsets, lengths = offs.tolist(), sizes.tolist()
        check, decompress, from_bytes = crc32c.crc32c, blosc.decompress, int.from_bytes
        table = self.chunk_table(lay)  # one entry per sample in this layout
        for i, k in zip(np.asarray(rows).tolist(), np.asarray(dest_rows).tolist(), strict=True):
            o = offsets[i]
            end = o + lengths[i] - 4
            body = view[o:end]
            where = self._where_sample(lay, first + i)
            if end < o or check(body) != from_bytes(view[end : end + 4], "little"):
                raise ChecksumError(
                    f"{where}: checksum mismatch (the sample is damaged); "
                    "run `daskimg verify` on the store and re-create it"
                )
            if table is not None:
                check_place(table, first + i, view[end : end + 4], where)
            if not blosc_kind:
                decode_chunk(view[o : end + 4], lay.kind, dest[k : k + 1], where)
            else:
                blosc_header(body, row_bytes, where)
                try:
                    decompress(body, flat_bytes(dest[k : k + 1]))  # dest[k]: a copy if 1-D
                except RuntimeError as e:  # blosc's error for corrupt input
                    raise ChecksumError(f"{where}: cannot decompress ({e})") from e

    def _where_sample(self, lay: ArrayLayout, sample: int) -> str:
        return f"{self.path}: array {lay.name!r}, sample {sample} (chunk {sample // lay.chunk_len})"


def _row_bytes(a: np.ndarray, p: int) -> np.ndarray:
    """The bytes of row ``p`` of ``a``, as a view to read into: ``a[p:p + 1]``, never ``a[p]``,
    which for a 1-D array is a numpy scalar, a copy (the row was read into the copy and
    checksummed there, and the batch kept what its memory held before)."""
    return flat_bytes(a[p : p + 1])


@dataclass(frozen=True)
class RawChunk:
    """An uncompressed chunk, not yet read: :meth:`copy_to` reads its rows straight into the
    batch rows they go to (one ``preadv``) and checks the checksum over them there."""

    source: ByteSource
    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    where: str
    table: np.ndarray | None = None  # the store's chunk table (see .chunktable)
    index: int = 0  # this chunk's entry in it
    #: the Blosc header before the rows of a chunk stored raw in its Blosc frame (b"": none),
    #: as :meth:`Reader.view_chunk` read and checked it; read again with the rows, it
    #: counts in their checksum and must be the same
    head: bytes = b""

    def copy_to(self, targets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """``dest[at] = rows[sel]`` for each ``(dest, at, sel)``; raise if the chunk is damaged.

        Every row counts in the checksum, delivered or not. On a mismatch the destinations
        hold damaged rows: callers must not hand them out.
        """
        n = self.shape[0]
        where_to: list[list[tuple[np.ndarray, int]]] = [[] for _ in range(n)]
        for dest, at, sel in targets:
            for p, r in zip(at.tolist(), sel.tolist(), strict=True):
                where_to[r].append((dest, p))
        # rows no batch takes (another worker's, or cut by drop_last) still count in the
        # checksum: each is read into a row of its own (one shared row kept only the last)
        unplaced = sum(1 for places in where_to if not places)
        spare = np.empty((unplaced, *self.shape[1:]), dtype=self.dtype) if unplaced else None
        bufs: list[Any] = []
        j = 0
        for places in where_to:
            if places:
                dest, p = places[0]
                bufs.append(_row_bytes(dest, p))
            else:
                assert spare is not None
                bufs.append(_row_bytes(spare, j))
                j += 1
        crc_bytes = bytearray(4)
        head = bytearray(len(self.head))
        self.source.readinto(self.key, self.offset, [*([head] if head else []), *bufs, crc_bytes])
        crc, check = crc32c.crc32c(head), crc32c.crc32c
        for b in bufs:
            crc = check(b, crc)
        if crc != int.from_bytes(crc_bytes, "little") or head != self.head:
            raise ChecksumError(
                f"{self.where}: checksum mismatch (the chunk is damaged); run `daskimg verify` "
                "on the store and re-create it from the source (to_zarr(..., overwrite=True); "
                "daskimg ingest --overwrite, since a re-run keeps a store written from the same "
                "files)"
            )
        check_place(self.table, self.index, crc_bytes, self.where)
        for places in where_to:
            if len(places) > 1:
                first_dest, p0 = places[0]
                for dest, p in places[1:]:
                    dest[p] = first_dest[p0]


def _chunk_out(lay: ArrayLayout, a: int, b: int, out: np.ndarray | None) -> np.ndarray:
    """``out`` checked to hold rows ``a:b`` exactly (C-contiguous), or a new array for them."""
    shape = (b - a, *lay.shape[1:])
    if out is None:
        return np.empty(shape, dtype=lay.dtype)
    if out.shape != shape or out.dtype != lay.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be C-contiguous {shape} {lay.dtype}, got {out.shape} {out.dtype}"
        )
    return out
