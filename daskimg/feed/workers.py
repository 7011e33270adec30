"""Feed: where the batches of an :class:`~daskimg.feed.batches.EpochBatches` are read for a
loop that asks for them by index — in the caller, in worker threads or in spawned worker
processes — and read ahead while the requests come in order.

Worker processes are started with :func:`start_worker` and serve :func:`read_in_worker`:
each holds a copy of the :class:`~daskimg.feed.batches.EpochBatches`, which re-opens the
store, and imports no framework.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import dask
import numpy as np

from .batches import EpochBatches

__all__ = ["BatchReads", "read_in_worker", "start_worker"]


class BatchReads:
    """Reads batches ``(epoch, b)`` of an :class:`~daskimg.feed.batches.EpochBatches`.

    A batch is read in the caller's thread, or with ``processes`` in a worker process;
    batches asked for ahead (:meth:`read_ahead`) are read by ``workers`` threads or
    processes in the background.

    Parameters
    ----------
    batches
        What to read.
    workers
        Background threads (or processes) reading ahead.
    processes
        Read in spawned worker processes (each re-opens the store) instead of threads.
    lock
        The caller's lock, held around every call but :meth:`read`.
    """

    def __init__(
        self, batches: EpochBatches, *, workers: int, processes: bool, lock: threading.RLock
    ) -> None:
        self.batches = batches
        self.workers = workers
        self.processes = processes
        self._lock = lock
        self._pool: Executor | None = None
        self._pool_pid: int | None = None
        self._ahead: dict[tuple[int, int], Future[dict[str, np.ndarray]]] = {}
        self._last: int | None = None  # the index asked for last
        self._in_order = 0  # how many requests in a row asked for the index after the last

    def in_order(self, index: int) -> bool:
        """Index ``index`` is asked for: True when requests come in order (not by chance, as
        in a shuffled order now and then)."""
        in_order = self._last is not None and index == self._last + 1
        self._in_order = self._in_order + 1 if in_order else 0
        self._last = index
        return self._in_order >= 2

    def take(self, epoch: int, b: int) -> Future[dict[str, np.ndarray]] | None:
        """The read of batch ``b`` of ``epoch`` if it was started ahead, else None."""
        return self._ahead.pop((epoch, b), None)

    def read(self, epoch: int, b: int) -> dict[str, np.ndarray]:
        """Batch ``b`` of ``epoch``, read now: in this thread, or in a worker process."""
        if self.processes:
            return self._executor().submit(read_in_worker, epoch, b).result()
        return self.batches.read(epoch, b)

    def read_ahead(self, wanted: Iterable[tuple[int, int]]) -> None:
        """Read these ``(epoch, b)`` in the background; drop the other reads ahead."""
        wanted = set(wanted)
        for key in [k for k in self._ahead if k not in wanted]:
            self._ahead.pop(key).cancel()
        pool = self._executor()
        for key in sorted(wanted - self._ahead.keys()):
            read = read_in_worker if self.processes else self.batches.read
            self._ahead[key] = pool.submit(read, *key)

    def drop_ahead(self) -> None:
        """Drop the reads ahead."""
        for future in self._ahead.values():
            future.cancel()  # one already running finishes; its batch is dropped
        self._ahead.clear()

    def restart(self) -> None:
        """Requests start over (a new epoch): nothing is in order, nothing read ahead."""
        self._last = None
        self._in_order = 0
        self.drop_ahead()

    def close(self) -> None:
        """Stop the background threads or processes."""
        pool, pid = self._pool, self._pool_pid
        self._pool = None
        if pool is not None and pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)

    def _executor(self) -> Executor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                if self.processes:
                    # spawned, not forked: the loader's and torch's threads do not survive
                    # a fork; the workers re-open the store and never import keras
                    self._pool = ProcessPoolExecutor(
                        self.workers,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=start_worker,
                        initargs=(self.batches,),
                    )
                else:
                    self._pool = ThreadPoolExecutor(
                        self.workers, thread_name_prefix="daskimg-keras"
                    )
                self._pool_pid = os.getpid()
            return self._pool


# -- worker processes ---------------------------------------------------------------------
_WORKER: EpochBatches | None = None


def start_worker(batches: EpochBatches) -> None:
    """Initializer of a worker process that serves :func:`read_in_worker`."""
    global _WORKER
    # a dask source computes here with threads: the parent's distributed Client is not
    # this process's (a forked copy of it would wait forever)
    dask.config.set(scheduler="threads")
    _WORKER = batches


def read_in_worker(epoch: int, b: int) -> dict[str, np.ndarray]:
    """Batch ``b`` of epoch ``epoch``, read in a worker process set up by :func:`start_worker`."""
    if _WORKER is None:
        raise RuntimeError("read_in_worker runs in a process started with start_worker")
    return _WORKER.read(epoch, b)
