"""Store: the write tasks of one array — encode each chunk where it is made, write whole shards.

:func:`shard_writes` turns a dask array and its :class:`~daskimg.store.encode.ShardEncoder`
into one task per chunk (its rows encoded by the task that computed them, so the pixels
are compressed while still in cache, in parallel and without the GIL) and one task per
shard (its chunks' bytes and index written by ``put`` as one stored value). Only
compressed bytes wait for a shard to fill. ``put`` is
:meth:`daskimg.store.zipbuild.ZipBuilder.put` (threads of this process; ``None`` on a
``distributed`` cluster: the shard tasks return their bytes, the client appends them) or
:func:`write_file` into a local staging folder (any scheduler, a cluster's workers too).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..read.source import block_arrays
from .encode import Chunk, ShardEncoder

__all__ = ["fused_writes", "shard_writes", "write_file"]


def shard_writes(
    arr: da.Array, enc: ShardEncoder, put: Callable[[str, list[Any]], None] | None
) -> list[Any]:
    """Delayed tasks that write ``arr`` (``enc.layout.shape``) shard by shard with ``put``."""
    lay = enc.layout
    if tuple(arr.shape) != lay.shape:
        raise ValueError(f"array {lay.name!r}: {arr.shape} to write into {lay.shape}")
    blocks = arr.rechunk((lay.chunk_len, *lay.shape[1:])).to_delayed(optimize_graph=False).ravel()
    name = f"encode-{lay.name}-{dask.base.tokenize(arr, enc)}"
    encoded = [
        dask.delayed(enc.encode_chunk, pure=True)(b, dask_key_name=(name, i))
        for i, b in enumerate(blocks)
    ]
    writes = []
    for k in range(-(-lay.num_chunks // enc.chunks_per_key)):
        parts = [encoded[c] for c in enc.chunks_of(k)]
        task = dask.delayed(_write_shard, pure=True)
        writes.append(task(put, enc, k, *parts, dask_key_name=(f"write-{name}", k)))
    return writes


def fused_writes(
    blocks: Sequence[tuple[Any, ...]],
    encoders: Mapping[str, ShardEncoder],
    put: Callable[[str, list[Any]], None] | None,
    token: str,
) -> list[Any]:
    """Write tasks for a set read from files: one task per chunk decodes its files
    (:func:`daskimg.read.source.block_arrays`, ``blocks`` its arguments, one chunk each) into
    a buffer its thread reuses and encodes every array of ``encoders``; one task per shard
    and array writes. Fresh pages for every decoded chunk cost about as much as the
    compression (the kernel zeroes each one)."""
    name = f"decode-encode-{token}"
    chunks = [
        dask.delayed(_decode_encode, pure=True)(args, dict(encoders), dask_key_name=(name, i))
        for i, args in enumerate(blocks)
    ]
    writes = []
    for array, enc in encoders.items():
        for k in range(-(-enc.layout.num_chunks // enc.chunks_per_key)):
            parts = [chunks[c][array] for c in enc.chunks_of(k)]
            writes.append(
                dask.delayed(_write_shard, pure=True)(
                    put, enc, k, *parts, dask_key_name=(f"write-{array}-{token}", k)
                )
            )
    return writes


_LOCAL = threading.local()


def _decode_encode(args: tuple[Any, ...], encoders: dict[str, ShardEncoder]) -> dict[str, Chunk]:
    paths, spec = args[0], args[1]
    shape = (len(paths), *spec.sample_shape)
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.shape != shape or buf.dtype != np.dtype(spec.dtype):
        buf = np.empty(shape, spec.dtype)
        if len(paths) == encoders["images"].layout.chunk_len:
            _LOCAL.buf = buf  # a full chunk's buffer is kept for the thread's next one
    arrays = block_arrays(*args, out=buf)
    return {
        name: enc.encode_chunk(arrays[name], keep=name != "images")
        for name, enc in encoders.items()
    }


def _write_shard(
    put: Callable[[str, list[Any]], None] | None, enc: ShardEncoder, k: int, *chunks: Chunk
) -> int | tuple[str, list[Any]]:
    """Write shard ``k`` with ``put``; without one, return its key and pieces (a cluster's
    workers send them to the client, which writes them)."""
    pieces = enc.shard(chunks)
    if put is None:
        return enc.key(k), [p if isinstance(p, bytes) else bytes(memoryview(p)) for p in pieces]
    put(enc.key(k), pieces)
    return sum(memoryview(p).nbytes for p in pieces)


def write_file(root: str, key: str, pieces: list[Any]) -> None:
    """Write the stored value ``key`` (``images/c/0/0/0/0``) of the folder store at ``root``;
    fsynced when the store is published."""
    path = os.path.join(root, *key.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        views = [memoryview(p).cast("B") for p in pieces]
        total = sum(v.nbytes for v in views)
        done = 0
        while done < total:  # writev may write less than asked
            n = os.writev(fd, views)
            done += n
            while views and n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]
    finally:
        os.close(fd)
