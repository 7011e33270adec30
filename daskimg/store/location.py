"""Store: where a store lives — the one seam for everything that depends on it.

A :class:`Location` is a local path or an fsspec URL holding a ``*.zarr.zip`` (one file,
the default) or a ``*.zarr`` (a folder). Every verb that writes or reads a store
(``to_zarr``, ``convert``, ``open_zarr``, ``info``, ``verify``, ``ArrayWriter``, the
loader) gets one from :meth:`Location.of` and never asks whether it is a URL:

* **Reading**: :meth:`Location.open` gives a :class:`~daskimg.store.bytesource.ByteSource`
  (listing and ranged reads) for the checked reader.
* **Writing**: a store is built in a local staging folder (:meth:`Location.staging_path`:
  ``<path>.partial`` next to a local target; a folder under the temporary directory that
  depends only on the URL for a remote one) under the writer's lock, every file fsynced,
  and :meth:`Location.publish` moves it into place in one atomic step: a zip is packed
  next to the target and renamed over it (a URL: uploaded as one object, which appears
  whole or not at all); a folder is exchanged with the old one
  (``renameat2(RENAME_EXCHANGE)``; a URL folder: cleared, a placeholder root saying
  ``complete: false``, the files, the real root last). A kill at any moment leaves the
  old store or the new one (at a URL folder: one that opens as incomplete).
* A ``*.zarr`` URL may also be written in place (:meth:`Location.open_in_place`), so that
  the workers of a cluster write its shards; its root ``zarr.json`` with
  ``complete: true`` is written last (:meth:`Location.finish_in_place`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ChecksumError, DaskImgError, StoreExistsError, StoreLockedError
from ..remote import ATOMIC_PUT, filesystem, is_url, local_path, protocol_of
from .bytesource import ByteSource, open_source
from .directio import AppendFile, fsync_path
from .urlsource import open_url_source
from .urlwrite import UNFINISHED_ROOT, RootLast, clear_url, dir_state

logger = logging.getLogger("daskimg")

#: the manifest an ArrayWriter keeps in its staging folder (its checkpoint)
WRITER_MANIFEST = "writer.json"

__all__ = ["Location", "fsync_path", "fsync_tree", "remove_path", "store_kind", "write_lock"]


def store_kind(path: str | os.PathLike[str]) -> str:
    """``"zip"`` for ``*.zarr.zip``, ``"dir"`` for ``*.zarr``; anything else is refused.
    An http(s) URL is named by its path: a signed URL's query (``?X-Amz-Signature=...``)
    follows the name."""
    name = os.fspath(path).rstrip("/")
    if protocol_of(name) in ("http", "https") and "?" in name:
        name = urllib.parse.urlsplit(name).path.rstrip("/")
    if name.endswith(".zarr.zip"):
        return "zip"
    if name.endswith(".zarr"):
        return "dir"
    raise ValueError(
        f"store path {name!r} must end in '.zarr.zip' (one file, the default) or '.zarr' (a folder)"
    )


@dataclass(frozen=True, eq=False)
class Location:
    """Where a store lives: a local path or an fsspec URL, of a zip or a folder.

    Build it with :meth:`of`. ``target`` is the absolute local path or the URL.

    Examples
    --------
    >>> Location.of("out/train.zarr.zip").kind
    'zip'
    >>> Location.of("s3://bucket/train.zarr", storage_options={"anon": True}).is_url
    True
    """

    target: str
    kind: str
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls, path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
    ) -> Location:
        """The location of ``path`` (a ``file://`` URL is a local path)."""
        if isinstance(path, Location):
            return path
        text = os.fspath(path)
        if is_url(text) and local_path(text) is None:
            url = text.rstrip("/")
            kind = store_kind(url)
            if kind == "dir" and "?" in url and protocol_of(url) in ("http", "https"):
                raise ValueError(
                    f"{url!r}: a signed URL (its query) names one object, and a '.zarr' "
                    "folder store is many: share it as one '.zarr.zip' file "
                    "(daskimg.to_zarr(daskimg.open_zarr(folder), 'x.zarr.zip')) and sign that"
                )
            return cls(url, kind, dict(storage_options or {}))
        if storage_options is not None:
            raise ValueError(
                f"storage_options apply to URLs such as 's3://bucket/key'; {text!r} is a "
                "local path. Drop storage_options, or pass a URL."
            )
        local = local_path(text) or text
        target = os.path.abspath(local).rstrip("/")
        kind = store_kind(target)
        if os.path.islink(target):
            # a store reached through a link (train.zarr.zip -> /mnt/big/train.zarr.zip):
            # written where it is, not by replacing the link with a copy the real store never
            # sees. A link to a name of no store kind (a Hugging Face or DVC cache blob) is
            # read through as it is named
            real = os.path.realpath(target)
            with contextlib.suppress(ValueError):
                if store_kind(real) == kind:
                    target = real
        return cls(target, kind, None)

    @property
    def is_url(self) -> bool:
        return self.storage_options is not None

    def __str__(self) -> str:
        return self.target

    def _fs(self) -> tuple[Any, str]:
        fs, key = filesystem(self.target, self.storage_options)
        key = key.rstrip("/")
        fs.invalidate_cache(key)
        return fs, key

    # -- reading -----------------------------------------------------------------------
    def open(self) -> ByteSource:
        """The store's bytes, for the checked reader (``FileNotFoundError`` if there is none)."""
        if not self.is_url:
            return open_source(self.target, self.kind)
        with _asking(self.target, "opening"):
            fs, key = self._fs()
            return open_url_source(self.target, self.kind, fs, key)

    def exists(self) -> bool:
        if not self.is_url:
            return os.path.lexists(self.target)
        fs, key = self._fs()
        return bool(fs.exists(key))

    def unfinished(self) -> str | None:
        """What an interrupted write left (a staging folder), or None."""
        if self.is_url:
            return None
        staging = self.target + ".partial"
        return staging if os.path.lexists(staging) else None

    def unfinished_writer(self) -> str | None:
        """The staging folder of an unfinished ArrayWriter write (its checkpoint, which
        ``resume=True`` continues), or None."""
        staging = self.unfinished()
        if staging is None or not os.path.isfile(os.path.join(staging, WRITER_MANIFEST)):
            return None
        return staging

    # -- writing -----------------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The writer's lock: ``<path>.lock`` for a local store (none spans machines for URLs)."""
        if self.is_url:
            return contextlib.nullcontext()
        make_parent(self.target)
        return write_lock(self.target)

    def build_path(self) -> str:
        """The local path a store for this location is built under: the target itself, or
        for a URL a folder under the temporary directory that depends only on the URL (so an
        interrupted write finds its checkpoints again)."""
        if not self.is_url:
            return self.target
        digest = hashlib.sha256(self.target.encode()).hexdigest()[:16]
        base = posixpath.basename(self.target)
        return os.path.join(tempfile.gettempdir(), "daskimg-writer", digest, base)

    def staging_path(self) -> str:
        """The local staging folder of a write to this location."""
        return self.build_path() + ".partial"

    def check_writable(self, *, overwrite: bool) -> None:
        """Refuse to replace a store (or anything else) here unless ``overwrite``; refuse a
        URL that takes no writes (plain HTTP)."""
        with _asking(self.target, "writing") if self.is_url else contextlib.nullcontext():
            self._check_writable(overwrite=overwrite)

    def _check_writable(self, *, overwrite: bool) -> None:
        if self.is_url and protocol_of(self.target) in ("http", "https"):
            raise ValueError(
                f"{self.target!r}: daskimg does not write stores to http(s) URLs (a web server "
                "takes no uploads of this kind); write it to a local path or to object storage "
                "(s3://, gs://, az://, ...) and serve it from there"
            )
        if overwrite:
            if not self.is_url:
                check_replaceable(self.target)
            elif self.kind == "dir":
                fs, key = self._fs()
                if dir_state(fs, key) == "other":  # not a daskimg store: a Zarr one?
                    _check_url_replaceable(fs, key, self.target)
            else:  # a zip at a URL: a store's, as a local one must be
                fs, key = self._fs()
                if fs.exists(key):
                    with fs.open(key, "rb") as fh:
                        _check_zip_replaceable(self.target, fh)
            return
        if not self.is_url:
            if os.path.lexists(self.target):
                raise StoreExistsError(
                    f"{self.target!r} exists; pass overwrite=True (or --overwrite) to replace it"
                )
            return
        fs, key = self._fs()
        if self.kind == "zip":
            if fs.exists(key):
                raise StoreExistsError(f"{self.target!r} exists; pass overwrite=True to replace it")
            return
        state = dir_state(fs, key)
        if state == "complete":
            raise StoreExistsError(
                f"{self.target!r} holds a complete store; pass overwrite=True to replace it"
            )
        if state == "other":
            raise StoreExistsError(
                f"{self.target!r} holds objects but no daskimg store; pass overwrite=True to "
                "replace them if they are a Zarr store or what a stopped write of one left "
                "(a folder of other objects is refused), or write to another URL"
            )

    def publish(self, folder: str, *, base: bool = False, drop: Sequence[str] = ()) -> None:
        """Move the finished store in the local ``folder`` into place, atomically; remove ``folder``.

        ``base=True`` (adding arrays to a zip store): the members of the store now at the
        target are kept, except the arrays ``drop`` and those ``folder`` holds.
        """
        if not self.is_url and self.kind == "dir":
            fsync_tree(folder)  # published as it is (a zip is packed from it, then fsynced)
        if self.is_url:
            self.upload(folder)
            remove_path(folder)
            self.drop_build_folder()
            return
        if self.kind == "zip":
            tmp = self.target + ".tmp"
            try:
                pack_zip(folder, tmp, base=self.target if base else None, drop=drop)
                replace_store(tmp, self.target)
            except BaseException:
                remove_path(tmp)
                raise
            remove_path(folder)
        else:
            replace_store(folder, self.target)  # the old folder is exchanged, then removed
        fsync_path(os.path.dirname(self.target))

    def publish_file(self, zip_path: str) -> None:
        """Move a finished, fsynced ``*.zarr.zip`` file into place (renamed over the old one;
        a URL: uploaded as one object), atomically."""
        if self.is_url:
            self.upload(zip_path)
            remove_path(zip_path)
            self.drop_build_folder()
            return
        replace_store(zip_path, self.target)
        fsync_path(os.path.dirname(self.target))

    def upload(self, folder: str) -> None:
        """Upload a finished local store (a folder, or for a zip also the zip file) to this URL,
        replacing what is there: a zip as one object, a folder with its root ``zarr.json`` last."""
        fs, key = self._fs()
        if self.kind == "zip":
            packed = os.path.isfile(folder)
            tmp = folder if packed else folder.rstrip("/") + ".zip.tmp"
            try:
                if not packed:
                    pack_zip(folder, tmp)
                if protocol_of(self.target) in ATOMIC_PUT:
                    fs.put_file(tmp, key)  # the object appears only once the upload completes
                else:
                    fs.put_file(tmp, key + ".partial")
                    fs.mv(key + ".partial", key)
            finally:
                if not packed:
                    remove_path(tmp)
        else:
            clear_url(fs, key)
            root = os.path.join(folder, "zarr.json")
            with open(root, "rb") as fh:
                meta = json.load(fh)
            meta["attributes"]["daskimg"]["complete"] = False  # what a kill leaves: unfinished
            fs.pipe_file(key + "/zarr.json", json.dumps(meta, indent=2).encode())
            files = [(f, k) for f, k in folder_files(folder) if k != "zarr.json"]
            if files:  # lists: no glob or folder guessing
                fs.put([f for f, _ in files], [f"{key}/{k}" for _, k in files])
            fs.put_file(root, key + "/zarr.json")
        fs.invalidate_cache(key)

    def discard(self, folder: str | None = None) -> None:
        """Remove what an unfinished write left: ``folder`` and the temporary files."""
        if folder is not None:
            remove_path(folder)
        if not self.is_url:
            remove_path(self.target + ".tmp")
        else:
            self.drop_build_folder()

    def drop_build_folder(self) -> None:
        """Remove a URL's folder under the temporary directory (:meth:`build_path`) once
        nothing is left in it: one empty folder stayed behind per URL written."""
        if self.is_url:
            with contextlib.suppress(OSError):  # not empty: a checkpoint or another write's
                os.rmdir(os.path.dirname(self.build_path()))

    def remove(self) -> None:
        """Remove the store (a file, a folder, or a folder at a URL: its root first)."""
        if not self.is_url:
            remove_path(self.target)
            return
        fs, key = self._fs()
        if fs.isdir(key):
            clear_url(fs, key)
        else:
            fs.rm_file(key)
            fs.invalidate_cache(key)

    # -- a URL folder written in place (by a cluster's workers) --------------------------
    def open_in_place(self) -> Any:
        """A writable zarr store at this ``*.zarr`` URL, for a write in place.

        The root ``zarr.json`` is replaced first by one saying ``complete: false`` (so from
        then on the URL holds a store that opens as unfinished, never nothing and never a
        mix), then every other object is removed; zarr's writes of the root are held back
        until :meth:`finish_in_place` puts the final one.
        """
        from zarr.storage import FsspecStore

        assert self.is_url, "in place: a URL folder only"
        assert self.kind == "dir", "in place: a URL folder only"
        fs, key = self._fs()
        fs.pipe_file(key + "/zarr.json", json.dumps(UNFINISHED_ROOT, indent=2).encode())
        others = [f for f in fs.find(key) if f.rstrip("/") != key + "/zarr.json"]
        if others:
            fs.rm(others)
        fs.invalidate_cache(key)
        store = FsspecStore.from_url(self.target, storage_options=dict(self.storage_options or {}))
        return RootLast(store)

    def finish_in_place(self, root_meta: dict[str, Any]) -> None:
        """Write the root ``zarr.json`` (``complete: true``) of a store written in place: last, in one put."""
        fs, key = self._fs()
        fs.pipe_file(key + "/zarr.json", json.dumps(root_meta, indent=2).encode())
        fs.invalidate_cache(key)

    def read_in_place(self, key: str, store: Any = None) -> bytes:
        """Bytes of ``key`` of a store being written in place (``store``: from open_in_place)."""
        if key == "zarr.json" and isinstance(store, RootLast) and store.root is not None:
            return store.root
        fs, root = self._fs()
        return bytes(fs.cat_file(f"{root}/{key}"))

    def abandon_in_place(self, cause: BaseException | None = None) -> None:
        """Remove an unfinished store written in place, unless ``cause`` (the write's error)
        says the server cannot be reached: each removal would be retried there for minutes
        before failing too (the store opens as unfinished either way)."""
        if cause is not None and _server_gone(cause):
            logger.warning(
                "the server of %s cannot be reached (%s): the unfinished store there is left; "
                "it opens as unfinished, remove it or write it again with overwrite=True",
                self.target,
                cause,
            )
            return
        fs, key = self._fs()
        try:
            clear_url(fs, key)
        except Exception as e:  # the write's own error is the one raised; say what is left
            logger.warning(
                "could not remove the unfinished store at %s (%s); it opens as unfinished, "
                "remove it or write it again with overwrite=True",
                self.target,
                e,
            )


#: errors of a server that cannot be reached, by name (botocore, aiohttp, urllib3)
_GONE = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",
    "ReadTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
    "ServerTimeoutError", "ConnectionError", "NewConnectionError",
})  # fmt: skip


