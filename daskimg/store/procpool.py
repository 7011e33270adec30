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
with the workers (one slot per chunk out, mapped before the fork), not through the
pool's pipe: pickling ~8 MB a chunk through a 64 KiB pipe cost each side about 15 ms of
CPU per chunk here (~0.3 ms per image, a tenth of decoding it); a slot costs one copy.

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
from ..read.files import FileSource
from ..read.source import block_arrays
from .encode import ShardEncoder
from .shardwrite import Given, ShardAssembler, decode_encode

__all__ = ["decoded_blocks", "workers_for", "write_chunks"]

#: chunks handed to each worker ahead of the one it is working on
_AHEAD = 2

#: bodies smaller than this come back pickled (source sizes, boxes): not worth a slot
_SMALL = 1 << 16

#: set in each worker by :func:`_start_worker`: the encoders of the write, and the slots
_ENCODERS: dict[str, ShardEncoder] = {}
_SLOTS: list[mmap.mmap] = []

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
    put: Callable[[str, list[Any]], None],
    *,
    bar: Callable[[int], None],
) -> None:
    """Decode and encode each of ``blocks`` (one chunk's :func:`block_arrays` arguments each)
    in ``workers`` forked processes; write every shard of ``encoders``' arrays with ``put``
    (in this process) as soon as its chunks are in."""
    _warm()
    # a slot holds a chunk's large bodies; a body that does not fit (a JPEG chunk larger
    # than its pixels) comes back pickled
    size = sum(_raw_bytes(enc) + 256 for enc in encoders.values())
    slots = [mmap.mmap(-1, size) for _ in range(workers * _AHEAD)]
    free = list(range(len(slots)))
    pool = _pool(workers, dict(encoders), slots)
    shards = ShardAssembler(put)
    running: dict[Any, tuple[int, int]] = {}
    following = 0
    try:
        while following < len(blocks) or running:
            while following < len(blocks) and free:
                slot = free.pop()
                running[pool.submit(_chunk, blocks[following], slot)] = (following, slot)
                following += 1
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=running.__getitem__):
                c, slot = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise _died(blocks, [c, *(c for c, _ in running.values())]) from None
                _relog(result)
                view = memoryview(slots[slot])
                for name, enc in encoders.items():
                    body, crc = result[name]
                    if isinstance(body, _InSlot):  # copied out: the slot is reused at once
                        body = bytes(view[body.start : body.stop])
                    shards.add(enc, c, (body, crc))
                view.release()
                free.append(slot)
                bar(1)
        shards.check_done()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for m in slots:
            m.close()


def decoded_blocks(
    workers: int, blocks: Sequence[tuple[Any, ...]], size: int
) -> Generator[dict[str, np.ndarray], None, None]:
    """Decode ``blocks`` (:func:`block_arrays` arguments) in ``workers`` forked processes,
    a bad file leaving its rows zero and ``ok`` False (``on_error="skip"``); yield each
    block's arrays in order. The images (and any array of 64 KiB or more) are decoded
    into memory shared with the worker (``size`` bytes a block): a yielded array is valid
    until the next one is asked for."""
    _warm()
    slots = [mmap.mmap(-1, size) for _ in range(workers * _AHEAD)]
    free = list(range(len(slots)))
    pool = _pool(workers, {}, slots)
    running: deque[tuple[Any, int, int]] = deque()
    following = 0
    try:
        while following < len(blocks) or running:
            while following < len(blocks) and free:
                slot = free.pop()
                running.append((pool.submit(_block, blocks[following], slot), following, slot))
                following += 1
            future, c, slot = running.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise _died(blocks, [c, *(c for _, c, _ in running)]) from None
            _relog(result)
            yield {
                k: v.array(slots[slot]) if isinstance(v, _InSlot) else v for k, v in result.items()
            }
            free.append(slot)  # the caller is done with this block's arrays
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for m in slots:
            with contextlib.suppress(BufferError):  # an array the caller still holds
                m.close()  # (else freed with its last view)


def _pool(workers: int, encoders: dict[str, ShardEncoder], slots: list[mmap.mmap]) -> Any:
    """The workers, forked now (the first task starts them all)."""
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(encoders, slots),
    )
    with warnings.catch_warnings():
        # Python 3.12+ warns about every fork of a process with threads; why this one is
        # safe is in the module's docstring
        warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
        pool.submit(int).result()
    return pool


class _InSlot:
    """Where in its slot a worker put a body (encoded bytes, or an array's)."""

    __slots__ = ("dtype", "shape", "start", "stop")

    def __init__(
        self, start: int, stop: int, dtype: str = "|u1", shape: tuple[int, ...] = ()
    ) -> None:
        self.start, self.stop, self.dtype, self.shape = start, stop, dtype, shape

    def __reduce__(self) -> tuple[Any, ...]:
        return (_InSlot, (self.start, self.stop, self.dtype, self.shape))

    def array(self, slot: mmap.mmap) -> np.ndarray:
        """The array in ``slot`` (a view: no copy)."""
        dtype = np.dtype(self.dtype)
        count = (self.stop - self.start) // dtype.itemsize
        return np.frombuffer(slot, dtype, count, self.start).reshape(self.shape)


def _raw_bytes(enc: ShardEncoder) -> int:
    lay = enc.layout
    return lay.chunk_len * math.prod(lay.shape[1:]) * enc.layout.dtype.itemsize


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


def _start_worker(encoders: dict[str, ShardEncoder], slots: list[mmap.mmap]) -> None:
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
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="daskimg-parent", daemon=True
        ).start()


def _exit_with(sentinel: int) -> None:
    """Wait until the parent's end of our pipe closes (it exited or was killed); exit."""
    from multiprocessing.connection import wait as wait_for

    wait_for([sentinel])
    os._exit(1)


def _chunk(args: tuple[Any, ...], slot: int) -> dict[str, Any]:
    """Decode and encode one chunk; put its large bodies into ``slot``, the rest returned."""
    encoded = decode_encode(Given(args), Given((_ENCODERS, False)))
    out: dict[str, Any] = {_LOG: _COLLECT.take()}
    view = memoryview(_SLOTS[slot])
    at = 0
    for name, (body, crc) in encoded.items():
        data = memoryview(body).cast("B")
        if data.nbytes >= _SMALL and at + data.nbytes <= len(view):
            view[at : at + data.nbytes] = data
            out[name] = (_InSlot(at, at + data.nbytes), crc)
            at += data.nbytes
        else:
            out[name] = (bytes(data), crc)
    view.release()
    return out


def _block(args: tuple[Any, ...], slot: int) -> dict[str, Any]:
    """Decode one block, bad files skipped: its images into ``slot`` (and any other array
    large enough after them), the rest returned."""
    paths, spec = args[0], args[1]
    shape = (len(paths), *spec.sample_shape)
    dtype = np.dtype(spec.dtype)
    view = memoryview(_SLOTS[slot])
    images = np.frombuffer(view, dtype, math.prod(shape)).reshape(shape)
    arrays = block_arrays(*args, out=images, skip=True)
    at = images.nbytes
    out: dict[str, Any] = {"images": _InSlot(0, at, dtype.str, shape), _LOG: _COLLECT.take()}
    for name, values in arrays.items():
        if name == "images" or name == _LOG:
            continue
        values = np.ascontiguousarray(values)
        if values.nbytes >= _SMALL and at + values.nbytes <= len(view):
            view[at : at + values.nbytes] = values.reshape(-1).view(np.uint8).data
            out[name] = _InSlot(at, at + values.nbytes, values.dtype.str, values.shape)
            at += values.nbytes
        else:
            out[name] = values
    return out
