"""Store: keep a worker's freed chunk-sized buffers for its next chunk (glibc's ``mallopt``).

Encoding a chunk makes fresh buffers of the chunk's size (~8 MB: Blosc's output, and the
copy numcodecs trims it into). glibc maps such a block on its own or trims it off the heap
when it is freed, unless its *dynamic* mapping threshold has risen above the chunk size
(it does after the first such free). Then every chunk's buffers are fresh pages that the
kernel faults in and zeroes: 34 page faults per 224x224 image, a third of the
compression's CPU, measured here.

Where this is used:

* :mod:`daskimg.store.procpool`'s forked workers (daskimg's own processes): always.
* A task whose result goes to another process (:func:`daskimg.store.shardwrite.decode_encode`
  and ``_encode`` with ``portable``: a ``distributed`` worker, the ``processes``
  scheduler), once per process, **only when the environment switched the dynamic threshold
  off**: any of ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
  ``MALLOC_MMAP_MAX_`` (or their ``GLIBC_TUNABLES`` names) set. ``distributed``'s nanny
  sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker it starts (so that freed memory
  goes back to the system at once): there the ingest's worker CPU fell from 1.73-1.79 to
  1.50-1.64 ms per image, the page faults from 34 to 0-2 per image
  (2-process ``LocalCluster``, 4,000 photos). The worker then keeps up to 4x the mapping
  threshold (64 MiB for 8 MiB chunks) of freed memory at the top of its heap. Values the
  environment set higher are left as they are.

The settings are process-wide and last: glibc has no call to read them back.
Other C libraries (musl) have no ``mallopt`` or ignore it: nothing changes there.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["keep_freed_buffers", "keep_freed_buffers_if_trimmed"]

#: glibc's mallopt parameters (malloc.h), and its largest mapping threshold on 64-bit
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 2**20
#: below this a chunk's buffers are left to glibc's default (a fixed threshold would be lower)
_MMAP_MIN = 2**20

#: environment variables (and tunables) that switch glibc's dynamic mapping threshold off
_STATIC = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
_TUNABLES = ("trim_threshold", "mmap_threshold", "top_pad", "mmap_max")

#: the process that applied keep_freed_buffers_if_trimmed, and its chunk size
_DONE: dict[int, int] = {}

logger = logging.getLogger("daskimg")


def keep_freed_buffers(chunk_bytes: int) -> bool:
    """Have glibc keep freed buffers of up to ``2 * chunk_bytes`` (at most 32 MiB) on the heap
    for the next allocation, instead of handing them back to the kernel. False: not done
    (chunks under 1 MiB, or no ``mallopt``)."""
    if chunk_bytes < _MMAP_MIN:
        return False  # small chunks: glibc's own threshold (from 128 KiB, adjusting) does better
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):  # pragma: no cover - not a glibc-like libc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc refuses a mapping threshold above 32 MiB (HEAP_MAX_SIZE / 2 on 64-bit): larger
    # buffers are mapped on their own as before
    threshold = min(2 * chunk_bytes, _MMAP_MAX)
    mmap_set, trim_set = _env_bytes("MALLOC_MMAP_THRESHOLD_"), _env_bytes("MALLOC_TRIM_THRESHOLD_")
    if mmap_set is not None and mmap_set >= threshold:
        threshold = min(mmap_set, 2**31 - 1)  # the environment's is higher: kept
    elif not mallopt(_M_MMAP_THRESHOLD, threshold):
        return False
    trim = min(4 * threshold, 2**31 - 1)  # mallopt takes a C int
    if trim_set is None or trim_set < trim:
        mallopt(_M_TRIM_THRESHOLD, trim)
    return True


def keep_freed_buffers_if_trimmed(chunk_bytes: int) -> bool:
    """:func:`keep_freed_buffers` once in this process, if its environment switched glibc's
    dynamic mapping threshold off (``distributed``'s workers); True if it was applied (now
    or before)."""
    pid = os.getpid()
    if _DONE.get(pid, 0) >= chunk_bytes:
        return True
    if not _trimmed():  # a few environment lookups a chunk: nothing next to encoding it
        return False
    done = keep_freed_buffers(chunk_bytes)
    if done:
        _DONE[pid] = chunk_bytes
        logger.debug(
            "daskimg: this worker keeps freed buffers of up to %d bytes for its next chunk "
            "(its environment set glibc's malloc thresholds; see daskimg.store.malloc)",
            2 * chunk_bytes,
        )
    return done


def _trimmed() -> bool:
    if any(name in os.environ for name in _STATIC):
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(f"glibc.malloc.{name}=" in tunables for name in _TUNABLES)


def _env_bytes(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value, 0) if value else None
    except ValueError:
        return None