def _server_gone(e: BaseException) -> bool:
    """``e``, or an error it came from, is a failure to reach the server (refused, reset,
    timed out), not an answer from it."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        if type(cur).__name__ in _GONE or isinstance(cur, (ConnectionError, TimeoutError)):
            return True
        if isinstance(cur, OSError) and cur.errno in (
            errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH,
            errno.ENETUNREACH,
        ):  # fmt: skip
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


#: the descriptors of the write locks this process holds (see :func:`_drop_locks`)
_HELD: set[int] = set()


def _drop_locks() -> None:
    """In a child forked while this process holds write locks (``to_zarr``'s decode workers,
    a DataLoader's workers): close its copies of their descriptors. A lock taken with
    ``flock`` belongs to the open file, which a fork shares; a child still holding a copy
    would keep the lock after its parent was killed, and the next writer would be refused."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks)


def _held_here(fd: int) -> bool:
    """Whether this process holds the lock on the file ``fd`` is open on."""
    try:
        st = os.fstat(fd)
        return any(
            (h.st_dev, h.st_ino) == (st.st_dev, st.st_ino) for h in map(os.fstat, list(_HELD))
        )
    except OSError:
        return False


def make_parent(path: str) -> None:
    """Make the folder a store at ``path`` is written in; a file in the way, or a folder
    that cannot be written, is named (``FileExistsError: File exists`` said neither)."""
    parent = os.path.dirname(path) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = parent
        while blocking and not os.path.lexists(blocking):
            blocking = os.path.dirname(blocking)
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"cannot make the folder {parent!r} to write {os.path.basename(path)!r} in: "
            f"{blocking!r} is a file, not a folder; choose another path, or move that file",
        ) from None
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EROFS):
            raise
        raise PermissionError(
            e.errno,
            f"cannot make the folder {parent!r} ({e.strerror}) to write "
            f"{os.path.basename(path)!r} in; choose a folder you can write to",
        ) from None


