"""Store: decode and encode a set read from local files in worker processes of this machine.

Why processes, not dask's threads: decoding a JPEG and resizing it release the GIL, but
every image still holds it for a while (reading the file, parsing its header, calling
the decoder and the compiled resize, encoding the chunk), and each time one thread hands
the GIL to the other is a wake-up on the other CPU. On the 2-core machine the benchmark
runs on (a VM, where such wake-ups are slow) two threads decoding with the bare
simplejpeg + resize loop reached 0.5-0.8 of two processes doing the same, and
``to_zarr`` on threads about 0.7 (``bench/bench_ingest.py``). Processes share no GIL.

When: :func:`workers_for` — ``to_zarr`` of images from local files, with no scheduler
chosen (``dask.config`` has none: dask's default for arrays would be threads) and no
``distributed`` client, on Linux, with at least 2 CPUs and 2 chunks. Choosing a
scheduler keeps the work where it says: ``dask.config.set(scheduler="threads")`` in this
process, ``"sync"`` in this thread, a ``Client`` on its cluster. ``num_workers`` in
dask's config sets the number of processes (default: the CPUs dask counts).

How (:func:`write_chunks`): the workers are forked from this process when the write
starts — they inherit the imported modules and the compiled resize (warmed here first),
so they start in milliseconds, and nothing is imported again (a script without an
``if __name__ == "__main__"`` guard works as it does with threads). Each task is one
chunk: the paths of its files go out, its encoded arrays (compressed bytes and their
crc32c) come back, and this process puts each shard together as its chunks arrive
(:class:`~daskimg.store.shardwrite.ShardAssembler`) and writes it (a zip being built,
or the staging folder). At most two chunks per worker are out at a time, so memory does
not grow with the number of files. The encoded bytes come back through memory shared
with the workers (slots mapped before the fork), not through the
pool's pipe: pickling ~8 MB a chunk through a 64 KiB pipe cost each side about 15 ms of
CPU per chunk here (~0.3 ms per image, a tenth of decoding it); a slot costs one copy.
The bytes are written from the slot (a slot is taken again once every shard holding its
bytes is written), and the workers keep their freed chunk-sized buffers
(:func:`daskimg.store.malloc.keep_freed_buffers`): fresh memory for each chunk cost the
kernel's page zeroing, ~5 ms per 8 MB chunk on each side. (Copying each chunk out of its
slot, as before, cost this process 0.03 ms an image.)

Forking a process that has threads is safe here because the children run only
daskimg's decoding and encoding, which take no lock another thread could have held at
the fork (Blosc is told to use no threads of its own; Python, glibc and numba reset
theirs). The children ignore Ctrl-C (this process stops them), exit when this process
dies (a thread waits on its end of the pipe to the parent), and close their copy of the
store's write lock at once (:func:`daskimg.store.location.write_lock`), so a killed
writer never leaves the lock held by its workers. What a worker logs (a file skipped)
comes back with its task's result and is logged by this process, to its handlers (a
notebook's, pytest's), not to the worker's copies of them. A worker that dies (killed for
memory, a crash in a decoder) fails the write with an error naming the files in flight;
what was written is removed as for any failed write.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import dask
import numpy as np
from dask.system import CPU_COUNT

from ..errors import DaskImgError
from ..interrupts import held_ctrl_c
from ..read.files import FileSource
from ..read.source import block_arrays
from .directio import ALIGN
from .encode import ShardEncoder, raw_header
from .malloc import keep_freed_buffers
from .shardwrite import HEAD, Given, ShardAssembler, decode_encode, decode_in_place, raw_bytes

__all__ = ["decoded_blocks", "follow_parent", "wait_ended", "workers_for", "write_chunks"]

#: chunks handed to each worker ahead of the one it is working on
_AHEAD = 2
#: shards' worth of slots held beyond the chunks out: one being put together, one being
#: written, the writer's queue (zipbuild's _QUEUED), and one more so a worker never waits
_HELD_KEYS = 5
#: at most this many slots lent to shards not yet written (else chunks are copied out)
_MOST_LENT = 64

#: bodies smaller than this come back pickled (source sizes, boxes): not worth a slot
_SMALL = 1 << 16

#: set in each worker by :func:`_start_worker`: the encoders of the write, and the slots
_ENCODERS: dict[str, ShardEncoder] = {}
_SLOTS: list[mmap.mmap] = []
_BLOCKS: list[tuple[Any, ...]] = []

#: the key of a task's result that holds what the worker logged
_LOG = "\0log"

logger = logging.getLogger("daskimg")


class _Collect(logging.Handler):
    """In a worker: keeps daskimg's log records (a file skipped, ...) for the parent, which
    logs them to its own handlers (a notebook's, pytest's) — the worker's copies of those
    handlers would write elsewhere or nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append((record.levelno, record.getMessage()))

    def take(self) -> list[tuple[int, str]]:
        kept, self.kept = self.kept, []
        return kept


