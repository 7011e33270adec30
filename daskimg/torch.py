"""Feed: PyTorch adapter — an ``IterableDataset`` over a :class:`~daskimg.feed.BatchIterator`.

Import it as ``from daskimg.torch import TorchDataset``; torch is imported here only.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import sys
import time
import warnings
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import ChecksumError
from .feed.batches import INDEX, auto_scale, check_auto_scale
from .feed.checks import LAYOUT_FIX, called_from
from .feed.iterator import BatchIterator, Transform, check_state, warn_uneven_share
from .feed.shuffle import check_fills_a_batch, num_batches
from .feed.source import persisted, shown
from .remote import anchored

__all__ = ["TorchDataset", "lightning_epoch"]

logger = logging.getLogger("daskimg")

#: DataLoader workers per process whose epochs the shared table can follow
MAX_WORKERS = 1024
#: DataLoaders of up to this many workers count their epochs in rows of their own, one
#: block per worker count: two DataLoaders of one dataset with 2 and 1 workers (a train
#: loop and a train-set evaluation) shared worker 0's row, whose count then ran ahead of
#: worker 1's, and their epochs repeated and missed samples
GROUPED = 64


def _slot(worker: int, workers: int) -> int:
    """The epoch table's slot of DataLoader worker ``worker`` of ``workers`` (0: no workers)."""
    if workers > GROUPED:
        return 1 + worker
    return 1 + MAX_WORKERS + workers * (workers - 1) // 2 + worker


#: the process this module was imported in: a process with another pid that did not
#: import it again was forked from it
_IMPORTED_IN = os.getpid()


def _shared(table: torch.Tensor) -> torch.Tensor:
    """``table`` moved into shared memory. torch copies it there on its thread pool, which
    does not survive a fork: in a process forked from one that had used the pool (a
    ``multiprocessing`` child, not a DataLoader worker, which torch keeps to one thread),
    making a TorchDataset hung for good. There the copy runs on one thread."""
    threads = torch.get_num_threads()
    if os.getpid() == _IMPORTED_IN or threads == 1:
        return table.share_memory_()
    torch.set_num_threads(1)
    try:
        return table.share_memory_()
    finally:
        torch.set_num_threads(threads)