@contextlib.contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively; a second writer on the same path is refused.

    The OS releases the lock when its holder dies, so a killed writer never blocks the
    next one (a forked child closes its copy at once, :func:`_drop_locks`). Only the
    holder removes the file — never a forked child, when its copy of a writer is dropped
    as it exits — and a lock taken on a file that was removed meanwhile is not trusted
    (the path must still name the locked file).
    """
    lock_path = path + ".lock"
    owner = os.getpid()
    while True:
        try:  # never through a link: a link there would have its target truncated
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if e.errno == errno.EISDIR:
                raise StoreLockedError(
                    f"{lock_path!r} is a folder, where daskimg keeps the lock file of "
                    f"{path!r}; remove or rename it and run again"
                ) from None
            if e.errno in (errno.EACCES, errno.EROFS):
                raise PermissionError(
                    e.errno,
                    f"cannot write in {os.path.dirname(lock_path) or '.'!r} ({e.strerror}), "
                    f"where {os.path.basename(path)!r} is to be written; choose a folder you "
                    "can write to",
                ) from None
            if e.errno != errno.ELOOP:
                raise
            raise StoreLockedError(
                f"{lock_path!r} is a symbolic link; daskimg does not write its lock through links. "
                "Remove it and run again"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            mine = _held_here(fd)  # by the file, not its pid (another container's may be ours)
            os.close(fd)
            if mine:
                raise StoreLockedError(
                    f"this process is writing {path!r} already (it holds {lock_path!r}): an "
                    "ArrayWriter not closed yet, e.g. one made in an earlier notebook cell or "
                    "another thread. Close that one (w.close()) and run again"
                ) from None
            raise StoreLockedError(
                f"another process is writing {path!r} (it holds {lock_path!r}); wait for it to "
                "finish, or stop it and run again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we waited on removed it: lock the new file instead
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            raise OSError(
                e.errno,
                f"writing the lock {lock_path!r} failed ({e.strerror}); nothing else "
                "was written — make room or fix the permissions there, and run again",
            ) from e
        _HELD.add(fd)
        yield
    finally:
        if os.getpid() == owner:  # not a forked child ending (its copy closed at the fork)
            _HELD.discard(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)  # still holding the lock, so nobody else owns this file
            os.close(fd)


#: what a Zarr store's folder holds at its root (v3; v2 group, array, attributes, metadata)
_ZARR_ROOTS = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")
#: what a desktop leaves in any folder: not the user's files
_CLUTTER = (".DS_Store", "._.DS_Store", "Thumbs.db", "desktop.ini")


def check_replaceable(path: str) -> None:
    """Refuse (StoreExistsError) to replace a folder that holds files but no Zarr store:
    ``overwrite=True`` replaces a store; it removed a folder of the user's own files too.
    A store is a folder with a Zarr root file (v3 or v2), or one whose root file is gone
    but whose arrays are there (a damaged store). A file is refused too unless it is a
    store's zip, or empty (:func:`_check_zip_replaceable`)."""
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as fh:
            _check_zip_replaceable(path, fh)
        return
    if not os.path.isdir(path) or os.path.islink(path):
        return
    with os.scandir(path) as entries:
        found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    _refuse_other_files(
        path, found, lambda name: os.path.isfile(os.path.join(path, name, "zarr.json"))
    )


