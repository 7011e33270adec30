"""Read: :func:`from_folder` — a folder of class subfolders (or of ``train/``, ``valid/``, ``test/``).

Nothing is dropped silently. The rules, the same on disk and at a URL:

* ``root/<class>/<files>``: labelled by class (files found recursively in each class folder).
* ``root/<files>`` with no class folders: one set without labels.
* ``root/train/`` (or ``training/``), ``root/valid/`` (or ``val/``, ``validation/``),
  ``root/test/`` (or ``testing/``): predefined
  splits (recognised when ``train/`` is there, or when nothing but split folders is there:
  ``valid/`` and ``test/`` alone); each split folder holds class folders
  (labelled) or files directly (an unlabelled split, like Kaggle's flat ``test/``).
* An image file beside class folders (``root/stray.jpg``, ``root/train/stray.jpg``), or
  beside split folders, is an error naming it: move it into a class folder, or pass
  ``stray="ignore"`` to leave such files out (they are logged).
* A class folder in ``valid/`` or ``test/`` that ``train/`` lacks (``test/test/*.png``,
  ``Cat/`` beside train's ``cat/``, or a class whose folder in ``train/`` is empty) is an
  error naming it; so is a dataset in a wrapping folder, which would otherwise be one class
  (``root/chest_xray/{train,val,test}/``, ``root/PetImages/{Cat,Dog}/``,
  ``train/images/{cat,dog}/``, Kaggle's ``train/train/``: see :func:`_check_wrapped`), and a
  folder named like a split but for spaces (``train ``).
* Class folders that hold no images of their own, only folders of the same names
  (``root/{trn,tst}/{0,1,2}/``: splits under other names) are read as classes, with a
  logged warning naming them: rename them to split names if they are splits.
* Hidden folders and the folders systems keep beside the data (``__MACOSX``,
  ``$RECYCLE.BIN``, Synology's ``@eaDir`` thumbnails, ...: :data:`SYSTEM_FOLDERS`) are
  never read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NoImagesFoundError
from ..remote import (
    RemoteFiles,
    anchored,
    as_local,
    check_options,
    filesystem,
    is_url,
    join,
    protocol_of,
)
from .decode import DecodeSpec
from .fileio import (
    SYSTEM_FOLDERS,
    alike,
    case_groups,
    folded,
    given_classes,
    looks,
    near_misses,
    text_ordered,
)
from .files import relative_paths, resolve_dtype
from .imageset import NO_LABEL, ImageSet, file_set
from .masks import resolve_mask_dtype, warn_lossy_masks
from .source import DEFAULT_BLOCK, FileSource, refuse_volume_masks

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_DIRS", "SYSTEM_FOLDERS", "find_split_dirs", "from_folder"]

logger = logging.getLogger("daskimg")

#: file endings from_folder treats as images or volumes (case-insensitive)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
    | {".pbm", ".pgm", ".ppm", ".pnm", ".npy"}
)

#: folder names recognised as predefined splits, and the split each maps to
SPLIT_DIRS = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}

STRAY = ("raise", "ignore")


@dataclass
class _Top:
    """One labelled-or-not folder: the root, or one split folder."""

    split: str  # "" for the root itself
    where: str  # the folder, for messages
    direct: list[str] = field(default_factory=list)  # image files directly in it
    others: list[str] = field(default_factory=list)  # files below it that are not images
    classes: dict[str, list[str]] = field(default_factory=dict)  # class folder -> its files


def _hidden(folder: str) -> bool:
    """Folders never read: hidden ones (``.git``, ``.ipynb_checkpoints``),
    :data:`SYSTEM_FOLDERS`, and Zarr stores written as folders (``train.zarr``: a store
    beside the class folders is no class, and holds no images): never a class."""
    return (
        folder.startswith(".")
        or folder.casefold() in SYSTEM_FOLDERS
        or folder.casefold().endswith((".zarr", ".zarr.partial"))
    )


def _is_image(name: str) -> bool:
    # posixpath.splitext's ending for a name that does not start with a dot, inlined (it
    # was a sixth of from_folder's time)
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def _is_other(name: str) -> bool:
    """A file that is not hidden and has no image ending: left out, and said so."""
    return not name.startswith(".") and not _is_image(name)


class _Seen:
    """The real file behind every image read so far in one tree, so that a file link to an
    image the tree holds itself (``test/dog/leak.png -> ../../train/dog/b.png``: a training
    image in test, or the same image under two labels) is not read a second time. The file
    is kept, wherever it comes in the walk; the link is left out, logged. Links that only
    share a target (git-annex keeps identical files once, in the hidden ``.git/annex``) are
    all read."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}  # real file -> the path it was read at (no link)
        self.links: dict[str, list[str]] = {}  # real file -> links to it read so far
        self.dropped: dict[str, str] = {}  # path left out -> the path of its file kept

    def keep(self, full: str, real: str, is_link: bool) -> bool:
        """Whether to read ``full`` (whose real file is ``real``)."""
        own = self.files.get(real)
        if is_link:
            if own is not None:
                self.dropped[full] = own
                return False
            self.links.setdefault(real, []).append(full)
            return True
        if own is not None:  # the same file reached twice without a link: keep both paths
            return True
        self.files[real] = full
        for link in self.links.pop(real, []):  # links met before their file
            self.dropped[link] = full
        return True

    def report(self, tops: list[_Top]) -> None:
        """Leave the dropped links out of ``tops``, and say so."""
        if not self.dropped:
            return
        gone = self.dropped
        for t in tops:
            t.direct = [f for f in t.direct if f not in gone]
            for c, files in t.classes.items():
                t.classes[c] = [f for f in files if f not in gone]
        shown = "; ".join(f"{a!r} -> {b!r}" for a, b in list(gone.items())[:3])
        logger.warning(
            "from_folder: left out %d link(s) to image files the folder holds already (each "
            "file is read once, under its own folder): %s%s; remove the links, or copy the "
            "files if a second copy is meant",
            len(gone),
            shown,
            f" and {len(gone) - 3} more" if len(gone) > 3 else "",
        )


def _walk(top: str) -> Iterator[tuple[str, list[str], list[tuple[str, bool]]]]:
    """``os.walk(top, followlinks=True)`` (top-down; prune by editing the folder names), also
    saying which files are links; a folder that cannot be listed is an error naming it
    (``os.walk`` leaves it out without a word)."""
    stack = [top]
    while stack:
        dirpath = stack.pop()
        dirs, files = [], []
        try:
            with os.scandir(dirpath) as listing:
                for e in listing:
                    try:
                        is_dir = e.is_dir()  # a link to a folder is a folder
                    except OSError:
                        is_dir = False
                    if is_dir:
                        dirs.append(e.name)
                    else:
                        files.append((e.name, e.is_symlink()))
        except OSError as e:
            raise type(e)(
                e.errno,
                f"cannot list the folder {dirpath!r} ({e.strerror}): its images would be left "
                "out. Make it readable, or pass exclude= to leave it out",
            ) from e
        dirnames = sorted(dirs)
        yield dirpath, dirnames, sorted(files)
        stack.extend(os.path.join(dirpath, d) for d in reversed(dirnames))


