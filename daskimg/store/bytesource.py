"""Store: the bytes of a store, wherever it lives — listing, ranged reads, and noticing change.

One interface, four places: a local ``*.zarr.zip`` file, a local ``*.zarr`` folder, and the
same two at an fsspec URL (``s3://``, ``http://``, ``memory://``, ...; those two live in
:mod:`daskimg.store.urlsource`). The checked reader
(:mod:`daskimg.store.reader`) reads every chunk through it, so what it guarantees —
damage is an error naming the store, the key and what is wrong; a store replaced or
rewritten while it is read is an error, never ``SIGBUS`` and never new bytes under old
metadata — holds for all four.

Local files are read with ``os.pread`` (no shared file position: safe from threads and,
reopened per process, after ``fork``); before a chunk's bytes are handed out, the file's
size and modification time are compared with those seen when the store was opened.
Compressed chunks are decompressed straight from a memory map instead (no read copy:
measured ~1.6x faster for lz4), but only under a Linux read lease on the file: a process
that opens the file to write or truncate it (``cp other.zarr.zip train.zarr.zip``) is
held by the kernel until the lease is released, and every mapped read first asks whether
such a break is pending (``F_GETLEASE``). So a mapped file is never truncated under a
read — which would kill the reader with ``SIGBUS``, uncatchable in Python — and a
pending rewrite is an error naming the store. Where no lease can be taken (a file owned
by another user, a network file system, a file open for writing), reads use ``pread``.
A writer held by a lease waits until the next read notices it (milliseconds while a
loader reads) or, if the reader is idle, until the kernel's ``lease-break-time``
(``/proc/sys/fs/lease-break-time``, 45 s by default) or the reader's ``close()``.

A zip is read in place: members are located once from its central directory and local
headers (each checked: stored uncompressed, names, CRC-32 and sizes agree with the central
directory, data inside the file, no duplicates, as many members as the end record counts),
then read by offset.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import struct
import threading
import weakref
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ChecksumError, MetadataError, UnsupportedStoreError
from ..read.fileio import file_view, unseen_here
from .leases import LeasedMap

logger = logging.getLogger("daskimg")

__all__ = ["ByteSource", "open_source"]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header
_REPLACED = (
    "the store was replaced or rewritten while it was being read (its {what} changed since it "
    "was opened); what was read no longer belongs together. Open it again"
)


class ByteSource:
    """Keys of a store and their bytes. Subclasses: local zip, local folder, URL zip, URL folder.

    ``keys`` maps every key (``"zarr.json"``, ``"images/c/0/0/0/0"``, ...) to its size.
    """

    where: str
    keys: dict[str, int]
    #: reads wait on a network (URL sources): readers use more threads to keep requests in flight
    remote: bool = False

    def replaced(self) -> bool:
        """Whether another store now lies at this one's path (written again with
        ``overwrite=True``, or removed): this source goes on reading the one it opened.
        Local stores only (False for URLs)."""
        return False

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``start .. start + length`` of ``key`` (to its end without ``length``).

        Raises :class:`ChecksumError` naming the store and key when the key is missing or
        ends before the range.
        """
        size = self.size_of(key)
        if start < 0:
            start += size
        n = size - start if length is None else length
        if start < 0 or n < 0 or start + n > size:
            raise ChecksumError(
                f"{self.where}: {key!r} holds {size} bytes, too few for bytes {start}..{start + n} "
                "(truncated); the store is damaged — re-create it"
            )
        data = self._read(key, start, n)
        if len(data) != n:
            raise ChecksumError(
                f"{self.where}: {key!r} is truncated (read {len(data)} of {n} bytes); "
                "the store is damaged — re-create it"
            )
        return data

    def readinto(self, key: str, start: int, buffers: Sequence[Any]) -> None:
        """Fill ``buffers`` (writable, in order) with the bytes of ``key`` from ``start``."""
        total = sum(memoryview(b).nbytes for b in buffers)
        data = self.read(key, start, total)
        pos = 0
        for b in buffers:
            view = memoryview(b).cast("B")
            view[:] = data[pos : pos + len(view)]
            pos += len(view)

    def size_of(self, key: str) -> int:
        """The size of ``key``; a missing key is a :class:`ChecksumError` naming the store."""
        size = self.keys.get(key)
        if size is None:
            raise ChecksumError(f"{self.where}: {key!r} {self.absent_said(key)}")
        return size

    def absent(self, key: str) -> tuple[str, str]:
        """``(what, said)`` of a key that is not in :attr:`keys`: ``what`` is ``"missing"``
        (``said``: ``"is missing"``, or why), ``"in the way"`` (a folder store: something
        else lies at its path, which a user who lists the folder sees) or ``"linked"`` (it
        lies under a link to a folder, which the listing does not follow; ``said`` says
        what to do)."""
        return "missing", MISSING_SAID

    def in_the_way(self, key: str) -> bool:
        """Whether something else lies where ``key``'s file should (a named pipe, a folder,
        a device), or its folder is a link: not the same as a file that is not there."""
        return self.absent(key)[0] != "missing"

    def absent_said(self, key: str, fix: str = "the store is damaged — re-create it") -> str:
        """:meth:`absent` and what to do: ``fix``, but for a key under a link to a folder,
        whose own fix it says (the store is not damaged)."""
        what, said = self.absent(key)
        return said if what == "linked" else f"{said}; {fix}"

    def _read(self, key: str, start: int, n: int) -> bytes:
        raise NotImplementedError

    @contextlib.contextmanager
    def view(self, key: str, start: int, n: int, scratch: Any) -> Iterator[Any]:
        """Bytes ``start .. start + n`` of ``key``, valid inside the ``with`` block: from a
        lease-protected memory map where possible (local files), else read into ``scratch``
        (a writable uint8 buffer of at least ``n`` bytes)."""
        buf = memoryview(scratch).cast("B")[:n]
        self.readinto(key, start, [buf])
        yield buf

    def check_unchanged(self, key: str) -> None:
        """Raise if the file holding ``key`` changed since the store was opened (local only)."""

    def close(self) -> None:
        """Release open files (reopened when next used)."""


