"""Store: the splits of one set agree on what each label number means.

Each split (``train``, ``valid``, ``test``) is its own store, and each records its class
names. A label is a number, an index into them; ``valid`` read on its own from a CSV that
lacks one of train's classes numbers the rest from 0, so its ``cat`` is train's ``bird``:
a model trained on one is scored on the other against the wrong classes, without an error.
:func:`check_beside` refuses such a store when it is written beside another split's store
whose numbering differs (one list is not the start of the other); :func:`disagreeing`
finds the same among stores already written (``daskimg info OUT``). Only stores named as
splits (``train.zarr.zip``, ``valid.zarr``, ...) are compared: a folder may hold several
sets' stores (``mnist_train``, ``fashion_train``), whose classes are their own.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "REPLACING",
    "SPLIT_NAMES",
    "check_beside",
    "check_new_store",
    "disagreeing",
    "renamed",
    "split_of",
]

logger = logging.getLogger("daskimg")

#: the names a store of one split is given (``daskimg ingest`` writes ``OUT/<name>.zarr.zip``)
SPLIT_NAMES = ("train", "valid", "val", "validation", "test")

#: stores that the write in progress replaces once it is published (``daskimg ingest
#: --overwrite`` removes the earlier run's splits then): not compared with it
REPLACING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "daskimg_replacing", default=()
)


def split_of(path: str) -> str | None:
    """The split a store's name says it holds (``valid.zarr.zip``: ``valid``), or None."""
    name = os.path.basename(path.rstrip("/")).lower()
    for suffix in (".zarr.zip", ".zarr"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return stem if stem in SPLIT_NAMES else None
    return None


#: names that are one split: a store named ``val`` holding split ``valid`` is no mix-up
_SAME = {"val": "valid", "validation": "valid"}


def renamed(path: str, attrs: dict[str, Any]) -> str | None:
    """What is wrong when the store at ``path`` is named as a split (``train.zarr.zip``) but
    holds another, recorded when it was written (``valid``): stores renamed or swapped by
    hand, whose loaders would train on the validation set without a word. None if not."""
    recorded = attrs.get("split")
    named = split_of(path)
    if not isinstance(recorded, str) or recorded.lower() not in SPLIT_NAMES or named is None:
        return None
    if _SAME.get(named, named) == _SAME.get(recorded.lower(), recorded.lower()):
        return None
    return (
        f"{path} is named as split {named!r} but holds split {recorded!r} (written with "
        f"split={recorded!r}): it was renamed or swapped with another store. Check which "
        "store is which (daskimg info), and give each its split's name"
    )


def _conflict(
    a: Sequence[str], b: Sequence[str], *, a_numbers: bool = False, b_numbers: bool = False
) -> int | None:
    """The first label number ``a`` and ``b`` give different classes (None: one list is
    the start of the other, or either names none). ``a_numbers``: ``a`` names none but its
    store has labels, read as numbers (``"10"`` is label 10): beside class names that are
    all numbers (codes, ``"01"`` .. ``"20"``), label ``i`` meant class ``"i"`` there and
    another one here unless ``int(b[i]) == i`` (the same codes read two ways)."""
    if a and b:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    named = b if a_numbers and not a else a if b_numbers and not b else None
    if not named or not all(n.isascii() and n.isdigit() for n in named):
        return None
    return next((i for i, n in enumerate(named) if int(n) != i), None)


def _said(
    path: str,
    split: str,
    classes: Sequence[str],
    other: str,
    osplit: str,
    oclasses: Sequence[str],
    i: int,
) -> str:
    def what(names: Sequence[str]) -> str:
        return repr(names[i]) if names else f"the number {i} (labels read as numbers)"

    def listed(names: Sequence[str]) -> str:
        return f"classes {list(names)}" if names else "no class names"

    return (
        f"{path} (split {split!r}) numbers its classes differently from {other} (split "
        f"{osplit!r}) beside it: label {i} is {what(classes)} in one and {what(oclasses)} in "
        f"the other ({listed(classes)} and {listed(oclasses)}), so a model trained on one "
        "split would be scored against the wrong classes on the other"
    )


def has_labels(path: str) -> bool:
    """Whether the store at ``path`` has labels, not all -1 (no label); False if unknown
    (not a store daskimg reads, damaged)."""
    from .open import open_store

    try:
        return _labelled(open_store(path, check_complete=False))
    except Exception:  # not this write's to judge (as the attributes above)
        return False


def _labelled(st: Any) -> bool:
    """Whether the opened store ``st`` has labels, not all -1 (False if they do not read)."""
    try:
        return "labels" in st.layouts and bool(
            (np.asarray(st.reader.read_array("labels")) >= 0).any()
        )
    except Exception:  # damaged: not this write's to judge
        return False


def check_beside(
    target: str,
    classes: Sequence[str],
    *,
    overwrite: bool,
    said: Sequence[str] = (),
    numbers: bool = False,
) -> list[str]:
    """Refuse to write the store ``target`` (a local path named as a split, e.g.
    ``out/valid.zarr.zip``) with ``classes`` when a store of another split beside it
    (``out/train.zarr.zip``) numbers its classes differently. With ``overwrite`` (every
    split re-written with new classes, one after the other) it is a warning: the others
    may be about to follow. ``numbers``: the store has labels but no class names (see
    :func:`_conflict`). Returns the stores found so (``said``: already said, skipped)."""
    from .open import open_store

    split = split_of(target)
    folder = os.path.dirname(target)
    found: list[str] = []
    if split is None or not (classes or numbers) or not os.path.isdir(folder):
        return found
    classes = [str(c) for c in classes]
    replacing = {os.path.realpath(p) for p in REPLACING.get()}
    for other in _stores_in(folder):
        if os.path.realpath(other) in replacing | {os.path.realpath(target)} or other in said:
            continue
        osplit = split_of(other)
        if osplit is None or _SAME.get(osplit, osplit) == _SAME.get(split, split):
            continue
        try:
            st = open_store(other, check_complete=False)
        except Exception:  # not a daskimg store, or damaged: not this write's to judge
            continue
        oclasses = [str(c) for c in st.attrs.get("classes") or []]
        onumbers = not oclasses and _labelled(st)  # (the store opened once)
        i = _conflict(classes, oclasses, a_numbers=numbers, b_numbers=onumbers)
        if i is None:
            continue
        wrong = _said(target, split, classes, other, osplit, oclasses, i)
        found.append(other)
        if overwrite:
            logger.warning(
                "%s. Re-write %s with these classes too (or remove it), or read this split "
                "with its classes",
                wrong,
                other,
            )
            continue
        how = (
            "Read the two the same way: from_csv(..., labels_are='names') for both (or "
            "labels_are='indices'); or, if the numbers index the other's classes, give them "
            "(classes=[...])"
            if not (classes and oclasses)
            else "Read this split with the other's classes: from_csv(..., "
            f"classes=daskimg.open_zarr({other!r}).classes) (from_folder takes classes= too)"
        )
        raise ValueError(
            f"{wrong}. Nothing was written. {how}; to re-write every split with these classes, "
            "pass overwrite=True to each (or remove the others first); or write the two to "
            "different folders if they are not splits of one set"
        )
    return found


def check_new_store(
    target: str,
    split: str | None,
    classes: Sequence[str],
    *,
    overwrite: bool,
    numbers: bool = False,
) -> list[str]:
    """Before a new store is written at the local path ``target`` (``to_zarr``, an
    ``ArrayWriter`` making one): :func:`check_beside`, and a warning when ``split`` differs
    from the split its name says (it would be said as renamed whenever opened)."""
    beside = check_beside(target, classes, overwrite=overwrite, numbers=numbers)
    if renamed(target, {"split": split}) is not None:
        logger.warning(
            "%s is named as another split than split=%r it is written with: said as renamed "
            "whenever it is opened",
            target,
            split,
        )
    return beside


def disagreeing(stores: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    """What is wrong among ``stores`` (path, attributes) of one folder: each pair of
    different splits whose class numbering differs, said."""
    said = []
    known = [
        (path, split, names, not names and has_labels(path))
        for path, attrs in stores
        if (split := split_of(path)) is not None
        for names in ([str(c) for c in attrs.get("classes") or []],)
    ]
    for i, (path, split, classes, numbers) in enumerate(known):
        for other, osplit, oclasses, onumbers in known[i + 1 :]:
            if _SAME.get(split, split) == _SAME.get(osplit, osplit):
                continue
            at = _conflict(classes, oclasses, a_numbers=numbers, b_numbers=onumbers)
            if at is not None:
                said.append(
                    _said(path, split, classes, other, osplit, oclasses, at)
                    + ": read one with the other's classes (classes=), or both with the "
                    "same labels_are=, and write it again"
                )
    return said


def _stores_in(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.endswith((".zarr.zip", ".zarr")))