_COLLECT = _Collect()


def _relog(result: dict[str, Any]) -> None:
    """Log here what a worker logged for this task."""
    for level, message in result.pop(_LOG, ()):
        logger.log(level, "%s", message)


def workers_for(files: FileSource, num_chunks: int) -> int:
    """How many worker processes ``to_zarr`` decodes ``files`` in; 0: in this process (by
    dask's active scheduler)."""
    if dask.config.get("scheduler", None) is not None or dask.config.get("pool", None):
        return 0  # a scheduler (or a pool) was chosen: the work runs where it says
    if not sys.platform.startswith("linux") or files.remote is not None:
        return 0  # fork is Linux's; files at URLs are read by fsspec, kept in one process
    n = dask.config.get("num_workers", None) or CPU_COUNT
    return min(int(n), num_chunks) if n >= 2 and num_chunks >= 2 else 0


def write_chunks(
    workers: int,
    blocks: Sequence[tuple[Any, ...]],
    encoders: Mapping[str, ShardEncoder],
    put: Callable[..., None],
    *,
    bar: Callable[[int], None],
) -> None:
    """Decode and encode each of ``blocks`` (one chunk's :func:`block_arrays` arguments each)
    in ``workers`` forked processes; write every shard of ``encoders``' arrays with
    ``put(key, pieces, done=...)`` (in this process: :meth:`ZipBuilder.put
    <daskimg.store.zipbuild.ZipBuilder.put>` or a :class:`FolderWriter
    <daskimg.store.shardwrite.FolderWriter>`) as soon as its chunks are in.

    A chunk's encoded bytes are written from the slot the worker put them in: the slot is
    taken again only once every shard holding them is written (``done``), so there are
    enough slots for the chunks out, a shard being put together and the shards waiting
    for the writer."""
    # a slot holds a chunk's large bodies; a body that does not fit (a JPEG chunk larger
    # than its pixels) comes back pickled
    # (and room to line the images up with their place in the file: _lined_up)
    size = sum(raw_bytes(enc) + 256 for enc in encoders.values()) + ALIGN
    ahead = workers * _AHEAD
    per_key = max(enc.chunks_per_key for enc in encoders.values())
    # shards of many chunks (shard_chunks=) would need a slot (a memory map) for every
    # chunk of several shards: their chunks are copied out of the slot instead
    lend = per_key * _HELD_KEYS <= _MOST_LENT
    slots = _Slots(ahead + per_key * _HELD_KEYS if lend else ahead)
    shards = ShardAssembler(lambda key, pieces: put(key, pieces, done=slots.written(pieces)))
    with _Workers(workers, blocks, size, dict(encoders), slots=slots.count) as pool:
        running: dict[Any, tuple[int, int]] = {}
        following = 0
        while following < len(blocks) or running:
            while following < len(blocks) and len(running) < ahead:
                slot = slots.take(wait=not running)
                if slot is None:
                    break  # every slot holds bytes not yet written: wait for a chunk first
                running[pool.submit(_chunk, following, slot)] = (following, slot)
                following += 1
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=running.__getitem__):
                c, slot = running.pop(future)
                result = pool.result(future, c, [c for c, _ in running.values()])
                view = memoryview(pool.slots[slot])
                for name, enc in encoders.items():
                    body, crc = result[name]
                    if isinstance(body, _InSlot):  # written from the slot, which is held
                        part = view[body.start : body.stop]
                        body = slots.lend(slot, part) if lend else bytes(part)
                    shards.add(enc, c, (body, crc))
                view.release()
                slots.give_back(slot)  # the worker is done with it; what it lent is held
                bar(1)
        shards.check_done()