class _Handles:
    """The descriptors and maps one process opened for a :class:`_LocalFiles`; closed when
    it is closed or garbage-collected (a store opened per epoch or per evaluation in a
    long-lived process no longer keeps its files open until the process runs out of them)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.maps: dict[str, LeasedMap] = {}
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.pid != os.getpid():  # a forked child: the parent's to close, not this one's
            return
        with self.lock:
            maps, fds = list(self.maps.values()), list(self.fds.values())
            self.maps, self.fds = {}, {}
        for m in maps:
            m.release()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class _LocalFiles:
    """Per-process file descriptors, reopened after ``fork``; each checked against its identity."""

    def __init__(self, where: str, idents: dict[str, tuple[int, int, int, int]]) -> None:
        self.where = where
        self.idents = idents  # file -> (dev, ino, size, mtime_ns) when the store was opened
        self.seen_from = file_view()  # which files the opening process saw (kept when pickled)
        self._handles()

    def _handles(self) -> None:
        self._h = _Handles()
        weakref.finalize(self, self._h.close)

    @property
    def _fds(self) -> dict[str, int]:
        if self._h.pid != os.getpid():  # forked: never share the parent's descriptors or maps
            self._handles()
        return self._h.fds

    @property
    def _maps(self) -> dict[str, LeasedMap]:
        return self._h.maps

    @property
    def _lock(self) -> threading.Lock:
        return self._h.lock

    def fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            with self._lock:
                fd = self._fds.get(file)
                if fd is None:
                    try:
                        fd = _open_read(file, len(self.idents), self.where)
                    except FileNotFoundError:
                        unseen = unseen_here(file, self.seen_from)
                        if unseen:  # not gone: out of this process's sight
                            raise ChecksumError(
                                f"{self.where}: {file!r} is not found here{unseen}"
                            ) from None
                        raise ChecksumError(
                            f"{self.where}: {file!r} is gone; " + _REPLACED.format(what="files")
                        ) from None
                    try:
                        self._check(fd, file, with_inode=True)
                    except BaseException:
                        os.close(fd)
                        raise
                    self._fds[file] = fd
        return fd

    def _check(self, fd: int, file: str, *, with_inode: bool = False) -> None:
        st = os.fstat(fd)
        want = self.idents.get(file)
        got = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if want is None:
            return
        if (got[2:] != want[2:]) or (with_inode and got[:2] != want[:2]):
            raise ChecksumError(f"{self.where}: " + _REPLACED.format(what="size or time"))

    def check(self, file: str) -> None:
        self._check(self.fd(file), file)

    def close(self) -> None:
        if self._h.pid == os.getpid():
            self._h.close()
        else:
            self._handles()

    @contextlib.contextmanager
    def view(self, file: str, offset: int, n: int) -> Iterator[memoryview | None]:
        """Bytes ``offset .. offset + n`` of ``file`` straight from a lease-protected memory
        map, valid inside the ``with`` block; None where no lease can be held (read instead)."""
        self.fd(file)  # per-process state (and the identity check) first
        m = self._maps.get(file)
        if m is None:
            with self._lock:
                m = self._maps.get(file)
                if m is None:
                    fd = self._fds[file]
                    m = LeasedMap.take(fd, self.where)
                    try:
                        # no writer changes the file under the lease: it must still be the
                        # file opened (a folder store copied over file by file, `cp -r`,
                        # keeps the descriptor's inode and gives it the other store's bytes)
                        self._check(fd, file)
                    except BaseException:
                        m.release()
                        raise
                    self._maps[file] = m
        with m.use(offset, n) as data:
            yield data


def _open_read(file: str, files: int, where: str) -> int:
    """``os.open`` for reading; out of descriptors (EMFILE), the soft limit is raised toward
    the hard one once and the open tried again, else the error says why and what to do (it
    named only the file). A ``*.zarr`` folder keeps a descriptor open per file it has read,
    and a memory map of one holds a copy of it (Python's ``mmap`` duplicates it): a few
    thousand for a large set, past the common soft limit of 1024."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(file, flags)
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = hard if hard != resource.RLIM_INFINITY else max(soft * 8, 65536)
    try:
        if soft >= room:
            raise ValueError("no room above the soft limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (room, hard))
        fd = os.open(file, flags)
    except (ValueError, OSError):
        pass
    else:
        logger.warning(
            "%s: out of file descriptors (this process's limit was %d; a *.zarr folder store "
            "keeps up to two open per file it reads, a descriptor and its memory map's copy: "
            "up to %d here): raised the limit to %d",
            where, soft, 2 * files, room,
        )  # fmt: skip
        return fd
    raise OSError(
        errno.EMFILE,
        f"{where}: out of file descriptors opening {file!r} (this process may hold "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}): a *.zarr folder store keeps up "
        "to two open per file it reads, a descriptor and its memory map's copy (up to "
        f"{2 * files} for its {files} files here). Raise the limit (ulimit -n 65536 before "
        "starting Python), or store the set as one file (*.zarr.zip: two descriptors)",
    )


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _LocalSource(ByteSource):
    """What a local zip and a local folder share: reads by ``pread``/``preadv`` or from a
    lease-protected map, each checked against the file's identity. Subclasses say where a
    key's bytes are (:meth:`_locate`: the file, and the offset of the key's first byte)."""

    path: str
    files: _LocalFiles
    _state: dict[str, Any]

    def replaced(self) -> bool:
        file = self._locate("zarr.json")[0]  # the zip, or the folder's root file
        was = self.files.idents.get(file)
        try:
            st = os.stat(file)
        except OSError:
            return True
        return was is not None and (st.st_dev, st.st_ino) != tuple(was[:2])

    def _locate(self, key: str) -> tuple[str, int]:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "state": self._state, "seen_from": self.files.seen_from}

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.__init__(s["path"], s["state"])  # type: ignore[misc]
        self.files.seen_from = tuple(s.get("seen_from", self.files.seen_from))

    def _read(self, key: str, start: int, n: int) -> bytes:
        file, offset = self._locate(key)
        data = os.pread(self.files.fd(file), n, offset + start)
        self.files.check(file)
        return data

    def readinto(self, key: str, start: int, buffers: Sequence[Any]) -> None:
        total = sum(memoryview(b).nbytes for b in buffers)
        size = self.size_of(key)
        if start + total > size:
            raise ChecksumError(
                f"{self.where}: {key!r} holds {size} bytes, too few for bytes "
                f"{start}..{start + total}; the store is damaged — re-create it"
            )
        file, offset = self._locate(key)
        got = preadv_all(self.files.fd(file), buffers, offset + start)
        self.files.check(file)
        if got != total:
            raise ChecksumError(
                f"{self.where}: {key!r} is truncated (read {got} of {total} bytes); "
                + _REPLACED.format(what="size")
            )

    @contextlib.contextmanager
    def view(self, key: str, start: int, n: int, scratch: Any) -> Iterator[Any]:
        if start + n > self.size_of(key):
            raise ChecksumError(
                f"{self.where}: {key!r} holds {self.keys[key]} bytes, fewer than read"
            )
        file, offset = self._locate(key)
        with self.files.view(file, offset + start, n) as data:
            if data is not None:
                yield data
                return
        with super().view(key, start, n, scratch) as data:
            yield data

    def check_unchanged(self, key: str) -> None:
        self.files.check(self._locate(key)[0])

    def close(self) -> None:
        self.files.close()


