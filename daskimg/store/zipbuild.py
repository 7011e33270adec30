"""Store: a ``*.zarr.zip`` built in one pass — each member written once, as the shards finish.

A zarr store over a zip file being written (``<path>.partial``): whole shards are
appended as members when zarr writes them; a chunk key may be written only once (a
second write would be a duplicate member, so it is an error). Metadata (``zarr.json``)
is kept in memory — zarr reads it back, and it may still change (an array cut to the
rows that decoded) — and written by :meth:`ZipBuilder.finish`: the arrays', then the
root's, which says ``complete: true``, then the central directory; the file is fsynced
and the caller publishes it with one rename.
A zip killed before that has no central directory and opens as nothing.

It is its own zarr store (:class:`zarr.abc.store.Store`, public API) over
:class:`~daskimg.store.zipformat.ZipAppender` (the zip's records, each member's CRC-32
computed by ISA-L before its header): a shard is appended from zarr's buffer without a copy, in a
worker thread, so zarr's event loop (which every writing thread waits on) is never
blocked by a file write.

Used when the shards reach this process as they finish: the threaded or synchronous
scheduler (tasks call :meth:`ZipBuilder.put`), or a ``distributed`` cluster, whose
workers send each encoded chunk to the client, which puts a shard together as soon as
its chunks are in (:class:`~daskimg.store.shardwrite.ShardAssembler`) and appends it
(workers cannot append to one file; this also needs no file system shared with the
client, and no chunk moves between workers).
With the ``processes`` scheduler, which returns results only at the end, the store is
written as a folder and packed (see :func:`daskimg.store.location.pack_zip`).
Members are appended by one writer thread (:class:`~daskimg.store.background.BackgroundWriter`,
at most ``_QUEUED`` shards wait), so no decoding thread waits for another's write, into an
:class:`~daskimg.store.directio.AppendFile` (past the page cache where the file system
allows). That file is written front to back, never sought: each member's CRC-32 and sizes
are known when its header is written, before its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from .background import BackgroundWriter
from .chunktable import MemberTrailers
from .directio import ALIGN, AppendFile
from .zipformat import ZipAppender

__all__ = ["ZipBuilder"]

#: bytes appended between two background flushes to disk
_SYNC_BYTES = 64 * 2**20
#: shards handed to the writer thread and not yet written, at most
_QUEUED = 2
#: members up to this size are kept and written at the end, up to _DEFER_MAX bytes in all
_SMALL_MEMBER = 256 * 2**10
_DEFER_MAX = 64 * 2**20


class ZipBuilder(Store):
    """An append-only zarr store: a zip file written member by member (see the module notes)."""

    supports_writes = True
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, path: str) -> None:
        super().__init__(read_only=False)
        self.path = path
        # written past the page cache where the file system allows (see .directio)
        self._file = AppendFile(path)
        try:
            self._start()
        except BaseException:  # a Ctrl-C half-way: no thread or open file left behind
            self._stop_started()
            raise

    def _start(self) -> None:
        # past the page cache, each member's first large piece is lined up with its address
        # (written from the chunk's own memory, not copied: see .directio)
        self._zip = ZipAppender(self._file.write, align=ALIGN if self._file.direct else 0)
        self._write_lock = threading.Lock()  # one member at a time
        # the keys and the small members kept for the end: never waits for a member's write
        self._keys_lock = threading.Lock()
        self._meta: dict[str, bytes] = {}
        self._keys: set[str] = set()
        # data is flushed to disk in the background while later shards are made, so the
        # fsync in finish() has little left to wait for
        self._unsynced = 0
        self._sync_wanted = threading.Event()
        self._closing = False
        self._syncer = threading.Thread(
            target=self._sync_loop, name="daskimg-zip-fsync", daemon=True
        )
        # members are appended by one writer thread, so the threads that make shards never
        # wait for each other's writes; at most _QUEUED shards wait in memory. It keeps the
        # first error of the writer or the syncer, raised by put(), finish(), close()
        self._writer = BackgroundWriter(
            self._write_member, queued=_QUEUED, name="daskimg-zip-writer"
        )
        self._syncer.start()
        # small members (labels, paths, sizes) are written together at the end, beside the
        # metadata: a reader at a URL then fetches them with the zip's tail, not one by one
        self._deferred: list[tuple[str, bytes]] = []
        self._deferred_bytes = 0
        # each chunk's crc32c, noted from the bytes in hand (the file is written past the
        # page cache and not read back)
        self._trailers = MemberTrailers()

    def _stop_started(self) -> None:
        """Undo what :meth:`_start` got to: its threads stopped, the file closed."""
        with contextlib.suppress(BaseException):
            writer = self.__dict__.get("_writer")
            if writer is not None:
                writer.close()
            syncer = self.__dict__.get("_syncer")
            if syncer is not None and syncer.is_alive():
                self._closing = True
                self._sync_wanted.set()
                syncer.join()
            made = self.__dict__.get("_zip")
            if made is not None:
                made.close()  # now, not when collected (after the file below is closed)
        self._file.close()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZipBuilder) and other.path == self.path

    __hash__ = object.__hash__

    async def set(self, key: str, value: Buffer) -> None:
        if key in self._keys:
            raise ValueError(
                f"{self.path}: {key!r} would be written twice into the zip being built "
                "(a duplicate member); this is a bug in daskimg's writer"
            )
        if key.endswith("zarr.json"):
            self._meta[key] = value.to_bytes()  # written by finish()
            return
        self._keys.add(key)
        await asyncio.to_thread(self._append, key, value.as_numpy_array())

    def _append(self, key: str, data: Any) -> None:
        self.put(key, [data], checked=True)

    def put(
        self,
        key: str,
        pieces: Sequence[Any],
        *,
        checked: bool = False,
        done: Callable[[], None] | None = None,
    ) -> None:
        """Append the member ``key`` made of ``pieces`` (buffers, written in order, never
        joined); from any thread. A key already written is an error. ``done`` is called
        once ``pieces`` are no longer needed (their memory may then be reused)."""
        if not checked:
            with self._keys_lock:
                if key in self._keys or key.endswith("zarr.json"):
                    raise ValueError(
                        f"{self.path}: {key!r} would be written twice into the zip being built "
                        "(a duplicate member); this is a bug in daskimg's writer"
                    )
                self._keys.add(key)
        self._writer.raise_error()
        self._trailers.note(key, pieces, self._meta)
        size = sum(memoryview(p).nbytes for p in pieces)
        if size <= _SMALL_MEMBER:
            with self._keys_lock:
                if self._deferred_bytes + size <= _DEFER_MAX:
                    self._deferred_bytes += size
                    self._deferred.append((key, b"".join(memoryview(p).cast("B") for p in pieces)))
                    if done is not None:
                        done()  # kept as a copy
                    return
        self._writer.put(key, pieces, done)

    def _write_member(self, key: str, pieces: Sequence[Any]) -> None:
        with self._write_lock:
            self._zip.add(key, pieces)
            self._unsynced += sum(memoryview(p).nbytes for p in pieces)
            if self._unsynced >= _SYNC_BYTES:
                self._unsynced = 0
                self._sync_wanted.set()

    def _sync_loop(self) -> None:
        fd = self._file.fileno()
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._closing:
                return
            try:
                os.fdatasync(fd)
            except OSError as e:
                self._writer.fail(e)
                return

    def __dask_tokenize__(self) -> object:
        return ("daskimg.ZipBuilder", self.path)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        data = self._meta.get(key)
        if data is None:
            return None  # data is never read back while building
        if byte_range is not None:
            raise NotImplementedError("ranged reads of metadata")
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, r) for key, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return key in self._meta or key in self._keys

    async def delete(self, key: str) -> None:
        # zarr deletes what may exist when it creates a node: nothing to do for an absent key
        if await self.exists(key):
            raise NotImplementedError(f"{self.path}: nothing is deleted from a zip being built")

    async def delete_dir(self, prefix: str) -> None:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        async for key in self.list_prefix(prefix):
            raise NotImplementedError(
                f"{self.path}: {key!r} cannot be deleted from a zip being built"
            )

    async def list(self) -> AsyncIterator[str]:
        for key in sorted(self._meta.keys() | self._keys):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        async for key in self.list():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        async for key in self.list_prefix(prefix):
            child = key[len(prefix) :].split("/", 1)[0]
            if child not in seen:
                seen.add(child)
                yield child

    def meta(self, key: str) -> bytes:
        """The bytes of a metadata document written so far (``zarr.json``, ``images/zarr.json``)."""
        return self._meta[key]

    def tables(self, names: Iterable[str]) -> dict[str, str]:
        """The chunk tables of the arrays ``names`` (:mod:`~daskimg.store.chunktable`)."""
        return self._trailers.tables(self.path, self._meta, names)

    def finish(self, root: bytes) -> None:
        """Write the arrays' metadata, the root ``zarr.json`` (``root``) last, the central
        directory; fsync the file."""
        self._writer.drain()
        with self._write_lock, self._keys_lock:
            for key, data in sorted(self._deferred):
                self._zip.add(key, [data])
            self._deferred.clear()
            for key, data in sorted(self._meta.items()):
                if key != "zarr.json":
                    self._zip.add(key, [data])
            self._zip.add("zarr.json", [root])
        self.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the file (writing the central directory if it is still open)."""
        super().close()
        try:
            self._writer.close()  # what is queued is written first
        finally:
            self._close_file()

    def _close_file(self) -> None:
        self._closing = True
        self._sync_wanted.set()
        self._syncer.join()
        with self._write_lock:
            try:
                self._zip.close()
            finally:
                self._file.close()
        self._writer.raise_error()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "a zip being built cannot be sent to other processes; write a folder store there"
        )