def _check_zip_replaceable(path: str, fh: Any) -> None:
    """:func:`check_replaceable` for the file ``path`` (open as ``fh``, local or at a URL):
    an empty one, an empty zip, or a zip of a Zarr store (:func:`_not_of_a_store`: none of
    its members) is replaced. A zip without its central directory (a copy cut short, a
    damaged store) is one if its first member is a store's: daskimg writes a shard first
    (``<array>/c/...``), zarr a ``zarr.json``."""
    head = fh.read(30 + 1024)  # a local file header and its name
    if not head:
        return
    what = "a file that is not a zip"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a member first, or none
        try:
            fh.seek(0)
            with zipfile.ZipFile(fh) as z:
                others = _not_of_a_store(z)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            first = head[30 : 30 + int.from_bytes(head[26:28], "little")].decode("utf-8", "replace")
            others = [] if _SHARD_FIRST.fullmatch(first) else [first]
        if not others:
            return  # a store (or an empty zip: nothing to lose)
        shown = ", ".join(repr(n) for n in others[:3]) + (
            f" and {len(others) - 3} more" if len(others) > 3 else ""
        )
        what = f"a zip of other files ({shown})"
    raise StoreExistsError(
        f"{path!r} is {what}, not a Zarr store: overwrite=True replaces a store and would "
        "remove it. Write the store to another path, or move that file away first"
    )


