"""Read: opening one file safely — its bytes, a Pillow image, its EXIF orientation.

Shared by the decoders of images (:mod:`~daskimg.read.decode`), volumes
(:mod:`~daskimg.read.volumes`) and masks (:mod:`~daskimg.read.masks`), so every one of
them names the file and says what to do in the same words.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import struct
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, Final, TypeVar

from PIL import Image, ImageFile

from ..errors import DecodeError

logger = logging.getLogger("daskimg")

__all__ = [
    "CORRUPT",
    "EMPTY",
    "NPY_LOCK",
    "NPY_MAGIC",
    "TIFF_MAGICS",
    "TRANSPOSE",
    "WARNINGS_LOCK",
    "bomb_reason",
    "case_groups",
    "file_view",
    "first_readable",
    "folded",
    "nfc",
    "open_image",
    "orientation",
    "read_bytes",
    "strict_pillow",
    "unreadable",
    "unseen_here",
]

_T = TypeVar("_T")


def first_readable(
    paths: Sequence[str],
    remote: Any,
    read: Callable[[str, bytes | None], _T],
    *,
    skip: bool,
    named: Callable[[int, DecodeError], DecodeError] = lambda i, e: e,
) -> _T:
    """``read(path, data)`` of the first of ``paths`` (``data``: its bytes fetched from
    ``remote``, a :class:`~daskimg.remote.RemoteFiles`, or None for a local file), e.g. its
    header to take a dtype from. ``skip`` (``on_error="skip"``): a file that cannot be read
    is passed over for the next (it is skipped and recorded when the set is decoded, as any
    bad file); the first error (as ``named(i, error)`` gives it) is raised if none can be read."""
    first_error: DecodeError | None = None
    for i, path in enumerate(paths if skip else paths[:1]):
        try:
            data = None
            if remote is not None:
                got = remote.fetch([path])[0]
                if isinstance(got, DecodeError):
                    raise got
                data = got
            return read(path, data)
        except DecodeError as e:
            first_error = first_error or named(i, e)
    assert first_error is not None
    raise first_error


#: errors Pillow, numpy and tifffile raise for damaged files
CORRUPT: Final = (OSError, SyntaxError, ValueError, EOFError, struct.error)
EMPTY: Final = "the file is empty (0 bytes); it was probably not written completely, re-create it"
NPY_MAGIC: Final = b"\x93NUMPY"
#: classic TIFF and BigTIFF, both byte orders
TIFF_MAGICS: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ORIENTATION_TAG: Final = 0x0112
#: EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# warnings.catch_warnings swaps a process-wide filter list; the lock keeps two
# threads from restoring each other's list. Only header parsing runs under it.
WARNINGS_LOCK: Final = threading.Lock()

#: numpy parses a .npy header with ``ast.literal_eval``, and CPython 3.11's compiler keeps
#: its AST recursion depth in state shared by the threads: two threads parsing at once
#: can fail with "SystemError: AST constructor recursion depth mismatch" (seen once in the
#: test suite, reading .npy volumes on dask's threads; CPython gh-106905). Every .npy the
#: tasks open is loaded under this lock (a header and a memory map, or bytes in memory)
NPY_LOCK: Final = threading.Lock()

_STRICT_LOCK = threading.Lock()
_strict_users = 0
_user_setting = False


def _take_locks() -> None:
    WARNINGS_LOCK.acquire()
    _STRICT_LOCK.acquire()


def _give_locks() -> None:
    _STRICT_LOCK.release()
    WARNINGS_LOCK.release()


# A process forked while another of its threads decodes (to_zarr's decode workers,
# store/procpool.py) would get these locks held by a thread it does not have, and its
# first decode would wait for ever: the fork waits until they are free, and both sides
# get them free.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_take_locks, after_in_parent=_give_locks, after_in_child=_give_locks)


@contextmanager
def strict_pillow() -> Iterator[None]:
    """Pillow with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off while daskimg opens and loads a file.

    Training scripts often turn that process-wide switch on, and Pillow then fills the
    missing part of a truncated JPEG or PNG with gray or black instead of failing: such a
    file would be stored as a damaged image, silently. daskimg names it instead (or, with
    ``on_error="skip"``, leaves it out and records it). The user's setting is restored when
    the last of daskimg's decodes in this process is done.
    """
    global _strict_users, _user_setting
    with _STRICT_LOCK:
        if _strict_users == 0:
            _user_setting = ImageFile.LOAD_TRUNCATED_IMAGES
        _strict_users += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _STRICT_LOCK:
            _strict_users -= 1
            if _strict_users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _user_setting


#: folders operating systems and NAS boxes keep beside the data, never a class: a macOS
#: zip's resource forks, a file system's lost+found, Windows' recycle bin and volume data,
#: Synology's thumbnails (``cat/@eaDir/a.jpg/SYNOPHOTO_THUMB_M.jpg``: a copy of ``cat/a.jpg``)
#: and recycle bin, QNAP's recycle bin and snapshots (compared ignoring case)
SYSTEM_FOLDERS = frozenset(
    n.casefold()
    for n in (
        "__MACOSX", "lost+found", "$RECYCLE.BIN", "RECYCLER", "System Volume Information",
        "@eaDir", "#recycle", "#snapshot", "@Recycle", "@Recently-Snapshot", "@__thumb",
    )
)  # fmt: skip


def read_bytes(path: str) -> bytes:
    """Read the whole file; missing, unreadable and empty files raise DecodeError, and so
    does what is no regular file (:func:`open_regular`)."""
    try:
        with open_regular(path) as f:
            data = f.read()
    except OSError as exc:
        raise unreadable(path, exc) from None
    if not data:
        raise DecodeError(path, EMPTY)
    return data


def open_regular(path: str) -> BinaryIO:
    """``open(path, "rb")``, refusing (DecodeError naming it) what is not a regular file: a
    named pipe called ``x.jpg`` made the read wait forever, a link to ``/dev/zero`` read
    until memory ran out. Told apart by ``stat`` before opening (a pipe's open blocks;
    opening without blocking fails on a file a NAS server holds a lease on)."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise DecodeError(path, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise DecodeError(
            path,
            "is not a regular file but a named pipe, device or socket, whose reading "
            "could wait forever or never end; copy the data into a file",
        )
    return open(path, "rb")