def _files_under(
    folder: Path,
    exclude: frozenset[str] = frozenset(),
    others: list[str] | None = None,
    read_under: dict[str, str] | None = None,
    root: str | None = None,
    seen: _Seen | None = None,
) -> list[str]:
    """Image files found recursively below ``folder`` (a class folder), links followed.

    Each real folder is read once for the whole tree (``read_under``: real folder -> the
    class folder it was read under, shared by every class folder of the tree): a link
    that leads back into ``root`` outside this class folder (a loop to the root, or to
    another class's folder) or to a folder another class already read is not followed,
    and said so in a logged warning, so no file is read twice or under a second label.
    File links to images of the tree are left out by ``seen`` (see :class:`_Seen`).
    """
    files: list[str] = []
    read_under = {} if read_under is None else read_under
    home = os.path.realpath(folder)
    for dirpath, dirnames, filenames in _walk(os.fspath(folder)):
        real = os.path.realpath(dirpath)
        if real in exclude:
            dirnames[:] = []
            continue
        first = read_under.get(real)
        inside_home = real == home or real.startswith(home + os.sep)
        back_in_tree = (
            root is not None
            and not inside_home
            and (real == root or real.startswith(root + os.sep) or root.startswith(real + os.sep))
        )
        if first is not None or back_in_tree:
            dirnames[:] = []
            if first != os.fspath(folder):  # a loop within one class folder is no news
                logger.warning(
                    "from_folder: not following %r (it leads to %r%s): each folder is read "
                    "once, under its own class; remove the link if that is not what you want",
                    dirpath,
                    real,
                    f", read already under {first!r}" if first else ", back into the tree",
                )
            continue
        read_under[real] = os.fspath(folder)
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        # os.path.join of a folder and a plain name, once per folder (per file it was a
        # quarter of from_folder's time)
        here, there = os.path.join(dirpath, ""), os.path.join(real, "")
        for f, is_link in filenames:
            if _is_image(f):
                full = here + f
                if seen is None or seen.keep(
                    full, os.path.realpath(full) if is_link else there + f, is_link
                ):
                    files.append(full)
            elif others is not None and _is_other(f):
                others.append(here + f)
    return files


