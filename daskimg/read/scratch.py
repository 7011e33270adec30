"""Read: per-thread scratch buffers, reused from one image to the next.

Decoding a JPEG and resizing it makes a few large arrays per image (the decoded picture,
the resize's intermediate passes; ~0.5 MB each for a 500x375 photo). Fresh large arrays
are fresh pages, which the kernel maps and zeroes on first touch; a process whose
allocator hands freed memory back at once pays that for every image — a dask
``distributed`` worker does (its nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``): decode +
resize took 2.6 ms per photo there and 1.2-1.5 ms in this process, until these arrays
were reused. A buffer from :func:`scratch` belongs to the calling thread and is valid
until that thread asks for the same slot again, so nothing that keeps its result may
hold one (the decoders copy their result into the caller's array).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["scratch"]

_LOCAL = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` for this thread's ``slot``, its memory reused
    across calls.

    Its contents are whatever the previous user left: write before reading.

    Examples
    --------
    >>> a = scratch("example", (4, 5))
    >>> a.shape, a.dtype.name
    ((4, 5), 'uint8')
    >>> bool(np.shares_memory(a, scratch("example", (2, 3))))
    True
    """
    need = np.dtype(dtype).itemsize
    for d in shape:
        need *= int(d)
    bufs: dict[str, np.ndarray] | None = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < need:
        buf = bufs[slot] = np.empty(max(need, 1), np.uint8)
    return buf[:need].view(dtype).reshape(shape)