#: the first member of a store's zip: daskimg's first shard (``images/c/0/0/0/0``), or a
#: root metadata file (zarr's ``ZipStore`` writes it first)
_SHARD_FIRST = re.compile(r"[^/]+/c(/\d+)+|zarr\.json|\.zgroup|\.zarray")


def _not_of_a_store(z: zipfile.ZipFile) -> list[str]:
    """The members of ``z`` that are no part of a Zarr store (v2 or v3, at the zip's root or
    one folder deeper): not metadata (JSON, ``zarr_format`` in a node's), and not inside
    an array's folder, where its chunks are (under any key encoding). Folder entries and
    macOS's additions are left out."""
    names = [
        n
        for n in z.namelist()
        if not n.endswith("/")
        and not n.startswith("__MACOSX/")
        and n.rsplit("/", 1)[-1] not in _CLUTTER
    ]
    arrays: list[str] = []  # the folders of arrays ("" for an array at the root)
    meta: set[str] = set()
    for n in names:
        folder, _, last = n.rpartition("/")
        if last not in _ZARR_ROOTS or z.getinfo(n).file_size > 2**26:  # (a store's: < 64 MiB)
            continue
        try:
            doc = json.loads(z.read(n))
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError):
            # a metadata file damaged (its CRC-32, its JSON): a damaged store, which is
            # what overwrite=True is told to re-create; its folder may hold chunks
            meta.add(n)
            arrays.append(folder)
            continue
        if last in ("zarr.json", ".zarray", ".zgroup") and not (
            isinstance(doc, dict) and "zarr_format" in doc
        ):
            continue
        meta.add(n)
        if last == ".zarray" or (last == "zarr.json" and doc.get("node_type") == "array"):
            arrays.append(folder)
    return [
        n
        for n in names
        if n not in meta and not any(a == "" or n.startswith(a + "/") for a in arrays)
    ]


