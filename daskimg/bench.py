"""Feed: measure a store's loader throughput on this machine (``daskimg bench``)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .feed.iterator import BatchIterator
from .feed.shuffle import chunk_order
from .store.choose import GOALS, Recommendation, recommend, size_summary
from .store.reader import StoreReader

#: what ``daskimg bench --codecs`` compares by default: every lossless codec, and JPEG
#: at two qualities (lower decodes faster and is smaller, at some loss of fidelity)
BENCH_CODECS = ("lz4", "zstd", "none", "jpeg:90", "jpeg:75")
__all__ = [
    "BENCH_CODECS",
    "GOALS",
    "CodecResult",
    "Hdf5Result",
    "Recommendation",
    "bench_store",
    "compare_codecs",
    "evict",
    "measure_hdf5",
    "raw_limit",
    "recommend",
    "sample_count",
    "size_summary",
]


def evict(paths: Sequence[str | os.PathLike[str]]) -> int:
    """Drop stores or files (folders: every file below) from the page cache; return their bytes.

    For measuring cold reads (data bigger than RAM) without privileges: files are
    ``fsync``-ed first (dirty pages cannot be dropped). daskimg reads stores with
    ``pread`` (no memory maps, which would pin pages), so it can run between any epochs.
    """
    total = 0
    for p in paths:
        p = os.fspath(p)
        files = (
            [os.path.join(d, f) for d, _, names in os.walk(p) for f in names]
            if os.path.isdir(p)
            else [p]
        )
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def raw_limit(
    path: str | os.PathLike[str], *, threads: int = 2, seed: int = 0, name: str = "images"
) -> float:
    """Samples/s of the bare limit: read + check + decompress every chunk, in random order.

    Each thread decodes into its own reused buffer; nothing else is done with the data (no
    shuffle, no batches). It uses the fastest read the store allows: whole chunks with
    ``pread``, or, for stores with one inner chunk per sample, the memory map and
    per-sample decode that the loader itself uses.
    """
    reader = StoreReader(_local(path))
    lay = reader.layout(name)
    order = chunk_order(lay.num_chunks, seed=seed, epoch=0, shuffle=True)
    bufs: dict[int, np.ndarray] = {}

    def work(c: int) -> None:
        import threading

        buf = bufs.setdefault(
            threading.get_ident(), np.empty((lay.chunk_len, *lay.shape[1:]), lay.dtype)
        )
        a, b = lay.chunk_rows(int(c))
        if lay.per_sample:
            rows = range(b - a)
            reader.decode_rows(name, reader.read_unit(name, int(c)), rows, buf, rows, first=a)
        else:
            reader.read_chunk(name, int(c), out=buf[: b - a])

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, order))
    return lay.shape[0] / (time.perf_counter() - t)


def bench_store(
    path: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    epochs: int = 3,
    threads: int = 2,
    cold: bool = False,
) -> dict[str, Any]:
    """Throughput of :class:`BatchIterator` (shuffled) against :func:`raw_limit`, same run.

    A first pass of each is not counted (it warms the page cache and the buffers); then
    limit and iterator epochs alternate (so both see the same machine load) and medians
    are reported. ``cold``: the store is dropped from the page cache (:func:`evict`)
    before every pass, as when it is bigger than RAM.
    """
    from .store.open import open_zarr

    opened = open_zarr(_local(path))
    if opened.images is None:  # (raw_limit would call the missing images damage)
        raise ValueError(
            f"{os.fspath(path)!r} holds no images, only {sorted(opened.arrays)} (a store "
            "ArrayWriter wrote); bench measures how fast a store's images are fed: give it "
            "an image store"
        )
    it = BatchIterator(opened, batch_size=batch_size, threads=threads)
    limits, rates = [], []
    first = None
    for epoch in range(epochs + 1):
        if cold:
            evict([path])
        limit = raw_limit(path, threads=threads, seed=epoch)
        if cold:
            evict([path])
        n = 0
        t = time.perf_counter()
        for batch in it:
            if first is None:
                first = time.perf_counter() - t
            n += len(batch[0])
        rate = n / (time.perf_counter() - t)
        if epoch > 0 or epochs == 0:
            limits.append(limit)
            rates.append(rate)
    it.close()
    return {
        "limit": float(np.median(limits)),
        "rate": float(np.median(rates)),
        "ratio": float(np.median([r / lim for r, lim in zip(rates, limits, strict=True)])),
        "first_batch_s": first or 0.0,
        "epochs": rates,
    }


@dataclass(frozen=True)
class CodecResult:
    """One codec measured on a sample of a store (see :func:`compare_codecs`)."""

    codec: str
    ratio: float  # raw bytes / stored bytes
    warm: float  # shuffled samples/s from the page cache
    cold: float  # shuffled samples/s with the store dropped from the page cache
    psnr: float  # dB against the stored pixels; inf = lossless
    store_bytes: int  # the whole store's projected size in this codec
    write: float = 0.0  # samples/s written from memory (encode + pack + fsync); 0: not measured


@dataclass(frozen=True)
class Hdf5Result:
    """The same samples written with h5py, for comparison (see :func:`measure_hdf5`)."""

    compression: str  # h5py's filter: "lzf", "gzip"
    chunk_len: int  # samples per HDF5 chunk: as daskimg's copies (see :func:`sample_count`)
    ratio: float  # raw bytes / stored chunk bytes
    store_bytes: int  # the whole store's projected size in HDF5
    write: float  # samples/s: create_dataset from memory, close and fsync

    @property
    def name(self) -> str:
        """``"HDF5 LZF"``."""
        return f"HDF5 {self.compression.upper()}"


def compare_codecs(
    path: str | os.PathLike[str],
    *,
    samples: int = 2000,
    codecs: Sequence[str] | None = None,
    batch_size: int = 64,
    epochs: int = 2,
    threads: int = 2,
    progress: Callable[[str, CodecResult | None], None] | None = None,
) -> list[CodecResult]:
    """Re-encode the first ``samples`` of a store with each codec and measure them here.

    The samples are cut to whole chunks of daskimg's default length (see
    :func:`sample_count`); the copies' sizes are projected to the whole store (``store_bytes``).
    The copies are written next to the store (same disk) and removed afterwards. Each is
    fed shuffled for ``epochs`` from the page cache (warm) and ``epochs`` from disk
    (cold: dropped from the page cache before each), after one pass that is not counted.
    ``codecs`` are codec specs (``"lz4"``, ``"jpeg:80"``...; default :data:`BENCH_CODECS`).
    Codecs that cannot hold the images (``"jpeg"``: uint8 with 1 or 3 channels) are left out.
    ``progress(codec, None)`` is called when a codec starts, ``progress(codec, result)``
    when it is measured (a measurement takes seconds to a minute per codec).

    Examples
    --------
    >>> rows = compare_codecs("out/train.zarr.zip", samples=500)  # doctest: +SKIP
    >>> print(recommend(rows, target=3000).text)  # doctest: +SKIP
    """
    from .read.imageset import ImageSet
    from .store.codecs import parse_codec
    from .store.jpeg import check_image_shape
    from .store.open import open_zarr
    from .store.write import to_zarr
    from .storeinfo import info

    ds, pixels, chunk_len = _load_sample(path, samples)
    n = len(pixels)
    labels = None if ds.labels is None else ds.labels[:n]
    sample = ImageSet(pixels, labels, classes=ds.classes)
    full_raw = pixels[0].nbytes * len(ds) if n else 0
    where = os.path.dirname(os.path.abspath(os.fspath(path)))
    out = []
    with tempfile.TemporaryDirectory(prefix=".daskimg-bench-", dir=where) as tmp:
        specs = list(codecs or BENCH_CODECS)
        for codec in specs:
            parse_codec(codec)  # a typo fails before anything is measured
        try:
            check_image_shape(pixels.shape, pixels.dtype, "this store's images")
        except ValueError:  # JPEG cannot hold them: leave it out
            specs = [c for c in specs if parse_codec(c)[0] != "jpeg"]
            if not specs:
                raise ValueError(
                    f"JPEG cannot hold this store's images ({pixels.dtype}, shape "
                    f"{pixels.shape[1:]}: it needs uint8 with 1 or 3 channels), and no other "
                    "codec was asked for; add lz4, zstd or none"
                ) from None
        for codec in specs:
            if progress is not None:
                progress(codec, None)
            t = time.perf_counter()
            copy = to_zarr(
                sample,
                os.path.join(tmp, f"{codec.replace(':', '-')}.zarr.zip"),
                chunks=chunk_len,
                codec=codec,
                order="source",
            )  # fsynced
            write = n / (time.perf_counter() - t)
            stored = int(info(copy)["arrays"]["images"]["stored_bytes"])
            back = np.asarray(open_zarr(copy).require_images()[: min(n, 256)].compute())
            warm = bench_store(copy, batch_size=batch_size, epochs=epochs, threads=threads)
            cold = bench_store(
                copy, batch_size=batch_size, epochs=epochs, threads=threads, cold=True
            )
            ratio = pixels.nbytes / max(stored, 1)
            out.append(
                CodecResult(
                    codec,
                    ratio,
                    warm["rate"],
                    cold["rate"],
                    _psnr(pixels[: len(back)], back),
                    int(full_raw / ratio),
                    write,
                )
            )
            os.remove(copy)
            if progress is not None:
                progress(codec, out[-1])
    return out


def measure_hdf5(
    path: str | os.PathLike[str], *, samples: int = 2000, compression: str = "lzf"
) -> Hdf5Result:
    """Write the first ``samples`` of a store to HDF5 with h5py, as many pipelines store images.

    One dataset of the images, chunked like :func:`compare_codecs`'s copies (daskimg's
    default, about 8 MiB of pixels a chunk; HDF5 chunks, like Zarr's, are compressed one
    at a time), with h5py's ``compression`` filter (``"lzf"``: HDF5's fast lossless
    filter; ``"gzip"``), written next to the store and removed afterwards. The size is HDF5's own count of the dataset's stored chunk
    bytes (``get_storage_size``), projected to the whole store like :func:`compare_codecs`.
    Needs h5py (``pip install h5py``).
    """
    try:
        import h5py
    except ImportError as e:  # an optional dependency (daskimg[bench])
        raise ImportError(f"measuring HDF5 {compression} needs h5py: pip install h5py") from e
    from .store.location import fsync_path

    ds, pixels, chunk_len = _load_sample(path, samples)
    if not len(pixels):
        raise ValueError(f"{os.fspath(path)}: the store has no samples to measure")
    where = os.path.dirname(os.path.abspath(os.fspath(path)))
    with tempfile.TemporaryDirectory(prefix=".daskimg-bench-", dir=where) as tmp:
        file = os.path.join(tmp, "images.h5")
        t = time.perf_counter()
        with h5py.File(file, "w") as f:
            f.create_dataset(
                "images",
                data=pixels,
                chunks=(chunk_len, *pixels.shape[1:]),
                compression=compression,
            )
        fsync_path(file)
        write = len(pixels) / (time.perf_counter() - t)
        with h5py.File(file, "r") as f:
            stored = int(f["images"].id.get_storage_size())
    ratio = pixels.nbytes / max(stored, 1)
    return Hdf5Result(compression, chunk_len, ratio, int(pixels[0].nbytes * len(ds) / ratio), write)


def sample_count(path: str | os.PathLike[str], samples: int) -> tuple[int, int]:
    """``(measured, total)``: how many of a store's samples :func:`compare_codecs` measures.

    The first ``samples``, cut to whole chunks when that leaves at least one: a partial
    last chunk is stored at full length, which would bias the projection to the whole
    store. All of them when ``samples`` covers the store. Chunks here are daskimg's
    default (about 8 MiB of pixels, what ``to_zarr`` and ``ingest`` write by default).
    """
    return _sample_plan(path, samples)[1:3]


def _sample_plan(path: str | os.PathLike[str], samples: int) -> tuple[Any, int, int, int]:
    """The store's ImageSet, samples to measure, the store's length, and the copies' chunk."""
    from .store.format import auto_chunk_len
    from .store.open import open_zarr

    ds = open_zarr(_local(path))
    total = len(ds)
    images = ds.require_images()
    n = min(max(samples, 0), total)
    chunk_len = auto_chunk_len(images.shape[1:], images.dtype, n)
    if n < total:
        n -= n % chunk_len
    return ds, n, total, chunk_len


def _load_sample(path: str | os.PathLike[str], samples: int) -> tuple[Any, np.ndarray, int]:
    """The store's ImageSet, the pixels of the samples to measure, samples per chunk."""
    ds, n, _, chunk_len = _sample_plan(path, samples)
    return ds, np.asarray(ds.require_images()[:n].compute()), chunk_len


def _local(path: str | os.PathLike[str]) -> str:
    """``path`` if it is a local store; a clear error for a URL."""
    from .remote import is_url

    if is_url(path):
        raise ValueError(
            f"{path!r} is a URL; the benchmark measures reading from this machine's disk. "
            "Copy the store to local disk first (one file: one download) and bench that copy."
        )
    return os.fspath(path)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of ``b`` against ``a``; inf when equal (NaN where ``a`` has NaN counts as equal)."""
    if np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
        return float("inf")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    top = float(np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else 1.0
    return float("inf") if mse == 0 else 10 * float(np.log10(top**2 / mse))