def unreadable(path: str, exc: OSError) -> DecodeError:
    """The error for a file that cannot be opened or read."""
    if isinstance(exc, FileNotFoundError):
        return DecodeError(
            path,
            "no such file; check the path and that the file was not moved" + _near(path),
        )
    if isinstance(exc, IsADirectoryError):
        return DecodeError(path, "is a directory, not a file")
    return DecodeError(path, f"cannot read the file ({exc.strerror or exc})")


def file_view() -> tuple[str, int]:
    """Which files this process sees: its machine's name and its mount namespace (two
    processes that differ in either may not see the same file at one path)."""
    try:
        mounts = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:  # not Linux
        mounts = 0
    return socket.gethostname(), mounts


def unseen_here(path: str, view: tuple[str, int] | None) -> str:
    """For ``path``, not found: a hint when this process sees other files than the one
    that opened it (``view``, its :func:`file_view`), as a dask worker on another machine
    or in another container does; else ``""`` (it is gone)."""
    if view is None or tuple(view) == file_view():
        return ""
    return (
        f"; this process (pid {os.getpid()} on {socket.gethostname()}, a dask worker?) "
        f"does not see the files of the one that opened it: if {path!r} is there, put it "
        "on a file system every worker reaches at the same path, or read it without the "
        "cluster"
    )


def nfc(name: str) -> str:
    """``name`` in Unicode's composed form (macOS writes "é" as e + an accent)."""
    return unicodedata.normalize("NFC", name)


#: format characters that change how a word prints (Persian and Indic scripts): kept
_JOINERS = frozenset("\u200c\u200d")


def looks(name: str) -> str:
    """A name as it prints: composed (:func:`nfc`), without invisible characters (a
    zero-width space, a byte order mark: Unicode's format characters but the joiners, which
    change how Persian and Indic words print) and with its spaces
    collapsed and stripped. Two names that look alike so are two classes that print alike."""
    shown = "".join(ch for ch in nfc(name) if unicodedata.category(ch) != "Cf" or ch in _JOINERS)
    return " ".join(shown.split())


