"""Feed: the chunk-aware shuffled :class:`BatchIterator`.

It executes a plan from :mod:`daskimg.shuffle`: whole chunks are read in a random order
by background threads (reading and decompressing release the GIL), decoded straight
into a contiguous buffer per group of ``buffer_chunks`` chunks, and batches are gathered
from that buffer with one ``take`` per array. At most the current group, the previous
one (a batch may straddle them) and ``prefetch`` groups ahead are in memory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np

from .chunks import StoreReader
from .imageset import ImageSet
from .shuffle import EpochPlan, epoch_rng, num_batches, plan_epoch
from .store import open_zarr

__all__ = ["BatchIterator"]

Transform = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]


class _Source:
    """Per-sample arrays split into chunks of ``chunk_len`` rows along axis 0.

    Small arrays live in memory (``memory``); large ones are read chunk by chunk,
    from a store file (``reader``) or by computing dask blocks (``lazy``).
    """

    def __init__(self, source: Any, names: Sequence[str] | None) -> None:
        self.reader: StoreReader | None = None
        self.memory: dict[str, np.ndarray] = {}
        self.lazy: dict[str, da.Array] = {}
        self.attrs: dict[str, Any] = {}
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            ds = open_zarr(path)  # checks version and completeness
            self.attrs = ds.attrs
            self.reader = StoreReader(path)
            arrays = ds.arrays
        elif isinstance(source, ImageSet):
            arrays = source.arrays
            self.attrs = source.attrs
            path = source.store_path
            if path is not None:
                self.reader = StoreReader(path)
        elif isinstance(source, Mapping):
            arrays = dict(source)
        elif isinstance(source, (tuple, list)):
            arrays = {
                ("images", "labels")[i] if i < 2 else f"array{i}": a for i, a in enumerate(source)
            }
        elif isinstance(source, (da.Array, np.ndarray)):
            arrays = {"images": source}
        else:
            raise TypeError(
                "source must be a store path, an ImageSet, a dask/numpy array, or a dict or tuple of them; "
                f"got {type(source).__name__}"
            )
        if names is None:
            names = [n for n in ("images", "labels") if n in arrays]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise KeyError(f"arrays {missing} are not in the source; it has {sorted(arrays)}")
        self.names = tuple(names)
        lengths = {n: len(arrays[n]) for n in self.names}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must have the same length; got {lengths}")
        self.n = next(iter(lengths.values()))
        self.chunk_len = 1
        for name in self.names:
            a = arrays[name]
            if isinstance(a, da.Array):
                self.lazy[name] = a
            else:
                self.memory[name] = np.asarray(a)
        chunk_lens = {n: _regular_chunk_len(a) for n, a in self.lazy.items()}
        if chunk_lens:
            self.chunk_len = max(chunk_lens.values())
            for n, a in self.lazy.items():
                if a.chunks[0][:-1] != (self.chunk_len,) * (len(a.chunks[0]) - 1):
                    self.lazy[n] = a.rechunk({0: self.chunk_len})
        else:
            self.chunk_len = max(1, min(self.n, 1024))
        if self.reader is not None:
            self.fast = {
                n
                for n in self.lazy
                if self.reader.layout(n).kind and self.reader.layout(n).chunk_len == self.chunk_len
            }
        else:
            self.fast = set()
        reader = self.reader
        #: arrays stored one sample per inner chunk: decoded straight into batch rows
        self.per_sample = {
            n for n in self.fast if reader is not None and reader.layout(n).per_sample
        }
        #: arrays loaded into a group buffer and gathered from it
        self.buffered = [n for n in self.lazy if n not in self.per_sample]

    def shape(self, name: str) -> tuple[int, ...]:
        a = self.memory.get(name)
        return tuple((a if a is not None else self.lazy[name]).shape[1:])

    def dtype(self, name: str) -> np.dtype[Any]:
        a = self.memory.get(name)
        return (a if a is not None else self.lazy[name]).dtype

    def rows(self, c: int) -> tuple[int, int]:
        a = c * self.chunk_len
        return a, min(a + self.chunk_len, self.n)

    def load_chunk(self, group: _Group, c: int) -> None:
        """Read chunk ``c`` of every lazy array into ``group`` (runs in a background thread)."""
        a, b = self.rows(c)
        o = int(group.offsets[int(np.flatnonzero(group.chunks == c)[0])])
        slow = []
        for name in self.lazy:
            if name in self.per_sample:
                assert self.reader is not None
                # memory-mapped: a view of the page cache, touched (read) first by the decoder
                group.units[name][c] = self.reader.read_unit(name, c)
            elif name in self.fast:
                assert self.reader is not None
                self.reader.read_chunk(name, c, out=group.bufs[name][o : o + b - a])
            else:
                slow.append(name)
        if slow:
            # whatever dask scheduler is active (threads, processes, distributed) computes the block
            blocks = dask.compute(*[self.lazy[n].blocks[c] for n in slow])
            for name, block in zip(slow, blocks, strict=True):
                group.bufs[name][o : o + b - a] = block


def groups_of(idx: np.ndarray, chunk_len: int, lookup_group: np.ndarray) -> list[int]:
    """The groups whose chunks hold the samples ``idx``."""
    return [int(g) for g in np.unique(lookup_group[idx // chunk_len])]


def _owner_of(chunk: np.ndarray, needed: dict[int, _Group]) -> np.ndarray:
    """For each chunk id, the group (of ``needed``) that holds it."""
    owner = np.empty(len(chunk), dtype=np.int64)
    for g, grp in needed.items():
        owner[np.isin(chunk, grp.chunks)] = g
    return owner


def _regular_chunk_len(a: da.Array) -> int:
    return int(a.chunks[0][0]) if a.chunks[0] else 1


class _Buffers:
    """Reusable group buffers: fresh 64 MiB arrays page-fault on every group (~4x slower to fill)."""

    def __init__(self, src: _Source, rows: int) -> None:
        self.src = src
        self.rows = rows
        self.free: list[dict[str, np.ndarray]] = []

    def get(self, rows: int) -> dict[str, np.ndarray]:
        if rows > self.rows:
            self.rows, self.free = rows, []
        bufs = (
            self.free.pop()
            if self.free
            else {
                n: np.empty((self.rows, *self.src.shape(n)), dtype=self.src.dtype(n))
                for n in self.src.buffered
            }
        )
        return {n: b[:rows] for n, b in bufs.items()}

    def put(self, bufs: dict[str, np.ndarray]) -> None:
        base = {n: b.base if b.base is not None else b for n, b in bufs.items()}
        if base and all(len(b) == self.rows for b in base.values()):
            self.free.append(base)


class _Group:
    """A group being loaded: per chunk, encoded samples (``units``) or rows in ``bufs``."""

    def __init__(
        self, src: _Source, chunks: np.ndarray, pool: ThreadPoolExecutor, buffers: _Buffers
    ) -> None:
        self.chunks = chunks
        sizes = np.array([np.subtract(*src.rows(int(c))[::-1]) for c in chunks], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.bufs = buffers.get(int(sizes.sum()))
        self.units: dict[str, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
            n: {} for n in src.per_sample
        }
        self.buffers = buffers
        self.futures: list[Future[None]] = []
        if src.buffered:
            self.futures = [pool.submit(src.load_chunk, self, int(c)) for c in chunks]
        else:
            # only memory-mapped, per-sample arrays: "loading" is mapping views, no thread hop
            for c in chunks:
                src.load_chunk(self, int(c))

    def release(self) -> None:
        self.buffers.put(self.bufs)

    def wait(self) -> None:
        for f in self.futures:
            f.result()


class BatchIterator:
    """Shuffled batches from a store, an :class:`ImageSet` or dask arrays, read chunk-wise.

    Parameters
    ----------
    source
        A store path (``*.zarr.zip`` / ``*.zarr``), an :class:`ImageSet`, a dask array, or
        a dict / tuple of per-sample arrays (dask arrays are computed block by block by
        whatever scheduler is active, a ``distributed.Client`` included).
    batch_size
        Samples per batch.
    shuffle
        Read chunks in a random order per ``(seed, epoch)`` and mix samples across a
        buffer of ``buffer_chunks`` chunks. False: source order.
    seed
        Seed of the order; the order of an epoch depends only on ``(seed, epoch)``.
    buffer_chunks
        Chunks mixed together. More mixes better (and uses more memory).
    drop_last
        Leave out the last, partial batch.
    arrays
        Names of the arrays to yield, in order; default ``("images", "labels")``
        (those present).
    transform
        ``transform(batch: dict[str, ndarray], rng) -> dict`` applied to each batch,
        e.g. :func:`daskimg.transforms.random_flip`. ``rng`` derives from
        ``(seed, epoch, batch)``, so augmentation is reproducible and resumable.
    prefetch
        Groups read ahead in the background.
    threads
        Background threads that read and decompress chunks.
    consumer, num_consumers, even
        This consumer's share of an epoch (DataLoader workers x DDP ranks; see
        :mod:`daskimg.torch`). ``even=True`` gives every consumer the same number of
        batches by repeating a few samples.

    Examples
    --------
    >>> it = di.BatchIterator("out/train.zarr.zip", batch_size=64, seed=0)  # doctest: +SKIP
    >>> for images, labels in it:  # doctest: +SKIP
    ...     pass
    >>> it.set_epoch(1); state = it.state_dict(); it.load_state_dict(state)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = 0,
        buffer_chunks: int = 8,
        drop_last: bool = False,
        arrays: Sequence[str] | None = None,
        transform: Transform | None = None,
        prefetch: int = 1,
        threads: int = 2,
        consumer: int = 0,
        num_consumers: int = 1,
        even: bool = False,
    ) -> None:
        for name, v, lo in (
            ("batch_size", batch_size, 1),
            ("buffer_chunks", buffer_chunks, 1),
            ("prefetch", prefetch, 0),
            ("threads", threads, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.source = _Source(source, arrays)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_chunks = buffer_chunks
        self.drop_last = drop_last
        self.transform = transform
        self.prefetch = prefetch
        self.threads = threads
        self.consumer = consumer
        self.num_consumers = num_consumers
        self.even = even
        self.epoch = 0
        self._batch = 0  # batches of the current epoch already yielded
        self._plan: tuple[int, EpochPlan] | None = None
        self._pools: dict[str, list[np.ndarray]] = {}
        self._busy: set[int] = set()
        self._buffers: _Buffers | None = None
        self._pools_exec: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._pools_pid: int | None = None
        self._pool_lock = threading.Lock()

    # -- public -----------------------------------------------------------------------
    @property
    def arrays(self) -> tuple[str, ...]:
        return self.source.names

    @property
    def num_samples(self) -> int:
        return self.source.n

    @property
    def chunk_len(self) -> int:
        return self.source.chunk_len

    def __len__(self) -> int:
        return num_batches(
            self.source.n,
            self.source.chunk_len,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            consumer=self.consumer,
            num_consumers=self.num_consumers,
            even=self.even,
        )

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its order is fixed by ``(seed, epoch)``) from its first batch."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch
        self._batch = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the iterator is: resume with :meth:`load_state_dict` to continue the same epoch."""
        return {
            "epoch": self.epoch,
            "batch": self._batch,
            "seed": self.seed,
            "num_samples": self.source.n,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (
            state.get("num_samples", self.source.n) != self.source.n
            or state.get("seed", self.seed) != self.seed
        ):
            raise ValueError(
                "this state was saved for another source or seed "
                f"({state.get('num_samples')} samples, seed {state.get('seed')}); "
                f"this iterator has {self.source.n} samples, seed {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self._batch = int(state["batch"])

    def plan(self) -> EpochPlan:
        """This consumer's plan for the current epoch (pure data; see :mod:`daskimg.shuffle`)."""
        if self._plan is None or self._plan[0] != self.epoch:
            plan = plan_epoch(
                self.source.n,
                self.source.chunk_len,
                batch_size=self.batch_size,
                seed=self.seed,
                epoch=self.epoch,
                shuffle=self.shuffle,
                buffer_chunks=self.buffer_chunks,
                drop_last=self.drop_last,
                consumer=self.consumer,
                num_consumers=self.num_consumers,
                even=self.even,
            )
            self._plan = (self.epoch, plan)
        return self._plan[1]

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield the rest of the current epoch; at its end the next epoch is selected."""
        for batch in self._iter_dicts():
            yield tuple(batch[n] for n in self.source.names)

    def iter_dicts(self) -> Iterator[dict[str, np.ndarray]]:
        """Like iterating, but each batch is a dict ``{array name: ndarray}``."""
        return self._iter_dicts()

    # -- execution --------------------------------------------------------------------
    def _iter_dicts(self) -> Iterator[dict[str, np.ndarray]]:
        plan = self.plan()
        if self._batch >= len(plan.batches):
            self.set_epoch(self.epoch + 1)
            plan = self.plan()
        src = self.source
        batches, groups = plan.batches, plan.groups
        start = self._batch
        last_group = plan.group_of_batch()
        first_group = max(0, int(last_group[start]) - 1) if 0 < start < len(batches) else 0
        num_chunks = max(1, -(-src.n // src.chunk_len))
        lookup_group = np.full(num_chunks, -1, dtype=np.int64)
        lookup_offset = np.zeros(num_chunks, dtype=np.int64)
        loaded: dict[int, _Group] = {}
        next_group = first_group
        next_batch = start
        if self._buffers is None:
            # kept across epochs: fresh multi-MB buffers page-fault (system time) every epoch
            self._buffers = _Buffers(src, self.buffer_chunks * src.chunk_len)
        buffers = self._buffers
        pending: deque[tuple[int, Future[dict[str, np.ndarray]]]] = deque()
        io_pool, work_pool = self._thread_pools()
        window = 2 * self.threads + self.prefetch

        def submit_groups(upto: int) -> None:
            nonlocal next_group
            while next_group < len(groups) and next_group <= upto:
                grp = _Group(src, groups[next_group], io_pool, buffers)
                lookup_group[grp.chunks] = next_group
                lookup_offset[grp.chunks] = grp.offsets
                loaded[next_group] = grp
                next_group += 1

        def submit_batches() -> None:
            nonlocal next_batch
            while next_batch < len(batches) and len(pending) < window:
                b = next_batch
                submit_groups(int(last_group[b]) + self.prefetch)
                idx = batches[b]
                needed = {g: loaded[g] for g in groups_of(idx, src.chunk_len, lookup_group)}
                pending.append((b, work_pool.submit(self._assemble, b, idx, needed, lookup_offset)))
                next_batch += 1

        try:
            submit_batches()
            while pending:
                b, future = pending.popleft()
                out = future.result()
                # groups before the one this batch started in are done with: every later batch
                # needs only its own group and the one before it
                for g in [g for g in loaded if g < int(last_group[b]) - 1]:
                    loaded.pop(g).release()
                self._batch = b + 1
                self._release(out)
                submit_batches()
                yield out
        finally:
            for _, f in pending:
                f.cancel()
            for _, f in pending:  # let started ones finish before their buffers are reused
                with contextlib.suppress(BaseException):
                    f.exception()
            for grp in loaded.values():
                for load in grp.futures:
                    load.cancel()
                for load in grp.futures:
                    with contextlib.suppress(BaseException):
                        load.exception()
                grp.release()  # no thread uses it any more: back to the pool
        if self._batch >= len(batches):
            self.set_epoch(self.epoch + 1)

    def _thread_pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """Reads run in one pool, batch assembly (decoding into batch rows) in another, so an
        assembly waiting for its reads can never hold up the reads it waits for. Both live
        as long as the iterator, so a new epoch starts without new threads."""
        if self._pools_exec is None or self._pools_pid != os.getpid():
            self._pools_exec = (
                ThreadPoolExecutor(self.threads, thread_name_prefix="daskimg-read"),
                ThreadPoolExecutor(self.threads, thread_name_prefix="daskimg-batch"),
            )
            self._pools_pid = os.getpid()
        return self._pools_exec

    def close(self) -> None:
        """Stop the background threads (they are also stopped when the iterator is deleted)."""
        pools = getattr(self, "_pools_exec", None)  # None if __init__ failed half-way
        if pools is not None and self._pools_pid == os.getpid():
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pools_exec = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # threads, locks and buffers stay behind
        state.update(
            _pools_exec=None,
            _pools_pid=None,
            _pool_lock=None,
            _pools={},
            _busy=set(),
            _buffers=None,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    def _assemble(
        self, b: int, idx: np.ndarray, needed: dict[int, _Group], lookup_offset: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Build batch ``b`` (in a background thread): decode or gather every array's rows."""
        src = self.source
        for grp in needed.values():
            grp.wait()
        out: dict[str, np.ndarray] = {n: src.memory[n][idx] for n in src.memory}
        chunk = idx // src.chunk_len
        row = idx - chunk * src.chunk_len
        reader = src.reader
        for name in src.per_sample:
            assert reader is not None
            dest = self._batch_buffer(name, len(idx))
            for grp in needed.values():
                for c, unit in grp.units[name].items():
                    at = np.flatnonzero(chunk == c)
                    if len(at):
                        reader.decode_rows(name, unit, row[at], dest, at, first=c * src.chunk_len)
            out[name] = dest
        if src.buffered:
            rows = lookup_offset[chunk] + row
            groups = list(needed)
            owner = _owner_of(chunk, needed)
            for name in src.buffered:
                dest = self._batch_buffer(name, len(idx))
                if len(groups) == 1:
                    # mode="clip": numpy buffers `out` for mode="raise" (2.5x slower); rows are in range
                    needed[groups[0]].bufs[name].take(rows, axis=0, out=dest, mode="clip")
                else:
                    for g in groups:
                        sel = owner == g
                        dest[sel] = needed[g].bufs[name].take(rows[sel], axis=0)
                out[name] = dest
        if self.transform is not None:
            out = self.transform(out, epoch_rng(self.seed, self.epoch, b, self.consumer))
        return out

    def _batch_buffer(self, name: str, n: int) -> np.ndarray:
        """An output array for a batch, reusing one the caller has let go of.

        A yielded array is reused only when nothing but this pool refers to it (no batch
        kept by the caller, no view of it, no tensor made with ``torch.from_numpy``), so
        reuse is never visible; it saves the page faults of a fresh multi-MB array.
        Arrays being filled or not yet handed out are marked busy.
        """
        src = self.source
        shape = (n, *src.shape(name))
        with self._pool_lock:
            pool = self._pools.setdefault(name, [])
            for arr in pool:
                # references: the pool's list, getrefcount's argument and the loop variable
                if id(arr) not in self._busy and arr.shape == shape and sys.getrefcount(arr) <= 3:
                    self._busy.add(id(arr))
                    return arr
            arr = np.empty(shape, dtype=src.dtype(name))
            if len(pool) >= 3 * self.threads + 4:
                pool[:] = [a for a in pool if id(a) in self._busy]
            pool.append(arr)
            self._busy.add(id(arr))
            return arr

    def _release(self, batch: dict[str, np.ndarray]) -> None:
        """A batch is being handed out: from now on only its references keep it from reuse."""
        with self._pool_lock:
            for arr in batch.values():
                self._busy.discard(id(arr))
