"""Feed: the chunk-aware shuffled :class:`BatchIterator`.

It executes a plan from :mod:`daskimg.shuffle`: whole chunks are read in a random order
by background threads (reading, checking and decompressing release the GIL). Each thread
decodes a chunk into a small scratch buffer of its own (uncompressed stores: no decode, a
checked view of the memory-mapped file) and copies every row straight into its place in
the batch that the plan puts it in, while the chunk is still in the CPU cache. A batch is
handed out when all the chunks it draws from are in. Batches of at most the current group
of ``buffer_chunks`` chunks, the one before (a batch may straddle them) and ``prefetch``
groups ahead are in memory.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

import numpy as np

from ..store.reader import RawChunk
from .shuffle import EpochPlan, epoch_rng, num_batches, plan_epoch
from .source import FeedSource, blocks_read

Transform = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]


class _Routes:
    """Where every loaded row goes in an epoch: chunk ``c`` -> (batch, position, row) triples.

    Loading threads copy each chunk's rows into their batches right after decoding it,
    while it is still in the CPU cache; a batch is complete when every chunk it draws
    from has been copied in (``needs``).
    """

    def __init__(self, batches: Sequence[np.ndarray], chunk_len: int, num_chunks: int) -> None:
        sizes = np.array([len(b) for b in batches], dtype=np.int64)
        idx = np.concatenate(batches) if len(batches) else np.empty(0, np.int64)
        batch = np.repeat(np.arange(len(batches), dtype=np.int64), sizes)
        pos = np.arange(len(idx), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        chunk = idx // chunk_len
        key = chunk * max(1, len(batches)) + batch
        order = np.argsort(key, kind="stable")
        self.batch, self.pos, self.row = batch[order], pos[order], (idx - chunk * chunk_len)[order]
        self.bounds = np.searchsorted(chunk[order], np.arange(num_chunks + 1))
        pairs = np.unique(key)
        #: chunks each batch draws from
        self.needs = np.bincount(pairs % max(1, len(batches)), minlength=len(batches))

    def of_chunk(self, c: int, first_batch: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(batch, positions, rows)`` per batch (>= ``first_batch``) that chunk ``c`` feeds."""
        lo, hi = int(self.bounds[c]), int(self.bounds[c + 1])
        if lo == hi:
            return []  # every sample of the chunk is left out (drop_last)
        batch = self.batch[lo:hi]
        cut = np.flatnonzero(np.diff(batch)) + 1
        out = []
        for s, e in zip(np.r_[0, cut], np.r_[cut, hi - lo], strict=True):
            b = int(batch[s])
            if b >= first_batch:
                out.append((b, self.pos[lo + s : lo + e], self.row[lo + s : lo + e]))
        return out


