"""Store: a cluster's decoded chunks handed to the client through shared memory when every
worker runs on this machine.

Why: on a ``distributed`` cluster the workers decode and encode each chunk and the client
puts the shards together (:func:`daskimg.store.write._stream_into`). Sent through TCP,
every chunk of photos (4.8 MB) is copied into the kernel by the worker's event loop and
out again by the client's, which on a 2-process ``LocalCluster`` on 2 cores took about a
tenth of the CPU the decoding had (``bench/bench_ingest.py``). When the workers run here,
a worker instead decodes the chunk straight into a buffer of shared memory (a
``memfd``) and sends only where it is; the client maps that buffer (through
``/proc/<worker pid>/fd/<fd>``) and writes the shard from it, as the forked workers of
:mod:`daskimg.store.procpool` do with their slots.

How:

* A worker keeps a few buffers per write (``token``), each a memfd with a control page
  (a state byte and a generation number) before the data. A task takes a free buffer (:func:`take`; a new one if none is free),
  marks it busy, decodes into it, and returns a :class:`SharedBody`: the worker's pid,
  the fd, the buffer's name and generation and where the body lies in it.
* The client (:class:`Receiver`) opens the buffer, checks it is the one named (the
  link of its fd reads ``/memfd:<name>``, so an fd number reused, or a worker in another
  pid namespace, is never read) and that its generation is the one sent, and lends a
  view of it to the shard; once the shard is written it marks the buffer free, and the
  worker's next task reuses it (no fresh pages to zero).
* A chunk whose buffer cannot be opened (the worker died between sending where it is
  and the client opening it) is decoded again, sent through TCP.
* At the end (or on an error) the client unmaps everything and asks the workers to close
  the write's buffers (:func:`release`); a worker also closes the free buffers of other
  writes when a task of a new one starts. A task of a write already released (cancelled
  when the write failed, still running) sends its chunk through TCP. Buffers a client
  that was killed left busy stay with their worker until it ends.
* The buffers cannot be spilled, and a chunk's is freed only once its whole shard is
  written: a worker holds at most a quarter of its memory limit in busy buffers (past
  that, chunks go through TCP, as results distributed can spill), so a worker near its
  limit is never paused holding the chunks the client waits for.
* Names are never reused in a process (``daskimg-<token>-<pid>-<n>``): a name the client
  has mapped always means that buffer.

When (:func:`usable`): Linux with ``os.memfd_create``, every worker on this machine
(loopback addresses), and a probe buffer from each worker opened and recognised by the
client; else the chunks go through TCP as before.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import mmap
import os
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DaskImgError

__all__ = ["Receiver", "SharedBody", "Taken", "new_token", "probe", "release", "take", "usable"]

#: bytes before a buffer's data: its state (byte 0) and generation (bytes 8-16)
CTRL = 4096
_FREE, _BUSY = 0, 1
_GEN = struct.Struct("<Q")


class SharedBody:
    """Where a worker put a chunk's encoded body: a shared buffer of its own (sent to the
    client instead of the bytes)."""

    __slots__ = ("fd", "gen", "name", "pid", "start", "stop")

    def __init__(self, pid: int, fd: int, name: str, gen: int, start: int, stop: int) -> None:
        self.pid, self.fd, self.name, self.gen = pid, fd, name, gen
        self.start, self.stop = start, stop

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedBody, (self.pid, self.fd, self.name, self.gen, self.start, self.stop))


# ----------------------------------------------------------------------------- the workers


class _Buffer:
    __slots__ = ("fd", "gen", "mm", "name")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.gen = 0

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):  # a view still out: left to the GC
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


#: this worker's buffers, by write
_POOLS: dict[str, list[_Buffer]] = {}
_LOCK = threading.Lock()  # a worker may run several tasks at once
#: writes whose buffers were released: a task of theirs still running (cancelled when the
#: write failed) sends its chunk through TCP, never into a buffer no one would free
_RELEASED: collections.deque[str] = collections.deque(maxlen=256)
#: buffers get names never used before in this process: a name the client has mapped
#: always means that buffer
_NAMES = itertools.count()
#: the most memory a worker holds in busy buffers, as a share of its memory limit: they
#: cannot be spilled, and a shard's chunks are freed only once the whole shard is written
#: (past it, chunks go through TCP: results distributed can spill)
_MOST_HELD = 0.25


class Taken:
    """A buffer a task has taken: :attr:`data` to decode into, then :meth:`body` (sent to
    the client, which frees the buffer) or :meth:`give_back` (not used)."""

    __slots__ = ("_buf", "data")

    def __init__(self, buf: _Buffer) -> None:
        self._buf = buf
        self.data = memoryview(buf.mm)[CTRL:]

    def body(self, start: int, stop: int) -> SharedBody:
        """The body at ``data[start:stop]``, as the client finds it."""
        b = self._buf
        return SharedBody(os.getpid(), b.fd, b.name, b.gen, start, stop)

    def give_back(self) -> None:
        self._buf.mm[0] = _FREE


def take(token: str, nbytes: int, most: int | None = None) -> Taken | None:
    """A free buffer of the write ``token`` with at least ``nbytes`` of data (made if none);
    None when the write's buffers were released (it ended), or when this process's busy
    buffers would exceed ``most`` bytes (default: :data:`_MOST_HELD` of a ``distributed``
    worker's memory limit): the caller sends the chunk another way."""
    most = _held_most() if most is None else most
    with _LOCK:
        if token in _RELEASED:
            return None
        for other in [t for t in _POOLS if t != token]:  # other writes' buffers, once all free
            if all(b.mm[0] == _FREE for b in _POOLS[other]):
                for b in _POOLS.pop(other):
                    b.close()
        busy = sum(len(b.mm) for pool in _POOLS.values() for b in pool if b.mm[0] != _FREE)
        pool = _POOLS.setdefault(token, [])
        for buf in pool:
            if buf.mm[0] == _FREE and len(buf.mm) >= CTRL + nbytes:
                break
        else:
            if busy + CTRL + nbytes > most:
                return None
            buf = _Buffer(f"daskimg-{token}-{os.getpid()}-{next(_NAMES)}", CTRL + nbytes)
            pool.append(buf)
        buf.gen += 1
        _GEN.pack_into(buf.mm, 8, buf.gen)
        buf.mm[0] = _BUSY
    return Taken(buf)


def _held_most() -> int:
    """:data:`_MOST_HELD` of this ``distributed`` worker's memory limit (none: no limit)."""
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except Exception:  # not in a worker (a test), or another distributed
        limit = None
    return int(limit * _MOST_HELD) if limit else 2**62


def release(token: str) -> int:
    """Close this worker's buffers of the write ``token`` (run on each worker at its end);
    its tasks still running send their chunks through TCP from then on."""
    with _LOCK:
        _RELEASED.append(token)
        pool = _POOLS.pop(token, [])
        for b in pool:
            b.close()
    return len(pool)


def probe(token: str) -> SharedBody | None:
    """A small buffer of the write ``token`` for the client to open (:func:`usable`)."""
    got = take(token, 64)
    if got is None:
        return None
    got.data[:8] = b"daskimg!"
    return got.body(0, 8)


# ------------------------------------------------------------------------------ the client


def usable(client: Any, token: str) -> bool:
    """Whether the workers of ``client`` can hand chunks over in shared memory (see the
    module notes); their probe buffers are closed again by :func:`release`."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        bodies = client.run(probe, token)
    except Exception:  # a worker without daskimg's module, or memfd refused
        return False
    ok = bool(bodies) and all(b is not None and b.pid != os.getpid() for b in bodies.values())
    # (workers in this process: their results are handed over as they are)
    if ok:
        with Receiver() as receiver:
            try:
                for body in bodies.values():
                    view = receiver.view(body)
                    ok = ok and bytes(view) == b"daskimg!"
                    view.release()
            except (OSError, DaskImgError):
                ok = False
    if not ok:
        with contextlib.suppress(Exception):
            client.run(release, token)
    return ok


class Receiver:
    """The client's side: the workers' buffers opened and mapped once each, views of them
    lent to shards, each buffer freed for its worker once its shard is written."""

    def __init__(self) -> None:
        self._maps: dict[tuple[int, str], mmap.mmap] = {}
        self._lent: dict[int, mmap.mmap] = {}  # id of a view -> its buffer
        self._lock = threading.Lock()  # the shards are written on another thread

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def view(self, body: SharedBody) -> memoryview:
        """The body's bytes, in the worker's buffer (a view lent until :meth:`written`).
        OSError: the buffer is gone (its worker ended); DaskImgError: it is not the one
        named, or was reused."""
        key = (body.pid, body.name)
        mm = self._maps.get(key)
        if mm is None:
            try:
                mm = self._maps[key] = _open(body)
            except OSError:
                self._forget(body.pid)  # that worker ended: its buffers are not kept here
                raise
        gen = _GEN.unpack_from(mm, 8)[0]
        if mm[0] != _BUSY or gen != body.gen or not CTRL + body.stop <= len(mm):
            raise DaskImgError(
                f"the shared buffer {body.name} of worker process {body.pid} does not hold "
                f"the chunk it was sent for (generation {gen}, expected {body.gen}); this is "
                "a bug in daskimg; to write without shared memory, connect with "
                "Client(..., direct_to_workers=False)"
            )
        view = memoryview(mm)[CTRL + body.start : CTRL + body.stop]
        with self._lock:
            self._lent[id(view)] = mm
        return view

    def written(self, pieces: Sequence[Any]) -> Callable[[], None]:
        """The ``done`` callback of a shard made of ``pieces``: their buffers freed."""

        def done() -> None:
            with self._lock:
                for p in pieces:
                    mm = self._lent.pop(id(p), None)
                    if mm is not None:
                        if isinstance(p, memoryview):
                            p.release()
                        with contextlib.suppress(ValueError):  # closed: the write ended
                            mm[0] = _FREE

        return done

    def _forget(self, pid: int) -> None:
        """Unmap the buffers of worker process ``pid`` that no shard still holds."""
        with self._lock:
            held = {id(mm) for mm in self._lent.values()}
            gone = [k for k, mm in self._maps.items() if k[0] == pid and id(mm) not in held]
            maps = [self._maps.pop(k) for k in gone]
        for mm in maps:
            with contextlib.suppress(BufferError, ValueError):
                mm.close()

    def close(self) -> None:
        """Unmap every buffer (views still lent, of a write that failed, keep theirs)."""
        with self._lock:
            self._lent.clear()
            maps, self._maps = self._maps, {}
        for mm in maps.values():
            with contextlib.suppress(BufferError, ValueError):
                mm.close()


def _open(body: SharedBody) -> mmap.mmap:
    """Map the worker's buffer ``body`` names, checking it is that one."""
    fd = os.open(f"/proc/{body.pid}/fd/{body.fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
        if link not in (f"/memfd:{body.name}", f"/memfd:{body.name} (deleted)"):
            # (a worker in another process namespace or on another machine, or one that
            # died and whose pid was reused): not there, as for a worker that ended
            raise FileNotFoundError(
                errno.ENOENT,
                f"fd {body.fd} of process {body.pid} is {link!r}, not the shared buffer "
                f"{body.name} a worker sent",
            )
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def new_token() -> str:
    """A name for one write's buffers, unique across clients and machines."""
    return uuid.uuid4().hex[:16]
