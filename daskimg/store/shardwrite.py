"""Store: the write tasks of one array — encode each chunk where it is made, write whole shards.

:func:`shard_writes` turns a dask array and its :class:`~daskimg.store.encode.ShardEncoder`
into one task per chunk (its rows encoded by the task that computed them, so the pixels
are compressed while still in cache, in parallel and without the GIL) and one task per
shard (its chunks' bytes and index written by ``put`` as one stored value). Only
compressed bytes wait for a shard to fill. ``put`` is
:meth:`daskimg.store.zipbuild.ZipBuilder.put` (threads of this process), a
:class:`FolderWriter` or :func:`write_file` into a local staging folder. On a
``distributed`` cluster there are no shard tasks: the chunk tasks' results
(:func:`encoded_chunks`, :func:`fused_chunks` with ``portable=True``) come to the client,
where a :class:`ShardAssembler` puts each shard together and writes it.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..read.scratch import scratch
from ..read.source import block_arrays
from .background import BackgroundWriter
from .directio import write_whole
from .encode import Chunk, ShardEncoder, trailer
from .malloc import keep_freed_buffers_if_trimmed
from .shmchunks import take

__all__ = [
    "FolderWriter",
    "ShardAssembler",
    "decode_encode",
    "encoded_chunks",
    "fused_chunks",
    "fused_writes",
    "put_rows",
    "shard_writes",
    "write_file",
]


def encoded_chunks(arr: da.Array, enc: ShardEncoder, *, portable: bool = False) -> list[Any]:
    """One delayed task per chunk of ``arr`` (``enc.layout.shape``): its encoded chunk
    (``portable``: as bytes that can be sent to another process)."""
    lay = enc.layout
    if tuple(arr.shape) != lay.shape:
        raise ValueError(f"array {lay.name!r}: {arr.shape} to write into {lay.shape}")
    blocks = arr.rechunk((lay.chunk_len, *lay.shape[1:])).to_delayed(optimize_graph=False).ravel()
    name = f"encode-{lay.name}-{dask.base.tokenize(arr, enc, portable)}"
    task, given = dask.delayed(_encode, pure=True), Given((enc, portable))
    return [task(given, b, dask_key_name=(name, i)) for i, b in enumerate(blocks)]


def fused_chunks(
    blocks: Sequence[tuple[Any, ...]],
    encoders: Mapping[str, ShardEncoder],
    token: str,
    *,
    portable: bool = False,
    shared: str | None = None,
) -> list[Any]:
    """For a set read from files: one delayed task per chunk that decodes its files
    (:func:`daskimg.read.source.block_arrays`, ``blocks`` its arguments, one chunk each)
    into a buffer its thread reuses and encodes every array of ``encoders``; each returns
    ``{array: encoded chunk}`` (``portable``: as bytes that can be sent to another
    process; ``shared``: the images in a shared buffer of the write named so, when they are
    their own body: :mod:`~daskimg.store.shmchunks`). Fresh pages for every decoded chunk
    cost about as much as the compression (the kernel zeroes each one)."""
    name = f"decode-encode-{token}-{int(portable)}-{shared or ''}"
    given = Given((dict(encoders), portable, shared))
    task = dask.delayed(decode_encode, pure=True)
    return [task(Given(args), given, dask_key_name=(name, i)) for i, args in enumerate(blocks)]


def shard_writes(
    arr: da.Array, enc: ShardEncoder, put: Callable[[str, list[Any]], None]
) -> list[Any]:
    """Delayed tasks that write ``arr`` (``enc.layout.shape``) shard by shard with ``put``."""
    encoded = encoded_chunks(arr, enc)
    name = f"write-{enc.layout.name}-{dask.base.tokenize(arr, enc)}"
    return _shard_tasks(enc, lambda c: encoded[c], put, name)


def fused_writes(
    blocks: Sequence[tuple[Any, ...]],
    encoders: Mapping[str, ShardEncoder],
    put: Callable[[str, list[Any]], None],
    token: str,
) -> list[Any]:
    """Write tasks for a set read from files (:func:`fused_chunks`): one task per shard and
    array writes its chunks with ``put``."""
    chunks = fused_chunks(blocks, encoders, token)
    writes = []
    for array, enc in encoders.items():
        part = lambda c, array=array: chunks[c][array]  # noqa: E731
        writes += _shard_tasks(enc, part, put, f"write-{array}-{token}")
    return writes


def _shard_tasks(
    enc: ShardEncoder,
    chunk: Callable[[int], Any],
    put: Callable[[str, list[Any]], None],
    name: str,
) -> list[Any]:
    """One task per stored value of ``enc``'s array, from the delayed encoded ``chunk(c)``."""
    task, given = dask.delayed(_write_shard, pure=True), Given((put, enc))
    return [
        task(given, k, *(chunk(c) for c in enc.chunks_of(k)), dask_key_name=(name, k))
        for k in range(enc.num_keys)
    ]