#: the threads ending the pools of finished writes (:meth:`_Workers.close`)
_ENDING: set[threading.Thread] = set()


def wait_ended() -> None:
    """Wait until the pools of the writes that have returned are ended: their workers
    reaped (and counted in this process's children's CPU time), their slots unmapped."""
    for ending in list(_ENDING):
        ending.join()


_FROZEN = [0]  # forked writes under way (threads of this process may run several)
_FROZEN_LOCK = threading.Lock()


def _freeze(step: int) -> None:
    """``gc.freeze`` for a forked write starting (+1); ``gc.unfreeze`` once the last one
    under way has ended (-1), not when the first of two ends."""
    with _FROZEN_LOCK:
        _FROZEN[0] += step
        if step > 0:
            gc.freeze()  # again for a second write: its objects too
        elif _FROZEN[0] == 0:
            gc.unfreeze()


class _Slots:
    """Which slots are free: a slot is free when no worker writes into it and no body lent
    out of it waits to be written. ``done`` callbacks come from the writer's thread."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._lent: dict[int, int] = {}  # slot -> bodies lent, not yet written
        self._views: dict[int, int] = {}  # id of a lent view -> its slot
        self._busy: set[int] = set()  # slots a worker has
        self._free = list(range(count))
        self._cond = threading.Condition()

    def take(self, *, wait: bool) -> int | None:
        """A free slot (waiting for one with ``wait``; else None when there is none)."""
        with self._cond:
            while not self._free:
                if not wait:
                    return None
                self._cond.wait()
            slot = self._free.pop()
            self._busy.add(slot)
            return slot

    def lend(self, slot: int, view: memoryview) -> memoryview:
        """``view`` (of ``slot``) goes into a shard: the slot is held until it is written."""
        with self._cond:
            self._lent[slot] = self._lent.get(slot, 0) + 1
            self._views[id(view)] = slot
        return view

    def give_back(self, slot: int) -> None:
        """The worker's task on ``slot`` is handled."""
        with self._cond:
            self._busy.discard(slot)
            self._release(slot)

    def written(self, pieces: Sequence[Any]) -> Callable[[], None]:
        """The ``done`` callback of a shard made of ``pieces``."""

        def done() -> None:
            with self._cond:
                for p in pieces:
                    slot = self._views.pop(id(p), None)
                    if slot is not None:
                        self._lent[slot] -= 1
                        self._release(slot)

        return done

    def _release(self, slot: int) -> None:
        if slot not in self._busy and not self._lent.get(slot):
            self._lent.pop(slot, None)
            self._free.append(slot)
            self._cond.notify()


def decoded_blocks(
    workers: int, blocks: Sequence[tuple[Any, ...]], size: int
) -> Generator[dict[str, np.ndarray], None, None]:
    """Decode ``blocks`` (:func:`block_arrays` arguments) in ``workers`` forked processes,
    a bad file leaving its rows zero and ``ok`` False (``on_error="skip"``); yield each
    block's arrays in order. The images (and any other array of 64 KiB or more but
    ``ok``) are decoded into memory shared with the worker (``size`` bytes a block): a
    yielded array is valid only until the next one is asked for (copy what you keep)."""
    with _Workers(workers, blocks, size, {}) as pool:
        running: deque[tuple[Any, int, int]] = deque()
        following = 0
        while following < len(blocks) or running:
            while following < len(blocks) and pool.free:
                slot = pool.free.pop()
                running.append((pool.submit(_block, following, slot), following, slot))
                following += 1
            future, c, slot = running.popleft()
            result = pool.result(future, c, [c for _, c, _ in running])
            yield {
                k: v.array(pool.slots[slot]) if isinstance(v, _InSlot) else v
                for k, v in result.items()
            }
            pool.free.append(slot)  # the caller is done with this block's arrays