class _Batch:
    """A batch being filled by loading threads: its output arrays and a countdown of chunks."""

    def __init__(self, bufs: dict[str, np.ndarray], needs: int) -> None:
        self.bufs = bufs
        self.remaining = needs
        self.done: Future[None] = Future()
        if needs == 0:
            self.done.set_result(None)


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
        Seed of the order; the order of an epoch depends only on ``(seed, epoch)``. None
        draws one (a different order every run), kept in :meth:`state_dict` so that a
        resumed run follows the same order; refused with several consumers or workers,
        which would each draw their own.
    buffer_chunks
        Chunks mixed together. More mixes better (and uses more memory).
    drop_last
        Leave out the last, partial batch.
    arrays
        Names of the arrays to yield, in order; default ``("images", "labels")``
        (those present). ``"index"`` yields each sample's store index (int64), e.g.
        to write predictions back in place whatever the order.
    transform
        ``transform(batch: dict[str, ndarray], rng) -> dict`` applied to each batch,
        e.g. :func:`daskimg.transforms.random_flip`. ``rng`` derives from
        ``(seed, epoch, batch)``, so augmentation is reproducible and resumable.
    prefetch
        Groups read ahead in the background.
    threads
        Background threads that read and decompress chunks.
    consumer, num_consumers, even
        This consumer's share of an epoch (a DDP rank; see :mod:`daskimg.torch`).
        ``even=True`` gives every consumer the same number of batches by repeating a few
        samples.
    worker, num_workers
        This worker's share of the consumer's batches (a DataLoader worker). The workers'
        batch counts add up to the consumer's whatever their number; without ``shuffle``
        worker ``w`` yields every ``num_workers``-th batch from the ``w``-th, the order a
        DataLoader asks for them, so the DataLoader yields store order.
    storage_options
        For a store URL (``s3://bucket/train.zarr.zip``): passed to fsspec, as for
        :func:`daskimg.open_zarr`. Remote chunks are read through zarr by the active
        dask scheduler.

    Notes
    -----
    Batches are yours to keep: no copy is needed (unlike loaders that hand out views of
    buffers they overwrite). The iterator reuses a batch's arrays only once nothing else
    refers to them — no variable, no view, no ``torch.from_numpy`` tensor — so a reused
    buffer is never visible, and a loop that drops each batch runs without new allocations.

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
        storage_options: Mapping[str, Any] | None = None,
        worker: int = 0,
        num_workers: int = 1,
    ) -> None:
        for name, v, lo in (
            ("batch_size", batch_size, 1),
            ("buffer_chunks", buffer_chunks, 1),
            ("prefetch", prefetch, 0),
            ("threads", threads, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if seed is None and num_consumers * num_workers > 1:
            raise ValueError(
                "seed=None draws a different order in every consumer and worker, so they would "
                "overlap and miss samples; pass the same int seed to all of them"
            )
        self.source = FeedSource(source, arrays, storage_options)
        self.batch_size = batch_size
        self.shuffle = shuffle
        #: seed=None: one drawn now, recorded by state_dict (a state's seed is then adopted)
        self._seed_drawn = seed is None
        self.seed: int = (
            int(np.random.SeedSequence().entropy) % 2**63  # type: ignore[arg-type]
            if seed is None
            else seed
        )
        self.buffer_chunks = buffer_chunks
        self.drop_last = drop_last
        self.transform = transform
        self.prefetch = prefetch
        self.threads = threads
        self.consumer = consumer
        self.num_consumers = num_consumers
        self.worker = worker
        self.num_workers = num_workers
        self.even = even
        self.epoch = 0
        self._batch = 0  # batches of the current epoch already yielded
        self._plan: tuple[int, EpochPlan] | None = None
        self._pools: dict[str, list[np.ndarray]] = {}
        self._busy: set[int] = set()
        self._local = threading.local()  # per loading thread: scratch buffers
        #: ask the kernel to read whole chunks ahead; on while loads read from disk
        self._readahead = True
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
            worker=self.worker,
            num_workers=self.num_workers,
            shuffle=self.shuffle,
        )

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its order is fixed by ``(seed, epoch)``) from its first batch."""
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)
        self._batch = 0

    def settings(self) -> dict[str, Any]:
        """Everything that shapes the order of an epoch, as :meth:`state_dict` records it."""
        src = self.source
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "buffer_chunks": self.buffer_chunks,
            "drop_last": self.drop_last,
            "even": self.even,
            "consumer": self.consumer,
            "num_consumers": self.num_consumers,
            "worker": self.worker,
            "num_workers": self.num_workers,
            "num_samples": src.n,
            "chunk_len": src.chunk_len,
            "source": dict(src.identity),
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the iterator is, and the settings that shaped its order.

        ``{"epoch": e, "batch": b, ...}``: the next batch is batch ``b`` of epoch ``e``.
        Resume with :meth:`load_state_dict` on an iterator with the same settings.
        """
        return {"epoch": self.epoch, "batch": self._batch, **self.settings()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: batch ``state["batch"]`` of its epoch comes next.

        Refused (ValueError naming the setting) when the state was saved with other settings
        (seed, batch size, shuffle, buffer, drop_last, even, consumer or worker split) or
        for another source: resuming would repeat and miss samples. An iterator made with
        ``seed=None`` adopts the state's seed.
        """
        check_state(state, self.settings(), adopt_seed=self._seed_drawn)
        epoch, batch = state.get("epoch"), state.get("batch")
        for name, v in (("epoch", epoch), ("batch", batch)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
                raise ValueError(f"state[{name!r}] must be a non-negative integer; got {v!r}")
        if self._seed_drawn and state.get("seed") is not None:
            self.seed = int(state["seed"])
            self._plan = None
        self.epoch = int(epoch)  # type: ignore[arg-type]
        self._batch = int(batch)  # type: ignore[arg-type]

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
                worker=self.worker,
                num_workers=self.num_workers,
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
        if plan.batches and self._batch >= len(plan.batches):  # this epoch was finished
            self.set_epoch(self.epoch + 1)
            plan = self.plan()
        src = self.source
        batches, groups = plan.batches, plan.groups
        start = self._batch
        last_group = plan.group_of_batch()
        first_group = max(0, int(last_group[start]) - 1) if 0 < start < len(batches) else 0
        num_chunks = max(1, -(-src.n // src.chunk_len))
        routes = _Routes(batches, src.chunk_len, num_chunks) if src.lazy else None
        filling: dict[int, _Batch] = {}
        loads: deque[Future[None]] = deque()
        next_group = first_group
        next_batch = start
        pending: deque[tuple[int, Future[dict[str, np.ndarray]], _Batch]] = deque()
        pools = self._thread_pools()
        pid = os.getpid()
        io_pool, work_pool = pools
        window = 2 * self.threads + self.prefetch
        lock = threading.Lock()

        def submit_groups(upto: int) -> None:
            nonlocal next_group
            while next_group < len(groups) and next_group <= upto:
                assert routes is not None
                chunks = [int(c) for c in groups[next_group]]
                targets = {c: routes.of_chunk(c, start) for c in chunks}
                for b in sorted({t[0] for ts in targets.values() for t in ts}):
                    if b not in filling:  # its buffers exist before any chunk is copied in
                        bufs = {n: self._batch_buffer(n, len(batches[b])) for n in src.lazy}
                        filling[b] = _Batch(bufs, int(routes.needs[b]))
                if self._readahead:
                    self._read_ahead(chunks)
                for c in chunks:
                    feeds = [(filling[b], at, rows) for b, at, rows in targets[c]]
                    if feeds:  # a chunk all of whose samples are dropped is not read
                        loads.append(io_pool.submit(self._load_chunk, c, feeds, lock))
                next_group += 1
            while loads and loads[0].done():
                loads.popleft()  # its errors reach the batches it feeds, in their turn

        def submit_batches() -> None:
            nonlocal next_batch
            while next_batch < len(batches) and len(pending) < window:
                b = next_batch
                if src.lazy:
                    submit_groups(int(last_group[b]) + self.prefetch)
                    state = filling.pop(b)
                else:
                    state = _Batch({}, 0)
                future = work_pool.submit(self._assemble, int(plan.batch_ids[b]), batches[b], state)
                pending.append((b, future, state))
                next_batch += 1

        try:
            submit_batches()
            while pending:
                b, future, _ = pending[0]
                # close() while this generator was suspended, or (from another thread) while
                # it waits: the chunks this batch waits for may never be read
                while True:
                    if self._pools_exec is not pools:
                        raise self._closed_error()
                    try:  # a load error raises here; the batch's buffers are released below
                        out = future.result(timeout=0.1)
                    except FuturesTimeout:
                        if future.done():
                            raise  # the load's own TimeoutError (e.g. a network read)
                        continue
                    except CancelledError:
                        if self._pools_exec is not pools:  # close() cancelled what it waited for
                            raise self._closed_error() from None
                        raise
                    break
                pending.popleft()
                self._batch = b + 1
                self._release(out)
                submit_batches()
                yield out
        finally:
            # a fork's copy of an unfinished iteration (closed or freed in the child): its loads
            # run in the parent's threads, which the fork does not have; nothing to wait for
            forked = pid != os.getpid()
            states = [*filling.values(), *(s for _, _, s in pending)]
            for group in ([], []) if forked else (list(loads), [f for _, f, _ in pending]):
                for f in group:
                    f.cancel()
                for f in group:  # let started ones finish before their buffers are reused
                    with contextlib.suppress(BaseException):
                        f.exception()
                with lock:  # batches whose loads were cancelled: wake what waits for them
                    for state in states:
                        if not state.done.done():
                            state.done.set_exception(CancelledError())
            for state in states:
                self._release(state.bufs)
        if self._batch >= len(batches):
            self.set_epoch(self.epoch + 1)

    def _load_chunk(
        self, c: int, feeds: list[tuple[_Batch, np.ndarray, np.ndarray]], lock: threading.Lock
    ) -> None:
        """Load chunk ``c`` and copy its rows into the batches it feeds (in a background thread)."""
        src = self.source
        try:
            local = self._local
            scratch = getattr(local, "scratch", None)
            if scratch is None:
                scratch = local.scratch = {}
            before = blocks_read()
            loaded = src.load(c, scratch)
            if blocks_read() != before:
                self._readahead = True  # this chunk came from disk: read the next ones ahead
            for name, chunk in loaded.items():
                if isinstance(chunk, RawChunk):  # copied and checksummed in one pass
                    chunk.copy_to([(state.bufs[name], at, rows) for state, at, rows in feeds])
                    continue
                for state, at, rows in feeds:
                    src.copy_rows(name, c, chunk, rows, state.bufs[name], at)
        except BaseException as e:
            for state, _, _ in feeds:
                with lock:
                    if not state.done.done():
                        state.done.set_exception(e)
            raise
        for state, _, _ in feeds:
            with lock:
                state.remaining -= 1
                if state.remaining == 0 and not state.done.done():
                    state.done.set_result(None)

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(
            "BatchIterator.close() was called during this iteration, which stopped its "
            "threads; iterate the BatchIterator again to continue from batch "
            f"{self._batch} of epoch {self.epoch}"
        )

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
            _local=None,
            _pools={},
            _busy=set(),
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()
        self._local = threading.local()

    def _read_ahead(self, chunks: Sequence[int]) -> None:
        """Start reading ``chunks`` from disk now, in large reads, while earlier ones decode.

        Cold stores (bigger than RAM) load 2-2.5x faster than page by page. When none of
        these chunks needed a disk read, the store is in the page cache and read-ahead stops
        (it costs ~0.1 ms per chunk) until a load reads from disk again.
        """
        reader = self.source.reader
        names = [n for n in self.source.fast if n not in self.source.memory]
        if reader is None or not names:
            self._readahead = False
            return
        before = blocks_read()
        for c in chunks:
            for name in names:
                reader.will_need(name, c)
        if before != -1 and blocks_read() == before:
            self._readahead = False

    def _assemble(self, b: int, idx: np.ndarray, state: _Batch) -> dict[str, np.ndarray]:
        """Finish batch ``b`` of the consumer (in a background thread): wait for its chunks, add
        in-memory arrays."""
        state.done.result()
        out = self.source.gather(idx)
        out.update(state.bufs)
        if self.transform is not None:
            out = self.transform(out, epoch_rng(self.seed, self.epoch, b, self.consumer))
            self._release(state.bufs)  # reusable once nothing refers to them (see _batch_buffer)
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
            if len(pool) >= self._pool_cap():
                pool[:] = [a for a in pool if id(a) in self._busy]
            pool.append(arr)
            self._busy.add(id(arr))
            return arr

    def _pool_cap(self) -> int:
        """Batches that can be in flight at once: being filled (the groups loaded ahead, and
        the one before them), assembled, and a few held by the caller."""
        per_group = -(-self.buffer_chunks * self.source.chunk_len // self.batch_size) + 1
        return (self.prefetch + 2) * per_group + 2 * self.threads + self.prefetch + 4

    def _release(self, batch: dict[str, np.ndarray]) -> None:
        """A batch is being handed out: from now on only its references keep it from reuse."""
        with self._pool_lock:
            for arr in batch.values():
                self._busy.discard(id(arr))


def check_state(
    state: Mapping[str, Any], settings: Mapping[str, Any], *, adopt_seed: bool = False
) -> None:
    """Refuse a state saved with other ``settings`` (see :meth:`BatchIterator.settings`),
    naming the first that differs. Settings the state does not record are not checked."""
    for name, mine in settings.items():
        if name not in state or (name == "seed" and adopt_seed):
            continue
        theirs = state[name]
        if name == "source":
            a, b = (theirs or {}).get("token"), (mine or {}).get("token")
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"cannot resume: the state was saved for the store {theirs.get('path')!r}, "
                    f"and {mine.get('path')!r} is another store (its daskimg attributes "
                    "differ); resume on the store the state comes from"
                )
        elif theirs != mine:
            raise ValueError(
                f"cannot resume: the state was saved with {name}={theirs!r}, and this has "
                f"{name}={mine!r}. The order of an epoch depends on it: resume with the same "
                "settings"
            )