class Given:
    """Arguments a task gets as they are. dask searches a task's arguments for other tasks'
    results, field by field through dataclasses and dicts (the encoders, the decode spec):
    for every task of a large ingest, that search cost more than the task's whole setup.
    Nothing in here is a dask collection."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __dask_tokenize__(self) -> object:
        return ("daskimg.Given", dask.base.tokenize(self.value))


class ShardAssembler:
    """Encoded chunks arriving in any order, put as whole stored values as soon as each is
    complete (a ``distributed`` client appending to a zip: the chunks come straight from
    the workers that made them, never through another worker first)."""

    def __init__(self, put: Callable[[str, list[Any]], None]) -> None:
        self._put = put
        self._waiting: dict[tuple[str, int], dict[int, Chunk]] = {}

    def add(self, enc: ShardEncoder, c: int, chunk: Chunk) -> None:
        """Chunk ``c`` of ``enc``'s array has arrived."""
        k = c // enc.chunks_per_key
        have = self._waiting.setdefault((enc.layout.name, k), {})
        have[c] = chunk
        wanted = enc.chunks_of(k)
        if len(have) == len(wanted):
            del self._waiting[(enc.layout.name, k)]
            self._put(enc.key(k), enc.shard([have[i] for i in wanted]))

    def check_done(self) -> None:
        """Raise if a shard is still missing chunks (a bug: every chunk task has finished)."""
        if self._waiting:
            (name, k), have = next(iter(self._waiting.items()))
            raise RuntimeError(f"array {name!r}: shard {k} got only chunks {sorted(have)}")


def decode_encode(block: Given, given: Given) -> dict[str, Chunk]:
    """The task of :func:`fused_chunks`: decode one chunk's files (``block``: its
    :func:`block_arrays` arguments) and encode each array (``given``: the encoders, and
    whether the result goes to another process)."""
    args: tuple[Any, ...] = block.value
    encoders: dict[str, ShardEncoder]
    shared: str | None
    encoders, portable, shared = given.value
    paths, spec = args[0], args[1]
    enc = encoders.get("images")
    if portable and enc is not None and np.dtype(spec.dtype) == enc.layout.dtype:
        # decoded into a buffer of its own, sent as it is when the images are their own
        # encoded body (most photo chunks: raw inside their Blosc frame); with ``shared``, a
        # buffer the client reads from this process's memory (when one can be taken)
        taken = take(shared, HEAD + raw_bytes(enc)) if shared is not None else None
        try:
            if taken is not None:
                buf: Any = taken.data
            else:
                buf = np.empty(HEAD + raw_bytes(enc), np.uint8)
                keep_freed_buffers_if_trimmed(buf.nbytes)  # a distributed worker's malloc trims
            arrays, (body, crc), span = decode_in_place(args, enc, buf)
            if span is None:  # encoded into new bytes
                body = np.frombuffer(body, np.uint8)
            elif taken is not None:
                body, taken = taken.body(*span), None  # the client frees it
            else:
                body = buf[span[0] : span[1]]
            out: dict[str, Any] = {"images": (body, crc)}
            for name, other in encoders.items():
                if name != "images":
                    out[name] = _portable(other.encode_chunk(arrays[name]), portable)
        finally:
            if taken is not None:  # not sent (compressed into new bytes, or an error)
                taken.give_back()
        return out
    buf = scratch("chunk", (len(paths), *spec.sample_shape), spec.dtype)
    if portable:  # in another process: a distributed worker's allocator may trim at once
        keep_freed_buffers_if_trimmed(buf.nbytes)
    arrays = block_arrays(*args, out=buf)
    return {
        name: _portable(enc.encode_chunk(arrays[name], keep=name != "images"), portable)
        for name, enc in encoders.items()
    }


#: bytes kept before a chunk's decoded images for the header of the Blosc frame they may
#: be stored raw in (:func:`decode_in_place`)
HEAD = 16


def raw_bytes(enc: ShardEncoder) -> int:
    """Bytes of one whole chunk of ``enc``'s array, uncompressed."""
    lay = enc.layout
    return lay.chunk_len * math.prod(lay.shape[1:]) * lay.dtype.itemsize


