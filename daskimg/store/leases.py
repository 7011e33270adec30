"""Store: read leases on mapped store files — a map a writer waits for is let go, never
truncated under a read (see :mod:`daskimg.store.bytesource`, whose local sources use it).

A :class:`LeasedMap` maps a file read-only under a Linux read lease (``F_SETLEASE``). A
process that opens the file to write or truncate it is held by the kernel until the lease
is released; every read through the map first asks whether such a break is pending
(``F_GETLEASE``) and, if so, is an error naming the store. One watcher thread per process
lets idle maps go within ``WATCH_INTERVAL`` seconds when a writer waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator

from ..errors import ChecksumError

__all__ = ["WATCH_INTERVAL", "LeasedMap"]


class LeasedMap:
    """A read-only memory map of a file under a Linux read lease (see the module notes)."""

    def __init__(self, fd: int, mapped: mmap.mmap | None, where: str) -> None:
        self.fd, self.map, self.where = fd, mapped, where
        self.active = 0
        self.broken = False
        self.lock = threading.Lock()
        self.pid = os.getpid()  # after a fork, the parent's leases are not this process's
        if mapped is not None:
            _LIVE.add(self)
            _ensure_watcher()

    @classmethod
    def take(cls, fd: int, where: str) -> LeasedMap:
        if not _LEASES:
            return cls(fd, None, where)
        try:
            # the break notice comes as SIGURG, ignored by default: every read asks, and a
            # watcher thread lets idle maps go (see _ensure_watcher)
            fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # not the owner, a network file system, open for writing elsewhere
            return cls(fd, None, where)
        try:
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # an empty file, or no address space
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return cls(fd, None, where)
        return cls(fd, mapped, where)

    @contextlib.contextmanager
    def use(self, offset: int, n: int) -> Iterator[memoryview | None]:
        with self.lock:
            mapped = self.map
            pending = (
                mapped is not None
                and not self.broken
                and fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK
            )
            if pending:
                self.broken = True  # a writer waits to open or truncate the file
            if self.broken:
                self._release_if_idle()
                raise ChecksumError(
                    f"{self.where}: another process is rewriting or truncating the store while "
                    "it is read (it opened the file to write); what was read no longer belongs "
                    "with it. Open it again once the rewrite is done"
                )
            if mapped is None or offset + n > len(mapped):
                mapped = None
            else:
                self.active += 1
        if mapped is None:
            yield None
            return
        try:
            with memoryview(mapped) as whole:
                yield whole[offset : offset + n]
        finally:
            with self.lock:
                self.active -= 1
                self._release_if_idle()

    def notice_break(self) -> None:
        """If a writer waits (a break is pending), mark it, and let go now if no read is running.

        Called by the watcher thread; if a read holds the lock right now, it does nothing
        (that read notices the break itself).
        """
        if not self.lock.acquire(blocking=False):
            return
        try:
            if self.map is not None and not self.broken:
                with contextlib.suppress(OSError):
                    if fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
                        self.broken = True
            self._release_if_idle()
        finally:
            self.lock.release()

    def _release_if_idle(self) -> None:
        """After a break: give up the lease (the writer proceeds) once no read uses the map."""
        if self.broken and self.active == 0 and self.map is not None:
            self.release()

    def release(self) -> None:
        # the map taken first: a store's finalizer (any thread) and the watcher thread may
        # release at once; closing a map or dropping a lease twice is harmless
        mapped, self.map = self.map, None
        if mapped is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            with contextlib.suppress(BufferError):
                mapped.close()


_LEASES = sys.platform.startswith("linux") and hasattr(fcntl, "F_SETLEASE")
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
_LIVE: weakref.WeakSet[LeasedMap] = weakref.WeakSet()
_WATCH_LOCK = threading.Lock()
_WATCHER_PID: list[int] = []  # the process whose lease watcher runs
#: how often the watcher asks whether a writer waits for a lease (seconds)
WATCH_INTERVAL = 0.05


def _ensure_watcher() -> None:
    """Start (once per process) the thread that lets idle leases go when a writer waits.

    Reads notice a pending break themselves; this thread covers a reader that is idle
    (its iteration paused, or finished), so a writer that opens a mapped store file waits
    at most ~``WATCH_INTERVAL``, not the kernel's lease-break-time (45 s). It asks with
    ``F_GETLEASE`` — no signal handler is needed (a signal would reach whichever thread
    the kernel picks, not the one that could act).
    """
    pid = os.getpid()
    if [pid] == _WATCHER_PID:
        return
    with _WATCH_LOCK:
        if [pid] == _WATCHER_PID:
            return
        threading.Thread(target=_watch, args=(pid,), name="daskimg-leases", daemon=True).start()
        _WATCHER_PID[:] = [pid]


def _watch(pid: int) -> None:
    while os.getpid() == pid:
        time.sleep(WATCH_INTERVAL)
        for leased in list(_LIVE):
            if leased.pid == pid:
                leased.notice_break()
