"""Store: chunks and whole shards encoded by daskimg, byte for byte the layout zarr reads.

zarr-python writes a shard through its codec pipeline: an event loop that every writing
thread waits on, a copy of each chunk into a fresh buffer and another of the whole shard
— on a 2-core machine that cost ingest about a third of its time next to decoding. Here
the work is split the way the data flows instead: each task that decodes a chunk's
images also compresses it (:meth:`ShardEncoder.encode_chunk`, Blosc and crc32c release
the GIL) and hands on only the compressed bytes; a shard task lays out the chunks and
the shard index (:meth:`ShardEncoder.shard`) as pieces written one after another, never
joined.

What is written is what zarr's ``sharding_indexed`` codec (Zarr v3 spec) writes for the
array's own ``zarr.json``: the inner chunks in order, each ``serializer -> [blosc] ->
crc32c``; a partial last chunk padded with the fill value 0 to its full length; chunks
past the end of the array left out of the last shard (index entries ``2**64 - 1``); the
index ``(offset, nbytes)`` as little-endian uint64 + crc32c at the end. The layout is
parsed with the reader's own :func:`~daskimg.store.layout.parse_layout`, so the writer
can only produce what the reader accepts; chains it does not encode (zstd without Blosc
on numbers, one inner chunk per sample) return ``None`` from :meth:`ShardEncoder.of` and
are written through zarr. Text (``vlen-utf8`` then ``zstd``, as daskimg creates its text
columns) is encoded with numcodecs' own ``VLenUTF8`` and ``Zstd``, the codecs zarr's
``vlen-utf8`` and ``zstd`` call: zarr's pipeline took 60-90 ms of CPU for each column
of a 4,000-photo ingest (labels, paths; ~15 µs a row, beside the decoding workers), the
encoder 3 ms. Tests read every encoded store with plain zarr.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import crc32c
import numpy as np
from numcodecs import Blosc, VLenUTF8, Zstd

from .layout import ArrayLayout, parse_layout

__all__ = [
    "Chunk",
    "ShardEncoder",
    "becomes_inf",
    "blosc_encode",
    "check_fits",
    "holds_every",
    "kept_raw",
    "raw_header",
    "trailer",
    "vanishes",
]

#: the layouts (:attr:`ArrayLayout.kind`) encoded here; the others are written through zarr
_ENCODED = frozenset({"raw", "blosc", "jpeg", "vlen"})
#: an index entry for a chunk that is not in the shard (the spec's "empty")
_MISSING = 2**64 - 1
_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}

#: a chunk is kept compressed only where compressing saves at least this share of its
#: bytes (as ZFS decides per block), judged from :data:`_PROBES` windows of it
_MIN_SAVING = 1 / 8
#: the compressors the rule applies to: those chosen for speed (zstd is chosen for size)
_FAST = frozenset({"lz4"})
#: many small windows, not a few large ones: a chunk holds many images, and four windows of
#: 64 KiB (four images' middles) judged a fifth of the benchmark's photo chunks worth
#: compressing (1.11x seen) where the whole chunks saved 4-13% (1.085x on average); 32 of
#: 8 KiB saw 1.07x, none worth it. Each is compressed on its own (c-blosc 1.21 makes a
#: block at least 64 KiB where lz4 splits the data, so windows gathered into one buffer
#: would be judged together, a photo repeated in the chunk matching across them)
_PROBES, _PROBE_BYTES = 32, 8 * 2**10
#: chunks smaller than this are compressed whole, then judged by what that saved
_PROBED_FROM = 4 * _PROBES * _PROBE_BYTES

#: one encoded chunk: its pieces (body, then its 4-byte crc32c), written in this order
Chunk = tuple[Any, bytes]


@dataclass(frozen=True)
class ShardEncoder:
    """Encodes the chunks and shards of one array as zarr would (see the module notes)."""

    layout: ArrayLayout
    blosc: dict[str, Any] | None = None  # cname, clevel, shuffle, blocksize
    jpeg_quality: int | None = None
    zstd_level: int | None = None  # text: vlen-utf8, then zstd at this level

    @classmethod
    def of(cls, where: str, name: str, meta: dict[str, Any]) -> ShardEncoder | None:
        """The encoder for an array's parsed ``zarr.json``, or ``None`` for a chain it leaves to zarr."""
        layout = parse_layout(where, name, meta)
        if layout.kind not in _ENCODED or layout.inner_len != layout.chunk_len:
            return None
        chain = _chain(meta)
        if layout.kind == "vlen":  # text: vlen-utf8, then zstd without its own checksum
            cfg = chain[1].get("configuration") or {}
            level = cfg.get("level", 0)
            if meta.get("fill_value") != "" or cfg.get("checksum", False) or type(level) is not int:
                return None
            return cls(layout, zstd_level=level)
        if meta.get("fill_value") not in (0, 0.0, False):
            return None
        if layout.kind == "jpeg":
            quality = (chain[0].get("configuration") or {}).get("quality", 90)
            return cls(layout, jpeg_quality=int(quality))
        if layout.kind == "raw":
            return cls(layout)
        cfg = chain[1].get("configuration") or {}
        typesize = cfg.get("typesize", layout.dtype.itemsize)
        if cfg.get("shuffle") not in _SHUFFLES or typesize != layout.dtype.itemsize:
            return None
        return cls(
            layout,
            blosc={
                "cname": str(cfg["cname"]),
                "clevel": int(cfg["clevel"]),
                "shuffle": _SHUFFLES[cfg["shuffle"]],
                "blocksize": int(cfg.get("blocksize", 0)),
            },
        )

    @property
    def chunks_per_key(self) -> int:
        """Chunks stored under one key: a shard's, or 1 when the array is not sharded."""
        return self.layout.chunks_per_shard if self.layout.sharded else 1

    def encode_chunk(self, rows: np.ndarray, *, keep: bool = True, probed: bool = False) -> Chunk:
        """Encode one chunk (``chunk_len`` rows, fewer for the last): its body and crc32c.

        ``keep=False``: ``rows`` is a buffer the caller reuses, so the body never refers to it.
        ``probed``: :meth:`prefix` has already found that it is not kept raw (not probed again).
        """
        lay = self.layout
        if rows.shape[1:] != lay.shape[1:] or not 0 < len(rows) <= lay.chunk_len:
            raise ValueError(
                f"array {lay.name!r}: a chunk of {len(rows)} rows of {rows.shape[1:]}; expected "
                f"up to {lay.chunk_len} rows of {lay.shape[1:]}"
            )
        if rows.dtype != lay.dtype:
            check_fits(lay.name, rows, lay.dtype)
        rows = np.ascontiguousarray(rows, dtype=lay.dtype)
        if len(rows) < lay.chunk_len:  # zarr pads an edge chunk with the fill value
            full = np.zeros((lay.chunk_len, *rows.shape[1:]), lay.dtype)
            if self.zstd_level is not None:
                full[...] = ""
            full[: len(rows)] = rows
            rows = full
        body: Any
        if self.zstd_level is not None:  # str objects (the caller's as_text), C order
            body = Zstd(level=self.zstd_level).encode(VLenUTF8().encode(rows))
        elif self.jpeg_quality is not None:
            from .jpeg import encode_chunk

            body = encode_chunk(rows, self.jpeg_quality)
        elif self.blosc is not None:
            body = blosc_encode(rows, self.blosc, probed=probed)
        else:
            body = rows.reshape(-1).view(np.uint8).data
            if not keep:
                body = bytes(body)
        return body, trailer(body)

    def prefix(self, rows: np.ndarray) -> bytes | None:
        """What goes right before ``rows`` (a whole chunk, C-contiguous, the array's dtype
        and shape) for the rows as they are to be this chunk's encoded body: ``b""``
        uncompressed, a Blosc frame's header where Blosc keeps them raw (:func:`kept_raw`);
        None when the chunk is encoded otherwise (:meth:`encode_chunk`)."""
        lay = self.layout
        if rows.dtype != lay.dtype or rows.shape != (lay.chunk_len, *lay.shape[1:]):
            return None
        if self.jpeg_quality is not None or self.zstd_level is not None:
            return None
        if self.blosc is None:
            return b""
        return (
            raw_header(self.blosc, rows.dtype, rows.nbytes) if kept_raw(rows, self.blosc) else None
        )

    def key(self, k: int) -> str:
        """The store key (``images/c/3/0/0/0``) of shard ``k`` (chunk ``k`` if not sharded)."""
        return self.layout.key(k)

    @property
    def num_keys(self) -> int:
        """Stored values of the array: its shards (its chunks when not sharded)."""
        return -(-self.layout.num_chunks // self.chunks_per_key)

    def chunks_of(self, k: int) -> range:
        """The chunks that shard ``k`` holds (those inside the array)."""
        first = k * self.chunks_per_key
        return range(first, min(first + self.chunks_per_key, self.layout.num_chunks))

    def shard(self, chunks: Sequence[Chunk]) -> list[Any]:
        """The pieces of one stored value, in order: a shard of ``chunks`` and its index, or a
        chunk on its own when the array is not sharded."""
        if not self.layout.sharded:
            (one,) = chunks
            return list(one)
        index = np.full((self.layout.chunks_per_shard, 2), _MISSING, dtype="<u8")
        pieces: list[Any] = []
        offset = 0
        for i, (body, crc) in enumerate(chunks):
            size = memoryview(body).nbytes + len(crc)
            index[i] = (offset, size)
            pieces += [body, crc]
            offset += size
        raw = index.tobytes()
        return [*pieces, raw + trailer(raw)]


def blosc_encode(rows: np.ndarray, cfg: dict[str, Any], *, probed: bool = False) -> bytes:
    """``rows`` (C-contiguous) as one Blosc chunk of ``cfg`` (cname, clevel, shuffle,
    blocksize); with lz4, stored uncompressed inside the Blosc frame (its "memcpyed" flag,
    which every Blosc reader, plain zarr's included, reads as any other frame) when compressing
    saves less than :data:`_MIN_SAVING` of the bytes: for a chunk of :data:`_PROBED_FROM`
    bytes or more as a probe of it says (:func:`kept_raw`), for a smaller one as its
    compressed size says.

    Why: Blosc-lz4 saves ~6% on photo pixels (1.065x on the benchmark's photos) and costs
    ~0.1 ms per 224x224 image to write (a tenth of decoding it) and about as much again to
    read back (``bench/bench_feed.py``: 0.64 of the uncompressed feed rate). Masks, labels,
    scans with a dark background and other data that compresses well are compressed whole,
    as before. ``probed``: :func:`kept_raw` has already said no.
    """
    if probed or not kept_raw(rows, cfg):
        body = bytes(Blosc(**cfg).encode(rows))
        small = rows.nbytes < _PROBED_FROM and cfg["cname"] in _FAST
        if not small or len(body) - 16 <= rows.nbytes * (1 - _MIN_SAVING):
            return body
    return b"".join(
        (raw_header(cfg, rows.dtype, rows.nbytes), rows.reshape(-1).view(np.uint8).data)
    )


def trailer(body: Any) -> bytes:
    """The 4 bytes of crc32c that end an encoded chunk (and a shard's index)."""
    return crc32c.crc32c(body).to_bytes(4, "little")


def kept_raw(rows: np.ndarray, cfg: dict[str, Any]) -> bool:
    """Whether a chunk of ``rows`` (C-contiguous) of :data:`_PROBED_FROM` bytes or more is
    stored raw in its Blosc frame: Blosc with ``cfg`` shrinks :data:`_PROBES` windows of
    :data:`_PROBE_BYTES` spread evenly over it (5% of a 4.8 MB chunk) by less than
    :data:`_MIN_SAVING`. False for smaller chunks (they are compressed to be judged), and
    for a compressor other than lz4: zstd is chosen for the smallest store, every byte it
    saves is kept."""
    if cfg["clevel"] <= 0:
        return True
    if rows.nbytes < _PROBED_FROM or cfg["cname"] not in _FAST:
        return False
    # windows of the array's own numbers: Blosc byte-shuffles them by their size, as it
    # does the whole chunk (bytes of 16-bit scans compress far worse unshuffled)
    values = rows.reshape(-1)
    size = _PROBE_BYTES // rows.dtype.itemsize
    step = values.size // _PROBES
    start = (step - size) // 2
    probe = Blosc(**{**cfg, "blocksize": 0})
    raw = packed = 0
    for i in range(_PROBES):
        window = values[i * step + start : i * step + start + size]
        raw += window.nbytes
        packed += len(probe.encode(window)) - 16  # Blosc's header is not the data's
    return packed > raw * (1 - _MIN_SAVING)


@functools.lru_cache(maxsize=64)
def _raw_header(cname: str, shuffle: int, blocksize: int, dtype: str, nbytes: int) -> bytes:
    zeros = np.zeros(nbytes // np.dtype(dtype).itemsize, dtype)
    cfg = {"cname": cname, "clevel": 0, "shuffle": shuffle, "blocksize": blocksize}
    return bytes(Blosc(**cfg).encode(zeros)[:16])


def raw_header(cfg: dict[str, Any], dtype: np.dtype[Any], nbytes: int) -> bytes:
    """The 16-byte header of the Blosc frame ``cfg`` stores ``nbytes`` of ``dtype`` in
    uncompressed: Blosc's own (clevel 0), which does not depend on the bytes, so a chunk
    decoded right after it is its frame without being copied."""
    return _raw_header(cfg["cname"], cfg["shuffle"], cfg["blocksize"], np.dtype(dtype).str, nbytes)


def _chain(meta: dict[str, Any]) -> list[dict[str, Any]]:
    codecs = meta["codecs"]
    if codecs[0].get("name") == "sharding_indexed":
        return list(codecs[0]["configuration"]["codecs"])
    return list(codecs)


def holds_every(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Whether every value of ``src`` survives a cast to ``dst`` unchanged (float to a
    narrower float aside: see :func:`becomes_inf`). numpy calls int64 -> float64 safe, yet
    2**53 + 1 comes back as 2**53: integers count as held when each is within
    2**(mantissa + 1) (uint8, int16 -> float32; not int32). The one rule for ``to_zarr``
    and :class:`~daskimg.ArrayWriter`."""
    if src.kind in "iu" and dst.kind == "f":
        return src.itemsize * 8 - (src.kind == "i") <= np.finfo(dst).nmant + 1
    return bool(np.can_cast(src, dst, casting="safe"))


def _not_numbers(rows: np.ndarray) -> str | None:
    """What ``rows`` hold that is not a number (for a message), or None: text, an object
    that is no number (``None``, which the cast made NaN), complex or date values."""
    kind = rows.dtype.kind
    if kind in "biuf":
        return None
    if kind not in "OSUT":
        return f"{rows.dtype} values"
    for v in rows.ravel().tolist():
        if isinstance(v, str | bytes):
            return f"text such as {v!r}"
        if not isinstance(v, int | float | np.number | np.bool_):
            return f"{type(v).__name__} {v!r}, not a number"
    return None


def fitted(block: Any, name: str, dtype: np.dtype[Any]) -> np.ndarray:
    """A computed ``block`` of the lazy array ``name`` of numbers as its declared ``dtype``,
    the values checked by :func:`check_fits` first (a cast would store or feed 300 in a
    uint8 array as 44); a text array's block as it is (checked as text where stored)."""
    block = np.asarray(block)
    if block.dtype == dtype or dtype.kind in "OUST":
        return block
    check_fits(name, block, dtype)
    return block.astype(dtype)


def becomes_inf(values: np.ndarray, cast: np.ndarray) -> np.ndarray:
    """Where a finite float of ``values`` became infinite in ``cast`` (its narrower copy)."""
    return np.isfinite(values) & np.isinf(cast)


def vanishes(values: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """Whether a float of ``values`` other than 0 becomes 0 in the narrower float ``dtype``
    (float64 1e-300 in float32): only its smallest magnitude is cast."""
    if not values.size:
        return False
    with np.errstate(invalid="ignore"):
        tiny = np.fmin.reduce(np.abs(values), axis=None, where=values != 0, initial=np.inf)
    with np.errstate(under="ignore"):
        return bool(np.isfinite(tiny) and np.asarray(tiny, values.dtype).astype(dtype) == 0)


def check_fits(name: str, rows: np.ndarray, dtype: np.dtype[Any]) -> None:
    """Values of another dtype than the array's (a dask array whose blocks are not what it
    declares) must fit it, as the cast would change them: wrap (300 -> 44 in uint8), become
    infinity (1e39 in float32) or 0 (1e-300), round (2**24 + 1 in float32) or become True
    (2 in bool).
    Anything else in an array of numbers is refused: text (``"1.5"`` was parsed, ``"abc"``
    failed without the array's name), ``None`` (it became NaN), complex values; numbers
    in a text array are checked as text. A range test first spares the element-wise one."""
    what = _not_numbers(rows) if rows.size and dtype.kind in "biuf" else None
    if what is not None:
        raise ValueError(
            f"array {name!r} is {dtype} but a chunk of it holds {what} (a dask array whose "
            "blocks are not the dtype it declares?); convert it to numbers yourself, e.g. "
            "x.astype(float) with NaN for a missing value, or declare it as text (dtype=object)"
        )
    if not rows.size or rows.dtype.kind not in "biuf" or holds_every(rows.dtype, dtype):
        return
    lo, hi = rows.min(), rows.max()  # NaN when any is: then the element-wise test decides
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        whole = rows.dtype.kind != "f"
        if info.min <= lo and hi <= info.max and (whole or np.array_equal(rows, np.round(rows))):
            return
        bad = (rows < info.min) | (rows > info.max)
        if not whole:
            bad |= ~np.isfinite(rows) | (rows != np.round(rows))
    elif dtype.kind == "f" and rows.dtype.kind == "f":  # finite values stay finite, not 0
        big = np.finfo(dtype).max
        if -big <= lo and hi <= big and not vanishes(rows, dtype):
            return
        with np.errstate(over="ignore", under="ignore"):
            cast = rows.astype(dtype)
        bad = becomes_inf(rows, cast) | ((cast == 0) & (rows != 0))
    elif dtype.kind == "f":  # integers: every one within 2**(mantissa + 1) is held exactly
        exact = 2 ** (np.finfo(dtype).nmant + 1)
        if -exact <= int(lo) and int(hi) <= exact:
            return
        bad = (rows < -exact) | (rows > exact)
        far = rows[bad]  # held exactly or not: Python compares a float and an int exactly
        with np.errstate(over="ignore"):
            bad[bad] = far.astype(dtype).astype(object) != far.astype(object)
    else:  # bool
        bad = (rows != 0) & (rows != 1)
    if bad.any():
        raise ValueError(
            f"array {name!r} is {dtype} but a chunk of it holds {rows.dtype} values such as "
            f"{rows[bad].flat[0].item()!r}, which {dtype} cannot hold (a dask array whose "
            "blocks are not the dtype it declares?); cast it yourself, e.g. "
            f"x.astype({rows.dtype.name!r}) or np.clip first"
        )
