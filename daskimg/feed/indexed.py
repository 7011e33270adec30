"""Feed: a dataset read by batch index, epoch after epoch — the framework-free core of
:class:`daskimg.keras.KerasDataset` (``keras.utils.PyDataset``).

Such a loop asks for batch ``i`` of "the" epoch, never says which epoch it runs, and may ask
for the batches in any order. :class:`EpochProgress` keeps the epoch being served, the plan
batches of it served so far, and those a resumed state left out; the dataset moves to the
next epoch once every batch of the current one has been served. :class:`IndexedBatches`
reads batch ``i`` (:class:`~daskimg.feed.batches.EpochBatches`), in worker threads or
processes and ahead of requests that come in order (:mod:`daskimg.feed.workers`), and
saves and resumes where it stands.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .batches import EpochBatches, ReadStats, source_fingerprint
from .checks import check_at_least
from .iterator import Transform
from .plan import EpochPlan
from .workers import BatchReads

__all__ = ["EpochProgress", "IndexedBatches"]

#: the settings that shape the order of an epoch, as saved by ``state_dict``
ORDER_SETTINGS = (
    "num_samples",
    "chunk_len",
    "source",
    "seed",
    "batch_size",
    "shuffle",
    "buffer_chunks",
    "drop_last",
)


class EpochProgress:
    """The epoch a by-index dataset serves, and the plan batches of it already served.

    After a resume mid-epoch, the batches the state had served (``skip``) are left out:
    ``len(progress)`` batches remain, and index ``i`` serves :meth:`batch_of` ``(i)``.

    Parameters
    ----------
    num_batches
        Batches in an epoch's plan.

    Examples
    --------
    >>> progress = EpochProgress(3)
    >>> progress.resume(2, [0])
    >>> len(progress), progress.batch_of(0), progress.consumed()
    (2, 1, [0])
    """

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches
        self.epoch = 0
        self.skip: frozenset[int] = frozenset()  # served before a loaded state was saved
        self.served: set[int] = set()  # plan batches of this epoch served
        self.generation = 0  # changes with the epoch or the batches a state left out
        self._view: np.ndarray | None = None  # plan batch of each index, after a resume

    def __len__(self) -> int:
        return self.num_batches - len(self.skip)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_view")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._view = None

    def select(self, epoch: int) -> None:
        """Serve epoch ``epoch``, whole, from now on."""
        self.epoch = epoch
        self.skip = frozenset()
        self.served = set()
        self.generation += 1
        self._view = None

    def resume(self, epoch: int, consumed: list[int]) -> None:
        """Serve the rest of epoch ``epoch``: the plan batches ``consumed`` are left out."""
        self.select(epoch)
        self.skip = frozenset(consumed)

    @property
    def done(self) -> bool:
        """Every batch of the current epoch was served."""
        return len(self.served) >= len(self)

    def restart(self) -> None:
        """No batch of this epoch counts as served any more (a training run starts)."""
        self.served = set()
        self.generation += 1

    def mark_served(self, b: int, generation: int) -> None:
        """Plan batch ``b``, asked for in ``generation``, was served (if that is still now)."""
        if self.generation == generation:  # not an epoch left meanwhile
            self.served.add(b)

    def consumed(self) -> list[int]:
        """The plan batches of this epoch served, by this dataset or before the state it resumed."""
        return sorted(self.skip | self.served)

    def batch_of(self, index: int) -> int:
        """The plan batch that index ``index`` of the current epoch serves."""
        if not self.skip:
            return index
        if self._view is None:
            keep = np.ones(self.num_batches, dtype=bool)
            keep[list(self.skip)] = False
            self._view = np.flatnonzero(keep)
        return int(self._view[index])


class IndexedBatches:
    """Batch ``i`` of the current epoch on demand, epoch after epoch; its state saved and resumed.

    Batch ``i`` of an epoch is plan batch ``i`` of ``(seed, epoch)`` (after a resume
    mid-epoch: the ``i``-th of the batches the state had not served). Every method may be
    called from several threads.

    Parameters
    ----------
    source, names, batch_size, seed, shuffle, buffer_chunks, drop_last, transform, scale,
    cache_chunks, threads, storage_options
        What each batch holds and how epochs are planned, as for
        :class:`~daskimg.feed.batches.EpochBatches`.
    workers, processes
        Threads (or, with ``processes``, spawned processes) reading batches in the
        background, as for :class:`~daskimg.feed.workers.BatchReads`.
    """

    def __init__(
        self,
        source: Any,
        names: Sequence[str],
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        buffer_chunks: int,
        drop_last: bool,
        transform: Transform | None,
        scale: float | str | None,
        cache_chunks: int | None,
        threads: int,
        storage_options: Mapping[str, Any] | None,
        workers: int,
        processes: bool,
    ) -> None:
        self.batches = EpochBatches(
            source,
            names,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            buffer_chunks=buffer_chunks,
            drop_last=drop_last,
            transform=transform,
            scale=scale,
            cache_chunks=cache_chunks,
            threads=threads,
            storage_options=storage_options,
        )
        self.workers = workers
        self.processes = processes
        self.fingerprint = source_fingerprint(self.batches.reader.source)
        self.progress = EpochProgress(self.batches.num_batches)  # the epoch, what was served
        self._runtime()

    def _runtime(self) -> None:
        """The lock, and the workers with their reads ahead: rebuilt after unpickling, never pickled."""
        self._lock = threading.RLock()
        self._reads = BatchReads(
            self.batches, workers=self.workers, processes=self.processes, lock=self._lock
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # the EpochBatches copy re-opens the store
        for key in ("_lock", "_reads"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime()

    def check_picklable(self) -> None:
        """Refuse (ValueError) batches that cannot be sent to spawned worker processes."""
        try:
            pickle.dumps(self.batches)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise ValueError(
                "use_multiprocessing=True sends this dataset to spawned processes, but it "
                f"cannot be pickled ({e}); a transform must be a module-level function or "
                "a picklable object (not a closure), or use workers=N threads instead"
            ) from e

    def __len__(self) -> int:
        return len(self.progress)

    @property
    def epoch(self) -> int:
        """The epoch being served."""
        return self.progress.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.progress.epoch = value

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one)."""
        return self.batches.plan(self.epoch if epoch is None else epoch)

    def read(self, index: int, *, depth: int, served: bool = True) -> dict[str, np.ndarray]:
        """Batch ``index`` of the current epoch; when requests come in order, the next
        ``depth`` batches are read ahead in the background. ``served=False``: a look at the
        batch (a framework's peek to build a model), not counted as served."""
        with self._lock:
            n = len(self)
            if not 0 <= index < n:
                raise IndexError(f"batch {index} out of range 0..{n - 1}")
            index = int(index)
            progress = self.progress
            epoch, generation = progress.epoch, progress.generation
            b = progress.batch_of(index)
            future = self._reads.take(epoch, b)
            if self._reads.in_order(index):  # read the next batches ahead
                upcoming = range(index + 1, min(index + 1 + depth, len(self)))
                self._reads.read_ahead({(epoch, progress.batch_of(j)) for j in upcoming})
            else:
                self._reads.drop_ahead()
        batch = future.result() if future is not None else self._reads.read(epoch, b)
        if served:
            with self._lock:
                progress.mark_served(b, generation)
        return batch

    def advance_if_served(self) -> None:
        """Move on to the next epoch if the current one was served whole."""
        with self._lock:
            self._advance_if_served()

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``, whole, from now on."""
        with self._lock:
            self._select(epoch)

    def start_training(self) -> None:
        """No batch of this epoch counts as served any more (a training run starts)."""
        with self._lock:
            self.progress.restart()

    def settings(self) -> dict[str, Any]:
        """The settings that shape the order of an epoch (:data:`ORDER_SETTINGS`)."""
        src = self.batches.reader.source
        b = self.batches
        return {
            "num_samples": src.n,
            "chunk_len": src.chunk_len,
            "source": self.fingerprint,
            "seed": b.seed,
            "batch_size": b.batch_size,
            "shuffle": b.shuffle,
            "buffer_chunks": b.buffer_chunks,
            "drop_last": b.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the batches of it already served, and the settings that shape the order."""
        with self._lock:
            return {"epoch": self.epoch, "consumed": self.progress.consumed(), **self.settings()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the rest of its epoch, then the following epochs; a state
        saved with other settings is refused (ValueError naming them)."""
        missing = [k for k in ("epoch", "consumed", *ORDER_SETTINGS) if k not in state]
        if missing:
            raise ValueError(f"not a KerasDataset state: it lacks {missing}")
        mine = self.settings()
        wrong = [k for k in ORDER_SETTINGS if state[k] != mine[k]]
        if wrong:
            said = ", ".join(f"{k}={state[k]!r} (this dataset: {mine[k]!r})" for k in wrong)
            what = "another source" if {"num_samples", "chunk_len", "source"} & set(wrong) else ""
            raise ValueError(
                f"this state was saved with {said}; resuming with other settings would repeat "
                "or miss samples. "
                + (f"It belongs to {what}. " if what else "")
                + "Create the dataset with the state's settings to resume it."
            )
        check_at_least("epoch", state["epoch"], 0)
        consumed = [int(b) for b in state["consumed"]]
        top = self.batches.num_batches
        if any(not 0 <= b < top for b in consumed):
            raise ValueError(f"state['consumed'] holds batch numbers outside 0..{top - 1}")
        with self._lock:
            self.progress.resume(int(state["epoch"]), consumed)
            self._reads.restart()
            self._advance_if_served()  # a state saved after the last batch of its epoch

    def stats(self) -> ReadStats:
        """What has been read so far in this process (see :class:`ReadStats`)."""
        return self.batches.reader.stats()

    def close(self) -> None:
        """Stop background threads or processes and drop the cached chunks."""
        self._reads.close()
        self.batches.close()

    def _select(self, epoch: int) -> None:
        self.progress.select(epoch)
        self._reads.restart()

    def _advance_if_served(self) -> None:
        if self.progress.done:
            self._select(self.epoch + 1)
