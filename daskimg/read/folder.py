"""Read: :func:`from_folder` — a folder of class subfolders (or of ``train/``, ``valid/``, ``test/``)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NoImagesFoundError
from ..remote import RemoteFiles, check_options, filesystem, is_url, join, protocol_of
from .decode import DecodeSpec
from .files import DEFAULT_BLOCK, FileSource, relative_paths
from .imageset import ImageSet, class_index

#: file endings from_folder treats as images or volumes (case-insensitive)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
    | {".pbm", ".pgm", ".ppm", ".pnm", ".npy"}
)


#: folder names recognised as predefined splits, and the split each maps to
SPLIT_DIRS = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}


def _files_under(folder: Path) -> list[Path]:
    files: list[Path] = []
    seen: set[str] = set()
    # linked subfolders are followed like the class folder itself; each real folder once
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(
            Path(dirpath) / f
            for f in sorted(filenames)
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return files


def find_split_dirs(root: str | os.PathLike[str]) -> dict[str, Path]:
    """The predefined split folders directly under ``root`` (``train``, ``valid``/``val``, ``test``)."""
    root = Path(root)
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        split = SPLIT_DIRS.get(child.name.lower())
        if child.is_dir() and split is not None:
            if split in found:
                raise ValueError(
                    f"{root} holds both {found[split].name!r} and {child.name!r}; keep one folder per split"
                )
            found[split] = child
    return found if "train" in found else {}


def from_folder(
    root: str | os.PathLike[str],
    *,
    size: Sequence[int],
    channels: int = 3,
    dtype: str = "uint8",
    resize: str = "stretch",
    draft: bool = True,
    on_error: str = "raise",
    chunks: int = DEFAULT_BLOCK,
    storage_options: Mapping[str, Any] | None = None,
) -> ImageSet:
    """An :class:`ImageSet` from a folder of class subfolders (``root/<class>/<file>``).

    Classes are the subfolder names, sorted; labels are their indices. Files are found
    recursively below each class folder; hidden files and files without an image ending
    (see ``IMAGE_EXTENSIONS``) are not samples. A root that holds ``train/``, ``valid/``
    (or ``val/``) and ``test/`` folders is recognised: the classes are the union over the
    splits (so indices agree across splits) and ``ds.split()`` returns the predefined splits.
    Nothing is decoded; options are those of :func:`daskimg.imread`.

    ``root`` may be a URL (``"s3://bucket/train"``, with ``storage_options``): it is
    listed once with fsspec, and gives the same set as the same tree on disk (folders
    exist there only as key prefixes, so an empty class folder is not a class).

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = di.testing.make_image_folder(root, n=6, classes=("cat", "dog"))
    >>> ds = di.from_folder(root, size=(16, 16))
    >>> ds.classes, ds.labels.tolist()
    (('cat', 'dog'), [0, 0, 0, 1, 1, 1])
    """
    if is_url(root):
        return _from_folder_url(
            str(root).rstrip("/"),
            DecodeSpec(
                size=tuple(size), channels=channels, dtype=dtype, resize=resize, draft=draft
            ),
            on_error=on_error,
            chunks=chunks,
            storage_options=storage_options,
        )
    check_options(root, storage_options)
    root = Path(root)
    if not root.is_dir():
        raise NoImagesFoundError(
            f"{str(root)!r} is not a folder; pass a folder of class subfolders"
        )
    splits = find_split_dirs(root)
    tops = list(splits.items()) if splits else [("", root)]
    class_names: set[str] = set()
    for _, top in tops:
        class_names.update(
            d.name for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
    classes = sorted(class_names)
    index = class_index(classes, str(root))
    files: list[str] = []
    labels: list[int] = []
    split_of: list[str] = []
    for split, top in tops:
        for c in classes:
            found = _files_under(top / c) if (top / c).is_dir() else []
            files.extend(os.fspath(f) for f in found)
            labels.extend([index[c]] * len(found))
            split_of.extend([split] * len(found))
    if not files:
        raise NoImagesFoundError(
            f"no image files under {str(root)!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    spec = DecodeSpec(size=tuple(size), channels=channels, dtype=dtype, resize=resize, draft=draft)
    source = FileSource(tuple(files), spec, chunks)
    return ImageSet(
        source.to_dask(),
        np.array(labels, dtype=np.int64),
        classes=classes,
        paths=relative_paths(files, root),
        root=root,
        on_error=on_error,
        source_splits=np.array(split_of, dtype=object) if splits else None,
        row_source=source,
    )


def _from_folder_url(
    url: str,
    spec: DecodeSpec,
    *,
    on_error: str,
    chunks: int,
    storage_options: Mapping[str, Any] | None,
) -> ImageSet:
    """:func:`from_folder` over a URL: one recursive listing, the same rules as on disk."""
    fs, base = filesystem(url, storage_options)
    base = base.rstrip("/")
    rels = [k[len(base) + 1 :] for k in fs.find(base) if k.startswith(base + "/")]
    parts = [r.split("/") for r in rels]
    tops: list[tuple[str, tuple[str, ...]]] = [("", ())]
    found: dict[str, str] = {}
    for name in sorted({q[0] for q in parts if len(q) > 1}):
        split = SPLIT_DIRS.get(name.lower())
        if split is not None:
            if split in found:
                raise ValueError(
                    f"{url} holds both {found[split]!r} and {name!r}; keep one folder per split"
                )
            found[split] = name
    if "train" in found:
        tops = [(split, (name,)) for split, name in found.items()]
    depth = {split: len(prefix) for split, prefix in tops}
    class_names = {
        q[len(prefix)]
        for q in parts
        for _, prefix in tops
        if len(q) > len(prefix) + 1 and tuple(q[: len(prefix)]) == prefix
    }
    classes = sorted(c for c in class_names if not c.startswith("."))
    index = class_index(classes, url)
    files: list[str] = []
    labels: list[int] = []
    split_of: list[str] = []
    for split, prefix in tops:
        d = depth[split]
        for c in classes:
            # the order of os.walk with sorted names: a folder's files, then its subfolders
            below = sorted(
                (
                    q[d + 1 :]
                    for q in parts
                    if tuple(q[:d]) == prefix and len(q) > d + 1 and q[d] == c
                ),
                key=lambda rest: [(j < len(rest) - 1, x) for j, x in enumerate(rest)],
            )
            chosen = [
                "/".join((*prefix, c, *rest))
                for rest in below
                if not any(x.startswith(".") for x in rest)
                and posixpath.splitext(rest[-1])[1].lower() in IMAGE_EXTENSIONS
            ]
            files.extend(join(url, r) for r in chosen)
            labels.extend([index[c]] * len(chosen))
            split_of.extend([split] * len(chosen))
    if not files:
        raise NoImagesFoundError(
            f"no image files under {url!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    source = FileSource(
        tuple(files), spec, chunks, RemoteFiles(protocol_of(url), dict(storage_options or {}))
    )
    return ImageSet(
        source.to_dask(),
        np.array(labels, dtype=np.int64),
        classes=classes,
        paths=relative_paths(files, url),
        root=url,
        on_error=on_error,
        source_splits=np.array(split_of, dtype=object) if "train" in found else None,
        row_source=source,
    )