def given_classes(classes: Sequence[str] | None) -> list[str] | None:
    """``classes=`` of ``from_folder`` and ``from_csv``, checked: names (str), none repeated,
    no two that print alike (:func:`alike`: composed differently, invisible characters)."""
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"classes must be a sequence of class names; got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has repeated names: {list(classes)}")
    twins = alike(classes)
    if twins is not None:
        one, other, how = twins
        raise ValueError(
            f"classes has two names that print alike, {one!a} and {other!a}: {how}; "
            "write each class one way"
        )
    return list(classes)


def alike(names: Iterable[str]) -> tuple[str, str, str] | None:
    """The first two ``names`` that print alike (:func:`looks`), and how they differ (for a
    message), or None."""
    by_look: dict[str, str] = {}
    for name in names:
        other = by_look.setdefault(looks(name), name)
        if other != name:
            how = (
                "the same letters composed differently (Unicode normalisation: one was "
                "written on macOS, or went through a tool that decomposes accents)"
                if nfc(other) == nfc(name)
                else "the same apart from invisible characters or spaces"
            )
            return other, name, how
    return None


def text_ordered(names: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """For class names in index order (sorted as text): when names that are numbers sort
    otherwise as text than by value ("10" before "2"), the first of them not at their
    value's index (up to 3) and every name ordered by value, for the warning of
    ``from_folder`` and ``convert``; None when the text order is the value order.

    Examples
    --------
    >>> text_ordered(["0", "1", "10", "2"])
    (['10', '2'], ['0', '1', '2', '10'])
    >>> text_ordered(["cat", "dog"]) is None
    True
    """
    numbers = [c for c in names if c.isdecimal()]
    if len(numbers) < 2 or numbers == sorted(numbers, key=int):
        return None
    moved = [c for i, c in enumerate(names) if c.isdecimal() and c != str(i)][:3]
    by_value = sorted(names, key=lambda c: (not c.isdecimal(), int(c) if c.isdecimal() else 0, c))
    return moved, by_value


def near_misses(names: Iterable[str], among: Iterable[str], there: str = "there") -> str:
    """A hint for ``names`` missing from ``among``: those that match one of ``among`` but for
    letter case, Unicode composition, invisible characters or spaces (:func:`folded`,
    :func:`looks`), as `` ('Cat' is 'cat' there: names
    must match exactly)``; "" if none. For the messages of ``from_folder`` and ``from_csv``
    refusing a class name."""
    by_look = {folded(looks(c)): c for c in among}
    hints = []
    for n in names:
        other = by_look.get(folded(looks(n)))
        if other is None:
            continue
        how = ""  # letter case, said by the names themselves
        if nfc(n) == nfc(other):
            how = ", the same letters composed differently"
        elif looks(n) == looks(other):
            how = ", the same apart from invisible characters or spaces"
        hints.append(f"{n!r} is {other!r} {there}{how}")
    return f" ({'; '.join(hints)}: names must match exactly)" if hints else ""


def folded(name: str) -> str:
    """A name as people read it: letter case and Unicode composition aside."""
    return nfc(name).casefold()


def case_groups(names: Iterable[str]) -> list[list[str]]:
    """The groups of ``names`` that differ only in letter case (:func:`folded`), in order:
    two or more names each."""
    by_case: dict[str, list[str]] = {}
    for name in names:
        by_case.setdefault(folded(name), []).append(name)
    return [group for group in by_case.values() if len(group) > 1]


def _near(path: str) -> str:
    """A hint for a missing file: a Windows separator in its path, or a file beside it whose
    name differs only in letter case or Unicode normalisation (macOS writes "é" as e + an
    accent); "" if none. Only on the error path: one listing of the folder."""
    if "\\" in path and os.sep != "\\":
        return f" (its path has a '\\': write paths with '/', e.g. {path.replace(chr(92), '/')!r})"
    try:
        target = os.readlink(path)
    except OSError:
        target = None  # not a link
    if target is not None:
        return f" (it is a link to {target!r}, which is not there: fetch or restore it)"
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return ""
    near = [n for n in names if n != name and folded(n) == folded(name)]
    if not near:
        return ""
    how = (
        "Unicode normalisation (the same letters, composed differently)"
        if nfc(near[0]) == nfc(name)
        else "letter case"
    )
    return f" (beside it is {near[0]!r}, which differs only in {how}: correct the path)"


def open_image(path: str, data: bytes | None = None) -> Image.Image:
    """Read ``path`` once (unless its ``data`` is given) and let Pillow identify it, with bomb-warnings silenced."""
    if data is None:
        data = read_bytes(path)
    elif not data:
        raise DecodeError(path, EMPTY)
    try:
        with pillow_warnings(path):
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecodeError(path, bomb_reason(exc)) from None
    except Image.UnidentifiedImageError:
        raise DecodeError(path, _unidentified_reason(data)) from None
    except CORRUPT as exc:
        raise DecodeError(
            path, f"corrupt or truncated image ({exc}); copy or export it again"
        ) from exc


@contextmanager
def pillow_warnings(path: str) -> Iterator[None]:
    """What Pillow warns of while it parses ``path``'s header or metadata ("Corrupt EXIF
    data", a TIFF tag with too many entries) logged as daskimg's warning naming the file,
    never raised: under ``warnings.simplefilter("error")`` (pytest's ``-W error``) such a
    warning escaped the decode as a bare UserWarning with no file, and failed a whole
    ``to_zarr`` even with ``on_error="skip"``, for pixels that were whole. The warning
    between Pillow's bomb limit and twice it is silenced (the limit is checked). Only
    parsing runs under it: the filters are the process's, so it holds WARNINGS_LOCK."""
    with WARNINGS_LOCK, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            for w in said:
                logger.warning("%r: Pillow warns while reading it: %s", path, w.message)


def bomb_reason(exc: Exception) -> str:
    """Why a decompression bomb is refused, and how to allow it."""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"over Pillow's decompression-bomb limit of {limit} pixels ({exc}); "
        "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )


def _unidentified_reason(data: bytes) -> str:
    head = data[:16]
    cut = _tiff_cut(data)
    if cut is not None:
        return (
            f"a truncated TIFF: its first directory (at byte {cut}) runs past the end of the "
            f"file's {len(data)} bytes; the file is incomplete, copy or export it again"
        )
    if head.startswith(NPY_MAGIC) or head[:4] in TIFF_MAGICS:
        hint = (
            "it looks like a volume: give a 3-D size (depth, height, width) to read volumes "
            "(a 2-D picture of floats, signed values or more than 4 channels is no image "
            "Pillow reads either: see the message a 3-D size gives)"
        )
    else:
        hint = "check that it is an image and was copied completely"
    return f"not an image Pillow can identify (it starts with {head!r}); {hint}"


def _tiff_cut(data: bytes) -> int | None:
    """Where a TIFF's first directory starts, if the directory runs beyond the file's end
    (a cut-off copy of a file whose directory is written last, as Pillow and many scanners
    do); else None."""
    head = data[:16]
    end = "<" if head[:2] == b"II" else ">"
    if head[:4] in TIFF_MAGICS[:2] and len(head) >= 8:
        (at,) = struct.unpack_from(end + "I", head, 4)
        count, entry, tail = "H", 12, 4
    elif head[:4] in TIFF_MAGICS[2:] and len(head) >= 16:
        (at,) = struct.unpack_from(end + "Q", head, 8)
        count, entry, tail = "Q", 20, 8
    else:
        return None
    width = struct.calcsize(count)
    if at + width > len(data):
        return at
    (n,) = struct.unpack_from(end + count, data, at)
    return at if at + width + n * entry + tail > len(data) else None


def orientation(im: Image.Image, path: str) -> int:
    """EXIF orientation 1..8 (1 when missing or invalid), as exif_transpose reads it."""
    with pillow_warnings(path):
        value = im.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and value in TRANSPOSE else 1