class LocalZip(_LocalSource):
    """A ``*.zarr.zip`` file on local disk."""

    def __init__(self, path: str, state: dict[str, Any] | None = None) -> None:
        self.path = self.where = path
        if state is None:
            try:
                # told apart before opening: opening a named pipe waits for a writer forever
                mode = os.stat(path).st_mode  # (a folder: said below, as before)
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise MetadataError(
                        f"{path!r} is not a regular file but a named pipe, device or socket; "
                        "a *.zarr.zip store is one file"
                    )
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise FileNotFoundError(f"no store at {path!r}") from None
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise MetadataError(
                    f"{path!r} is a symbolic link that leads back to itself (a loop of links); "
                    "point it at the store file"
                ) from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise MetadataError(f"{path!r} is not a file; a *.zarr.zip store is one file")
                with os.fdopen(os.dup(fd), "rb") as fh:
                    members = zip_members(
                        fh, st.st_size, lambda ranges: _pread_ranges(fd, ranges), path
                    )
            finally:
                os.close(fd)
            state = {"ident": _ident(st), "members": members}
        self._state = state
        self.members: dict[str, tuple[int, int]] = state["members"]
        self.keys = {k: v[1] for k, v in self.members.items()}
        ident = tuple(state["ident"])
        self.files = _LocalFiles(path, {path: (ident[0], ident[1], ident[2], ident[3])})

    def _locate(self, key: str) -> tuple[str, int]:
        return self.path, self.members[key][0]


