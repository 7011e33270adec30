"""Store: a ``*.zarr.zip`` built in one pass — each member written once, as the shards finish.

A zarr store over a zip file being written (``<path>.partial``): whole shards are
appended as members when zarr writes them; a chunk key may be written only once (a
second write would be a duplicate member, so it is an error). Metadata (``zarr.json``)
is kept in memory — zarr reads it back, and it may still change (an array cut to the
rows that decoded) — and written by :meth:`ZipBuilder.finish`: the arrays', then the
root's, which says ``complete: true``, then the central directory; the file is fsynced
and the caller publishes it with one rename.
A zip killed before that has no central directory and opens as nothing.

Used when the writes run in this process (the threaded or synchronous scheduler); on a
``distributed`` cluster or with processes, workers cannot append to one file, so the
store is written as a folder and packed (see :func:`daskimg.store.location.pack_zip`).
"""

from __future__ import annotations

import os
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import ZipStore

__all__ = ["ZipBuilder"]


class ZipBuilder(ZipStore):
    """An append-only zarr store: a zip file written member by member (see the module notes)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="w")
        self._meta: dict[str, bytes] = {}
        self._keys: set[str] = set()

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
        await super().set(key, value)

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

    async def exists(self, key: str) -> bool:
        return key in self._meta or key in self._keys

    def meta(self, key: str) -> bytes:
        """The bytes of a metadata document written so far (``zarr.json``, ``images/zarr.json``)."""
        return self._meta[key]

    def finish(self, root: bytes) -> None:
        """Write the arrays' metadata, the root ``zarr.json`` (``root``) last, the central
        directory; fsync the file."""
        if not self._is_open:
            self._sync_open()
        with self._lock:
            for key, data in sorted(self._meta.items()):
                if key != "zarr.json":
                    self._zf.writestr(key, data)
            self._zf.writestr("zarr.json", root)
        self.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "a zip being built cannot be sent to other processes; write a folder store there"
        )