class _Epochs:
    """The epoch of each iteration, agreed on by a dataset in its process and its DataLoader workers.

    A small int64 table in shared memory (``share_memory_()``: fork inherits it, spawn and
    forkserver receive it through torch's pickler; a plain pickle or deepcopy gets a private
    copy). Row 0 is ``(epoch given to set_epoch, number of set_epoch calls)``; row ``1 + s`` is
    ``(epoch of slot s's last iteration, set_epoch calls it had seen)``, slot 0 being the process
    itself and the others its DataLoader workers, a block per worker count (:func:`_slot`).

    An iteration follows the epoch last given to ``set_epoch`` if that call came after the
    slot's previous iteration, else the slot's previous epoch + 1. So with ``set_epoch`` before
    each epoch every worker follows it, persistent or not, and without it each worker advances
    by itself; the workers agree because each counts its own iterations.
    """

    def __init__(self, epoch: int = 0, *, shared: bool = True) -> None:
        self.owner = os.getpid()
        # per row: epoch, set_epoch calls seen; and the mark of a resumed iteration that
        # found its epoch passed (:meth:`mark_passed`): set_epoch calls + 1, how it went,
        # its epoch, and the set_epoch calls + 1 at which the next iteration settled it
        table = torch.zeros((2 + MAX_WORKERS + GROUPED * (GROUPED + 1) // 2, 6), dtype=torch.int64)
        table[0, 0] = epoch
        table[1:, 0] = -1
        self.table = _shared(table) if shared else table

    def set(self, epoch: int) -> None:
        gen = int(self.table[0, 1])
        self.table[0, :2] = torch.tensor([epoch, gen + 1])

    @property
    def current(self) -> int:
        return int(self.table[0, 0])

    def peek(self, slot: int) -> int:
        """The epoch the slot's next iteration follows."""
        epoch, gen = self.table[0, :2].tolist()
        last, seen = self.table[1 + slot, :2].tolist()
        return int(epoch if gen != seen or last < 0 else last + 1)

    def take(self, slot: int) -> int:
        """The epoch of the slot's iteration that starts now (recorded)."""
        epoch = self.peek(slot)
        self.record(slot, epoch)
        return epoch

    def workers_read(self) -> bool:
        """Whether DataLoader workers of this process have iterated the dataset."""
        return bool((self.table[2:, 0] >= 0).any())

    def record(self, slot: int, epoch: int) -> None:
        self.table[1 + slot, :2] = torch.tensor([epoch, int(self.table[0, 1])])

    #: how a passed iteration (:meth:`mark_passed`) went: running, read to its end, or found
    #: abandoned (its loader dropped it before its end)
    RUNNING, ENDED, ABANDONED = 0, 1, 3

    def mark_passed(self, slot: int, epoch: int, how: int) -> None:
        """Mark the slot's iteration that resumed a state whose epoch set_epoch had passed
        (reading ``epoch``), and how it went (see :meth:`settle_passed`)."""
        self.table[1 + slot, 2:5] = torch.tensor([int(self.table[0, 1]) + 1, how, epoch])

    def end_passed(self, slot: int) -> None:
        """The slot's passed iteration was read to its end (unless a successor in the slot
        found it abandoned already: a dropped worker still prefetching)."""
        token = int(self.table[0, 1]) + 1
        if self.table[1 + slot, 2:4].tolist() == [token, self.RUNNING]:
            self.table[1 + slot, 3] = self.ENDED

    def settle_passed(self, slot: int, siblings: list[int], wait: float = 5.0) -> None:
        """Before an iteration of ``slot`` after a passed one with no set_epoch between:
        record the passed epoch as taken if its loader used the passed iterations, so this
        one reads the next epoch; leave it untaken if the loader dropped them, so this one
        reads it again. Every worker of the loader settles alike.

        A StatefulDataLoader resumed from a state saved after its epoch's loop ended drops
        the resumed workers (or restarts them) at once, and the next ones must read the
        epoch; one resumed from a state saved at the epoch's last batch goes on with them,
        and their next iteration reads the next epoch. The saved states are alike; what
        tells them apart is that a used iteration is read to its end in every worker before
        any next one starts, while a dropped one is not (a worker whose share is under
        ``prefetch_factor`` batches may reach its end while the dropped loader prefetches:
        if every worker did, the epoch counts as taken, and the next reads the next epoch's
        order, each sample once). A slot whose own passed iteration is still running at its
        next one was dropped; it says so (ABANDONED) to its siblings, which wait for a
        running sibling to end or be found abandoned (up to ``wait`` seconds: not ended
        then, dropped)."""
        token = int(self.table[0, 1]) + 1
        mine = self.table[1 + slot, 2:].tolist()
        if mine[0] != token or mine[3] == token:
            return  # no passed iteration here since the last set_epoch call, or settled
        if mine[1] == self.RUNNING:
            self.table[1 + slot, 3] = self.ABANDONED
        rows = [1 + s for s in siblings]
        deadline = time.monotonic() + wait
        while True:
            marks = [(t, how) for t, how, _, _ in self.table[rows, 2:].tolist() if t == token]
            if any(how == self.ABANDONED for _, how in marks):
                taken = False
                break
            if all(how == self.ENDED for _, how in marks):
                taken = True
                break
            if time.monotonic() > deadline:
                taken = False
                break
            time.sleep(0.005)
        if taken:
            self.record(slot, mine[2])
        self.table[1 + slot, 5] = token

    def here(self, *, pickled_by: int | None, unpickled_in: int | None) -> _Epochs:
        """The table a dataset holding this one uses in this process: this one, or a new one.

        Outside DataLoader workers it is this process's own: a dataset that came from another
        process (pickled, e.g. by ``mp.spawn`` before DDP) gets a new one at its first use
        here. In a worker it must be the table of the process that started the worker.
        """
        if get_worker_info() is None:
            if self.owner != os.getpid() or not self.table.is_shared():
                return _Epochs(self.current)
            return self
        parent = pickled_by if unpickled_in == os.getpid() else os.getppid()
        if self.owner == os.getpid() or (self.owner == parent and self.table.is_shared()):
            return self
        warnings.warn(
            "TorchDataset: this DataLoader worker cannot see set_epoch() calls of the process "
            "that started it (the dataset came to that process pickled and was not used there "
            "before the workers started): its epochs advance only with persistent_workers=True. "
            "Call ds.set_epoch(epoch) in that process before each epoch.",
            RuntimeWarning,
            stacklevel=4,
        )
        return _Epochs(self.current, shared=False)


class TorchDataset(IterableDataset):
    """Batches as tensors, split across DataLoader workers and DDP ranks.

    Use it with ``DataLoader(ds, batch_size=None, num_workers=k)``: batching is done here.
    Each DDP rank reads its own share of the chunks (and, with ``shuffle=False``, every
    ``world_size``-th batch of the store); its DataLoader workers share the rank's batches, so
    together they deliver every sample exactly once per epoch, and ``len()`` (the rank's batch
    count) is right for any ``num_workers``. The batches themselves depend on the number of
    workers (each mixes the chunks of its own run of the epoch), reproducibly for a given
    ``(seed, epoch, num_workers, world_size)``.

    **Epochs.** Call :meth:`set_epoch` before each epoch (like ``DistributedSampler``): it
    reaches the DataLoader workers, ``persistent_workers=True`` included. It says the epoch of
    the *next* iteration: a look at a batch after it (``next(iter(loader))``) takes that
    epoch, and the loop after the look the next one; call it after any look (under DDP, a
    look on one rank only otherwise has the ranks read overlapping shares). Without it, every
    iteration advances the epoch by one by itself (0, 1, 2, ...; each worker counts its own
    iterations, as does the main process), so epochs still differ; this is what PyTorch
    Lightning gets, which never calls a dataset's ``set_epoch`` (to continue the count in a run
    resumed from a checkpoint, call ``ds.set_epoch(lightning_epoch(self.trainer))`` in
    ``train_dataloader()``: the epoch Lightning trains next, :func:`lightning_epoch`;
    ``self.current_epoch`` is still the last finished one there after a resume, which would
    repeat its order). One dataset
    may feed DataLoaders with different ``num_workers`` (up to 64): each worker count keeps
    its own counts. Augmentations
    draw from ``(seed, epoch, batch)``, the batch's index in the rank's epoch.

    **DDP.** Rank and world size are looked up when iterating (and by ``len()``): from
    ``torch.distributed`` once initialised (a dataset built before ``init_process_group`` and
    iterated after is right), in spawned workers from the process that started them. When
    ``WORLD_SIZE`` says there are several ranks but there is no process group, iterating is an
    error rather than every rank reading everything.

    **Ordered inference.** With ``shuffle=False`` a DataLoader yields the store order through
    any number of workers (they are dealt batches in the order the DataLoader asks for them;
    keep its default ``in_order=True``). A chunk that spans batches of several workers is read
    by each of them: a ``batch_size`` that is a multiple of the store's chunk length reads
    every chunk once. Ask for ``arrays=("images", "index")`` to get each sample's store index,
    e.g. to write predictions back where they belong.

    **Resume.** :meth:`state_dict` / :meth:`load_state_dict` follow the protocol of torchdata's
    ``StatefulDataLoader`` (called in each worker): a resumed job continues mid-epoch and reads
    only what is left. A state refuses other settings (ValueError naming the setting).

    Parameters
    ----------
    source
        A store path (best: each worker opens its own file, fork-safe), an ImageSet or
        dask arrays, as for :class:`~daskimg.feed.BatchIterator`. Dask arrays are computed
        with the threaded scheduler inside DataLoader workers (a ``distributed.Client`` of
        the main process cannot serve forked workers).
    batch_size, shuffle, seed, buffer_chunks, drop_last, transform, prefetch, threads
        As for :class:`~daskimg.feed.BatchIterator`. ``seed=None`` draws one seed here,
        shared by the workers (refused with several ranks, which would draw their own).
    arrays
        Names of the arrays to yield, in order (default ``("images", "labels")``);
        ``"index"`` is each sample's store index. String arrays (``"paths"``) come as
        Python lists of ``str``.
    rank, world_size
        This process's DDP rank and the number of ranks; given, they win over the lookup.
        Give both or neither: one alone takes the other from ``torch.distributed`` and is
        refused where there is no process group (``world_size=2`` alone made every process
        rank 0, reading the same half) or where it disagrees with the group's.
    even
        Give every rank the same number of batches, by repeating at most a chunk's worth
        of samples per rank (like ``DistributedSampler``'s padding; with ``shuffle=False``,
        up to a batch's worth when a batch is longer than a chunk): unequal counts hang DDP.
        With ``drop_last`` nothing is repeated: every rank yields the full batches the
        smallest rank's share fills (each rank leaves out less than a chunk and a batch,
        a new random few each epoch), as ``DistributedSampler(drop_last=True)`` repeats none.
        Default (None): True when there are several ranks and ``shuffle=True`` (training),
        else False, so that ``shuffle=False`` (evaluation, inference) counts every sample
        exactly once (ranks may then differ by one batch).
    channels_first
        Yield images as ``(N, C, H, W)`` (``(N, C, D, H, W)`` for volumes); gray images
        stored without a channel axis, ``(N, H, W)``, as ``(N, 1, H, W)``.
    num_workers
        Not needed any more (``len()`` no longer depends on the DataLoader's workers);
        accepted and ignored.
    dtype
        If given, images are converted to this torch dtype (``torch.float32`` scales
        ``uint8`` and ``uint16`` images to 0..1; volumes keep their values).
    storage_options
        For a store URL (``s3://...``), as for :func:`daskimg.open_zarr`.

    Examples
    --------
    >>> from daskimg.torch import TorchDataset  # doctest: +SKIP
    >>> ds = TorchDataset("out/train.zarr.zip", batch_size=64)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)  # doctest: +SKIP
    >>> for epoch in range(3):  # doctest: +SKIP
    ...     ds.set_epoch(epoch)
    ...     for images, labels in loader:
    ...         pass
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
        rank: int | None = None,
        world_size: int | None = None,
        even: bool | None = None,
        channels_first: bool = False,
        num_workers: int | None = None,
        dtype: torch.dtype | None = None,
        prefetch: int = 1,
        threads: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("rank", rank), ("world_size", world_size)):
            if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool)):
                raise ValueError(f"{name} must be an int or None; got {v!r}")
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ValueError(
                f"rank must lie in 0..world_size-1; got rank={rank}, world_size={world_size}"
            )
        if even is not None and not isinstance(even, bool):
            raise ValueError(f"even must be True, False or None; got {even!r}")
        self.source = anchored(source)  # DataLoader workers open the store again by it
        self.rank, self.world_size = rank, world_size
        self.even = even
        self.channels_first = channels_first
        self.dtype = dtype
        self._kw: dict[str, Any] = {
            "batch_size": batch_size,
            "shuffle": shuffle,
            "seed": seed,
            "buffer_chunks": buffer_chunks,
            "drop_last": drop_last,
            "arrays": arrays,
            "transform": transform,
            "prefetch": prefetch,
            "threads": threads,
            "storage_options": storage_options,
        }
        probe = BatchIterator(source, **self._kw)  # validates arguments, knows N and chunks
        fed = probe.source
        if channels_first and "images" in fed.names and (layout := fed.channels_first("images")):
            raise ValueError(
                f"channels_first=True moves the images' last axis first, and these "
                f"({fed.shape('images')} a sample) look channels-first {layout} already: it "
                "would hand out tensors with their width as channels. Leave "
                "channels_first=False to feed them as they are, or: " + LAYOUT_FIX
            )
        self._seed_drawn = seed is None
        self._kw["seed"] = probe.seed  # seed=None: drawn once, here, for every worker
        self._settings = {
            k: v
            for k, v in probe.settings().items()
            if k not in ("consumer", "num_consumers", "worker", "num_workers", "even")
        }
        self._arrays = tuple(probe.arrays)
        self._samples = probe.num_samples
        probe.close()
        self._epochs = _Epochs()
        self._it: BatchIterator | None = None  # this process's iterator, kept across epochs
        self._it_key: tuple[int, ...] | None = None
        self._gen: Generator[tuple[Any, ...], None, None] | None = None
        self._iteration = 0  # iter() calls in this process: which iteration is the latest
        self._finished = -1  # the latest earlier iteration that had handed out every batch
        self._resume: dict[str, Any] | None = None  # a state to continue from
        self._captured: tuple[int, int] | None = None  # (rank, world) of the pickling process
        self._pickled_by: int | None = None
        self._unpickled_in: int | None = None

    def __repr__(self) -> str:
        kw = self._kw
        ranks = "" if self.world_size is None else f", rank={self.rank} of {self.world_size}"
        return (
            f"TorchDataset({shown(self.source)}, samples={self._samples}, "
            f"batch_size={kw['batch_size']}, arrays={list(self._arrays)}, "
            f"shuffle={kw['shuffle']}, seed={kw['seed']}, epoch={self.epoch}{ranks})"
        )

    # -- epochs -----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration follows, in this process and its DataLoader
        workers (persistent ones included)."""
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._table().set(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch last given to :meth:`set_epoch` (0 before any call)."""
        return self._table().current

    def _table(self) -> _Epochs:
        """This process's epoch table (see :meth:`_Epochs.here`)."""
        self._epochs = self._epochs.here(
            pickled_by=self._pickled_by, unpickled_in=self._unpickled_in
        )
        return self._epochs

    # -- ranks ------------------------------------------------------------------------
    def _ranks(self) -> tuple[int, int]:
        """(rank, world size) of this process (see :func:`_find_ranks`)."""
        return _find_ranks(self.rank, self.world_size, self._captured)

    def _even(self, world: int) -> bool:
        return (world > 1 and bool(self._kw["shuffle"])) if self.even is None else self.even

    # -- iteration --------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches this rank yields per epoch, whatever the DataLoader's ``num_workers``.

        Refuses Lightning's ``Trainer.predict`` without ``"index"`` (Lightning asks for the
        length first) on a shuffled dataset, or on several ranks: the predictions would come
        back in the shuffled order, or each rank's in its own share of the batches, with
        nothing to say which sample each belongs to."""
        rank, world = self._ranks()
        if (
            (self._kw["shuffle"] or world > 1)
            and INDEX not in self._arrays
            # a spawned DDP rank runs the trainer's _predict_impl without predict above it
            and called_from(("predict", "_predict_impl"), "lightning", "pytorch_lightning")
        ):
            fix = (
                "add 'index' to arrays= and write each prediction to its index "
                "(ArrayWriter(..., mode='a').append(preds, index=index))"
            )
            if not self._kw["shuffle"]:  # several ranks, each with every world-th batch
                raise ValueError(
                    f"Trainer.predict on {world} ranks without 'index': each rank predicts "
                    f"its own share of the batches (rank {rank}: batches {rank}, "
                    f"{rank + world}, {rank + 2 * world}, ...), so predictions gathered from "
                    "the ranks are not in store order, and written back they would land on "
                    f"other samples. Carry the indices: {fix}"
                )
            raise ValueError(
                "Trainer.predict on a TorchDataset that shuffles (shuffle=True is the default) "
                "would return the predictions in a shuffled order: written back, they would "
                "land on other samples. Predict from one in store order, TorchDataset(path, "
                f"..., shuffle=False) in one process, or {fix}"
            )
        if world > 1 and self._even(world) and self._kw["shuffle"] and self._kw["drop_last"]:
            check_fills_a_batch(  # (len() 0: the loop skipped every epoch, unsaid)
                self._settings["num_samples"],
                self._settings["chunk_len"],
                world,
                batch_size=self._kw["batch_size"],
            )
        if world > 1 and self._even(world) and self._kw["shuffle"]:
            # said here, in the main process, so that forked workers do not say it again
            warn_uneven_share(
                self._settings["num_samples"],
                self._settings["chunk_len"],
                world,
                batch_size=self._kw["batch_size"],
                drop_last=self._kw["drop_last"],
                where=repr(self.source if isinstance(self.source, str) else "the source"),
            )
        return num_batches(
            self._settings["num_samples"],
            self._settings["chunk_len"],
            batch_size=self._kw["batch_size"],
            drop_last=self._kw["drop_last"],
            consumer=rank,
            num_consumers=world,
            even=self._even(world),
            shuffle=self._kw["shuffle"],
        )

    def __iter__(self) -> Generator[tuple[Any, ...], None, None]:
        # not a generator function: the epoch is settled (and a resumed state applied) when the
        # DataLoader calls iter(), before any batch is asked for, in every worker
        if self._gen is not None:  # an earlier iteration (maybe the parent's, forked) unfinished
            with contextlib.suppress(Exception):  # (a state it cannot give: not finished)
                if self._it is not None and self._it.state_dict()["batch"] >= len(self._it):
                    self._finished = self._iteration  # all batches out: its next() just ends
            with contextlib.suppress(ValueError):  # ValueError: it runs in another thread
                self._gen.close()
            self._gen = None
        self._iteration += 1  # an earlier iteration asked for another batch now fails loudly
        it, slot = self._iterator()
        table = self._table()
        passed = False
        if self._resume is not None:
            it.load_state_dict(_for_rank(self._resume, it))
            done = bool(len(it)) and it.state_dict()["batch"] >= len(it)
            if done and table.current > it.epoch:
                # set_epoch has moved past the epoch the state finished: nothing of it is left,
                # and the epoch asked for is the one to read (a loop resuming at the next one)
                self._resume, passed = None, True
            if not done and table.current > it.epoch:
                self._refuse_passed_unfinished(it, table.current)
        if self._resume is not None:
            info = get_worker_info()
            if done:
                # the state was saved when this process's (or worker's) share of its epoch was
                # used up: the rest is empty, as torchdata's own samplers resume, and the next
                # iteration takes the next epoch. (With no workers this used to start the next
                # epoch at once, so a loop calling set_epoch per epoch trained it twice; a
                # worker cannot tell whether the others were done too, so starting there would
                # mix the next epoch's batches into this one's rest or serve them in another
                # worker's turn. A StatefulDataLoader that drops this iteration makes new
                # workers, which take the next epoch from the table.) Logged, not warned: it is
                # the normal case of a state saved at an epoch's end, and -W error would stop
                # a right resume.
                logger.info(
                    "TorchDataset: %s had delivered all its batches of epoch %d when the "
                    "resumed state was saved; it yields none until the next epoch",
                    "this process" if info is None else f"DataLoader worker {info.id}",
                    it.epoch,
                )
            table.record(slot, it.epoch)
            self._gen = self._resumed(it, done)
        elif passed and get_worker_info() is not None:
            # not taken yet: whether this iteration is used or dropped is settled by the
            # slot's next one (_Epochs.settle_passed). Counted as taken once read to its end
            # (before), a worker whose share was under prefetch_factor batches read it to its
            # end while a dropped loader prefetched, and its successor read the next epoch's
            # plan beside its siblings' of this one: samples repeated and missed
            epoch = table.peek(slot)
            it.set_epoch(epoch)
            table.mark_passed(slot, epoch, table.RUNNING)
            self._gen = self._passed(it, table, slot, epoch)
        elif get_worker_info() is None:
            # no workers: the epoch counts as taken once a batch is asked for (Lightning
            # calls iter() on a reloaded DataLoader twice and drops the first iterator
            # unstarted, which took an epoch)
            epoch = table.peek(slot)
            it.set_epoch(epoch)
            self._gen = self._started(it, table, slot, epoch)
        else:
            # a worker takes it at iter(): an epoch its DataLoader ends early (break) may
            # never ask it for a batch, and its count would lag its siblings' for good
            n = get_worker_info().num_workers  # type: ignore[union-attr]  # (a worker)
            table.settle_passed(slot, [_slot(w, n) for w in range(n)])
            it.set_epoch(table.take(slot))
            self._gen = self._batches(it)
        return self._guarded(self._gen, self._iteration, it.epoch)

    def _guarded(
        self, inner: Generator[tuple[Any, ...], None, None], iteration: int, epoch: int
    ) -> Generator[tuple[Any, ...], None, None]:
        """``inner``'s batches while this is the dataset's latest iteration: one that a later
        ``iter()`` of the same dataset in this process cut short (``next(iter(loader))`` to
        look at a batch mid-epoch, the same dataset as the validation loader with no
        workers) raises when asked for its next batch, instead of ending its epoch early."""
        served = 0
        while True:
            if self._iteration != iteration:
                if self._finished == iteration:
                    return  # it had handed out every batch: nothing was cut short
                raise RuntimeError(
                    f"TorchDataset: this iteration (epoch {epoch}, {served} batches in) was "
                    "cut short: the same TorchDataset was iterated again while it ran (e.g. "
                    "next(iter(loader)) to look at a batch, or the dataset given as another "
                    "DataLoader's too), and in one process (num_workers=0) a TorchDataset "
                    "reads one iteration at a time; the rest of this epoch would be lost. "
                    "Make a second TorchDataset for the other iteration"
                )
            if not served:
                self._check_not_batched_again(sys._getframe(1))
            try:
                batch = next(inner)
            except StopIteration:
                return
            served += 1
            yield batch

    def _check_not_batched_again(self, caller: Any) -> None:
        """Refuse a DataLoader that batches the dataset's batches again: its default
        ``batch_size=1`` gave ``(1, B, ...)`` tensors (a model then failed far from the
        cause), ``batch_size=4`` stacked four batches into one, without a word."""
        if caller is None or caller.f_code.co_name != "fetch":
            return
        if f"{os.sep}torch{os.sep}" not in caller.f_code.co_filename:
            return
        fetcher = caller.f_locals.get("self")
        if not getattr(fetcher, "auto_collation", False):
            return
        index = caller.f_locals.get("possibly_batched_index")
        size = len(index) if hasattr(index, "__len__") else "a batch_size"
        raise ValueError(
            f"the DataLoader batches this TorchDataset's batches again (its batch_size={size} "
            f"would stack that many batches of {self._kw['batch_size']} into one, "
            f"({size}, {self._kw['batch_size']}, ...)): a TorchDataset yields whole batches. "
            "Pass batch_size=None to the DataLoader: DataLoader(ds, batch_size=None, ...)"
        )

    def _started(
        self, it: BatchIterator, table: _Epochs, slot: int, epoch: int
    ) -> Generator[tuple[Any, ...], None, None]:
        table.record(slot, epoch)
        yield from self._batches(it)

    def _passed(
        self, it: BatchIterator, table: _Epochs, slot: int, epoch: int
    ) -> Generator[tuple[Any, ...], None, None]:
        yield from self._batches(it)
        table.end_passed(slot)

    def _refuse_passed_unfinished(self, it: BatchIterator, epoch: int) -> None:
        """Refuse a state of an epoch it had not finished, resumed with set_epoch past it.

        A StatefulDataLoader with ``snapshot_every_n_steps=n > 1`` keeps its workers' states
        from up to n - 1 batches before a state is saved, and skips those batches when
        resumed: a state saved at an epoch's last batch, resumed with ``set_epoch(next)``,
        trained the next epoch on none (or half) of its batches, without a word. Reading the
        old epoch's rest into the skipped batches first unbalanced the workers, and a state
        saved in that epoch then resumed a worker into the epoch after it (found by a
        helper): refused, with the ways that resume exactly."""
        info = get_worker_info()
        left = len(it) - it.state_dict()["batch"]
        raise ValueError(
            f"TorchDataset: the state resumed was saved {left} batch(es) before the end of "
            f"epoch {it.epoch} for {'this process' if info is None else f'DataLoader worker {info.id}'}, "
            f"but set_epoch({epoch}) has moved past that epoch. A StatefulDataLoader made with "
            "snapshot_every_n_steps > 1 saves its workers' positions up to that many batches "
            "late, so a state saved at an epoch's last batch looks unfinished and cannot be "
            "resumed in the next epoch exactly: use snapshot_every_n_steps=1 (torchdata's "
            f"default), or resume the state in its own epoch (set_epoch({it.epoch})) and let "
            "it finish"
        )

    def _resumed(self, it: BatchIterator, done: bool) -> Generator[tuple[Any, ...], None, None]:
        # the state counts as applied only once a batch is asked for: StatefulDataLoader
        # drops an iterator it resumed from a finished epoch unstarted and makes another,
        # which must resume from the same state, not take one more epoch from the table
        self._resume = None
        if not done:
            yield from self._batches(it)

    def _iterator(self) -> tuple[BatchIterator, int]:
        """This process's iterator for its rank and worker, and its slot in the epoch table."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers > MAX_WORKERS:
            raise ValueError(f"TorchDataset follows at most {MAX_WORKERS} DataLoader workers")
        rank, world = self._ranks()
        if self._seed_drawn and world > 1:
            raise ValueError(
                f"seed=None draws a seed in each of the {world} ranks, which would then read "
                "overlapping samples; pass the same int seed to every rank"
            )
        even = self._even(world)
        key = (os.getpid(), rank, world, worker, workers, int(even), self._kw["seed"])
        if self._it is None or self._it_key != key:
            if self._it is not None and self._it_key is not None and self._it_key[0] == key[0]:
                self._it.close()
            it = BatchIterator(
                self.source,
                consumer=rank,
                num_consumers=world,
                worker=worker,
                num_workers=workers,
                even=even,
                **self._kw,
            )
            if info is not None:
                it.source.scheduler = (
                    "threads"  # a distributed.Client of the parent cannot serve a fork
                )
                _refuse_persisted(it)
            # which store this is (the settings' "source": a hash of its attributes, which
            # hold every chunk's crc32c): a worker opens the store again by its path
            made_for = self._settings["source"]
            if it.source.identity.get("token") != made_for.get("token"):
                it.close()
                raise ChecksumError(
                    f"{made_for.get('path') or 'the store'}: the store was replaced since "
                    "this TorchDataset was made (written again, e.g. to_zarr(..., "
                    "overwrite=True)): its samples and counts are not the ones this dataset "
                    "was made for, and DataLoader workers would mix the two. Make the "
                    "TorchDataset and its DataLoader again"
                )
            self._it, self._it_key = it, key
        return self._it, 0 if info is None else _slot(worker, workers)

    def _batches(self, it: BatchIterator) -> Generator[tuple[Any, ...], None, None]:
        names = it.arrays
        # a float dtype scales images by what their type says: a transform must return one
        # type (float maths on some uint8 batches put batches on two scales)
        checked = (
            "images" in names
            and self._kw["transform"] is not None
            and self.dtype is not None
            and self.dtype.is_floating_point
        )
        first = None
        for batch in it:
            if checked:
                first = check_auto_scale(
                    self._kw["transform"], first, batch[names.index("images")],
                    "pass dtype=None and scale them yourself",
                )  # fmt: skip
            yield tuple(
                _to_torch(name, a, self.channels_first, self.dtype)
                for name, a in zip(names, batch, strict=True)
            )

    # -- resume -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this process's iteration is (a DataLoader worker's, when called in one, as
        ``StatefulDataLoader`` does): ``{"epoch", "batch", ...settings}``.

        In the main process of a DataLoader with workers, the workers hold where the epoch
        is, not this process: its state is that of an epoch's start (said in a warning).
        Take the loader's state there: torchdata's ``StatefulDataLoader.state_dict()``
        asks each worker."""
        if get_worker_info() is None and self._gen is None and self._table().workers_read():
            logger.warning(
                "TorchDataset.state_dict() in the main process of a DataLoader with workers: "
                "the workers read the epoch, so this state is the start of an epoch, not "
                "where they are (resumed, it reads the epoch again from its first batch). To "
                "save where a loader with workers is, use torchdata's StatefulDataLoader and "
                "its state_dict()"
            )
        it, slot = self._iterator()
        if self._gen is None and self._resume is None:  # not iterated yet: the next epoch
            it.set_epoch(self._table().peek(slot))
        return dict(self._resume) if self._resume is not None else it.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` at the next iteration (in this process or
        worker). Refused (ValueError naming it) when a setting that shapes the order differs."""
        check_state(state, self._settings, adopt_seed=self._seed_drawn)
        if self._seed_drawn and state.get("seed") is not None:
            self._kw["seed"] = int(state["seed"])
            self._settings["seed"] = self._kw["seed"]
        self._resume = dict(state)

    # -- pickling (spawned DataLoader workers, mp.spawn) -------------------------------
    def __getstate__(self) -> dict[str, Any]:
        if get_worker_info() is None:
            self._table()  # the table pickled for the workers is this process's own
        state = self.__dict__.copy()
        state.update(_it=None, _it_key=None, _gen=None, _pickled_by=os.getpid())
        live = _live_ranks()
        if live is not None:  # a spawned worker has no process group: it takes this one's
            state["_captured"] = live
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._unpickled_in = os.getpid()


def _refuse_persisted(it: BatchIterator) -> None:
    """In a DataLoader worker: refuse arrays persisted on a ``distributed`` cluster
    (``ds.images.persist()``): their chunks live on the cluster, which only the main
    process's client reaches (dask failed with "Missing dependency ('imread-...')")."""
    for name in persisted(it.source.lazy)[:1]:
        it.close()
        raise ValueError(
            f"array {name!r} is persisted on a distributed cluster (.persist()): its "
            "chunks live there, and a DataLoader worker process cannot reach the "
            "cluster through the main process's client. Use num_workers=0, feed from a "
            "store (to_zarr, then TorchDataset(path, ...)), or do not persist it"
        )


def lightning_epoch(trainer: Any) -> int:
    """The epoch a PyTorch Lightning ``trainer`` trains next, for
    ``ds.set_epoch(lightning_epoch(self.trainer))`` in ``train_dataloader()``.

    Resumed from a stop by ``max_steps`` (its epoch processed, not completed) or at a
    reload at an epoch's start: the epochs completed. Otherwise the epochs processed
    (``fit_loop.epoch_progress.current.processed``; after a
    resume ``current_epoch`` is still the last finished one there, whose order would be
    read again), one more when it resumes from a checkpoint saved on an epoch's last step
    (``ModelCheckpoint(every_n_train_steps=...)``): that epoch is done, and Lightning goes
    on to the next, which was otherwise read as the rest of the done one — nothing, with a
    ``StatefulDataLoader``, a whole epoch lost; the done epoch's order again without one.
    """
    loop = trainer.fit_loop
    epochs = loop.epoch_progress.current
    done, finished = int(epochs.processed), int(epochs.completed)
    # a stop by max_steps counts its epoch processed, not completed, and processed stays one
    # ahead after the resume: read as the epoch, every later epoch took the next one's order
    # (one order skipped) and the resumed one an extra batch
    if loop.restarting and done > finished:
        return finished  # its state restored: Lightning reads the rest of that epoch first
    reloads = bool(getattr(trainer, "reload_dataloaders_every_n_epochs", 0))
    if not loop.restarting and reloads:
        return finished  # a reload at an epoch's start: the epochs finished
    batches = loop.epoch_loop.batch_progress
    last = bool(loop.restarting and batches.is_last_batch and epochs.started > done)
    return done + int(last)


def _for_rank(state: dict[str, Any], it: BatchIterator) -> dict[str, Any]:
    """``state`` as this rank's: PyTorch Lightning saves rank 0's loader state only and
    gives it to every rank, so rank 1 was refused ("saved with consumer=0") when resuming
    a DDP run mid-epoch. With ``even`` every rank yields the same batches per worker, so
    rank 0's position is every rank's; without it (ranks may differ by a batch) a state
    of another rank is refused, saying why."""
    theirs, world = state.get("consumer"), state.get("num_consumers")
    if world is not None and world != it.num_consumers:
        # named in the state's own terms before ("saved with num_consumers=1", or even=False
        # when only its default, which follows the world size, had changed)
        raise ValueError(
            f"cannot resume: the state was saved by rank {theirs} of world_size={world}, "
            f"and this is rank {it.consumer} of world_size={it.num_consumers}. An epoch's "
            "order is divided between the ranks: resume with as many ranks as the run that "
            "saved it, or start the epoch afresh (no load_state_dict) with this many"
        )
    if theirs is None or theirs == it.consumer:
        return state
    if (state.get("even") and it.even) or state.get("batch") == 0:
        # equal batch counts, or an epoch not begun: every rank is at the same place
        return {**state, "consumer": it.consumer}
    raise ValueError(
        f"cannot resume rank {it.consumer} from the state of rank {theirs}: this epoch's "
        "ranks have unequal batch counts (even=False), so one rank's position is not "
        "another's. PyTorch Lightning saves rank 0's loader state only: resume such a run "
        "from a checkpoint saved at an epoch's end, or pass even=True"
    )


def _live_ranks() -> tuple[int, int] | None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _find_ranks(
    rank: int | None, world: int | None, captured: tuple[int, int] | None
) -> tuple[int, int]:
    """(rank, world size): given ones, else ``torch.distributed``'s (or the spawning process's,
    ``captured``), else ``(0, 1)``; an error when ``WORLD_SIZE`` says there are more."""
    if rank is None or world is None:
        found = _live_ranks() or captured
        if found is None and rank is None and world == 1:
            found = (0, 1)  # one rank of one: no other to take
        if found is None and (rank, world) != (None, None):
            # one given alone, nothing to take the other from: rank 0 of a world_size of 2
            # in every process reads the same half twice and never the other half
            raise ValueError(
                f"TorchDataset got {'world_size' if rank is None else 'rank'}="
                f"{world if rank is None else rank} without "
                f"{'rank' if rank is None else 'world_size'}=, and torch.distributed is not "
                "initialised here to say it: pass both rank= and world_size=, or neither "
                "(after init_process_group, the lookup finds them)"
            )
        if found is not None and (
            (rank is not None and rank != found[0]) or (world is not None and world != found[1])
        ):
            # half given, half looked up, and they disagree: ranks would overlap or miss
            # samples (world_size=4 with 2 DDP ranks: half the epoch never read)
            raise ValueError(
                f"TorchDataset got rank={rank}, world_size={world}, but this process is rank "
                f"{found[0]} of {found[1]} (torch.distributed): pass both rank= and "
                "world_size= to split the epoch your own way, or neither"
            )
        if found is None:
            env = os.environ.get("WORLD_SIZE", "").strip()
            if env.isdigit() and int(env) > 1:
                raise RuntimeError(
                    f"WORLD_SIZE={env}: this process is one of {env} DDP ranks, but "
                    "torch.distributed is not initialised here and TorchDataset got no "
                    "rank/world_size, so every rank would read the whole epoch. Call "
                    "torch.distributed.init_process_group() before iterating (the dataset "
                    "may be built before), or pass rank= and world_size= (rank=0, "
                    "world_size=1 to read everything in this process)."
                )
            found = (0, 1)
        rank = found[0] if rank is None else rank
        world = found[1] if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in 0..world_size-1; got rank={rank}, world_size={world}")
    return int(rank), int(world)


def _to_torch(name: str, a: np.ndarray, channels_first: bool, dtype: torch.dtype | None) -> Any:
    """One array of a batch as a tensor (strings: a list of str), images as asked for."""
    if a.dtype.kind in "OUSV":  # strings (paths): torch has no tensor of them
        return a.tolist()
    if not a.dtype.isnative:  # big-endian (HDF5, FITS, network order): torch takes none
        a = a.astype(a.dtype.newbyteorder("="))
    t = torch.from_numpy(np.ascontiguousarray(a))
    if name == "images":
        if channels_first and a.ndim == 3:  # (N, H, W) gray: moving W in front transposed it
            t = t.unsqueeze(1)
        elif channels_first:
            t = t.movedim(-1, 1).contiguous()
        if dtype is not None:
            scale = auto_scale(a.dtype, a.ndim)  # volumes keep their values
            if dtype.is_floating_point and scale != 1.0:
                # divided in float32 (float64 if asked), then cast: float16 holds no 65535
                # (uint16 pixels >= 65520 became inf before the division)
                wide = torch.float64 if dtype == torch.float64 else torch.float32
                t = (t.to(wide) / scale).to(dtype)
            else:
                t = _cast(t, dtype, name)
    return t


def _cast(t: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """``t.to(dtype)``, refused (ValueError) where it changes values beyond a float's own
    rounding: whole numbers a float type cannot hold (int16 2049 as float16 2048), values
    out of an integer type's range (-1000 as uint8 24), fractions or NaN made integers, and
    finite values made infinite (65520 as float16) or values other than 0 made 0 (float64
    1e-300 in float32: a log of it is -inf). A volume's values are measurements.
    Casts that keep every value (numpy's "safe": int16 to float32) are not checked."""
    out = t.to(dtype)
    if not t.numel() or t.dtype == dtype or _safe(t.dtype, dtype):
        return out
    floats = t.is_floating_point() and dtype.is_floating_point
    # below the smallest it holds: fewer values other than 0 (a cast makes no 0 other than 0)
    vanished = floats and int(torch.count_nonzero(out)) != int(torch.count_nonzero(t))
    if not vanished and _fits(t, dtype):
        return out
    if floats:
        # rounding a float is what casting does; beyond its range either way is not
        bad = (torch.isinf(out) & torch.isfinite(t)) | ((out == 0) & (t != 0))
    elif dtype.is_floating_point:  # whole numbers: back to the same, and finite
        bad = ~torch.isfinite(out) | (out.to(t.dtype) != t)
    elif t.is_floating_point():  # to integers: fractions, NaN, wrapped values do not come back
        bad = out.to(t.dtype) != t
    else:  # integers to integers, compared wide (uint8 128 as int8 -128 comes back as 128)
        bad = out.to(torch.int64) != t.to(torch.int64)
    if bool(bad.any()):
        k = int(torch.nonzero(bad.flatten())[0])
        before, after = t.flatten()[k].item(), out.flatten()[k].item()
        raise ValueError(
            f"TorchDataset(dtype={dtype}): {name!r} holds {before} ({t.dtype}), which becomes "
            f"{after} in {dtype} ({int(bad.sum())} values of this batch change). Pass a dtype "
            "that holds the values (torch.float32 holds whole numbers up to 2**24), or leave "
            "dtype unset and convert them yourself"
        )
    return out


def _safe(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every value of ``src`` is one of ``dst``: numpy's "safe" casting, but for
    integers a float's mantissa cannot hold all of (numpy calls int64 to float64 safe)."""
    try:
        a, b = (torch.empty(0, dtype=d).numpy().dtype for d in (src, dst))
    except TypeError:  # bfloat16: no numpy dtype
        return False
    if a.kind in "iu" and b.kind == "f":
        return bool(np.iinfo(a).max <= 2 ** (np.finfo(b).nmant + 1))
    return bool(np.can_cast(a, b, "safe"))


def _fits(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the values of this batch lie where ``dtype`` holds them all exactly (one pass
    for their range), so the value-by-value check can be skipped: integers within a
    float's whole numbers or another integer type's range, floats within a float's range."""
    if t.dtype == torch.bool:
        return False
    try:
        low, high = torch.aminmax(t)
    except (NotImplementedError, RuntimeError):  # uint16 and other types torch cannot range
        return False
    # exact: float(2**53 + 1) is 2**53
    lo, hi = (v.item() for v in (low, high))
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        if t.is_floating_point():
            return -info.max <= lo and hi <= info.max  # NaN: False, checked one by one
        return max(-lo, hi) <= 2 ** _MANTISSA.get(dtype, 0)
    if t.is_floating_point():
        return False  # fractions: checked one by one
    iinfo = torch.iinfo(dtype)
    return iinfo.min <= lo and hi <= iinfo.max


#: whole numbers a float type holds exactly: up to 2**(mantissa bits + 1)
_MANTISSA = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}
