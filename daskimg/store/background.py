"""Store: one thread that writes the stored values handed to it, so no decoding thread waits
on the disk.

The tasks that decode and encode a shard hand its pieces to :meth:`BackgroundWriter.put`
and go on with the next chunk; the writer thread writes them in order. At most
``queued`` values wait in memory (``put`` blocks beyond that), so memory stays bounded
however fast the decoders are. The first error (of the writer, or one reported with
:meth:`BackgroundWriter.fail`) is raised by the next ``put``, by :meth:`drain` and by
:meth:`close`; nothing is written after it.

Used by :class:`daskimg.store.zipbuild.ZipBuilder` (members of a zip being built) and
:class:`daskimg.store.shardwrite.FolderWriter` (shard files of a staging folder).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Calls ``write(key, pieces)`` for each value :meth:`put`, in a thread of its own."""

    def __init__(
        self, write: Callable[[str, Sequence[Any]], None], *, queued: int = 2, name: str
    ) -> None:
        self._write = write
        self._queued = queued
        self._queue: queue.SimpleQueue[
            tuple[str, Sequence[Any], Callable[[], None] | None] | None
        ] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, key: str, pieces: Sequence[Any], done: Callable[[], None] | None = None) -> None:
        """Hand ``pieces`` (written in order, never joined) over; from any thread. ``done``
        is called by the writer thread once it no longer needs them (written, or not
        after an error), so their memory can be reused."""
        self.raise_error()
        self._slots.acquire()
        self._queue.put((key, pieces, done))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, pieces, done = item
            try:
                if self._error is None:
                    self._write(key, pieces)
            except BaseException as e:
                self.fail(e)
            finally:
                del pieces, item
                if done is not None:  # before the slot: drain() returns after every done
                    try:
                        done()
                    except BaseException as e:  # pragma: no cover - done is daskimg's own
                        self.fail(e)
                self._slots.release()

    def fail(self, error: BaseException) -> None:
        """Record ``error`` (the first one is kept); later values are not written."""
        self._error = self._error or error

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait until every value put so far is written; raise the first error if any."""
        for _ in range(self._queued):
            self._slots.acquire()
        for _ in range(self._queued):
            self._slots.release()
        self.raise_error()

    def close(self) -> None:
        """Write what is queued, stop the thread; raise the first error if any."""
        if self._thread.is_alive():
            self._queue.put(None)  # after what is queued
            self._thread.join()
        self.raise_error()