def decode_in_place(
    args: tuple[Any, ...], enc: ShardEncoder, buf: Any
) -> tuple[dict[str, np.ndarray], Chunk, tuple[int, int] | None]:
    """Decode one chunk's files (its :func:`block_arrays` arguments; images of ``enc``'s
    dtype) into ``buf`` (writable, at least :data:`HEAD` + :func:`raw_bytes`), :data:`HEAD`
    bytes in, and encode its images with ``enc``. Returns the decoded arrays, the images'
    encoded chunk and, when the images are their own encoded body (uncompressed, or raw
    inside a Blosc frame whose header is then written right before them:
    :meth:`ShardEncoder.prefix`), where that body is in ``buf`` (the chunk's body is then a
    view of ``buf``: nothing copied); else None (the body is new bytes)."""
    lay = enc.layout
    paths = args[0]
    count = lay.chunk_len * math.prod(lay.shape[1:])
    rows = np.frombuffer(buf, lay.dtype, count, HEAD).reshape(lay.chunk_len, *lay.shape[1:])
    arrays = block_arrays(*args, out=rows[: len(paths)])
    rows[len(paths) :] = 0  # zarr pads an edge chunk with the fill value
    head = enc.prefix(rows)
    if head is None:  # rows is the whole chunk, padded: encoded as encode_chunk pads a short one
        return arrays, enc.encode_chunk(rows, keep=False, probed=True), None
    start, end = HEAD - len(head), HEAD + rows.nbytes
    view = memoryview(buf).cast("B")
    view[start:HEAD] = head
    body = view[start:end]
    return arrays, (body, trailer(body)), (start, end)


def _encode(given: Given, rows: Any) -> Chunk:
    enc, portable = given.value
    if portable:
        keep_freed_buffers_if_trimmed(rows.nbytes)
    return _portable(enc.encode_chunk(rows), portable)


def _portable(chunk: Chunk, portable: bool) -> Chunk:
    """The chunk as a numpy array of its bytes when it is sent to another process:
    ``distributed`` sends an array's buffer as it is and hands the receiver an array over
    the bytes it read, where ``bytes`` are joined into a copy there (4.8 MB a chunk of
    photos; a fifth of a 2-process ``LocalCluster`` client's work). A body is never a view
    of a buffer its task reuses (``encode_chunk(keep=False)`` copies those)."""
    body, crc = chunk
    if portable:
        body = np.frombuffer(body, np.uint8)
    return body, crc


def put_rows(
    enc: ShardEncoder,
    put: Callable[[str, list[Any]], None],
    start: int,
    rows: np.ndarray,
    *,
    keep: bool = True,
) -> None:
    """Write ``rows``, the array's rows from ``start`` (a shard's first row; at most one
    shard of them), as one stored value with ``put``. ``keep=False``: ``rows`` is a buffer
    the caller fills again (:meth:`ShardEncoder.encode_chunk`)."""
    cl = enc.layout.chunk_len
    chunks = [enc.encode_chunk(rows[i : i + cl], keep=keep) for i in range(0, len(rows), cl)]
    put(enc.key(start // enc.layout.shard_len), enc.shard(chunks))


def _write_shard(given: Given, k: int, *chunks: Chunk) -> int:
    """Write shard ``k`` with ``put``; return its size."""
    put: Callable[[str, list[Any]], None]
    enc: ShardEncoder
    put, enc = given.value
    pieces = enc.shard(chunks)
    put(enc.key(k), pieces)
    return sum(memoryview(p).nbytes for p in pieces)


def write_file(root: str, key: str, pieces: list[Any], *, sync: bool = False) -> None:
    """Write the stored value ``key`` (``images/c/0/0/0/0``) of the folder store at ``root``;
    fsynced when the store is published, or at once (``sync``)."""
    path = os.path.join(root, *key.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_whole(path, pieces, sync=sync)


class FolderWriter:
    """:func:`write_file` into the staging folder ``root`` from a writer thread of this
    process (:class:`~daskimg.store.background.BackgroundWriter`), so a decoding thread
    hands its shard over and goes on instead of waiting on the disk. Sent to another
    process (the ``processes`` scheduler), it becomes a plain :func:`write_file` there.
    Call :meth:`finish` before the folder is published."""

    def __init__(self, root: str) -> None:
        self.root = root
        # each file fsynced as it is written: the file system's commits (~10 ms each on
        # this machine's disk) then happen while later shards are made, and the fsync of
        # every file and folder before the store is published finds them done (one commit
        # after another there was 50-60 ms of a 4,000-photo ingest's end). Sent to another
        # process (the processes scheduler), where a shard's task would wait for it, the
        # files are fsynced when the store is published, as a zip's staging folder is not
        self._writer = BackgroundWriter(
            functools.partial(write_file, root, sync=True), name="daskimg-folder-writer"
        )

    def __call__(self, key: str, pieces: list[Any], done: Callable[[], None] | None = None) -> None:
        """Write ``pieces`` as ``key``; ``done`` is called once they are no longer needed."""
        self._writer.put(key, pieces, done)

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial, (write_file, self.root))

    def __dask_tokenize__(self) -> object:
        return ("daskimg.FolderWriter", self.root)

    def finish(self) -> None:
        """Wait until every shard is written; raise the first error if any."""
        self._writer.drain()

    def close(self) -> None:
        self._writer.close()