class LocalDir(_LocalSource):
    """A ``*.zarr`` folder on local disk: one file per key."""

    def __init__(self, path: str, state: dict[str, Any] | None = None) -> None:
        self.path = self.where = path
        if state is None:
            if os.path.isfile(path):
                raise MetadataError(
                    f"{path!r} is a file, but its name says a folder store (*.zarr); if it is "
                    "a single-file store, rename it to *.zarr.zip"
                )
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no store at {path!r}")
            idents: dict[str, tuple[int, int, int, int]] = {}
            # links to folders are not followed; links to files are (git-annex and DVC
            # keep a store's files as links into their cache), a broken one is named; a
            # listing that fails (EMFILE: out of descriptors) raises, never reads as a
            # store without those files (named damaged)
            for dirpath, dirnames, files in os.walk(path, onerror=_raise):
                dirnames.sort()
                for f in files:
                    full = os.path.join(dirpath, f)
                    try:
                        st = os.stat(full)
                    except OSError as e:  # a broken link, or a loop of links
                        if not isinstance(e, FileNotFoundError) and e.errno != errno.ELOOP:
                            raise
                        if f != "zarr.json" and not f.isdigit():
                            continue  # no store key (an editor's lock link): never read
                        raise MetadataError(
                            f"{full!r} in the store is a link to a missing file (an unfetched "
                            "git-annex or DVC file?) or a loop of links: fetch it (git annex "
                            "get, dvc pull) or copy the store again"
                        ) from None
                    if stat.S_ISREG(st.st_mode):
                        idents[os.path.relpath(full, path).replace(os.sep, "/")] = _ident(st)
            state = {"idents": idents}
        self._state = state
        idents = state["idents"]
        self.keys = {k: v[2] for k, v in idents.items()}
        self.files = _LocalFiles(path, {self._file(k): tuple(v) for k, v in idents.items()})  # type: ignore[misc]

    def _file(self, key: str) -> str:
        return os.path.join(self.path, *key.split("/"))

    def _locate(self, key: str) -> tuple[str, int]:
        return self._file(key), 0

    def absent(self, key: str) -> tuple[str, str]:
        full = self._file(key)
        parts = key.split("/")
        for k in range(1, len(parts)):
            folder = os.path.join(self.path, *parts[:k])
            if os.path.islink(folder) and not os.path.isdir(folder):
                return "missing", (
                    f"is missing (its folder {'/'.join(parts[:k])!r} is a link to "
                    f"{os.readlink(folder)!r}, which is no folder: broken, or a file)"
                )
            if os.path.islink(folder):  # the listing follows no link to a folder
                return "linked", (
                    f"lies under {'/'.join(parts[:k])!r}, a link to a folder "
                    f"({os.path.realpath(folder)!r}), which a folder store's listing does not "
                    "follow (one folder could be read under two names): copy that folder into "
                    "the store in the link's place"
                )
        try:
            st = os.stat(full)  # (through a link: one to /dev/zero is a device)
        except OSError:
            return "missing", MISSING_SAID
        if stat.S_ISREG(st.st_mode):
            return "missing", (
                "was missing when the store was opened (a file is there now: open it again)"
            )
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "something else")
        link = f" (through a link to {os.path.realpath(full)!r})" if os.path.islink(full) else ""
        return "in the way", f"is {kind}{link}, not a regular file"


