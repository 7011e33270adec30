"""Feed: measure a store's loader throughput on this machine (``daskimg bench``)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .chunks import StoreReader
from .feed import BatchIterator
from .shuffle import chunk_order

__all__ = ["bench_store", "raw_limit"]


def raw_limit(
    path: str | os.PathLike[str], *, threads: int = 2, seed: int = 0, name: str = "images"
) -> float:
    """Samples/s of the bare limit: read + check + decompress every chunk, in random order.

    Each thread decodes into its own reused buffer; nothing else is done with the data (no
    shuffle, no batches). It uses the fastest read the store allows: whole chunks with
    ``pread``, or, for stores with one inner chunk per sample, the memory map and
    per-sample decode that the loader itself uses.
    """
    reader = StoreReader(path)
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
    path: str | os.PathLike[str], *, batch_size: int = 64, epochs: int = 3, threads: int = 2
) -> dict[str, Any]:
    """Throughput of :class:`BatchIterator` (shuffled) against :func:`raw_limit`, same run.

    A first pass of each warms the page cache and is not counted; then limit and iterator
    epochs alternate (so both see the same machine load) and medians are reported.
    """
    it = BatchIterator(path, batch_size=batch_size, threads=threads)
    limits, rates = [], []
    first = None
    for epoch in range(epochs + 1):
        limit = raw_limit(path, threads=threads, seed=epoch)
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