class _Workers:
    """The forked workers of one write, their slots, and how they are stopped.

    On leaving (``with``) normally, the pool is shut down on a thread of its own (its
    workers have nothing left to do; the caller goes on to finish the store). After an error, Ctrl-C included, the workers are told to exit at once (this
    process closes its end of the ``abort`` pipe, which each worker's watchdog thread
    waits on) before the pool is shut down, so nothing waits on chunks being decoded: a
    second Ctrl-C during a wait on the pool left the workers idle and the interpreter
    joining them for ever.
    """

    def __init__(
        self,
        workers: int,
        blocks: Sequence[tuple[Any, ...]],
        size: int,
        encoders: dict[str, ShardEncoder],
        *,
        slots: int | None = None,
    ) -> None:
        self._frozen = False
        self._got = 0  # results received
        # the pools of earlier writes end first: forked while one still ends, these
        # workers would inherit its slots (shared memory) and hold them to their end
        wait_ended()
        _warm()
        self.blocks = blocks
        self.slots = [mmap.mmap(-1, size) for _ in range(slots or workers * _AHEAD)]
        self.free = list(range(len(self.slots)))
        self._abort_r, self._abort_w = os.pipe()
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(encoders, self.slots, blocks, self._abort_r, self._abort_w),
        )
        try:
            # the objects this process holds are left out of garbage collection until the
            # write ends (close), as Python's gc.freeze documents for a fork without exec:
            # the workers' collections then never walk (and copy on write) the pages of
            # the parent's objects, and this process's (zarr's I/O thread) only the write's
            _freeze(+1)
            self._frozen = True
            with warnings.catch_warnings():
                # Python 3.12+ warns about every fork of a process with threads; why this
                # one is safe is in the module's docstring
                warnings.filterwarnings(
                    "ignore", r"This process .* is multi-threaded", DeprecationWarning
                )
                with held_ctrl_c():  # the first task forks them all, now (not waited
                    self._pool.submit(int)  # for: a worker that fails to start fails a chunk)
        except BaseException as e:
            self.close(aborted=True)
            if isinstance(e, OSError | BrokenProcessPool):
                raise DaskImgError(
                    f"could not start {workers} worker processes to decode the images ({e}); "
                    "give it fewer (dask.config.set(num_workers=1)) or decode in this "
                    "process (dask.config.set(scheduler='threads'))"
                ) from e
            raise

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, kind: Any, *exc: object) -> None:
        self.close(aborted=kind is not None)

    def submit(self, fn: Callable[[int, int], Any], c: int, slot: int) -> Any:
        """Chunk ``c`` (its index in the blocks) to a worker, with its slot."""
        try:
            return self._pool.submit(fn, c, slot)
        except BrokenProcessPool:
            raise self._broken([c]) from None

    def result(self, future: Any, c: int, others: list[int]) -> dict[str, Any]:
        """The result of chunk ``c`` (``others``: the chunks still out, named if a worker
        died); what the worker logged is logged here."""
        try:
            result: dict[str, Any] = future.result()
        except BrokenProcessPool:
            raise self._broken([c, *others]) from None
        self._got += 1
        _relog(result)
        return result

    def _broken(self, chunks: list[int]) -> DaskImgError:
        """The error for a pool broken while it had ``chunks``: a worker died, or (no result
        in yet: its start is not waited for) none could start."""
        died = _died(self.blocks, chunks)
        if self._got:
            return died
        return DaskImgError(
            "the worker processes decoding the images failed before the first chunk was "
            "done: they could not start (then give it fewer, dask.config.set(num_workers=1), "
            "or decode in this process, dask.config.set(scheduler='threads')), or " + str(died)
        )

    def close(self, *, aborted: bool) -> None:
        """End the pool. After an error, at once: the workers are told to exit, and waited
        for. After a write, every task is done: the workers exit, are reaped and their slots
        unmapped on a thread of their own while the caller finishes the store (~25 ms a
        write here, all of it otherwise before the store is published)."""
        if self._frozen:
            self._frozen = False
            _freeze(-1)
        if aborted:
            os.close(self._abort_w)  # every worker exits now
            self._end(aborted=True)
        else:
            ending = threading.Thread(target=self._end, name="daskimg-workers-end")
            _ENDING.add(ending)
            ending.start()

    def _end(self, *, aborted: bool = False) -> None:
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if not aborted:
                os.close(self._abort_w)
            os.close(self._abort_r)
            for m in self.slots:
                with contextlib.suppress(BufferError):  # an array a caller still holds:
                    m.close()  # freed with its last view
        finally:
            _ENDING.discard(threading.current_thread())