#: what :meth:`ByteSource.absent` says of a key simply not there
MISSING_SAID = "is missing"

#: what lies at a folder store's key instead of a file
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}


def _raise(e: OSError) -> None:
    raise e


def open_source(target: str, kind: str) -> ByteSource:
    """The byte source of a local store: ``kind`` ``"zip"`` or ``"dir"`` (URLs:
    :func:`daskimg.store.urlsource.open_url_source`)."""
    return LocalZip(target) if kind == "zip" else LocalDir(target)


def preadv_all(fd: int, buffers: Sequence[Any], offset: int) -> int:
    """``os.preadv`` of every buffer in order from ``offset``; the bytes read (short at EOF).

    Splits the list at the OS's limit of buffers per call and continues short reads.
    """
    views = [memoryview(b).cast("B") for b in buffers]
    total = 0
    i = 0
    while i < len(views):
        group = views[i : i + _IOV_MAX]
        got = os.preadv(fd, group, offset + total)
        total += got
        want = sum(len(v) for v in group)
        if got == want:
            i += len(group)
            continue
        if got == 0:
            break  # end of file
        # a short read: skip the buffers filled, continue inside the partly filled one
        for v in group:
            if got >= len(v):
                got -= len(v)
                i += 1
            else:
                views[i] = v[got:]
                break
    return total