def find_split_dirs(
    root: str | os.PathLike[str],
    exclude: Iterable[str] = (),
    classes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """The predefined split folders directly under ``root`` (``train``, ``valid``/``val``, ``test``).

    They are splits when ``train/`` is among them, or when no other folder is beside them
    (``valid/`` and ``test/`` alone: an evaluation set); a folder named like a split among
    class folders without ``train/`` is a class. ``exclude``: folders (real paths) that are
    not part of the set, e.g. the output written inside ``root``. ``classes``: the classes
    given; a split-named folder that is one of them, holds images itself and no folder
    named like one makes the folders classes (CIFAR-100's ``train``), not splits (see
    :func:`_named_classes`).
    """
    root, exclude = Path(root), frozenset(exclude)
    found: dict[str, Path] = {}
    twice: list[tuple[Path, Path]] = []
    others = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if not child.is_dir() or _hidden(child.name) or os.path.realpath(child) in exclude:
            continue
        split = _split_of(child.name, root)
        if split is None:
            if _holds_files(child):  # an empty folder is nothing (a URL listing has none)
                others.append(child.name)
            continue
        if split in found:
            twice.append((found[split], child))
            continue
        found[split] = child
    named = list(found.values()) + [b for _, b in twice]
    below: dict[str, tuple[bool, set[str]]] = {}
    if classes is not None:  # (only classes given can make split-named folders classes)
        for d in named:
            if _holds_files(d):
                entries = list(d.iterdir())
                images = any(_is_image(e.name) and not e.is_dir() for e in entries)
                folders = {  # (an empty folder is nothing, as at a URL, which has none)
                    e.name
                    for e in entries
                    if e.is_dir() and not _hidden(e.name) and _holds_files(e)
                }
                below[d.name] = (images, folders)
        below.update({name: (False, set()) for name in others})
    if not _are_splits(set(found), others) or _named_classes(
        os.fspath(root), below, [d.name for d in named], classes
    ):
        return {}  # class folders, some named like splits ("test" and "testing" beside "cat")
    if twice:
        a, b = twice[0]
        raise ValueError(f"{root} holds both {a.name!r} and {b.name!r}; keep one folder per split")
    return found


def _split_of(name: str, where: Any) -> str | None:
    """The split a folder ``name`` of ``where`` is (None: no split name), refusing a name
    that is a split's but for spaces or invisible characters (``'train '``), which would be
    read as a class holding the split's images."""
    split = SPLIT_DIRS.get(name.lower())
    near = folded(looks(name))
    if split is None and near in SPLIT_DIRS:
        raise ValueError(
            f"{str(where)!r} holds the folder {name!r} ({name!a}), named like the split "
            f"{near!r} but for spaces or invisible characters: it would be read as a class "
            f"holding that split's images. Rename it to {near!r}"
        )
    return split


def _holds_files(folder: Path) -> bool:
    """Whether any file lies below ``folder`` (links followed; stops at the first). A
    folder that cannot be listed is something (``os.walk`` would call it empty)."""
    try:
        return any(files for _, _, files in _walk(os.fspath(folder)))
    except OSError:
        return True  # reading it says what is wrong


def _are_splits(found: set[str], others: list[str]) -> bool:
    """Split-named folders are splits with ``train`` among them, or with nothing beside them."""
    return "train" in found or (bool(found) and not others)


def _named_classes(
    where: str,
    below: Mapping[str, tuple[bool, Collection[str]]],
    split_named: Collection[str],
    given: Sequence[str] | None,
) -> bool:
    """Whether the top folders of ``where`` are the classes given, one of them named like a
    split (CIFAR-100's ``train``). ``below``: each top folder holding files, whether it holds
    images itself, and the folders in it. A split-named folder is a class when it is one of
    the classes given, holds images itself (a class folder does; a split holds class
    folders) and no folder named like a class given (``train/apple/`` is a split, even with
    a class 'train'; ``train/Apple/`` too, refused later as a class not given, not read as
    the class 'train'). Then every top folder holding files must be a class given, else this
    is refused, naming them (with ``stray='ignore'``, a misspelt class or a notes/ folder
    beside made ``train/`` an unlabelled split, the classes given dropped without a word).
    Read as splits before, ``classes=`` was refused with advice to rename the class, and
    with ``stray='ignore'`` the class ``train`` was read as an unlabelled split and every
    other class left out."""
    if given is None:
        return False
    names = set(given)
    meant = sorted(
        s
        for s in split_named
        if s in names and s in below and below[s][0] and not names & set(below[s][1])
    )
    if not meant:
        return False
    strays = sorted(set(below) - names)
    if strays:
        raise ValueError(
            f"{where!r}: the folder(s) {', '.join(repr(m) for m in meant)}, named like a split, "
            "are among the classes given and hold no class folders, so the folders here are "
            f"read as classes; but {', '.join(repr(s) for s in strays)} beside them "
            f"{'is' if len(strays) == 1 else 'are'} not among the classes given "
            f"({', '.join(given)}): add {'it' if len(strays) == 1 else 'them'} to classes= "
            "(a misspelt name?), or move what is no class elsewhere"
        )
    return True


def _local_tops(
    root: Path, exclude: frozenset[str], stray: str = "raise", given: list[str] | None = None
) -> tuple[list[_Top], list[str]]:
    """The folders to read under ``root``, and image files directly in a root of splits."""
    real_root = os.path.realpath(root)
    read_under: dict[str, str] = {}
    seen = _Seen()

    def entries(folder: Path) -> list[Path]:
        # a broken link (a git-annex or DVC file not fetched yet), a named pipe, a socket
        # or a device named like an image fails to decode, named then (inside a class
        # folder they were; here they were left out without a word)
        return [f for f in sorted(folder.iterdir()) if not f.is_dir()]

    def direct(folder: Path) -> list[str]:
        real = os.path.realpath(folder)
        return [
            os.fspath(f)
            for f in entries(folder)
            if _is_image(f.name)
            and seen.keep(
                os.fspath(f),
                os.path.realpath(f) if f.is_symlink() else os.path.join(real, f.name),
                f.is_symlink(),
            )
        ]

    def other(folder: Path) -> list[str]:
        return [os.fspath(f) for f in entries(folder) if _is_other(f.name)]

    def top(split: str, folder: Path) -> _Top:
        t = _Top(split, os.fspath(folder), direct(folder), other(folder))
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not _hidden(d.name) and os.path.realpath(d) not in exclude:
                t.classes[d.name] = []  # read by read_classes, in the sorted order kept here
        return t

    inside = (os.path.abspath(root), real_root)

    def into_tree(link: str) -> bool:
        # a link whose own target (not what it resolves to in the end) lies in the tree:
        # an alias of a folder the tree holds, not data kept elsewhere (/mnt/cats)
        try:
            target = os.path.join(os.path.dirname(link), os.readlink(link))
        except OSError:
            return False  # not a link
        target = os.path.normpath(os.path.abspath(target))
        return any(target == r or target.startswith(r + os.sep) for r in inside)

    def through_link(folder: Path) -> bool:
        # reached through a link into the tree: the folder itself, or a folder above it
        # below the root (test -> train)
        rel = Path(os.path.relpath(folder, root))
        steps = [root.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
        return any(into_tree(os.fspath(p)) for p in steps)

    def read_classes(tops: list[_Top]) -> None:
        # class folders reached without a link first, so that a link to a folder the tree
        # holds itself (alias_cat -> cat, test/dog -> ../train/dog) is the one left out,
        # whichever name sorts first (the first reader of a real folder keeps it)
        folders = [(t, name, Path(t.where) / name) for t in tops for name in t.classes]
        for t, name, d in sorted(folders, key=lambda f: through_link(f[2])):
            anothers = read_under.get(os.path.realpath(d), os.fspath(d)) != os.fspath(d)
            t.classes[name] = _files_under(d, exclude, t.others, read_under, real_root, seen)
            if anothers:
                # the whole class folder is another's (logged by _files_under): no class
                # of its own, which would be an empty one shifting the others' indices
                del t.classes[name]

    splits = find_split_dirs(root, exclude, given)
    if not splits:
        tops = [top("", root)]
        read_classes(tops)
        seen.report(tops)
        return tops, []
    _beside_splits(
        os.fspath(root),
        [
            d.name
            for d in sorted(root.iterdir())
            if d.is_dir() and not _hidden(d.name) and os.path.realpath(d) not in exclude
            and d.name.lower() not in SPLIT_DIRS and _holds_files(d)
        ],
        sorted(d.name for d in splits.values()),
        stray,
    )  # fmt: skip
    tops = [top(s, d) for s, d in splits.items()]
    read_classes(tops)
    tops[0].others[:0] = other(root)  # beside the split folders (a labels.csv, a README)
    loose = direct(root)
    seen.report(tops)
    return tops, [f for f in loose if f not in seen.dropped]


def _beside_splits(where: str, folders: list[str], splits: list[str], stray: str) -> None:
    """Refuse (or, with stray='ignore', log) folders beside split folders that are no split."""
    if not folders:
        return
    shown = ", ".join(repr(f) for f in folders[:5]) + (
        f" and {len(folders) - 5} more" if len(folders) > 5 else ""
    )
    said = (
        f"{where!r} holds the split folder(s) {', '.join(repr(s) for s in splits)} and beside "
        f"them the folder(s) {shown}, which are no split (splits are "
        f"{', '.join(sorted(SPLIT_DIRS))})"
    )
    if stray == "ignore":
        logger.warning("from_folder: %s; left out (stray='ignore')", said)
        return
    raise ValueError(
        f"{said}, so they would not be read. If all of these are class folders (one of them "
        "named like a split, e.g. a class 'train'), pass classes= naming every class (on the "
        "command line: --classes); if they are "
        "splits, rename them to a split name (e.g. 'dev' -> 'valid'); to leave them out, "
        "move them elsewhere or pass stray='ignore'"
    )


def _url_tops(
    url: str,
    fs: Any,
    base: str,
    exclude: Sequence[str],
    stray: str = "raise",
    given: list[str] | None = None,
) -> tuple[list[_Top], list[str]]:
    """:func:`_local_tops` from one recursive listing of a URL prefix (``base`` on ``fs``)."""
    base = base.rstrip("/")
    try:
        keys = fs.find(base)
    except Exception as e:  # s3fs's "Access Key Id ... does not exist" names no URL
        e.add_note(f"daskimg: listing {url!r} (check its credentials and endpoint)")
        raise
    rels = [k[len(base) + 1 :] for k in keys if k.startswith(base + "/")]
    rels = [r for r in rels if not any((r + "/").startswith(e + "/") for e in exclude)]
    parts = [r.split("/") for r in rels]
    found: dict[str, str] = {}
    url_twice: list[tuple[str, str]] = []
    others = []
    for name in sorted({q[0] for q in parts if len(q) > 1}):
        split = None if _hidden(name) else _split_of(name, url)
        if split is None:
            if not _hidden(name):
                others.append(name)
            continue
        if split in found:
            url_twice.append((found[split], name))
            continue
        found[split] = name
    named = list(found.values()) + [b for _, b in url_twice]
    holds: dict[str, tuple[bool, set[str]]] = {n: (False, set()) for n in [*named, *others]}
    for q in parts:
        if q[0] not in holds:
            continue
        if len(q) == 2 and _is_image(q[1]):
            holds[q[0]] = (True, holds[q[0]][1])
        elif len(q) > 2 and not _hidden(q[1]):
            holds[q[0]][1].add(q[1])
    splitting = _are_splits(set(found), others) and not _named_classes(url, holds, named, given)
    if splitting and url_twice:
        a, b = url_twice[0]
        raise ValueError(f"{url} holds both {a!r} and {b!r}; keep one folder per split")
    if splitting:
        _beside_splits(
            url,
            sorted(
                {q[0] for q in parts if len(q) > 1}
                - set(found.values())
                - {n for n in (q[0] for q in parts) if _hidden(n)}
            ),
            sorted(found.values()),
            stray,
        )
    prefixes = [(s, (n,)) for s, n in found.items()] if splitting else [("", ())]
    tops = []
    for split, prefix in prefixes:
        d = len(prefix)
        t = _Top(split, "/".join((url, *prefix)))
        # the order of os.walk with sorted names: a folder's files, then its subfolders
        below = sorted(
            (q[d:] for q in parts if tuple(q[:d]) == prefix and len(q) > d),
            key=lambda rest: [(j < len(rest) - 1, x) for j, x in enumerate(rest)],
        )
        for rest in below:
            if len(rest) > 1 and not _hidden(rest[0]):
                # a folder with a key below it is there, as on disk, whatever it holds
                # (a .DS_Store alone: a class without images, as on disk)
                t.classes.setdefault(rest[0], [])
            if any(_hidden(x) for x in rest[:-1]) or not _is_image(rest[-1]):
                if not any(_hidden(x) for x in rest[:-1]) and _is_other(rest[-1]):
                    t.others.append(join(url, "/".join((*prefix, *rest))))
                continue
            full = join(url, "/".join((*prefix, *rest)))
            if len(rest) == 1:
                t.direct.append(full)
            else:
                t.classes.setdefault(rest[0], []).append(full)
        tops.append(t)
    loose = (
        [join(url, q[0]) for q in sorted(parts) if len(q) == 1 and _is_image(q[0])]
        if splitting
        else []
    )
    if splitting:  # beside the split folders (a labels.csv, a README)
        tops[0].others[:0] = [
            join(url, q[0]) for q in sorted(parts) if len(q) == 1 and _is_other(q[0])
        ]
    return tops, loose


def _report_others(where: str, others: list[str]) -> None:
    """Say which files were left out because their ending is not an image ending, and which
    links lead nowhere (a folder on a drive not mounted: its images, maybe a whole class)."""
    broken = [f for f in others if "://" not in f and os.path.islink(f) and not os.path.exists(f)]
    if broken:
        shown = "; ".join(f"{f!r} -> {os.readlink(f)!r}" for f in broken[:3])
        logger.warning(
            "from_folder(%r): left out %d link(s) whose target does not exist (a drive not "
            "mounted, a file not fetched?): %s%s. A link to a folder is a class folder or "
            "part of one: its images are not read. Mount or fetch the targets, or remove "
            "the links",
            where,
            len(broken),
            shown,
            f" and {len(broken) - 3} more" if len(broken) > 3 else "",
        )
        others = [f for f in others if f not in set(broken)]
    if not others:
        return
    endings: dict[str, int] = {}
    for f in others:
        ending = posixpath.splitext(f)[1].lower() or "(no ending)"
        endings[ending] = endings.get(ending, 0) + 1
    kinds = ", ".join(f"{e}: {n}" for e, n in sorted(endings.items(), key=lambda kv: -kv[1]))
    shown = ", ".join(repr(f) for f in others[:3]) + (
        f" and {len(others) - 3} more" if len(others) > 3 else ""
    )
    logger.warning(
        "from_folder(%r): left out %d file(s) whose ending is not an image ending (%s): %s. "
        "If some are images (e.g. .heic, .avif), convert them to JPEG or PNG; image endings "
        "are daskimg.read.folder.IMAGE_EXTENSIONS",
        where,
        len(others),
        kinds,
        shown,
    )


def _stray_files(files: list[str], where: str, beside: str, stray: str) -> None:
    """Refuse (or, with stray='ignore', log) image files beside class or split folders."""
    if not files:
        return
    shown = ", ".join(repr(posixpath.basename(f.replace(os.sep, "/"))) for f in files[:3])
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    if stray == "ignore":
        logger.warning(
            "left out %d image file(s) directly in %s, beside its %s (stray='ignore'): %s%s",
            len(files),
            where,
            beside,
            shown,
            more,
        )
        return
    raise ValueError(
        f"{len(files)} image file(s) directly in {where!r}, beside its {beside}: {shown}{more}. "
        "A folder holds class folders or image files, not both, so these have no label. "
        "Move them into a class folder (or a split folder of their own), or pass "
        "stray='ignore' to leave them out"
    )


def _check_wrapped(where: str, tops: list[_Top], given: list[str] | None = None) -> None:
    """Refuse a dataset one or more folders down, which read as is would be one class
    holding every image, its labels and splits lost:

    * the root's only class folder holds split folders
      (``root/chest_xray/{train,val,test}/<class>``, as an archive unpacks; also deeper,
      ``root/archive/dataset/{train,test}``) or, with no images of its own, several folders
      (``root/PetImages/{Cat,Dog}``): read the folder they are in;
    * ``train/``'s only class folder holds, with no images of its own, several folders
      (``train/images/{cat,dog}``, Kaggle's ``train/train/{cat,dog}``): the class folders
      are one level down in the split.

    ``given`` classes (``classes=["good"]``: one class with folders of its own) pass."""
    if given is not None:
        return
    has_train = any(t.split == "train" for t in tops)
    for t in sorted(tops, key=lambda t: t.split != "train"):  # train's folders said first
        holding = [c for c, files in t.classes.items() if files]
        if len(holding) != 1:
            continue  # several classes, each with split folders inside: read as classes
        c = holding[0]
        if t.split and c.lower() in SPLIT_DIRS:
            raise ValueError(
                f"{t.where!r}: its only class folder is {c!r}, named like a split: the "
                f"images are one folder too deep (as Kaggle's {t.split}/{t.split}/ unpacks), "
                f"and read as is every {t.split} sample would be class {c!r}. Move what "
                f"{c!r} holds up into {t.where!r} (images alone there: an unlabelled split; "
                "labels in the file names: write a CSV of path,label for from_csv)"
            )
        if t.split and (has_train and t.split != "train"):
            continue  # valid/test classes are train's (a one-class test split is no wrapper)
        url = "://" in t.where
        prefix = f"{t.where}/{c}" if url else os.path.join(t.where, c)
        rest = [f[len(prefix) + 1 :].replace(os.sep, "/") for f in t.classes[c]]
        if any(not f.startswith(prefix) for f in t.classes[c]):
            continue
        # the folders every image of the class lies in, then the folders at that depth
        shared = posixpath.commonpath([posixpath.dirname(r) for r in rest])
        common = shared.split("/") if shared else []
        depth = len(common)
        below = sorted({r.split("/")[depth] for r in rest if r.count("/") > depth})
        inner = "/".join([prefix.replace(os.sep, "/"), *common])
        splits = [d for d in below if d.lower() in SPLIT_DIRS]
        found = {SPLIT_DIRS[d.lower()] for d in splits}
        shown = ", ".join(d + "/" for d in below[:5]) + (
            f" and {len(below) - 5} more" if len(below) > 5 else ""
        )
        if not t.split and found and _are_splits(found, [d for d in below if d not in splits]):
            at = f"{c!r}" if not common else f"{inner!r}"
            raise ValueError(
                f"{where!r}: its folder {at} holds the split folders "
                f"{', '.join(d + '/' for d in splits)}: the dataset is "
                f"{'one folder' if not common else f'{depth + 1} folders'} down. Read "
                f"from_folder({inner!r}) (on the command line: daskimg ingest {inner} OUT "
                f"...); read as is, {c!r} would be one class holding every split"
            )
        if len(below) < 2 or any("/" not in r for r in rest):
            continue  # images of its own, or one folder of images: one class either way
        if not t.split:
            raise ValueError(
                f"{where!r}: its only class folder {c!r} holds no images of its own, only "
                f"the folders {shown} under {inner!r}: the class folders are one level down, "
                f"and read as is every sample would be class {c!r}. Read "
                f"from_folder({inner!r}) (on the command line: daskimg ingest {inner} OUT "
                f"...); if {c!r} is really the only class, pass classes=[{c!r}] (--classes {c} on the command line)"
            )
        raise ValueError(
            f"{t.where!r}: its only class folder {c!r} holds no images of its own, only the "
            f"folders {shown} under {inner!r}: the class folders are a level too deep, and "
            f"read as is every {t.split} sample would be class {c!r}. Move the folders in "
            f"{inner!r} up into {t.where!r} (and so in the other split folders); if {c!r} "
            f"is really the only class, pass classes=[{c!r}] (--classes {c} on the command line)"
        )


def _check_split_inside(where: str, tops: list[_Top], given: list[str] | None) -> None:
    """Refuse a split folder one level too deep: a class folder named like a split that
    holds no images of its own, only folders named like the classes beside it
    (``train/{cat,dog,val/{cat,dog}}``, ``train/test/``): read as is it is one more class,
    every validation cat and dog in train labelled ``val``. ``given`` classes pass."""
    if given is not None:
        return
    for t in tops:
        holding = {c: files for c, files in t.classes.items() if files}
        for c, files in holding.items():
            if c.lower() not in SPLIT_DIRS or len(holding) < 2:
                continue
            prefix = f"{t.where}/{c}" if "://" in t.where else os.path.join(t.where, c)
            rest = [f[len(prefix) + 1 :].replace(os.sep, "/") for f in files]
            if any(not f.startswith(prefix) for f in files) or any("/" not in r for r in rest):
                continue  # images of its own: a class named like a split
            inner = {r.split("/", 1)[0] for r in rest}
            same = sorted(inner & set(holding))
            if not same:
                continue
            beside = f"beside {t.where!r}" if t.split else f"in {where!r}, with train/ beside it"
            raise ValueError(
                f"{prefix!r} is named like a split and holds no images of its own but "
                f"folders named like the classes beside it ({', '.join(same[:5])}): a split "
                f"folder inside {t.where!r}. Read as is it would be one more class {c!r}, "
                f"every image in it labelled {c!r}. Move it up {beside} (its class folders "
                f"go with it); if {c!r} is really a class, pass classes=[...] naming it (--classes)"
            )


def _split_word(name: str) -> str | None:
    """The split a folder name says in one of its words (``training_set``, ``seg_test``,
    ``asl_alphabet_train``, ``TrainSet``), or None (no split word, or words of two)."""
    words = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)
    said = {SPLIT_DIRS[w.lower()] for w in words if w.lower() in SPLIT_DIRS}
    return said.pop() if len(said) == 1 else None


def _check_splits_named_otherwise(where: str, tops: list[_Top], given: list[str] | None) -> None:
    """Refuse split folders under names daskimg does not take for splits, read as classes,
    every image labelled by the split it is in: class folders named like two or more
    splits (``training_set/``, ``test_set/``), one holding no images of its own but class
    folders (also through folders of one folder each, Kaggle's
    ``training_set/training_set/{cats,dogs}``), where either every class is named like a
    split or two of them hold class folders of the same names (Intel's ``seg_train/``,
    ``seg_test/`` beside ``seg_pred/``). ``given`` classes pass."""
    if given is not None or len(tops) != 1 or tops[0].split:
        return
    t = tops[0]
    holding = [c for c, files in t.classes.items() if files]
    named = {c: s for c in holding if (s := _split_word(c))}
    if len(set(named.values())) < 2:
        return
    nested: dict[str, tuple[str, list[str]]] = {}  # class -> (the folder, its class folders)
    for c in named:
        prefix = os.path.join(t.where, c) if "://" not in t.where else f"{t.where}/{c}"
        files = t.classes[c]
        rest = [f[len(prefix) + 1 :].replace(os.sep, "/") for f in files if f.startswith(prefix)]
        if len(rest) != len(files):
            continue
        shared = posixpath.commonpath([posixpath.dirname(r) for r in rest])
        depth = len(shared.split("/")) if shared else 0
        if any(r.count("/") == depth for r in rest):
            continue  # images of its own (under its folders of one folder): a class, or unlabelled
        below = sorted({r.split("/")[depth] for r in rest})
        if len(below) >= 2:
            inner = "/".join([prefix.replace(os.sep, "/"), *([shared] if shared else [])])
            nested[c] = (inner, below)
    alike = any(
        len(set(nested[a][1]) & set(nested[b][1])) >= 2 and named[a] != named[b]
        for a in nested
        for b in nested
    )
    if not nested or not (len(named) == len(holding) or alike):
        return  # a class without a split word beside them (bullet_train/, test_tube/, car/)
    c = min(nested, key=lambda c: (named[c] != "train", c))
    inner, below = nested[c]
    shown = ", ".join(d + "/" for d in below[:5]) + (
        f" and {len(below) - 5} more" if len(below) > 5 else ""
    )
    raise ValueError(
        f"{where!r}: its folders {', '.join(repr(n) for n in sorted(named))} are named "
        f"like splits, and {c!r} holds no images of its own, only the class folders "
        f"{shown} under {inner!r}: read as is, each would be one class, every image "
        f"labelled by the split it is in. Put the splits at the top under split names "
        f"({', '.join(sorted(SPLIT_DIRS))}): move what {inner!r} holds to "
        f"{where}/{named[c]}/ (and so for the others); if these are really classes, "
        "pass classes=[...] naming them (--classes)"
    )


def _warn_nested_alike(where: str, tops: list[_Top]) -> None:
    """Log class folders that hold no images of their own, only folders named alike in every
    class (``root/{trn,tst}/{0,1,2}/``): splits under names daskimg does not know, read as
    classes, would put every sample of the other "splits" into each split's class."""
    if len(tops) != 1 or tops[0].split:
        return
    t = tops[0]
    holding = {c: files for c, files in t.classes.items() if files}
    if len(holding) < 2:
        return
    inner: list[set[str]] = []
    for c, files in holding.items():
        prefix = os.path.join(t.where, c) if "://" not in t.where else f"{t.where}/{c}"
        rest = [f[len(prefix) + 1 :].replace(os.sep, "/") for f in files if f.startswith(prefix)]
        if len(rest) != len(files) or any("/" not in r for r in rest):
            return  # images of its own: a class
        inner.append({r.split("/", 1)[0] for r in rest})
    same = set.intersection(*inner)
    splits = sorted(d for d in same if d.lower() in SPLIT_DIRS)
    if len(same) >= 2 and all(s == same for s in inner) and splits:
        logger.warning(
            "from_folder: %r: the class folders %s hold no images of their own, only the "
            "split folders %s in each: every class holds every split's images. To read them "
            "as splits, put the split folders at the top (%s/<class>/...)",
            where,
            ", ".join(repr(c) for c in sorted(holding)),
            ", ".join(repr(d) for d in splits),
            splits[0],
        )
    elif len(same) >= 2 and all(s == same for s in inner):
        logger.warning(
            "from_folder: %r: the class folders %s hold no images of their own, only folders "
            "named alike in each (%s): if they are splits, rename them to split names "
            "(%s; e.g. 'trn' -> 'train'), or each class holds every split's images",
            where,
            ", ".join(repr(c) for c in sorted(holding)),
            ", ".join(repr(d) for d in sorted(same)[:5]),
            ", ".join(sorted(SPLIT_DIRS)),
        )


def _check_same_looking(tops: list[_Top]) -> None:
    """Refuse two class folders of one folder whose names differ only in Unicode composition
    (``café`` written as macOS does, e + an accent, beside a composed ``café``): two classes
    that print alike, the images of one class divided between them."""
    for t in tops:
        pair = alike(t.classes)
        if pair is not None:
            a, b, how = pair
            raise ValueError(
                f"{t.where!r} holds the class folders {a!r} and {b!r} ({a!a} and {b!a}), "
                f"whose names are {how}: they would be two classes that print alike. Merge "
                "them into one folder"
            )


def _warn_split_named_classes(where: str, tops: list[_Top]) -> None:
    """Log class folders named like splits (``cat/``, ``dog/``, ``test/`` without ``train/``):
    they are read as classes, so a folder of test images would be trained on as class
    'test' (splits are recognised with ``train/`` beside them)."""
    train = next((t for t in tops if t.split == "train"), None)
    labelled = [t for t in tops if t.split and not t.direct and any(t.classes.values())]
    if train is not None and train.direct and labelled:
        logger.warning(
            "from_folder(%r): %r holds its images directly, without class folders, so the "
            "training split has no labels, while %s holds class folders. If the labels are in "
            "the file names (cat.1.jpg), write a CSV of path,label and read it with from_csv; "
            "else put train's images into class folders",
            where,
            train.where,
            " and ".join(repr(t.where) for t in labelled),
        )
    for t in tops:
        named = sorted(c for c, files in t.classes.items() if files and c.lower() in SPLIT_DIRS)
        if t.split or not named:
            continue
        logger.warning(
            "from_folder(%r): the class folder(s) %s are named like splits but are read as "
            "classes, since no train/ folder is beside them. If they hold a split (e.g. "
            "unlabelled test images), move the class folders into train/ so that the folders "
            "are read as train/ and %s",
            where,
            ", ".join(repr(c) for c in named),
            ", ".join(f"{c}/" for c in named),
        )


def _check_split_classes(tops: list[_Top]) -> None:
    """Refuse class folders (with images) in ``valid/`` or ``test/`` that ``train/`` lacks:
    a made-up class no model trained on ``train/`` can predict — often unlabelled images one
    folder too deep (Kaggle's ``test/test/*.png``) or a name spelled differently."""
    train = next((t for t in tops if t.split == "train"), None)
    if train is None or not train.classes:
        return
    for t in tops:
        if t is train or t.direct:
            continue
        # a class train has no image of (an empty folder there) is one it cannot learn
        extra = sorted(c for c, files in t.classes.items() if files and not train.classes.get(c))
        if not extra:
            continue
        empty = [c for c in extra if c in train.classes]
        raise ValueError(
            f"{t.where!r} holds class folder(s) that {train.where!r} does not: "
            f"{', '.join(repr(c) for c in extra)}"
            + (f" ({', '.join(repr(c) for c in empty)} empty in train/)" if empty else "")
            + near_misses(extra, [c for c, f in train.classes.items() if f], "in train/")
            + ". A model trained on train/ has no such class. If the images there are "
            "unlabelled, put them directly in the split folder (an unlabelled split); if the "
            "folders are misnamed, rename them; else pass exclude= to leave them out"
        )


def _check_excluded(
    excluded: Sequence[str], base: str, url_path: Callable[[str], str] | None, fs: Any
) -> None:
    """Refuse an ``exclude=`` entry that names no folder: a typo (``rejected`` for
    ``Rejected``) left the folder meant to be left out in the set, read as a class.
    ``base``: the root (its path on ``fs`` for a URL root, whose entries may be URLs,
    ``url_path`` gives their path); a relative entry is looked for inside it, then (a local
    root) from the working folder, as :func:`from_folder` takes it."""
    for e in excluded:
        if fs is None:
            inside = os.path.join(base, e)
            path = inside if not os.path.isabs(e) and os.path.lexists(inside) else e
            isdir, exists = os.path.isdir(path), os.path.lexists(path)
            parent = os.path.dirname(os.path.abspath(inside if not os.path.isabs(e) else e))
            siblings = os.listdir(parent) if os.path.isdir(parent) else []
        else:
            path = url_path(e) if is_url(e) and url_path is not None else f"{base}/{e.strip('/')}"
            isdir, exists = fs.isdir(path), fs.exists(path)
            parent = path.rsplit("/", 1)[0]
            siblings = (
                [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(parent, detail=False)]
                if fs.isdir(parent)
                else []
            )
        if isdir:
            continue
        if exists:
            raise ValueError(
                f"exclude= takes folders, and {e!r} is a file: move it out of the folder "
                "to leave it out of the set"
            )
        name = e.rstrip("/").rsplit("/", 1)[-1]
        raise ValueError(
            f"exclude= names {e!r}, which is no folder (looked for inside {base!r}"
            + (" and from the working folder" if fs is None and not os.path.isabs(e) else "")
            + ")"
            + near_misses([name], siblings, "there")
            + ": the folder meant to be left out would be read as a class. Check its spelling"
        )


def _split_alone_classes(
    where: str, top: _Top, parent: tuple[str, list[_Top]] | None
) -> list[str] | None:
    """The classes for a split folder read on its own (``data/valid`` beside ``data/train``):
    those reading ``data`` gives it, so its indices agree with the other splits'.

    ``parent``: where ``data`` is and its folders as :func:`_local_tops` / :func:`_url_tops`
    list them (:func:`_parent_tops`), or None when ``where`` is no split folder of a root
    of splits. The classes are those of every labelled split, as :func:`_assemble` takes
    them; a class folder with images that ``train/`` lacks is refused, as when reading
    ``data``. None when the classes are the folder's own (or it is unlabelled)."""
    if parent is None or top.direct:
        return None
    root, tops = parent
    train = next((t for t in tops if t.split == "train"), None)
    if train is not None and train.classes:
        extra = sorted(c for c, files in top.classes.items() if files and not train.classes.get(c))
        if extra:
            raise ValueError(
                f"{where!r} holds class folder(s) that {train.where!r} beside it "
                f"does not: {', '.join(repr(c) for c in extra)}. A model trained on train/ "
                "has no such "
                "class. Rename or remove them, or pass classes= (all class names, in index "
                "order) to read this split as it is"
            )
    try:  # a sibling's class train lacks would be numbered here too (reading root refuses it)
        _check_split_classes(tops)
    except ValueError as e:
        raise ValueError(
            f"{where!r} is a split folder of {root!r}, read on its own with the classes of "
            f"the splits beside it (so that their indices agree), and reading {root!r} is "
            f"refused: {e}. Or pass classes= (every class, in index order) to read "
            f"{where!r} as it is"
        ) from None
    labelled = [t for t in tops if not t.direct or any(t.classes.values())]  # as _assemble
    union = {c for t in labelled for c in t.classes}
    own = set(top.classes)
    if union <= own:
        return None
    logger.info(
        "from_folder(%r): numbered with the classes of the splits beside it, as reading %r "
        "gives them (%s without a folder here); pass classes= to choose",
        where,
        root,
        ", ".join(repr(c) for c in sorted(union - own)),
    )
    return sorted(union | own)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """This thread's ``daskimg`` log records dropped (other threads log as usual)."""
    me = threading.get_ident()

    def other_threads(record: logging.LogRecord) -> bool:
        return record.thread != me

    logger.addFilter(other_threads)
    try:
        yield
    finally:
        logger.removeFilter(other_threads)


def _parent_tops(
    root: str | os.PathLike[str],
    url: str | None,
    remote: tuple[Any, str] | None,
    excluded: Sequence[str],
    stray: str,
) -> tuple[str, list[_Top]] | None:
    """The folders of ``root``'s parent, listed as reading it lists them, when ``root`` is a
    split folder of it (None otherwise); :class:`_Unreadable` when the parent cannot be read
    as a set, nor its split folders alone.
    ``remote``: at a URL, its file system and ``root``'s path on it; ``excluded``: real paths
    (on disk) or the file system's paths (at a URL) left out. Reading the parent lists the
    files of every split (one listing), so the classes are exactly those reading it gives.
    ``stray`` as given for ``root``. The parent's own notes (links left out, stray folders)
    are not logged (the caller reads it under :func:`_quiet`): they are about the other
    folders, and ``root``'s read logs its own."""
    if url is None:
        named = Path(os.path.abspath(root))  # "." inside data/valid is valid/ too; links kept
        split, parent = SPLIT_DIRS.get(named.name.lower()), named.parent
        if split is None:
            return None
        try:
            tops, _ = _local_tops(parent, frozenset(excluded), stray)
        except (OSError, ValueError) as e:
            # refused as a whole (a checkpoints/ folder beside the splits): the split
            # folders alone give the classes reading it would give without that
            try:
                others = {
                    os.path.realpath(d)
                    for d in parent.iterdir()
                    if d.name.lower() not in SPLIT_DIRS and d.is_dir()
                }
                tops, _ = _local_tops(parent, frozenset(excluded) | others, "ignore")
            except (OSError, ValueError):
                raise _Unreadable(os.fspath(parent), e) from None
        me = os.path.realpath(root)
        mine = [t for t in tops if t.split == split and os.path.realpath(t.where) == me]
        return (os.fspath(parent), tops) if mine else None
    assert remote is not None
    fs, base = remote
    path = url.rstrip("/")
    if "/" not in base or "/" not in path.split("://", 1)[-1]:
        return None
    parent_url, name = path.rsplit("/", 1)
    split = SPLIT_DIRS.get(name.lower())
    if split is None:
        return None
    parent_base = base.rsplit("/", 1)[0]
    inside = [p[len(parent_base) + 1 :] for p in excluded if p.startswith(parent_base + "/")]
    try:
        tops, _ = _url_tops(parent_url, fs, parent_base, inside, stray)
    except (OSError, ValueError) as e:
        raise _Unreadable(parent_url, e) from None
    mine = [t for t in tops if t.split == split and t.where == path]
    return (parent_url, tops) if mine else None


class _Unreadable(Exception):
    """A split folder's parent cannot be read as a set (:func:`_parent_tops`)."""

    def __init__(self, parent: str, why: Exception) -> None:
        super().__init__(parent, why)
        self.parent, self.why = parent, why


def _assemble(
    where: str,
    tops: list[_Top],
    loose: list[str],
    stray: str,
    given: list[str] | None = None,
) -> tuple[list[str], np.ndarray | None, list[str], list[str]]:
    """Files, labels (None: no labels at all; -1: a sample without one), classes, splits.

    ``given``: the classes in index order (every class folder must be one of them)."""
    _stray_files(loose, where, "split folders", stray)
    _check_wrapped(where, tops, given)
    _check_split_inside(where, tops, given)
    _check_splits_named_otherwise(where, tops, given)
    _warn_nested_alike(where, tops)
    labelled = []
    for t in tops:
        has_classes = any(t.classes.values())
        if t.direct and has_classes:
            _stray_files(
                t.direct, t.where, f"class folders ({', '.join(sorted(t.classes))})", stray
            )
            t.direct = []
        if not t.direct:
            labelled.append(t)
    bare = [t.where for t in tops if t.split and not t.direct and not any(t.classes.values())]
    if bare:
        logger.warning(
            "from_folder(%r): the split folder(s) %s hold no images, so the set has no such "
            "split (split() leaves it out, ingest writes no store for it); put its images "
            "there, or remove the folder if that is what you want",
            where,
            ", ".join(repr(b) for b in bare),
        )
    _check_same_looking(tops)
    _check_split_classes(tops)
    if given is None:  # (classes given name them: no split was meant)
        _warn_split_named_classes(where, tops)
    classes = sorted({c for t in labelled for c in t.classes})
    if given is not None and classes:
        extra = [c for c in classes if c not in given]
        if extra:
            raise ValueError(
                f"{where!r} holds class folder(s) that are not among the classes given: "
                f"{', '.join(repr(c) for c in extra)}"
                + near_misses(extra, given)
                + f"; the classes given are {given}"
            )
        classes = list(given)
    empty = [c for c in classes if not any(t.classes.get(c) for t in labelled)]
    if given is not None:
        empty = []  # classes given: those without samples here are expected (a small split)
    if empty:
        logger.warning(
            "from_folder(%r): class folder(s) without images: %s. They stay classes (their "
            "indices are kept, a model gets an output for each) but no sample has them; "
            "remove the folders if that is not what you want",
            where,
            ", ".join(repr(c) for c in empty),
        )
    cased = case_groups(classes)
    if cased and given is None:
        logger.warning(
            "from_folder(%r): class folders whose names differ only in letter case are "
            "separate classes: %s. If each pair is one class, merge the folders (on macOS and "
            "Windows they would be one folder); if case matters (EMNIST-like letters), pass "
            "classes= to say so",
            where,
            "; ".join(" and ".join(repr(n) for n in names) for names in cased),
        )
    ordered = None if given is not None else text_ordered(classes)
    if ordered is not None:
        moved, by_value = ordered
        logger.warning(
            "from_folder(%r): class folders named by numbers are numbered in text order, as "
            "ImageFolder does (%s): folder %s is not index %s. Pass classes=%r to number them "
            "by their value",
            where,
            ", ".join(f"{c!r} -> {i}" for i, c in enumerate(classes) if c in moved),
            repr(moved[0]),
            moved[0],
            by_value,
        )
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    split_of: list[str] = []
    for t in tops:
        if t.direct:
            files.extend(t.direct)
            labels.extend([NO_LABEL] * len(t.direct))
            split_of.extend([t.split] * len(t.direct))
            continue
        for c in classes:
            found = t.classes.get(c, [])
            files.extend(found)
            labels.extend([index[c]] * len(found))
            split_of.extend([t.split] * len(found))
    if not files:
        raise NoImagesFoundError(
            f"no image files under {where!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "expected class folders of images, or images directly in the folder"
        )
    lab = None if not classes else np.array(labels, dtype=np.int64)
    return files, lab, classes, split_of


def from_folder(
    root: str | os.PathLike[str],
    *,
    size: Sequence[int],
    channels: int = 3,
    dtype: str | None = None,
    resize: str = "stretch",
    draft: bool = True,
    on_error: str = "raise",
    chunks: int = DEFAULT_BLOCK,
    masks: str | os.PathLike[str] | None = None,
    mask_dtype: str | None = None,
    stray: str = "raise",
    exclude: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
) -> ImageSet:
    """An :class:`ImageSet` from a folder of class subfolders (``root/<class>/<file>``).

    Classes are the subfolder names, sorted; labels are their indices. Files are found
    recursively below each class folder; hidden files and files without an image ending
    (see ``IMAGE_EXTENSIONS``) are not samples; the latter are named in a logged warning
    (``logging.getLogger("daskimg")``), so a folder of ``.heic`` photos is not lost
    unnoticed. A root that holds ``train/``, ``valid/``
    (or ``training/``, ``val/``, ``validation/``, ``testing/``) and ``test/`` folders is recognised: the classes are the union over the
    splits (so indices agree across splits) and ``ds.split()`` returns the predefined splits.
    Without ``train/``, split folders alone (``valid/`` and ``test/``, an evaluation set)
    are splits too; one beside other folders is a class.
    A folder of images without class folders (the root, or a split folder such as a
    flat ``test/``) gives samples without labels: ``labels`` is None for the set or
    split, and ``-1`` for those samples in a set that also has labelled ones. An image
    beside class folders is an error (see ``stray``). Nothing is decoded; options are
    those of :func:`daskimg.imread`.

    ``root`` may be a URL (``"s3://bucket/train"``, with ``storage_options``): it is
    listed once with fsspec, and gives the same set as the same tree on disk (folders
    exist there only as key prefixes, so an empty class folder is not a class; one holding
    only other files, a ``.DS_Store``, is one, as on disk).

    Parameters
    ----------
    masks
        A folder of segmentation masks, one per image by its path relative to ``root``,
        with any image ending: ``root/a/b.jpg`` pairs with ``masks/a/b.png`` (or ``.npy``,
        ...). They become the ``masks`` column ``(N, H, W)``, resized with each image's
        exact geometry by nearest neighbour (:mod:`daskimg.read.masks`). An image without
        a mask is an error naming both files. A mask folder inside ``root`` is not read
        as a class.
    mask_dtype
        dtype of the stored masks; by default the first mask file's (uint8 for 8-bit,
        palette and 1-bit files, uint16 for 16-bit ones).
    stray
        ``"raise"`` (default): an image file directly beside class folders (or beside
        split folders) is an error naming it. ``"ignore"``: such files are left out, with
        a logged warning.
    exclude
        A folder inside ``root`` (or several) that is not part of the set, e.g. where its
        stores are written: left out with everything below it, so a second run does not
        read it as a class (``daskimg ingest`` passes its ``OUT``). A mask folder inside
        ``root`` is left out already.
    classes
        The class names in index order, e.g. the training split's (``train.classes``), so
        that another split read on its own numbers its classes as training did. Every
        class folder must be one of them; classes without a folder have no samples.
        Default: the class folders sorted as text (folders ``0`` .. ``10`` give ``'0', '1',
        '10', '2', ...``, so folder ``2`` is index 3, as with torchvision's ``ImageFolder``;
        that is logged: pass ``classes=`` to number them otherwise), except for a split folder read on its own
        (``from_folder("data/valid")`` beside ``data/train``): it takes the classes that
        reading ``data`` gives its splits (the class folders of every split), so that
        ``valid/`` missing a class does not shift the indices of the classes after it; a
        class folder with images that ``train/`` lacks is refused, as when reading ``data``.

    The set also has a ``source_size`` column ``(N, 2)`` (each source's height and width
    after EXIF orientation; ``(N, 3)`` for volumes), computed as the files are decoded.

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = di.testing.make_image_folder(root, n=6, classes=("cat", "dog"))
    >>> ds = di.from_folder(root, size=(16, 16))
    >>> ds.classes, ds.labels.tolist()
    (('cat', 'dog'), [0, 0, 0, 1, 1, 1])
    """
    if stray not in STRAY:
        raise ValueError(f"stray must be 'raise' or 'ignore'; got {stray!r}")
    root, masks = as_local(root), as_local(masks)  # file:// as the paths they are
    url = str(root).rstrip("/") if is_url(root) else None
    if url is None:
        check_options(root, storage_options)
        root = anchored(root)  # the files are opened when computed, maybe elsewhere
        if not Path(root).is_dir():
            raise NoImagesFoundError(
                f"{os.fspath(root)!r} is not a folder; pass a folder of class subfolders"
            )
    given = given_classes(classes)
    mask_root = None if masks is None else _mask_root(masks, root, url)
    excluded = [
        as_local(str(e)).rstrip("/")
        for e in (
            [] if exclude is None
            else [exclude] if isinstance(exclude, (str, os.PathLike)) else list(exclude)
        )
    ]  # fmt: skip
    left_out = excluded + ([] if mask_root is None else [mask_root])
    if url is not None:
        fs, base_path = filesystem(url, storage_options)
        base_path = base_path.rstrip("/")
        _check_excluded(excluded, base_path, lambda e: filesystem(e, storage_options)[1], fs)
        # compared as the file system's own paths ("memory:///data/x" is "memory://data/x")
        paths = [filesystem(e, storage_options)[1].rstrip("/") for e in left_out if is_url(e)]
        paths += [base_path + "/" + e.strip("/") for e in left_out if not is_url(e)]
        inside = [p[len(base_path) + 1 :] for p in paths if p.startswith(base_path + "/")]
        tops, loose = _url_tops(url, fs, base_path, inside, stray, given)
    else:
        # a relative folder is one inside the root when it is there (exclude="stores"),
        # otherwise relative to the working directory (the CLI's OUT)
        reals = frozenset(
            os.path.realpath(
                os.path.join(root, e)
                if not os.path.isabs(e) and os.path.exists(os.path.join(root, e))
                else e
            )
            for e in left_out
            if not is_url(e)
        )
        _check_excluded([e for e in excluded if not is_url(e)], os.fspath(root), None, None)
        tops, loose = _local_tops(Path(root), reals, stray, given)
    where = url or os.fspath(root)
    _report_others(where, [f for t in tops for f in t.others])
    if given is None and len(tops) == 1 and not tops[0].split and not tops[0].direct:
        try:
            with _quiet():
                parent = (
                    _parent_tops(root, None, None, list(reals), stray)
                    if url is None
                    else _parent_tops(root, url, (fs, base_path), paths, stray)
                )
        except _Unreadable as e:
            parent = None
            logger.warning(
                "from_folder(%r): a split folder, but its parent %r cannot be read as a set "
                "(%s), so its classes are numbered on their own, not as the splits beside it "
                "number them (a class missing here shifts the indices after it). Pass "
                "classes= (every class, in index order) to number every split alike",
                where,
                e.parent,
                e.why,
            )
        given = _split_alone_classes(where, tops[0], parent)
    files, labels, classes, split_of = _assemble(where, tops, loose, stray, given)
    base: str | Path = url or Path(root)
    rel = relative_paths(files, base)
    remote = None if url is None else RemoteFiles(protocol_of(url), dict(storage_options or {}))
    mask_files = None
    if mask_root is not None:
        mask_files = _pair_masks(rel, files, mask_root, storage_options)
        warn_lossy_masks(mask_files, f"from_folder({os.fspath(mask_root)!r})")
    spec = DecodeSpec(
        size=tuple(size),
        channels=channels,
        dtype=resolve_dtype(dtype, size, files, remote, skip=on_error == "skip"),
        resize=resize,
        draft=draft,
        dtype_taken=dtype is None,
    )
    refuse_volume_masks(spec, mask_files, None)
    source = FileSource(
        tuple(files),
        spec,
        chunks,
        remote,
        mask_files,
        resolve_mask_dtype(mask_dtype, mask_files, remote, files, skip=on_error == "skip"),
    )
    splits = {t.split for t in tops}
    return file_set(
        source,
        labels,
        classes=classes,
        paths=rel,
        root=base,
        on_error=on_error,
        source_splits=np.array(split_of, dtype=object) if splits != {""} else None,
    )


def _mask_root(masks: str | os.PathLike[str], root: Any, url: str | None) -> str:
    if is_url(masks):
        if url is None:
            raise ValueError(
                f"masks={str(masks)!r} is a URL but root {str(root)!r} is local; keep them together"
            )
        return str(masks).rstrip("/")
    if url is not None:
        raise ValueError(
            f"masks={str(masks)!r} is local but root {url!r} is a URL; pass a URL for masks too"
        )
    if not Path(masks).is_dir():
        raise NoImagesFoundError(
            f"masks={os.fspath(masks)!r} is not a folder; pass the folder of mask files "
            "(one per image, by the image's path relative to root)"
        )
    return os.path.abspath(masks)


def _pair_masks(
    rel: np.ndarray,
    files: list[str],
    mask_root: str,
    storage_options: Mapping[str, Any] | None,
) -> tuple[str, ...]:
    """Each image's mask: the file under ``mask_root`` with its relative path and any ending."""
    if is_url(mask_root):
        fs, base = filesystem(mask_root, storage_options)
        base = base.rstrip("/")
        found = [k[len(base) + 1 :] for k in fs.find(base) if k.startswith(base + "/")]
        candidates = [(r, join(mask_root, r)) for r in found]
    else:
        candidates = [
            (Path(f).relative_to(mask_root).as_posix(), os.fspath(f))
            for f in _files_under(Path(mask_root))
        ]
    by_stem: dict[str, list[str]] = {}
    for r, full in candidates:
        if _is_image(posixpath.basename(r)):
            by_stem.setdefault(posixpath.splitext(r)[0], []).append(full)
    out = []
    claimed: dict[str, str] = {}
    for r, image in zip(rel, files, strict=True):
        stem = posixpath.splitext(str(r))[0]
        other = claimed.setdefault(stem, image)
        if other != image:  # cat/a.jpg and cat/a.png would share one mask
            raise ValueError(
                f"{other!r} and {image!r} would share the mask {stem + '.*'!r} under "
                f"{mask_root!r} (masks are found by the image's path without its ending); "
                "rename one of the images (and give it its own mask), or leave one out"
            )
        got = by_stem.get(stem, [])
        if len(got) != 1:
            shown = mask_root.rstrip("/") + "/" + stem + ".*"
            if not got:
                raise NoImagesFoundError(
                    f"no mask for {image!r}: expected a file {shown!r} (a mask per image, by "
                    "its path relative to root, with any image ending); add it, or leave the "
                    "image out"
                )
            raise ValueError(
                f"{image!r} has {len(got)} masks ({', '.join(repr(g) for g in sorted(got))}); "
                "keep one file per image"
            )
        out.append(got[0])
    orphans = sorted(set(by_stem) - set(claimed))
    if orphans:  # an image missing, or named otherwise than its mask
        shown = ", ".join(repr(by_stem[o][0]) for o in orphans[:3])
        logger.warning(
            "from_folder: %d mask file(s) under %r belong to no image read: %s%s. If their "
            "images are missing or named otherwise (a mask is found by the image's path "
            "without its ending), add or rename them",
            len(orphans),
            mask_root,
            shown,
            f" and {len(orphans) - 3} more" if len(orphans) > 3 else "",
        )
    return tuple(out)