class _InSlot:
    """Where in its slot a worker put a body (encoded bytes, or an array's)."""

    __slots__ = ("dtype", "shape", "start", "stop")

    def __init__(
        self, start: int, stop: int, dtype: str = "|u1", shape: tuple[int, ...] = ()
    ) -> None:
        self.start, self.stop, self.dtype, self.shape = start, stop, dtype, shape

    def array(self, slot: mmap.mmap) -> np.ndarray:
        """The array in ``slot`` (a view: no copy)."""
        dtype = np.dtype(self.dtype)
        count = (self.stop - self.start) // dtype.itemsize
        return np.frombuffer(slot, dtype, count, self.start).reshape(self.shape)


def _died(blocks: Sequence[tuple[Any, ...]], chunks: list[int]) -> DaskImgError:
    """The error for a worker that died while decoding some of ``chunks``."""
    spans = []
    for c in sorted(chunks)[:4]:
        paths = list(blocks[c][0])
        spans.append(f"{paths[0]} .. {paths[-1]}" if len(paths) > 1 else str(paths[0]))
    more = f" and {len(chunks) - 4} more chunks" if len(chunks) > 4 else ""
    return DaskImgError(
        "a worker process decoding the images died (killed for memory, or a crash in a "
        f"decoder) while it had files of {'; '.join(spans)}{more}; what was written is "
        "removed. If memory ran out, give it fewer workers (dask.config.set(num_workers=1)); "
        "to find a file that crashes a decoder, decode with dask.config.set(scheduler='sync')"
    )


def _warm() -> None:
    """Load the compiled resize here, once, so the forked workers inherit it."""
    from ..read.resample import warm

    warm()


def _start_worker(
    encoders: dict[str, ShardEncoder],
    slots: list[mmap.mmap],
    blocks: Sequence[tuple[Any, ...]],
    abort_r: int,
    abort_w: int,
) -> None:
    """Set a forked worker up (its arguments are inherited, not pickled)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops us
    try:
        from numcodecs import blosc

        blosc.use_threads = False  # Blosc's own threads and the lock of its global context
    except ImportError:  # pragma: no cover - numcodecs is a dependency
        pass
    worker_log = logging.getLogger("daskimg")
    worker_log.handlers = [_COLLECT]  # the records go back with each task's result
    worker_log.propagate = False
    _ENCODERS.clear()
    _ENCODERS.update(encoders)
    _SLOTS[:] = slots  # shared with the parent: mapped before the fork
    keep_freed_buffers(max((len(m) for m in slots), default=0))
    _BLOCKS[:] = blocks
    os.close(abort_w)  # only the parent's copy keeps the abort pipe open
    parent = multiprocessing.parent_process()
    waits = [abort_r] if parent is None else [abort_r, parent.sentinel]
    _exit_when(waits)


def follow_parent() -> None:
    """In a worker process of another pool (dask's ``processes`` scheduler, as its
    ``multiprocessing.initializer``): exit as soon as the process that started it exits
    or is killed. (Killed with SIGKILL, an ingest left those workers running, each holding
    its memory, for good.)"""
    parent = multiprocessing.parent_process()
    if parent is not None:
        _exit_when([parent.sentinel])


def _exit_when(waits: list[int]) -> None:
    """Exit this process as soon as one of ``waits`` is ready (:func:`_exit_with`, on a
    daemon thread)."""
    threading.Thread(target=_exit_with, args=(waits,), name="daskimg-parent", daemon=True).start()


def _exit_with(waits: list[int]) -> None:
    """Wait until the parent exits or is killed (its end of our pipe closes), or tells us
    to stop (it closes the abort pipe); exit at once."""
    from multiprocessing.connection import wait as wait_for

    wait_for(waits)
    os._exit(1)


def _chunk(c: int, slot: int) -> dict[str, Any]:
    """Decode and encode chunk ``c``; put its large bodies into ``slot``, the rest returned.

    The images are decoded into the slot itself
    (:func:`~daskimg.store.shardwrite.decode_in_place`): when they are their own encoded
    body (uncompressed, or raw in a Blosc frame whose header then goes right before
    them), nothing is copied. Otherwise (they compress, or are JPEG-encoded) their
    encoded bytes are put at the slot's start."""
    args = _BLOCKS[c]
    spec = args[1]
    enc = _ENCODERS.get("images")
    if enc is None or np.dtype(spec.dtype) != enc.layout.dtype:
        return _in_slot(slot, decode_encode(Given(args), Given((_ENCODERS, False, None))))
    view = memoryview(_SLOTS[slot])
    shift = _lined_up(enc, c)
    arrays, images, span = decode_in_place(args, enc, view[shift:])
    encoded: dict[str, Any] = {"images": images}
    end = 0  # the images encoded into new bytes: the slot is free from its start
    if span is not None:
        encoded["images"] = (_InSlot(span[0] + shift, span[1] + shift), images[1])
        end = span[1] + shift
    del images
    for name, other in _ENCODERS.items():
        if name != "images":
            encoded[name] = other.encode_chunk(arrays[name])
    del arrays
    return _in_slot(slot, encoded, at=end, view=view)