_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def _pread_ranges(fd: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    return [os.pread(fd, b - a, a) for a, b in ranges]


#: bytes of a local header's extra field read with it: a ZIP64 field with both sizes first
_ZIP64_SIZES = 20
_FULL = 0xFFFFFFFF  # a local header's size "in the ZIP64 extra field"
_END = struct.Struct("<4s4H2IH")  # the end of central directory record
_END64_LOCATOR = struct.Struct("<4sIQI")
_END64 = struct.Struct("<4sQ2H2I4Q")


def _disagreement(fields: tuple[Any, ...], extra: bytes, info: zipfile.ZipInfo) -> str | None:
    """What a local header (``fields``, the first bytes of its ``extra`` field) says unlike
    the central directory of the member: its method, and — unless the header defers them
    to a data descriptor (flag bit 3) — its CRC-32 and sizes; None if nothing. Sizes kept
    in a ZIP64 field beyond the bytes read are not compared (no daskimg store puts them
    there)."""
    if fields[3] != info.compress_type or (fields[2] & 0x1) != (info.flag_bits & 0x1):
        return "compression method or encryption"
    if fields[2] & 0x8:
        return None  # CRC-32 and sizes follow the data; the directory's are checked
    if fields[6] != info.CRC:
        return f"CRC-32 ({fields[6]:08x} in the local header, {info.CRC:08x} in the directory)"
    sizes = (fields[8], fields[7])  # uncompressed, compressed: the ZIP64 field's order
    if _FULL in sizes:
        if len(extra) < 20 or extra[:2] != b"\x01\x00":
            return None  # another extra field first: not read here
        wide = struct.unpack_from("<2Q", extra, 4)
        sizes = tuple(w if s == _FULL else s for s, w in zip(sizes, wide, strict=True))
    if sizes != (info.file_size, info.compress_size):
        return f"sizes ({list(sizes)} in the local header, {info.file_size} in the directory)"
    return None


def _check_entry_count(fh: Any, size: int, count: int, damaged: str) -> None:
    """Refuse a zip whose end record counts other than ``count`` members (the entries
    :mod:`zipfile` found in its central directory): a reader that trusts the count would
    miss members, or look for ones that are not there."""
    fh.seek(max(size - _END.size, 0))
    record = fh.read(_END.size)
    if not (record[:4] == b"PK\x05\x06" and record[20:22] == b"\0\0"):
        tail = min(size, 65535 + _END.size)  # a comment after it
        fh.seek(size - tail)
        data = fh.read(tail)
        at = data.rfind(b"PK\x05\x06")
        if at < 0 or at + _END.size > len(data):
            return  # zipfile found it: an end record this search cannot (never here)
        record = data[at : at + _END.size]
        end = size - tail + at
    else:
        end = size - _END.size
    total = _END.unpack_from(record)[4]
    if total == 0xFFFF and end >= _END64_LOCATOR.size:  # ZIP64: the count is in its record
        fh.seek(end - _END64_LOCATOR.size)
        raw = fh.read(_END64_LOCATOR.size)
        loc = _END64_LOCATOR.unpack(raw) if len(raw) == _END64_LOCATOR.size else (b"",) * 4
        if loc[0] == b"PK\x06\x07" and loc[2] + _END64.size <= size:
            fh.seek(loc[2])
            end64 = fh.read(_END64.size)
            if len(end64) == _END64.size and end64[:4] == b"PK\x06\x06":
                total = _END64.unpack_from(end64)[7]
    if total != count:  # (Info-ZIP reads by the total; the count on this disk it passes)
        raise ChecksumError(
            damaged.format(
                f"its end record counts {total} members but its central directory holds {count}"
            )
        )


def zip_members(
    fh: io.BufferedIOBase | Any,
    size: int,
    read_ranges: Callable[[Sequence[tuple[int, int]]], list[bytes]],
    where: str,
) -> dict[str, tuple[int, int]]:
    """``{member: (data offset, size)}`` of a zip, every entry checked.

    The central directory is parsed by :mod:`zipfile`; each local header is then read
    (all at once, through ``read_ranges``) to find where the data starts. Refused, naming
    the zip: a truncated or damaged file, compressed or encrypted members, duplicate
    names, a local header that disagrees with the directory, data beyond the file.
    """
    damaged = (
        f"{where}: not a readable zip file ({{}}): it is truncated or damaged, e.g. by an "
        "interrupted copy; copy it again, or re-create it from the source"
    )
    try:
        infos = zipfile.ZipFile(fh).infolist()
    # NotImplementedError: a damaged 'version needed' or compression field
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise ChecksumError(damaged.format(e)) from None
    seen: set[str] = set()
    packed: zipfile.ZipInfo | None = None  # a member compressed or encrypted
    for info in infos:
        if not 0 <= info.header_offset < size:  # zipfile's arithmetic on a damaged directory
            raise ChecksumError(
                damaged.format(
                    f"member {info.filename!r} starts at byte {info.header_offset}, outside "
                    f"the file's {size}; its central directory is damaged"
                )
            )
        if info.filename in seen:
            raise MetadataError(
                f"{where}: the zip holds the member {info.filename!r} twice, as a zip is left "
                "when a file in it is written again (plain zarr's ZipStore(mode='a') appends "
                "a new copy instead of replacing it), so which one is meant is unknown. "
                "daskimg stores are changed with daskimg (ArrayWriter(..., mode='a')); "
                "re-create the store, or rewrite the zip keeping the last copy of each member"
            )
        seen.add(info.filename)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            # another tool's zip if its local headers say so too (below), else damage
            packed = packed or info
            continue
        if info.compress_size != info.file_size:
            # a stored member is its bytes: two lengths mean a damaged or crafted directory
            # (zipfile reads compress_size bytes, the other reading would take file_size)
            raise ChecksumError(
                damaged.format(
                    f"member {info.filename!r} is stored uncompressed but its central "
                    f"directory gives two lengths ({info.compress_size} and {info.file_size})"
                )
            )
    _check_entry_count(fh, size, len(infos), damaged)
    names = [i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437") for i in infos]
    # each local header with its name and the first bytes of its extra field, where a ZIP64
    # writer (daskimg's own) puts the member's sizes
    ranges = [
        (i.header_offset, min(i.header_offset + _LOCAL_HEADER.size + len(n) + _ZIP64_SIZES, size))
        for i, n in zip(infos, names, strict=True)
    ]
    heads = read_ranges(ranges) if ranges else []
    members: dict[str, tuple[int, int]] = {}
    for info, name, head in zip(infos, names, heads, strict=True):
        end = _LOCAL_HEADER.size + len(name)
        if len(head) < end:
            raise ChecksumError(damaged.format(f"the local header of {info.filename!r} is cut off"))
        fields = _LOCAL_HEADER.unpack_from(head)
        if (
            fields[0] != b"PK\x03\x04"
            or fields[9] != len(name)
            or head[_LOCAL_HEADER.size : end] != name
        ):
            # a flipped byte in a member's local header is damage, as in its data
            raise ChecksumError(
                damaged.format(f"member {info.filename!r} has a damaged local header")
            )
        differs = _disagreement(fields, head[end : end + fields[10]], info)
        if differs is not None:
            # one of the two records of the member is damaged (plain zarr reads by the
            # directory, but `unzip -t` and readers that stream a zip front to back by its
            # local headers refuse it or read other bytes)
            raise ChecksumError(
                damaged.format(
                    f"member {info.filename!r}: its local header and the zip's central "
                    f"directory give different {differs}"
                )
            )
        data = info.header_offset + end + fields[10]
        if data + info.compress_size > size:
            raise ChecksumError(damaged.format(f"member {info.filename!r} ends beyond the file"))
        members[info.filename] = (data, info.file_size)
    if packed is not None:  # both records say so: a zip another tool made, not damage
        raise UnsupportedStoreError(
            f"{where}: member {packed.filename!r} is compressed or encrypted inside the zip; "
            "daskimg stores keep chunks uncompressed in the zip (they are compressed "
            "already). Re-pack it with `zip -0`, or write it with daskimg."
        )
    return members
