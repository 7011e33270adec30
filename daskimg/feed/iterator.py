"""Feed: the chunk-aware shuffled :class:`BatchIterator`.

It follows the order of an epoch — the plan of ``(seed, epoch)`` from
:mod:`daskimg.feed.shuffle`, where the epoch stands, its state for resuming — and hands out
batches whose arrays it reuses once let go. Executing a plan (background reads, rows copied
straight into their batches) is :mod:`daskimg.feed.runner`.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .checks import check_at_least, check_seed, check_transform
from .plan import EpochPlan
from .runner import PlanRunner
from .shuffle import (
    batch_rng,
    check_a_batch,
    check_fills_a_batch,
    even_cost,
    num_batches,
    plan_epoch,
)
from .source import FeedSource, shown

Transform = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]

#: the settings of an iterator that :func:`plan_epoch` and :func:`num_batches` take as they are
_SHARE = (
    "batch_size",
    "shuffle",
    "drop_last",
    "consumer",
    "num_consumers",
    "even",
    "worker",
    "num_workers",
)


logger = logging.getLogger("daskimg")

#: (N, chunk_len, consumers, drop_last) already warned of in this process
_WARNED_UNEVEN: set[tuple[Any, ...]] = set()


def warn_uneven_share(
    n: int,
    chunk_len: int,
    num_consumers: int,
    *,
    batch_size: int,
    drop_last: bool,
    where: str,
) -> None:
    """Log, once per process and store, that sharing an epoch chunk by chunk among
    ``num_consumers`` DDP ranks with even batch counts repeats or leaves out more than a
    twentieth of the samples beyond what a sample-by-sample split would
    (:func:`~daskimg.feed.shuffle.even_cost`): a store of few chunks, each rank doing the
    work of the largest share; said with the smaller ``chunks=`` to rewrite it with."""
    repeated, left_out = even_cost(
        n, chunk_len, num_consumers, batch_size=batch_size, drop_last=drop_last
    )
    # what a split sample by sample (chunks of 1) would cost too is the batches', not the
    # chunks' (drop_last's partial batches, as DistributedSampler drops them): not said
    floor = even_cost(n, 1, num_consumers, batch_size=batch_size, drop_last=drop_last)
    suggested = max(1, n // (16 * num_consumers))
    if max(repeated - floor[0], left_out - floor[1]) <= max(n // 20, 1) or suggested >= chunk_len:
        return
    key = (n, chunk_len, num_consumers, drop_last)  # (a TorchDataset names the store otherwise)
    if key in _WARNED_UNEVEN:
        return
    _WARNED_UNEVEN.add(key)
    chunks = -(-n // chunk_len)
    what = (
        f"repeats {repeated:,} samples ({repeated / n:.0%} more than it holds)"
        if repeated
        else f"leaves out {left_out:,} samples ({left_out / n:.0%})"
    )
    logger.warning(
        "%s holds %d samples in %d chunk(s) of %d; shared among %d ranks chunk by chunk, with "
        "the same batch count on each (even=True, needed by DDP), every epoch %s. Write the "
        "store with smaller chunks, so that each rank gets many: "
        "di.to_zarr(di.open_zarr(old), new, chunks=%d, order='source')",
        where,
        n,
        chunks,
        chunk_len,
        num_consumers,
        what,
        suggested,
    )


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
        ``(seed, epoch, batch)`` (:func:`~daskimg.feed.shuffle.batch_rng`), so augmentation
        is reproducible and resumable.
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
        :func:`daskimg.open_zarr`. Remote chunks are read by the store's checked reader
        with ranged requests, at least 8 requests in flight whatever ``threads`` is
        (a request mostly waits on the network); decoding still uses ``threads``.

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
        _check_args(batch_size, buffer_chunks, prefetch, threads, seed, num_consumers * num_workers)
        self.source = FeedSource(source, arrays, storage_options)
        self._shown = shown(source)
        check_transform(transform, self.source)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        #: seed=None: one drawn now, recorded by state_dict (a state's seed is then adopted)
        self._seed_drawn = seed is None
        checked = check_seed(seed)  # 1.5 is no seed (int() made it 1, the order of seed=1)
        self.seed: int = (
            int(np.random.SeedSequence().entropy) % 2**63  # type: ignore[arg-type]
            if checked is None
            else checked  # a numpy int too, as an int: the state stays JSON
        )
        self.buffer_chunks = int(buffer_chunks)
        self.drop_last = drop_last
        self.transform = transform
        self.prefetch = int(prefetch)
        self.threads = int(threads)
        self.consumer = operator.index(consumer)  # numpy ints too: the state stays JSON
        self.num_consumers = operator.index(num_consumers)
        self.worker = operator.index(worker)
        self.num_workers = operator.index(num_workers)
        self.even = even
        self.epoch = 0
        self._batch = 0  # batches of the current epoch already yielded
        self._resumed_epoch: int | None = None  # a loaded state's epoch, until iterated
        self._chosen = False  # the epoch was given to set_epoch, and not iterated yet
        self._plan: tuple[int, EpochPlan] | None = None
        self._pools: dict[str, list[np.ndarray]] = {}
        self._busy: set[int] = set()
        self._pool_lock = threading.Lock()
        check_a_batch(self.source.n, batch_size=self.batch_size, drop_last=self.drop_last)
        self._runner = PlanRunner(self.source)  # reads, fills and assembles the batches
        if self.num_consumers > 1 and self.even and self.shuffle and self.drop_last:
            check_fills_a_batch(
                self.source.n, self.source.chunk_len, self.num_consumers, batch_size=self.batch_size
            )
        if self.num_consumers > 1 and self.even and self.shuffle and self.worker == 0:
            warn_uneven_share(
                self.source.n,
                self.source.chunk_len,
                self.num_consumers,
                batch_size=self.batch_size,
                drop_last=self.drop_last,
                where=repr(self.source.identity["path"] or "the source"),
            )

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
        return num_batches(self.source.n, self.source.chunk_len, **self._share())

    def __repr__(self) -> str:
        share = "".join(
            f", {k}={getattr(self, k)} of {getattr(self, 'num_' + k + 's')}"
            for k in ("consumer", "worker")
            if getattr(self, "num_" + k + "s") > 1
        )
        return (
            f"BatchIterator({self._shown}, samples={self.source.n}, "
            f"batch_size={self.batch_size}, batches={len(self)}, arrays={list(self.arrays)}, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch}{share})"
        )

    def _share(self) -> dict[str, Any]:
        """This consumer's and worker's share of an epoch, as the planning functions take it."""
        return {name: getattr(self, name) for name in _SHARE}

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its order is fixed by ``(seed, epoch)``) from its first batch.

        Right after :meth:`load_state_dict`, the epoch of the loaded state continues where
        the state left it (a training loop that calls ``set_epoch(epoch)`` at the top of
        each epoch replayed the resumed epoch from its start), and yields nothing if the
        state was saved after its last batch.
        """
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        keep = self._resumed_epoch == int(epoch)
        self._resumed_epoch = None
        self.epoch = int(epoch)
        if not keep:
            self._batch = 0
        self._chosen = True

    def _advance(self) -> None:
        """On to the next epoch, from its first batch."""
        self.epoch, self._batch = self.epoch + 1, 0
        self._chosen, self._resumed_epoch = False, None

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
        if self._seed_drawn and state.get("seed") is not None:
            self.seed = int(state["seed"])
            self._plan = None
        before = (self.epoch, self._batch)
        self.epoch = int(epoch)  # type: ignore[arg-type]
        self._batch = int(batch)  # type: ignore[arg-type]
        if self._batch > len(self):  # len: the epoch's batches (the plan is pure)
            self.epoch, self._batch = before
            raise ValueError(
                f"cannot resume: state['batch'] is {batch}, but an epoch has {len(self)} "
                "batches here; the state is damaged or from another setup"
            )
        self._resumed_epoch, self._chosen = self.epoch, False

    def plan(self) -> EpochPlan:
        """This consumer's plan for the current epoch (pure data; see :mod:`daskimg.shuffle`)."""
        if self._plan is None or self._plan[0] != self.epoch:
            plan = plan_epoch(
                self.source.n,
                self.source.chunk_len,
                seed=self.seed,
                epoch=self.epoch,
                buffer_chunks=self.buffer_chunks,
                **self._share(),
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
        self._resumed_epoch = None
        plan = self.plan()
        if plan.batches and self._batch >= len(plan.batches):  # this epoch was finished
            chosen = self._chosen
            self._advance()
            if chosen:  # set_epoch chose it (resumed after its last batch): nothing left
                return
            plan = self.plan()
        self._chosen = False
        reader = self.source.reader
        if self._batch == 0 and reader is not None and reader.source.replaced():
            # to_zarr(overwrite=True) or ingest --overwrite meanwhile: the files opened are
            # the old store's, read on as they were (consistent, but not the new store)
            logger.warning(
                "%s was written again (or removed) after this loader opened it: it goes on "
                "reading the store it opened, not the new one; make a new loader to read that",
                reader.source.where,
            )
        # one iteration at a time: a later one (a second loop over the same iterator, another
        # thread's) makes this one raise when asked for its next batch, before it moves the
        # position both share (two ran side by side: the position went backwards, an epoch
        # was skipped)
        self._iteration = mine = getattr(self, "_iteration", 0) + 1
        served, epoch = 0, self.epoch

        def handed_out(b: int) -> None:
            if self._iteration == mine:
                self._handed_out(b)

        batches = self._runner.run(
            plan,
            self._batch,
            threads=self.threads,
            prefetch=self.prefetch,
            buffer=self._batch_buffer,
            release=self._release,
            assemble=self._assemble,
            handed_out=handed_out,
            closed_error=self._closed_error,
        )
        while True:
            if self._iteration == mine:
                batch = next(batches, None)
            if self._iteration != mine:
                getattr(batches, "close", lambda: None)()  # its own chunks and buffers
                raise RuntimeError(
                    f"BatchIterator: this iteration (epoch {epoch}, "
                    f"{served} batches in) was cut short: the same BatchIterator was iterated "
                    "again meanwhile (a second loop over it, or one in another thread); it "
                    "reads one iteration at a time, and the epoch continues in the latest. "
                    "Make a second BatchIterator for another loop"
                )
            if batch is None:
                break
            served += 1
            yield batch
        if self._batch >= len(plan.batches):
            self._advance()

    def _handed_out(self, b: int) -> None:
        self._batch = b + 1

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(
            "BatchIterator.close() was called during this iteration, which stopped its "
            "threads; iterate the BatchIterator again to continue from batch "
            f"{self._batch} of epoch {self.epoch}"
        )

    def close(self) -> None:
        """Stop the background threads (they are also stopped when the iterator is deleted)."""
        runner = getattr(self, "_runner", None)  # None if __init__ failed half-way
        if runner is not None:
            runner.close()

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # threads, locks and buffers stay behind
        state.update(_pool_lock=None, _pools={}, _busy=set())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    def _assemble(
        self, b: int, idx: np.ndarray, bufs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Batch ``b`` of the consumer, its chunks in: add in-memory arrays, transform (in a thread)."""
        out = self.source.gather(idx)
        out.update(bufs)
        if self.transform is not None:
            try:
                given = tuple(out)  # before the call: a transform may change the dict itself
                out = self.transform(out, batch_rng(self.seed, self.epoch, b, self.consumer))
                check_transformed(self.transform, given, out, len(idx))
            finally:
                self._release(bufs)  # reusable once nothing refers to them (see _batch_buffer)
        return out

    def _batch_buffer(self, name: str, n: int) -> np.ndarray:
        """An output array for a batch, reusing one the caller has let go of (see Notes above)."""
        # reuse saves the page faults of a fresh multi-MB array; it is never visible: an array
        # is reused only when nothing but this pool refers to it (no batch kept by the caller,
        # no view, no torch.from_numpy tensor); arrays being filled or not handed out are busy
        src = self.source
        shape = (n, *src.shape(name))
        with self._pool_lock:
            pool = self._pools.setdefault(name, [])
            for arr in pool:
                # references: the pool's list, getrefcount's argument and the loop variable
                if id(arr) not in self._busy and arr.shape == shape and sys.getrefcount(arr) <= 3:
                    self._busy.add(id(arr))
                    return arr
            try:
                arr = np.empty(shape, dtype=src.dtype(name))
            except MemoryError:
                need = math.prod(shape) * np.dtype(src.dtype(name)).itemsize
                raise MemoryError(
                    f"a batch of {n} samples of {name!r} ({shape} {np.dtype(src.dtype(name))}, "
                    f"{need / 2**30:.2f} GiB) cannot be allocated in this process (its memory "
                    "limit, ulimit -v, or the machine's); lower batch_size, or check the "
                    "store's sample shape with daskimg info"
                ) from None
            if len(pool) >= self._pool_cap():
                pool[:] = [a for a in pool if id(a) in self._busy]
            pool.append(arr)
            self._busy.add(id(arr))
            return arr

    def _pool_cap(self) -> int:
        """Batches that can be in flight at once (filled, assembled, held by the caller)."""
        # being filled: the groups loaded ahead and the one before them
        per_group = -(-self.buffer_chunks * self.source.chunk_len // self.batch_size) + 1
        return (self.prefetch + 2) * per_group + 2 * self.threads + self.prefetch + 4

    def _release(self, batch: dict[str, np.ndarray]) -> None:
        """A batch is being handed out: from now on only its references keep it from reuse."""
        with self._pool_lock:
            for arr in batch.values():
                self._busy.discard(id(arr))


def check_transformed(transform: Any, given: Sequence[str], out: Any, n: int) -> None:
    """Refuse what a transform returned unless it is the batch dict with every array it was
    given (``given``: their names), each of the batch's ``n`` samples: a transform that
    forgot ``return batch`` failed with a bare AttributeError, and one that cut an array
    short was handed out. What it adds (a mixup's lambda) is its own."""
    if not isinstance(out, Mapping):
        raise TypeError(
            f"transform {transform!r} returned {type(out).__name__}, not the batch dict: a "
            "transform takes the batch dict and the rng and returns the dict (did it change "
            "the batch in place and not `return batch`?)"
        )
    missing = [k for k in given if k not in out]
    if missing:
        raise KeyError(
            f"transform {transform!r} returned a batch without {missing}: return every "
            f"array it was given ({sorted(given)}), changed or not"
        )
    for k in given:
        v = out[k]
        rows = len(v) if np.ndim(v) else "no"  # a scalar (np.float32(1)) has no len()
        if rows != n:
            raise ValueError(
                f"transform {transform!r} returned {k!r} with {rows} rows for a batch of "
                f"{n} samples: every array of a batch holds one row per sample"
            )


def _check_args(
    batch_size: int, buffer_chunks: int, prefetch: int, threads: int, seed: int | None, shares: int
) -> None:
    for name, v, lo in (
        ("batch_size", batch_size, 1),
        ("buffer_chunks", buffer_chunks, 1),
        ("prefetch", prefetch, 0),
        ("threads", threads, 1),
    ):
        check_at_least(name, v, lo)  # numpy ints too (stored as int)
    if seed is None and shares > 1:
        raise ValueError(
            "seed=None draws a different order in every consumer and worker, so they would "
            "overlap and miss samples; pass the same int seed to all of them"
        )


def check_state(
    state: Mapping[str, Any], settings: Mapping[str, Any], *, adopt_seed: bool = False
) -> None:
    """Refuse a state saved with other ``settings`` (see :meth:`BatchIterator.settings`),
    naming the first that differs, or whose ``epoch`` or ``batch`` is not a non-negative
    integer. Settings the state does not record are not checked."""
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
            # an older state (no token for a subset) is not checked, as before
            if a is not None and b is not None and theirs.get("rows") != mine.get("rows"):
                raise ValueError(
                    "cannot resume: the state was saved on another part of the store "
                    f"{(theirs or mine or {}).get('path')!r} (a split or take() of other "
                    "samples, or the whole store): its order would repeat some samples and "
                    "miss others here. Resume on the same split (the same fractions and seed)"
                )
        elif theirs != mine:
            hint = (
                " (a TorchDataset's state_dict() taken in the main process of a DataLoader "
                "with workers says num_workers=1 and the start of the epoch: the workers "
                "held where it was. Save such a loader's state with torchdata's "
                "StatefulDataLoader.state_dict())"
                if name == "num_workers" and theirs == 1 and isinstance(mine, int) and mine > 1
                else ""
            )
            raise ValueError(
                f"cannot resume: the state was saved with {name}={theirs!r}, and this has "
                f"{name}={mine!r}. The order of an epoch depends on it: resume with the same "
                f"settings{hint}"
            )
    for name in ("epoch", "batch"):
        v = state.get(name)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0:
            raise ValueError(f"state[{name!r}] must be a non-negative integer; got {v!r}")
