"""Feed: any batch of an epoch plan, read on demand by its index.

:class:`~daskimg.feed.BatchIterator` executes a plan front to back. Loops that ask for
batches by index, in any order (``keras.utils.PyDataset``, a map-style dataset), use
these instead:

- :class:`BatchReader`: batch ``i`` of an :class:`~daskimg.feed.shuffle.EpochPlan` names
  its samples, hence the chunks to read and the rows to take from each; the reader loads
  those chunks (in parallel threads), copies the rows into the batch and keeps the most
  recently used chunks in a small bounded cache, so the batches of one chunk group read
  each chunk once when asked for in order;
- :class:`EpochBatches`: batch ``b`` of epoch ``e`` of a source, from its settings
  (the plan of ``(seed, e)``, transform, scaling); picklable, a copy re-opens the store,
  so worker processes (:mod:`daskimg.feed.workers`) serve the same batches without
  importing any framework.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ChecksumError
from ..remote import anchored
from ..store.reader import RawChunk
from .checks import check_transform
from .iterator import Transform, check_transformed
from .plan import EpochPlan
from .shuffle import batch_rng, check_a_batch, num_batches, plan_epoch
from .source import FeedSource

__all__ = [
    "INDEX",
    "BatchReader",
    "EpochBatches",
    "ReadStats",
    "source_fingerprint",
]


#: The virtual array holding each sample's store index (int64): ``arrays=("images", "index")``.
INDEX = "index"


@dataclass(frozen=True)
class ReadStats:
    """What a :class:`BatchReader` has read so far.

    Parameters
    ----------
    samples_delivered
        Samples placed in batches.
    samples_loaded
        Samples of the chunks loaded (a chunk loaded twice counts twice).
    chunks_loaded, chunk_hits
        Chunk loads, and chunk uses served from the cache.
    peak_cached_chunks, peak_cached_bytes
        The most chunks (and bytes of decoded chunk arrays) the cache held at once.
    """

    samples_delivered: int = 0
    samples_loaded: int = 0
    chunks_loaded: int = 0
    chunk_hits: int = 0
    peak_cached_chunks: int = 0
    peak_cached_bytes: int = 0

    @property
    def amplification(self) -> float:
        """Samples loaded per sample delivered: 1.0 when every chunk was read once."""
        return self.samples_loaded / self.samples_delivered if self.samples_delivered else 0.0


class BatchReader:
    """Reads batch ``i`` of an epoch plan: only the chunks it needs, through a bounded cache.

    Parameters
    ----------
    source
        The arrays to read (:class:`~daskimg.feed.source.FeedSource`).
    cache_chunks
        Loaded chunks kept for the batches that follow. A loaded chunk holds, per array
        read chunk-wise, the decoded chunk (lz4/zstd and uncompressed stores, dask blocks:
        ``chunk_len`` samples of decoded pixels) or its encoded samples (JPEG and
        one-sample-per-chunk stores, decoded row by row into each batch). While a batch is
        being assembled its chunks stay in memory even if the cache has let go of them.
    threads
        Background threads that load (read, check, decompress) the chunks of a batch.
    names
        The arrays of each batch, in order (default: ``source.names``). :data:`INDEX` gives
        each sample's store index when the source holds no array of that name.

    Examples
    --------
    >>> from daskimg.feed.shuffle import plan_epoch  # doctest: +SKIP
    >>> src = FeedSource("out/train.zarr.zip", ["images", "labels"])  # doctest: +SKIP
    >>> plan = plan_epoch(src.n, src.chunk_len, batch_size=32, seed=0, epoch=0)  # doctest: +SKIP
    >>> reader = BatchReader(src, cache_chunks=16)  # doctest: +SKIP
    >>> batch = reader.read(plan, 5)  # {"images": ..., "labels": ...}  # doctest: +SKIP
    """

    def __init__(
        self,
        source: FeedSource,
        *,
        cache_chunks: int,
        threads: int = 2,
        names: Sequence[str] | None = None,
    ) -> None:
        for name, v in (("cache_chunks", cache_chunks), ("threads", threads)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.source = source
        self.cache_chunks = cache_chunks
        self.threads = threads
        self.names = tuple(source.names if names is None else names)
        unknown = [
            n for n in self.names if n != INDEX and n not in source.memory and n not in source.lazy
        ]
        if unknown:
            raise KeyError(f"arrays {unknown} are not in the source; it has {list(source.names)}")
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, Future[dict[str, Any]]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._sizes: dict[int, int] = {}  # bytes of the decoded arrays of each loaded chunk
        self._buffers: dict[str, list[np.ndarray]] = {}  # chunk buffers, reused once let go
        self._counts = dict.fromkeys(ReadStats.__dataclass_fields__, 0)

    # -- public -----------------------------------------------------------------------
    def read(self, plan: EpochPlan, i: int) -> dict[str, np.ndarray]:
        """Batch ``i`` of ``plan`` as ``{name: array}`` (new arrays, yours to keep)."""
        if plan.chunk_len != self.source.chunk_len:
            raise ValueError(
                f"the plan has chunk_len={plan.chunk_len}; the source has {self.source.chunk_len}"
            )
        idx = plan.batches[i]
        src = self.source
        out: dict[str, np.ndarray] = {}
        lazy = [n for n in self.names if n in src.lazy and n not in src.memory]
        if lazy and len(idx):
            bufs = {n: np.empty((len(idx), *src.shape(n)), dtype=src.dtype(n)) for n in lazy}
            chunk_of = idx // src.chunk_len
            by_chunk = np.argsort(chunk_of, kind="stable")
            chunks, starts = np.unique(chunk_of[by_chunk], return_index=True)
            loads = self._chunks([int(c) for c in chunks])
            ends = [*starts[1:].tolist(), len(idx)]
            for c, future, a, b in zip(chunks.tolist(), loads, starts.tolist(), ends, strict=True):
                loaded = future.result()  # a load error (e.g. a damaged chunk) raises here
                at = by_chunk[a:b]
                rows = idx[at] - c * src.chunk_len
                for n in lazy:
                    src.copy_rows(n, c, loaded[n], rows, bufs[n], at)
            out.update(bufs)
        elif lazy:
            out.update({n: np.empty((0, *src.shape(n)), dtype=src.dtype(n)) for n in lazy})
        for n in self.names:
            if n in src.memory:
                out[n] = src.memory[n][idx]
            elif n == INDEX and n not in out:
                out[n] = src.index(idx)
        with self._lock:
            self._counts["samples_delivered"] += len(idx)
        return {n: out[n] for n in self.names}

    def stats(self) -> ReadStats:
        """Counts of what has been read so far (see :class:`ReadStats`)."""
        with self._lock:
            return ReadStats(**self._counts)

    def clear(self) -> None:
        """Drop the cached chunks (loads under way finish, for the batches waiting on them)."""
        with self._lock:
            self._cache.clear()
            self._sizes.clear()

    def close(self) -> None:
        """Drop the cache and stop the loading threads."""
        self.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # threads, locks and loaded chunks stay behind
        for key in ("_lock", "_cache", "_pool", "_sizes", "_buffers", "_counts"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    # -- loading ----------------------------------------------------------------------
    def _chunks(self, chunks: list[int]) -> list[Future[dict[str, Any]]]:
        """A future of each loaded chunk: from the cache, or loaded now.

        The calling thread loads one missing chunk itself and the loading threads the
        others, in parallel; a chunk being loaded for another batch is waited for, not
        loaded twice.
        """
        futures: list[Future[dict[str, Any]]] = []
        new: list[tuple[int, Future[dict[str, Any]]]] = []
        with self._lock:
            hits = 0
            for c in chunks:
                f = self._cache.get(c)
                if f is not None and not (f.done() and f.exception() is not None):
                    self._cache.move_to_end(c)
                    hits += 1
                else:  # not loaded, or its load failed: read it (again)
                    f = Future()
                    new.append((c, f))
                    self._cache[c] = f
                futures.append(f)
            while len(self._cache) > self.cache_chunks:
                old, _ = self._cache.popitem(last=False)
                self._sizes.pop(old, None)
            counts = self._counts
            counts["chunk_hits"] += hits
            counts["chunks_loaded"] += len(new)
            counts["peak_cached_chunks"] = max(counts["peak_cached_chunks"], len(self._cache))
            if len(new) > 1 and self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="daskimg-batch")
            pool = self._pool
        if new:
            self._read_ahead([c for c, _ in new])
            for c, f in new[1:]:
                assert pool is not None
                pool.submit(self._fill, c, f)
            self._fill(*new[0])
        return futures

    def _fill(self, c: int, future: Future[dict[str, Any]]) -> None:
        try:
            future.set_result(self._load(c))
        except BaseException as e:  # the batches waiting for it raise it
            future.set_exception(e)

    def _read_ahead(self, chunks: list[int]) -> None:
        """Ask the kernel for several chunks at once (a cold store reads them in large reads)."""
        reader = self.source.reader
        if reader is None or len(chunks) < 2:
            return
        for c in chunks:
            for name in self.source.fast:
                reader.will_need(name, c)

    def _load(self, c: int) -> dict[str, Any]:
        """Chunk ``c`` of every chunk-wise array, checked (in a loading thread)."""
        src = self.source
        a, b = src.rows(c)
        # chunks are decoded into buffers of their own (not the usual per-thread scratch),
        # which the cache keeps; a buffer no cached chunk uses any more is decoded into again
        decoded = [n for n in src.fast if n not in src.per_sample]
        loaded = src.load(c, {n: self._buffer(n) for n in decoded})
        nbytes = 0
        for name, chunk in loaded.items():
            if isinstance(chunk, RawChunk):
                # uncompressed: copy out and check once, not at every batch that uses it
                arr = self._buffer(name)[: b - a]
                every = np.arange(b - a)
                chunk.copy_to([(arr, every, every)])
                loaded[name] = chunk = arr
            if isinstance(chunk, np.ndarray):
                nbytes += chunk.nbytes
        with self._lock:
            counts = self._counts
            counts["samples_loaded"] += b - a
            if c in self._cache:
                self._sizes[c] = nbytes
                held = sum(self._sizes.values())
                counts["peak_cached_bytes"] = max(counts["peak_cached_bytes"], held)
        return loaded

    def _buffer(self, name: str) -> np.ndarray:
        """A chunk-sized array for ``name`` that no loaded chunk uses (no new pages when reused).

        A loaded chunk is a view of its buffer, so a buffer is free once every view of it is
        gone (evicted from the cache, and no batch still copying from it). Reusing buffers
        instead of allocating one per load keeps memory at what the cache holds: a fresh
        chunk-sized array per load fragments the heap (+16 MB resident with a 12 MB cache).
        """
        src = self.source
        with self._lock:
            pool = self._buffers.setdefault(name, [])
            for buf in pool:
                # references: the pool's list, getrefcount's argument and the loop variable
                if sys.getrefcount(buf) <= 3:
                    return buf
            buf = np.empty((src.chunk_len, *src.shape(name)), dtype=src.dtype(name))
            if len(pool) < self.cache_chunks + self.threads + 2:
                pool.append(buf)
            return buf


def source_fingerprint(source: FeedSource) -> str:
    """A short digest of what a source is: its length, chunking and store attributes.

    Equal for the same store wherever it lies (moved, copied, opened as a path or an
    ImageSet), different for another split, seed, codec or number of samples. Sources
    that are not stores (arrays in memory, dask arrays) are told apart only by length
    and chunking.

    Examples
    --------
    >>> source_fingerprint(FeedSource("out/train.zarr.zip", None))  # doctest: +SKIP
    'a3f09c51d2e47b80'
    """
    keys = ("format_version", "split", "order", "seed", "codec", "classes", "source", "num_samples")
    what = {
        "num_samples": source.n,
        "chunk_len": source.chunk_len,
        "attrs": {k: source.attrs.get(k) for k in keys if k in source.attrs},
    }
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def auto_scale(dtype: np.dtype[Any], ndim: int) -> float:
    """What ``scale="auto"`` divides images of ``dtype`` by: 255 for uint8, 65535 for
    uint16 (0..1 either way); floats (already scaled, or not images at all) and other
    types by 1, as :class:`daskimg.torch.TorchDataset` does. Volumes (``ndim`` 5: a batch
    ``(N, D, H, W, C)``) by 1 whatever their type: their values are measurements (a CT's
    units, a label volume's classes), kept as stored."""
    if ndim >= 5:
        return 1.0
    return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(np.dtype(dtype), 1.0)


def check_auto_scale(transform: Any, first: Any, images: np.ndarray, fix: str) -> Any:
    """Refuse a batch whose images a transform returned in a type ``scale="auto"`` divides by
    another number than the type of an earlier batch's (``first``; None: this is the first):
    a brightness transform's float maths on some uint8 batches made those 0..255 (floats,
    divided by 1) beside 0..1 ones (uint8, by 255), fed on two scales without a word. A
    transform that always returns one type (floats it scaled itself) is its own business.
    Returns the type later batches are compared with. ``fix``: how to choose the scale."""
    if first is None:
        return images.dtype
    given = images.dtype
    was, now = auto_scale(first, images.ndim), auto_scale(given, images.ndim)
    if was != now:
        example = f" (e.g. np.clip(x, 0, {was:g}).astype(np.{first}))" if first.kind in "iu" else ""
        raise ValueError(
            f"transform {transform!r} returned the images as {given} in this batch and as "
            f"{first} in an earlier one: scaled automatically, {first} images are divided by "
            f"{was:g} and {given} ones by {now:g}, so batches would come on two scales. "
            f"Return one type always{example}, or {fix}"
        )
    return first


def _check_float32_keeps(images: np.ndarray, scale: float = 1.0) -> None:
    """Refuse integer images float32 would round (beyond 2**24: an int32 label volume of
    IDs, whose 16777217 came out as 16777216), and float64 ones that divided by ``scale``
    lie beyond float32's largest finite value (1e39 came out as inf) or below its smallest
    (1e-300 came out as 0)."""
    if images.dtype.kind == "f" and images.dtype.itemsize > 4 and images.size:
        with np.errstate(invalid="ignore"):
            finite = np.abs(images[np.isfinite(images)])
        big = float(finite.max()) if finite.size else 0.0
        small = float(np.fmin.reduce(finite, where=finite > 0, initial=np.inf))
        becomes = None
        if big / scale > float(np.finfo(np.float32).max):
            value, becomes, fix = big, "infinity", "a larger scale"
        elif np.isfinite(small) and np.float32(small / scale) == 0:
            value, becomes, fix = small, "0", "a smaller scale"
        if becomes is not None:
            value = float(images[np.abs(images) == value].flat[0])  # with its sign
            raise ValueError(
                f"images hold {value:g} ({images.dtype}), which is {becomes} in float32"
                + (f" after dividing by scale={scale:g}" if scale != 1 else "")
                + f"; pass {fix}, or scale=None to keep them as stored"
            )
        return
    if images.dtype.kind not in "iu" or images.dtype.itemsize < 4 or not images.size:
        return
    lo, hi = int(images.min()), int(images.max())
    if max(-lo, hi) > 2**24:
        raise ValueError(
            f"images hold {hi if hi > -lo else lo} ({images.dtype}), which float32 would "
            "round: it holds whole numbers exactly only up to 2**24. Pass scale=None to "
            "keep them as stored"
        )


class EpochBatches:
    """Batch ``b`` of epoch ``e`` of a source: plan, read, transform, scale.

    Parameters
    ----------
    source
        A store path, an ImageSet or arrays, as for :class:`~daskimg.feed.BatchIterator`.
    names
        The arrays of each batch; :data:`INDEX` is each sample's store index.
    batch_size, seed, shuffle, buffer_chunks, drop_last
        The plan of each epoch: ``plan_epoch(..., seed=seed, epoch=e, ...)``, one consumer.
    transform
        ``transform(batch, batch_rng(seed, e, b, 0))``: batch ``b`` is augmented the same
        way whenever it is read (and as ``BatchIterator`` augments its batch ``b``).
    scale
        Divide ``images`` by this, as float32 (None: as stored; ``"auto"``: by the
        largest value of their integer type, :func:`auto_scale`).
    cache_chunks, threads
        Of the :class:`BatchReader`. ``cache_chunks=None`` keeps three chunk groups,
        ``3 * max(buffer_chunks, ceil(batch_size / chunk_len))``: a batch draws from its
        group and the one before, and batches read ahead in order from the next one
        (about what :class:`~daskimg.feed.BatchIterator` holds with ``prefetch=1``).
    storage_options
        For a store URL, as for :func:`daskimg.open_zarr`.

    Notes
    -----
    A pickled copy holds the settings and the source as given (a path, not its open
    files) and opens it again where it is unpickled.

    Examples
    --------
    >>> batches = EpochBatches("out/train.zarr.zip", ["images", "labels"], batch_size=32,
    ...                        seed=0)  # doctest: +SKIP
    >>> batch = batches.read(epoch=3, b=7)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Any,
        names: Sequence[str],
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        buffer_chunks: int = 8,
        drop_last: bool = False,
        transform: Transform | None = None,
        scale: float | str | None = None,
        cache_chunks: int | None = None,
        threads: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        source = anchored(source)  # a spawned worker opens the store again by it
        if not (
            scale is None
            or scale == "auto"
            or (isinstance(scale, numbers.Real) and not isinstance(scale, bool)
                and math.isfinite(scale) and scale > 0)
        ):  # fmt: skip
            raise ValueError(
                f"scale must be a positive number, 'auto' or None; got {scale!r} (0 or NaN "
                "made every batch NaN, a negative one flipped the images' sign)"
            )
        self.source = source
        self.names = tuple(dict.fromkeys(names))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.buffer_chunks = buffer_chunks
        self.drop_last = drop_last
        self.transform = transform
        self.scale = scale
        self.cache_chunks = cache_chunks
        self.threads = threads
        self.storage_options = storage_options
        self._open()

    def _open(self) -> None:
        names = list(self.names)
        try:
            src = FeedSource(self.source, names, self.storage_options)
        except KeyError:
            if INDEX not in names:
                raise
            # no array called "index" in the source: the reader gives the store indices
            rest = [n for n in names if n != INDEX] or None
            src = FeedSource(self.source, rest, self.storage_options)
        check_transform(self.transform, src)
        per_group = max(self.buffer_chunks, -(-self.batch_size // src.chunk_len))
        cache = 3 * per_group if self.cache_chunks is None else self.cache_chunks
        self.reader = BatchReader(src, cache_chunks=cache, threads=self.threads, names=names)
        self.num_batches = num_batches(
            src.n, src.chunk_len, batch_size=self.batch_size, drop_last=self.drop_last
        )
        check_a_batch(src.n, batch_size=self.batch_size, drop_last=self.drop_last)
        # a spawned worker opens the store again: it must be the store this was made from
        # (rewritten since, by a re-run of an ingest cell, the worker read the new one)
        made = source_fingerprint(src)
        was = getattr(self, "_made_from", None)
        if was is not None and was != made:
            self.reader.close()
            raise ChecksumError(
                f"{self.source!r}: the store was replaced since this dataset was made (written "
                "again, e.g. to_zarr(..., overwrite=True)): its samples and counts are not "
                "the ones the dataset was planned for. Make the dataset again"
            )
        self._made_from = made
        self._plan_lock = threading.Lock()
        self._plan: tuple[int, EpochPlan] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("reader", "num_batches", "_plan_lock", "_plan"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        try:
            self._open()  # the store is opened again, in this process
        except Exception as e:  # the store replaced, moved away, unreadable
            # a worker process is set up while unpickling: raised here, it died unheard
            # (BrokenProcessPool); kept, it is raised by the first read, which reports it
            self._broken: Exception | None = e

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of epoch ``epoch`` (the last one asked for is kept)."""
        with self._plan_lock:
            if self._plan is None or self._plan[0] != epoch:
                src = self.reader.source
                plan = plan_epoch(
                    src.n,
                    src.chunk_len,
                    batch_size=self.batch_size,
                    seed=self.seed,
                    epoch=epoch,
                    shuffle=self.shuffle,
                    buffer_chunks=self.buffer_chunks,
                    drop_last=self.drop_last,
                )
                self._plan = (epoch, plan)
            return self._plan[1]

    def read(self, epoch: int, b: int) -> dict[str, np.ndarray]:
        """Batch ``b`` of epoch ``epoch``: ``{name: array}``, transformed and scaled."""
        broken = getattr(self, "_broken", None)
        if broken is not None:
            raise broken
        plan = self.plan(epoch)
        batch = self.reader.read(plan, b)
        if self.transform is not None:
            given = tuple(batch)
            batch = self.transform(batch, batch_rng(self.seed, epoch, b, 0))
            check_transformed(self.transform, given, batch, len(plan.batches[b]))
        if self.scale is not None and "images" in batch:
            images = batch["images"]
            if self.scale == "auto" and self.transform is not None:
                self._first_type = check_auto_scale(
                    self.transform, getattr(self, "_first_type", None), images,
                    "pass scale= yourself (255.0 if they keep 0..255, 1.0 if the transform "
                    "scales them)",
                )  # fmt: skip
            scale = auto_scale(images.dtype, images.ndim) if self.scale == "auto" else self.scale
            _check_float32_keeps(images, float(scale))
            if images.dtype.kind == "f" and images.dtype.itemsize > 4:
                # divided where the values fit: 1e39 / 10 is no inf
                images = (images / np.float64(scale)).astype(np.float32)
            else:
                images = images.astype(np.float32)
                if scale != 1:
                    images /= np.float32(scale)
            batch["images"] = images
        return batch

    def close(self) -> None:
        """Stop the reader's threads and drop its cached chunks."""
        self.reader.close()
