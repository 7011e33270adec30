"""Feed: how an epoch plan is executed — chunks read in the background, rows copied straight into batches.

Whole chunks are read in the plan's order by background threads (reading, checking and
decompressing release the GIL). Each thread decodes a chunk into a small scratch buffer of
its own (uncompressed stores: no decode, a checked view of the memory-mapped file) and
copies every row straight into its place in the batch that the plan puts it in, while the
chunk is still in the CPU cache. A batch is handed out when all the chunks it draws from
are in. Batches of at most the current group of ``buffer_chunks`` chunks, the one before
(a batch may straddle them) and ``prefetch`` groups ahead are in memory.

:class:`PlanRunner` does this for a :class:`~daskimg.feed.BatchIterator`, which keeps the
order (the plan, where an epoch stands) and the batch arrays.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

import numpy as np

from ..store.reader import RawChunk
from .plan import EpochPlan
from .source import FeedSource, blocks_read

__all__ = ["PlanRunner"]


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


class _Run:
    """One iteration's background work: ``abandoned`` once the iteration ends (no task starts
    touching its batches after that) and how many tasks are touching them (``busy``), so
    the batches' buffers are released only when none is. Tasks register themselves, so a
    task whose future was never recorded (a Ctrl-C between the submit and the record) is
    counted too."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # also guards the batches' countdowns
        self.idle = threading.Condition(self.lock)
        self.abandoned = False
        self.busy = 0

    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        with self.lock:
            if self.abandoned:
                raise CancelledError()
            self.busy += 1
        try:
            yield
        finally:
            with self.lock:
                self.busy -= 1
                self.idle.notify_all()