def _refuse_other_files(
    where: str, found: Sequence[tuple[str, bool]], array_in: Callable[[str], bool]
) -> None:
    """The rule of :func:`check_replaceable` on a folder's entries ``(name, is a folder)``;
    ``array_in(name)``: the subfolder ``name`` holds a Zarr array's metadata."""
    names = [n for n, _ in found]
    if any(n in names for n in _ZARR_ROOTS):
        return
    others = [n for n in names if n not in _CLUTTER]
    if not others or any(d and array_in(n) for n, d in found[:64]):
        return
    shown = ", ".join(repr(n) for n in others[:3]) + (
        f" and {len(others) - 3} more" if len(others) > 3 else ""
    )
    raise StoreExistsError(
        f"{where!r} is a folder of other files ({shown}), not a Zarr store: overwrite=True "
        "replaces a store and would remove them. Write the store to another path, or move "
        "those files away first (or remove them, if they are what a stopped write left)"
    )


def _check_url_replaceable(fs: Any, key: str, target: str) -> None:
    """:func:`check_replaceable` for a store folder at a URL (one listing, and a lookup of
    ``<sub>/zarr.json`` for at most 64 subfolders)."""
    try:
        entries = fs.ls(key, detail=True)
    except FileNotFoundError:
        return
    found = sorted(
        (posixpath.basename(str(e["name"]).rstrip("/")), e.get("type") == "directory")
        for e in entries
    )
    _refuse_other_files(target, found, lambda name: bool(fs.exists(f"{key}/{name}/zarr.json")))


def remove_path(path: str) -> None:
    """Remove a file or a folder. A folder is tried again when something writes into it
    while it is removed (after a Ctrl-C, zarr's own thread may still be finishing a
    write into a staging folder: 'Directory not empty', a vanished temporary file)."""
    for attempt in range(5):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
            return
        except OSError as e:
            if attempt == 4 or e.errno not in (errno.ENOTEMPTY, errno.ENOENT):
                raise
            time.sleep(0.05 * (attempt + 1))


