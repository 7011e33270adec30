"""Store: where a store lives on disk — its kind, the writer's lock, fsync, packing a zip and
the atomic publish (rename or folder exchange).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import (
    StoreLockedError,
)


def store_kind(path: str | os.PathLike[str]) -> str:
    """``"zip"`` for ``*.zarr.zip``, ``"dir"`` for ``*.zarr``; anything else is refused."""
    name = os.fspath(path).rstrip("/")
    if name.endswith(".zarr.zip"):
        return "zip"
    if name.endswith(".zarr"):
        return "dir"
    raise ValueError(
        f"store path {name!r} must end in '.zarr.zip' (one file, the default) or '.zarr' (a folder)"
    )


@contextlib.contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively; a second writer on the same path is refused.

    The OS releases the lock when its holder dies, so a killed writer never blocks the
    next one. Only the holder removes the file, and a lock taken on a file that was
    removed meanwhile is not trusted (the path must still name the locked file).
    """
    lock_path = path + ".lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
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
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # still holding the lock, so nobody else owns this file
        os.close(fd)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


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


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder (a folder's entries: renames and new files in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack_zip(staging: str, target: str) -> None:
    """Pack a staging folder into ``target`` (via ``target.tmp`` and an atomic rename)."""
    tmp = target + ".tmp"
    members = []
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            members.append((full, Path(os.path.relpath(full, staging)).as_posix()))
    # metadata first, so readers that scan from the front find the group early
    members.sort(key=lambda m: (not m[1].endswith("zarr.json"), m[1].count("/"), m[1]))
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for full, arc in members:
            zf.write(full, arc)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    replace_store(tmp, target)
