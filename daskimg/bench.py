"""Feed: measure a store's loader throughput on this machine (``daskimg bench``)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .feed.iterator import BatchIterator
from .feed.shuffle import chunk_order
from .store.reader import StoreReader

#: what ``daskimg bench --codecs`` compares by default: every lossless codec, and JPEG
#: at two qualities (lower decodes faster and is smaller, at some loss of fidelity)
BENCH_CODECS = ("lz4", "zstd", "none", "jpeg:90", "jpeg:75")
__all__ = [
    "BENCH_CODECS",
    "CodecResult",
    "Recommendation",
    "bench_store",
    "compare_codecs",
    "evict",
    "raw_limit",
    "recommend",
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
    it = BatchIterator(_local(path), batch_size=batch_size, threads=threads)
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


def compare_codecs(
    path: str | os.PathLike[str],
    *,
    samples: int = 2000,
    codecs: Sequence[str] | None = None,
    batch_size: int = 64,
    epochs: int = 2,
    threads: int = 2,
) -> list[CodecResult]:
    """Re-encode the first ``samples`` of a store with each codec and measure them here.

    The copies are written next to the store (same disk) and removed afterwards. Each is
    fed shuffled for ``epochs`` from the page cache (warm) and ``epochs`` from disk
    (cold: dropped from the page cache before each), after one pass that is not counted.
    ``codecs`` are codec specs (``"lz4"``, ``"jpeg:80"``...; default :data:`BENCH_CODECS`).
    Codecs that cannot hold the images (``"jpeg"``: uint8 with 1 or 3 channels) are left out.

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

    ds = open_zarr(_local(path))
    images = ds.require_images()
    n = min(samples, len(ds))
    pixels = np.asarray(images[:n].compute())
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
            copy = to_zarr(
                sample,
                os.path.join(tmp, f"{codec.replace(':', '-')}.zarr.zip"),
                codec=codec,
                order="source",
            )
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
                )
            )
            os.remove(copy)
    return out


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


@dataclass(frozen=True)
class Recommendation:
    """The codec :func:`recommend` picks, whether it meets the target, and why."""

    codec: str
    rate: float  # samples/s expected for the whole store (warm or cold, see ``fits``)
    fits_in_memory: bool
    meets_target: bool | None  # None: no target given
    text: str


def recommend(
    results: Sequence[CodecResult], *, target: float | None = None, memory: int | None = None
) -> Recommendation:
    """Pick a codec for a store from :func:`compare_codecs` results.

    A store that fits in half of this machine's memory (``memory``, default: its RAM)
    is read warm after the first epoch; a larger one is read from disk every epoch, so
    its cold rate counts. Lossless codecs come first: among those fast enough for
    ``target`` the smallest wins (without a target, the fastest). Only when no lossless
    codec is fast enough is a lossy one (``"jpeg[:Q]"``) proposed: the most faithful
    (highest PSNR) of those fast enough.
    """
    if not results:
        raise ValueError("no codec results to choose from; run compare_codecs first")
    memory = memory or _memory_bytes()

    def rate(r: CodecResult) -> float:
        return r.warm if r.store_bytes < memory / 2 else r.cold

    def lossy_codec(r: CodecResult) -> bool:  # exact on the measured samples is not lossless
        return r.psnr != float("inf") or r.codec.partition(":")[0] == "jpeg"

    lossless = [r for r in results if not lossy_codec(r)]
    lossy = [r for r in results if lossy_codec(r)]
    if target is None:
        best = max(lossless or results, key=rate)
        why = "the fastest lossless codec here"
    else:
        fast = [r for r in lossless if rate(r) >= target]
        fast_lossy = [r for r in lossy if rate(r) >= target]
        if fast:
            best = min(fast, key=lambda r: r.store_bytes)
            why = f"the smallest lossless codec that keeps up with {target:,.0f} samples/s"
        elif fast_lossy:
            best = max(fast_lossy, key=lambda r: (r.psnr, -r.store_bytes))
            why = (
                f"no lossless codec keeps up with {target:,.0f} samples/s here; this one is "
                f"lossy ({best.psnr:.1f} dB PSNR): check that your model tolerates it"
            )
        else:
            best = max(results, key=rate)
            why = (
                f"none keeps up with {target:,.0f} samples/s; this is the fastest. Feed from more "
                "processes (DataLoader workers), or keep the store in the page cache (more RAM)"
            )
    fits = best.store_bytes < memory / 2
    text = (
        f'codec "{best.codec}": {why}. The whole store would be {_human(best.store_bytes)} '
        f"(compression {best.ratio:.2f}x), "
        + (
            f"which fits in memory: {best.warm:,.0f} samples/s after the first epoch."
            if fits
            else f"more than half of the memory: read from disk every epoch, {best.cold:,.0f} samples/s."
        )
    )
    return Recommendation(
        best.codec, rate(best), fits, None if target is None else rate(best) >= target, text
    )


def _memory_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