def _lined_up(enc: ShardEncoder, c: int) -> int:
    """Where in its slot chunk ``c``'s images are decoded (bytes past the slot's start):
    their body (raw in a Blosc frame, or uncompressed) then starts at an address equal,
    modulo :data:`~daskimg.store.directio.ALIGN`, to the place it will have in the file when
    the shard's chunks before it are raw too (a shard begins at such an address: a file of
    its own, or a zip member whose header is padded so), and it is written from the slot
    without being copied (:mod:`daskimg.store.directio`). A chunk that compresses only
    loses that (its bytes are copied, as before)."""
    if enc.jpeg_quality is not None or enc.zstd_level is not None:
        return 0
    size = raw_bytes(enc)
    head = 0 if enc.blosc is None else len(raw_header(enc.blosc, enc.layout.dtype, size))
    place = c % enc.chunks_per_key * (head + size + 4) % ALIGN  # 4: each chunk's crc32c
    shift = (place - HEAD + head) % ALIGN
    return shift if shift % enc.layout.dtype.itemsize == 0 else 0


def _in_slot(
    slot: int, encoded: dict[str, Any], *, at: int = 0, view: memoryview | None = None
) -> dict[str, Any]:
    """The result of a chunk task: ``encoded``'s large bodies copied into ``slot`` from
    ``at`` on (a body already there, an :class:`_InSlot`, is passed on), the rest as they are."""
    out: dict[str, Any] = {_LOG: _COLLECT.take()}
    view = view if view is not None else memoryview(_SLOTS[slot])
    for name, (body, crc) in encoded.items():
        if isinstance(body, _InSlot):
            out[name] = (body, crc)
            continue
        data = memoryview(body).cast("B")
        end = _into_slot(view, at, data)
        if end is None:
            out[name] = (bytes(data), crc)
        else:
            out[name] = (_InSlot(at, end), crc)
            at = end
    view.release()
    return out


def _block(c: int, slot: int) -> dict[str, Any]:
    """Decode block ``c``, bad files skipped: its images into ``slot`` (and any other array
    large enough after them but ``ok``, which the caller keeps), the rest returned."""
    args = _BLOCKS[c]
    paths, spec = args[0], args[1]
    shape = (len(paths), *spec.sample_shape)
    dtype = np.dtype(spec.dtype)
    view = memoryview(_SLOTS[slot])
    images = np.frombuffer(view, dtype, math.prod(shape)).reshape(shape)
    arrays = block_arrays(*args, out=images, skip=True)
    at = images.nbytes
    out: dict[str, Any] = {"images": _InSlot(0, at, dtype.str, shape), _LOG: _COLLECT.take()}
    for name, values in arrays.items():
        if name == "images":
            continue
        values = np.ascontiguousarray(values)
        # ok goes back pickled: the caller keeps it after the slot is reused
        end = None if name == "ok" else _into_slot(view, at, values.reshape(-1).view(np.uint8).data)
        if end is None:
            out[name] = values
        else:
            out[name] = _InSlot(at, end, values.dtype.str, values.shape)
            at = end
    return out


def _into_slot(view: memoryview, at: int, data: memoryview) -> int | None:
    """Copy ``data`` into the slot ``view`` at ``at`` and return where it ends; None if it
    is too small to be worth a slot (it goes back pickled) or does not fit."""
    end = at + data.nbytes
    if data.nbytes < _SMALL or end > len(view):
        return None
    view[at:end] = data
    return end