class PlanRunner:
    """Executes epoch plans over a :class:`~daskimg.feed.source.FeedSource` with background threads.

    Its thread pools (reads in one, batch assembly in the other) live as long as the runner,
    are made again after a fork, and are stopped by :meth:`close`.

    Parameters
    ----------
    source
        The arrays read chunk by chunk.
    """

    def __init__(self, source: FeedSource) -> None:
        self.source = source
        self._local = threading.local()  # per loading thread: scratch buffers
        #: ask the kernel to read whole chunks ahead; on while loads read from disk
        self._readahead = True
        self._pools_exec: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._pools_pid: int | None = None

    def run(
        self,
        plan: EpochPlan,
        start: int,
        *,
        threads: int,
        prefetch: int,
        buffer: Callable[[str, int], np.ndarray],
        release: Callable[[dict[str, np.ndarray]], None],
        assemble: Callable[[int, np.ndarray, dict[str, np.ndarray]], dict[str, np.ndarray]],
        handed_out: Callable[[int], None],
        closed_error: Callable[[], Exception],
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches ``start, start + 1, ...`` of ``plan``, read ahead by ``prefetch`` groups.

        ``buffer(name, n)`` gives an output array of ``n`` rows of an array read chunk-wise;
        ``release(batch)`` is told when a batch's arrays are handed out or dropped;
        ``assemble(batch_id, samples, arrays)`` finishes a batch whose chunks are all in (in
        a background thread); ``handed_out(b)`` is told just before batch ``b`` is yielded;
        ``closed_error()`` is raised when :meth:`close` stops the threads meanwhile.
        """
        src = self.source
        batches, groups = plan.batches, plan.groups
        last_group = plan.group_of_batch()
        first_group = max(0, int(last_group[start]) - 1) if 0 < start < len(batches) else 0
        num_chunks = max(1, -(-src.n // src.chunk_len))
        routes = _Routes(batches, src.chunk_len, num_chunks) if src.lazy else None
        filling: dict[int, _Batch] = {}
        loads: deque[Future[None]] = deque()
        next_group = first_group
        next_batch = start
        pending: deque[tuple[int, Future[dict[str, np.ndarray]], _Batch]] = deque()
        pools = self._thread_pools(threads)
        pid = os.getpid()
        io_pool, work_pool = pools
        window = 2 * threads + prefetch
        run = _Run()
        live: dict[int, _Batch] = {}  # every batch made and not handed out, by its number

        def submit(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future[Any]:
            try:
                return pool.submit(fn, *args)
            except RuntimeError:  # close() from another thread shut the pools down meanwhile
                if self._pools_exec is not pools:
                    raise closed_error() from None
                raise

        def submit_groups(upto: int) -> None:
            nonlocal next_group
            while next_group < len(groups) and next_group <= upto:
                assert routes is not None
                chunks = [int(c) for c in groups[next_group]]
                targets = {c: routes.of_chunk(c, start) for c in chunks}
                for b in sorted({t[0] for ts in targets.values() for t in ts}):
                    if b not in filling:  # its buffers exist before any chunk is copied in
                        bufs = {n: buffer(n, len(batches[b])) for n in src.lazy}
                        filling[b] = live[b] = _Batch(bufs, int(routes.needs[b]))
                if self._readahead:
                    self._read_ahead(chunks)
                for c in chunks:
                    feeds = [(filling[b], at, rows) for b, at, rows in targets[c]]
                    if feeds:  # a chunk all of whose samples are dropped is not read
                        loads.append(submit(io_pool, self._load_chunk, c, feeds, run))
                next_group += 1
            while loads and loads[0].done():
                loads.popleft()  # its errors reach the batches it feeds, in their turn

        def submit_batches() -> None:
            nonlocal next_batch
            while next_batch < len(batches) and len(pending) < window:
                b = next_batch
                if src.lazy:
                    submit_groups(int(last_group[b]) + prefetch)
                    state = filling.pop(b)
                else:
                    state = live[b] = _Batch({}, 0)
                bid = int(plan.batch_ids[b])
                future = submit(work_pool, _assembled, assemble, bid, batches[b], state, run)
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
                        raise closed_error()
                    try:  # a load error raises here; the batch's buffers are released below
                        out = future.result(timeout=0.1)
                    except FuturesTimeout:
                        if future.done():
                            raise  # the load's own TimeoutError (e.g. a network read)
                        continue
                    except CancelledError:
                        if self._pools_exec is not pools:  # close() cancelled what it waited for
                            raise closed_error() from None
                        raise
                    break
                pending.popleft()
                live.pop(b, None)
                handed_out(b)
                release(out)
                submit_batches()
                yield out
        finally:
            # a fork's copy of an unfinished iteration (closed or freed in the child): its loads
            # run in the parent's threads, which the fork does not have; nothing to wait for
            forked = pid != os.getpid()
            states = list(live.values())
            futures: list[Future[Any]] = [] if forked else [*loads, *(f for _, f, _ in pending)]
            released: set[int] = set()

            def stop() -> None:
                """Idempotent: run again whole if a Ctrl-C cuts it short (one cut short, or one
                landing between a submit and its record, left assembly threads waiting
                forever for batches no load would fill: the interpreter hung at exit)."""
                with run.lock:  # no task starts on these batches now; wake what waits
                    run.abandoned = True
                    for state in states:
                        if not state.done.done():
                            state.done.set_exception(CancelledError())
                for f in futures:
                    f.cancel()
                with run.lock:  # let started tasks finish before their buffers are reused
                    while run.busy and not forked:
                        run.idle.wait(0.1)
                for state in states:
                    if id(state) not in released:
                        released.add(id(state))
                        release(state.bufs)

            interrupted: BaseException | None = None
            while True:
                try:
                    stop()
                    break
                except KeyboardInterrupt as e:
                    interrupted = e
            if interrupted is not None:
                raise interrupted

    def _load_chunk(
        self, c: int, feeds: list[tuple[_Batch, np.ndarray, np.ndarray]], run: _Run
    ) -> None:
        """Load chunk ``c`` and copy its rows into the batches it feeds (in a background thread)."""
        with run.task():
            self._load_into(c, feeds, run.lock)

    def _load_into(
        self, c: int, feeds: list[tuple[_Batch, np.ndarray, np.ndarray]], lock: threading.Lock
    ) -> None:
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

    def _thread_pools(self, threads: int) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """Reads run in one pool, batch assembly (decoding into batch rows) in another, so an
        assembly waiting for its reads can never hold up the reads it waits for. Both live
        as long as the runner, so a new epoch starts without new threads. Reads from a URL
        use at least 8 threads."""
        if self._pools_exec is None or self._pools_pid != os.getpid():
            reader = self.source.reader
            # a URL read mostly waits on the network: keep several requests in flight
            readers = max(threads, 8) if reader is not None and reader.source.remote else threads
            self._pools_exec = (
                ThreadPoolExecutor(readers, thread_name_prefix="daskimg-read"),
                ThreadPoolExecutor(threads, thread_name_prefix="daskimg-batch"),
            )
            self._pools_pid = os.getpid()
        return self._pools_exec

    def close(self) -> None:
        """Stop the background threads; the next run starts new ones."""
        pools = self._pools_exec
        if pools is not None and self._pools_pid == os.getpid():
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pools_exec = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # threads and scratch buffers stay behind
        state.update(_pools_exec=None, _pools_pid=None, _local=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
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


def _assembled(
    assemble: Callable[[int, np.ndarray, dict[str, np.ndarray]], dict[str, np.ndarray]],
    b: int,
    idx: np.ndarray,
    state: _Batch,
    run: _Run,
) -> dict[str, np.ndarray]:
    """Batch ``b`` once its chunks are in (in a background thread); a load error raises here."""
    state.done.result()
    with run.task():
        return assemble(b, idx, state.bufs)