def replace_store(new: str, target: str) -> None:
    """Move the finished store ``new`` to ``target``, replacing whatever is there.

    There is no moment without a store at ``target``: a file is renamed over it, and a
    folder is exchanged with the old folder (Linux ``renameat2(RENAME_EXCHANGE)``), which
    is then removed from under the name ``new``. Where the OS cannot exchange two folders,
    the old one is removed first (a kill in between leaves no store; re-run to redo it).
    """
    if os.path.lexists(target):
        if os.path.isdir(new) and _is_folder(target) and _exchange(new, target):
            remove_path(new)  # the old store, now under the staging name
            return
        if os.path.isdir(new) or _is_folder(target):
            remove_path(target)  # a rename cannot replace a folder, nor a file with a folder
    os.replace(new, target)


def _is_folder(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    False where the OS, the C library or the file system cannot; nothing has moved then.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl < 1.2.?)
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    # ENOENT: the old store vanished meanwhile, so a plain rename will do
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err), b)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and folder under ``root`` (before it is published)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync_path(os.path.join(dirpath, f))
        fsync_path(dirpath)


def folder_files(folder: str) -> list[tuple[str, str]]:
    """``(full path, key)`` of every file under ``folder``, metadata first, then by key."""
    members = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            members.append((full, Path(os.path.relpath(full, folder)).as_posix()))
    # metadata first, so readers that scan from the front find the group early
    members.sort(key=lambda m: (not m[1].endswith("zarr.json"), m[1].count("/"), m[1]))
    return members


def pack_zip(
    folder: str, zip_path: str, *, base: str | None = None, drop: Sequence[str] = ()
) -> None:
    """Write the files of ``folder`` into a new zip ``zip_path`` (each member once, stored
    uncompressed: chunks are compressed already), fsynced.

    ``base``: a zip whose members are copied in too, except those under the array folders
    ``drop`` and those ``folder`` replaces (adding arrays to a zip store).
    """
    new = folder_files(folder)
    keys = {k for _, k in new}
    prefixes = tuple(d + "/" for d in drop)
    with (
        AppendFile(zip_path) as fh,
        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        members: list[tuple[Any, str]] = list(new)
        old = zipfile.ZipFile(base) if base is not None else None
        try:
            if old is not None:
                members += [
                    (i, i.filename)
                    for i in old.infolist()
                    if not i.is_dir()
                    and i.filename not in keys
                    and not i.filename.startswith(prefixes)
                ]
                members.sort(key=lambda m: (not m[1].endswith("zarr.json"), m[1].count("/"), m[1]))
            for src, arc in members:
                if isinstance(src, str):
                    zf.write(src, arc)
                    continue
                info = zipfile.ZipInfo(arc, date_time=src.date_time)
                info.compress_type = zipfile.ZIP_STORED
                info.file_size = src.file_size
                assert old is not None
                try:
                    with (
                        old.open(src) as fin,
                        zf.open(info, "w", force_zip64=src.file_size >= 2**31) as fout,
                    ):
                        shutil.copyfileobj(fin, fout, 2**22)
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # the old member's
                    raise ChecksumError(
                        f"{base}: its member {arc!r} is damaged ({e}), so the store could not "
                        "be written again with the new arrays; it is left as it was. "
                        f"`daskimg verify {base}` names what is damaged: re-create the store "
                        "(from its source files), then write the arrays to it again"
                    ) from None
        finally:
            if old is not None:
                old.close()
    fsync_path(zip_path)


@contextlib.contextmanager
def _asking(url: str, doing: str) -> Iterator[None]:
    """Object storage's own errors (a bare ``PermissionError('Forbidden')``, botocore's
    ``NoCredentialsError``) said with the store and what to check; daskimg's errors and
    "not found" pass as they are."""
    try:
        yield
    except (DaskImgError, FileNotFoundError, ValueError):
        raise
    except Exception as e:
        e.add_note(
            f"daskimg: {doing} {url!r}: the server refused or could not be asked (check the "
            "credentials, key and secret in storage_options or the AWS_* variables, the "
            "bucket's permissions and the endpoint)"
        )
        raise
