"""Read: labelled datasets — :class:`ImageSet`, :func:`from_folder`, :func:`from_csv`, splits."""

from __future__ import annotations

import csv
import decimal
import io
import math
import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np

from .decode import DecodeSpec
from .errors import NoImagesFoundError
from .read import DEFAULT_BLOCK, ON_ERROR, FileSource, RowSource, relative_paths
from .remote import RemoteFiles, check_options, filesystem, is_url, join, protocol_of

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "from_csv", "from_folder"]

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


class ImageSet:
    """Images (lazy) with their per-sample labels, paths and extra columns.

    Parameters
    ----------
    images
        ``(N, H, W, C)`` or ``(N, D, H, W, C)`` dask or numpy array.
    labels
        ``(N,)`` integer class indices, or None.
    classes
        Class names; ``classes[labels[i]]`` names sample ``i``'s class.
    paths
        ``(N,)`` source paths relative to ``root`` (strings), or None.
    columns
        Extra per-sample numeric arrays, each with ``N`` rows (e.g. ``{"bbox": (N, 4)}``).
    root
        The folder the paths are relative to.
    on_error
        ``"raise"`` or ``"skip"``: what storing or iterating does with a file that cannot be
        decoded (only meaningful for sets read from files).

    Examples
    --------
    >>> import numpy as np, daskimg as di
    >>> ds = di.ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]), classes=["cat", "dog"])
    >>> len(ds), ds.classes
    (4, ('cat', 'dog'))
    """

    def __init__(
        self,
        images: da.Array | np.ndarray | None,
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        classes: Sequence[str] = (),
        paths: Sequence[str] | np.ndarray | None = None,
        columns: Mapping[str, np.ndarray] | None = None,
        root: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        source_splits: Sequence[str] | np.ndarray | None = None,
        _files: RowSource | None = None,
    ) -> None:
        if images is not None and not isinstance(images, da.Array):
            images = np.asarray(images)
            if images.ndim >= 3:
                images = da.from_array(images, chunks=(DEFAULT_BLOCK, *images.shape[1:]))
        if images is not None and images.ndim < 3:
            raise ValueError(
                f"images must have shape (N, H, W, C) or (N, D, H, W, C); got {images.shape}"
            )
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if images is not None:
            n = int(images.shape[0])
        else:
            # a set without images (e.g. features written back): its length comes from the other arrays
            others = [a for a in (labels, paths, *(columns or {}).values()) if a is not None]
            if not others:
                raise ValueError("an ImageSet needs images or at least one per-sample array")
            n = len(others[0])
        self._n = n
        #: ``(N, H, W, C)`` dask array, or None for a store of other arrays only (e.g. features)
        self.images: da.Array | None = cast("da.Array | None", images)
        self.labels = (
            None if labels is None else _per_sample("labels", _class_indices(labels), n, np.int64)
        )
        self.classes = tuple(str(c) for c in classes)
        if self.labels is not None and self.classes and len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise ValueError(
                    f"labels must lie in 0..{len(self.classes) - 1} for {len(self.classes)} classes; "
                    f"found {lo}..{hi}"
                )
        self.paths = None if paths is None else _per_sample("paths", paths, n, object)
        self.columns = {k: _per_sample(k, v, n, None) for k, v in (columns or {}).items()}
        reserved = {"images", "labels", "paths"} & set(self.columns)
        if reserved:
            raise ValueError(f"column names {sorted(reserved)} are reserved; rename them")
        self.root = None if root is None else str(root)
        self.on_error = on_error
        self.source_splits = (
            None
            if source_splits is None
            else _per_sample("source_splits", source_splits, n, object)
        )
        self._files = _files
        #: files left out because they could not be decoded: (path, reason), filled by to_zarr
        self.skipped: list[tuple[str, str]] = []
        #: the store's ``daskimg`` attributes and path, for sets from :func:`daskimg.open_zarr`
        self.attrs: dict[str, Any] = {}
        #: a local store's path (the loader memory-maps it); None for stores at a URL
        self.store_path: str | None = None
        #: the URL of a store opened from object storage (``s3://...``), else None
        self.store_url: str | None = None

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        parts = [
            f"images={self.images.shape} {self.images.dtype}"
            if self.images is not None
            else f"n={self._n}"
        ]
        if self.labels is not None:
            parts.append(f"labels={len(self.labels)}")
        if self.classes:
            shown = ", ".join(self.classes[:8]) + (", ..." if len(self.classes) > 8 else "")
            parts.append(f"classes=[{shown}]")
        if self.columns:
            parts.append("columns=" + ",".join(self.columns))
        return f"ImageSet({', '.join(parts)})"

    @property
    def arrays(self) -> dict[str, Any]:
        """Every per-sample array by name: ``images``, ``labels``, ``paths`` and extra columns."""
        out: dict[str, Any] = {} if self.images is None else {"images": self.images}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.paths is not None:
            out["paths"] = self.paths
        out.update(self.columns)
        return out

    def require_images(self) -> da.Array:
        """``images``, or a clear error for a set that has none."""
        if self.images is None:
            raise ValueError(
                f"this set has no images, only {sorted(self.arrays)}; "
                "it was probably written by daskimg.ArrayWriter"
            )
        return self.images

    @property
    def spec(self) -> DecodeSpec | None:
        """How the images are decoded, for sets read from files."""
        return self._files.spec if isinstance(self._files, FileSource) else None

    def show(self, *, n: int = 32, seed: int | None = 0) -> Any:
        """A grid of ``n`` random samples with their class names.

        In a notebook it displays inline; elsewhere save it with ``.savefig(path)``
        (``.figure`` is the matplotlib figure).
        """
        from .show import Grid, grid_figure

        return Grid(grid_figure(self, n=n, seed=seed))

    def take(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """A new set with the samples at ``indices``, in that order (or where a boolean mask is True).

        For sets read from files, the lazy images are rebuilt over the chosen files (a small
        graph, nothing decoded), rather than gathered across blocks.
        """
        raw = np.asarray(indices)
        if raw.dtype == bool:  # a mask, as numpy reads it (not the indices 0 and 1)
            if raw.shape != (len(self),):
                raise IndexError(
                    f"a boolean mask of {raw.size} values for {len(self)} samples; "
                    "pass one value per sample, or integer indices"
                )
            raw = np.flatnonzero(raw)
        idx = raw.astype(np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices must lie in 0..{len(self) - 1}")
        files = None if self._files is None else self._files.take(idx)
        images = (
            files.to_dask()
            if files is not None
            else None
            if self.images is None
            else self.images[idx]
        )
        return ImageSet(
            images,
            None if self.labels is None else self.labels[idx],
            classes=self.classes,
            paths=None if self.paths is None else self.paths[idx],
            columns={k: v[idx] for k, v in self.columns.items()},
            root=self.root,
            on_error=self.on_error,
            source_splits=None if self.source_splits is None else self.source_splits[idx],
            _files=files,
        )

    def split(
        self,
        fractions: Mapping[str, float] | None = None,
        *,
        seed: int | np.random.Generator | None = 0,
        stratify: bool = True,
    ) -> dict[str, ImageSet]:
        """Split into disjoint subsets, e.g. ``{"train": 0.8, "valid": 0.1, "test": 0.1}``.

        Stratified by label when there are labels: each class is divided by the fractions
        (largest remainder), and every split gets at least one sample of a class that has
        at least as many samples as there are splits. Deterministic for an integer seed.
        Without ``fractions``, a set read from a folder that already held ``train/``,
        ``valid/`` (or ``val/``), ``test/`` returns those splits.

        Examples
        --------
        >>> import numpy as np, daskimg as di
        >>> ds = di.ImageSet(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10) % 2, classes=["a", "b"])
        >>> {k: len(v) for k, v in ds.split({"train": 0.8, "test": 0.2}).items()}
        {'train': 8, 'test': 2}
        """
        if fractions is None:
            if self.source_splits is None:
                raise ValueError(
                    "pass fractions, e.g. split({'train': 0.8, 'valid': 0.1, 'test': 0.1}); "
                    "this set has no predefined train/valid/test folders"
                )
            names = [s for s in ("train", "valid", "test") if (self.source_splits == s).any()]
            return {s: self.take(np.flatnonzero(self.source_splits == s)) for s in names}
        parts = split_indices(
            len(self),
            fractions,
            labels=self.labels if stratify else None,
            seed=seed,
        )
        return {name: self.take(idx) for name, idx in parts.items()}


def _class_indices(labels: Any) -> Any:
    """``labels`` checked to be whole class indices (strings and fractions are refused)."""
    if isinstance(labels, da.Array):
        return labels
    arr = np.asarray(labels)
    if arr.dtype.kind in "USO" and any(isinstance(v, (str, bytes)) for v in arr.ravel()):
        names = sorted({str(v) for v in arr.ravel()})
        raise ValueError(
            f"labels must be integer class indices; got names such as {names[0]!r}. Pass "
            "indices and the names separately: classes = sorted(set(names)); "
            "labels = [classes.index(name) for name in names]"
        )
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr) | (arr != np.round(arr.real))
        if bad.any():
            raise ValueError(
                f"labels must be whole numbers (class indices); found {arr[bad].ravel()[0].item()} "
                "(casting would truncate it). Per-sample values such as scores or targets "
                "belong in columns=, e.g. columns={'target': values}"
            )
        return arr.real
    return arr


def _per_sample(name: str, values: Any, n: int, dtype: Any) -> Any:
    if isinstance(values, da.Array):
        # large columns (e.g. features from a store) stay lazy
        if values.ndim == 0 or values.shape[0] != n:
            raise ValueError(f"{name} must have {n} rows, one per image; got shape {values.shape}")
        return values if dtype is None else values.astype(dtype)
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows, one per image; got shape {arr.shape}")
    return arr


def split_indices(
    n: int,
    fractions: Mapping[str, float],
    *,
    labels: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, np.ndarray]:
    """Disjoint, sorted index arrays per split name (see :meth:`ImageSet.split`)."""
    if not fractions:
        raise ValueError("fractions is empty; pass e.g. {'train': 0.8, 'valid': 0.2}")
    names = list(fractions)
    fr = np.array([float(fractions[k]) for k in names])
    if (fr < 0).any() or not np.isfinite(fr).all():
        raise ValueError(f"fractions must be non-negative numbers, got {dict(fractions)}")
    if not math.isclose(fr.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must add up to 1, got {dict(fractions)} (sum {fr.sum():g})")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    out: list[list[np.ndarray]] = [[] for _ in names]
    for members in groups:
        members = rng.permutation(members)
        counts = _allocate(len(members), fr)
        for j, (a, b) in enumerate(zip(np.cumsum(counts) - counts, np.cumsum(counts), strict=True)):
            out[j].append(members[a:b])
    return {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.empty(0, np.int64)
        for name, chunks in zip(names, out, strict=True)
    }


def _allocate(m: int, fr: np.ndarray) -> np.ndarray:
    """Split ``m`` items by fractions: largest remainder, at least one per positive fraction if m allows."""
    raw = fr * m
    counts = np.floor(raw).astype(np.int64)
    for j in np.argsort(-(raw - counts), kind="stable")[: m - counts.sum()]:
        counts[j] += 1
    positive = np.flatnonzero(fr > 0)
    if m >= len(positive):
        for j in positive:
            if counts[j] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[j] += 1
    return counts


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
    index = _class_index(classes, str(root))
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
        _files=source,
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
    index = _class_index(classes, url)
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
        _files=source,
    )


def from_csv(
    csv_path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str],
    size: Sequence[int],
    path_column: str = "path",
    label_column: str | None = "label",
    columns: Mapping[str, Sequence[str]] | None = None,
    channels: int = 3,
    dtype: str = "uint8",
    resize: str = "stretch",
    draft: bool = True,
    on_error: str = "raise",
    chunks: int = DEFAULT_BLOCK,
    storage_options: Mapping[str, Any] | None = None,
) -> ImageSet:
    """An :class:`ImageSet` from a CSV of relative paths, labels and extra numeric columns.

    Parameters
    ----------
    csv_path
        A CSV file with a header row (a local path or a URL).
    root
        Folder the paths in ``path_column`` are relative to. Paths that lead outside it
        (absolute, or up through ``..``) are refused; symbolic links inside it are followed
        wherever they point, and each sample keeps the name the CSV gives it. A URL (``"s3://bucket/imgs"``) reads the images with fsspec.
    path_column, label_column
        Column names. Labels may be class names (classes are then the sorted unique names)
        or integers (used as given; whole numbers written as floats, "3.0" as pandas writes
        an integer column that had a missing value, count as integers). ``label_column=None``: no labels.
    columns
        Extra per-sample arrays to build from numeric CSV columns, e.g.
        ``{"bbox": ["x0", "y0", "x1", "y1"]}`` gives ``ds.columns["bbox"]`` of shape (N, 4)
        float32. By default every other column whose values are all numbers becomes its own
        ``(N,)`` float32 array. Whole numbers that float32 cannot hold exactly (beyond
        2**24, e.g. IDs, written "123456789" or "123456789.0") give int64 instead, and
        integers beyond int64 are refused naming the column.
    storage_options
        fsspec options for ``csv_path`` and ``root`` when they are URLs (see
        :func:`daskimg.imread`).

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> files = di.testing.make_image_folder(root, n=2)
    >>> rows = "path,label,x0,x1\\n" + "".join(f"{f.relative_to(root).as_posix()},{f.parent.name},1,2\\n" for f in files)
    >>> _ = (root / "labels.csv").write_text(rows)
    >>> ds = di.from_csv(root / "labels.csv", root=root, size=(8, 8), columns={"box": ["x0", "x1"]})
    >>> ds.columns["box"].shape, ds.classes
    ((2, 2), ('cat', 'dog'))
    """
    if not is_url(csv_path) and not is_url(root):
        check_options(root, storage_options)
    root_url = str(root).rstrip("/") if is_url(root) else None
    root_path = Path(root).resolve() if root_url is None else Path()
    if root_url is None and not root_path.is_dir():
        raise NoImagesFoundError(
            f"root {os.fspath(root)!r} is not a folder; pass root= the folder that the "
            "CSV's paths are relative to"
        )
    if is_url(csv_path):
        fs, key = filesystem(str(csv_path), storage_options)
        text = fs.cat_file(key).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        rows = list(reader)
    else:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte order mark, which would
        # otherwise become part of the first column's name
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    where = f"CSV {os.fspath(csv_path)!r}"
    for col in [path_column] + ([label_column] if label_column else []):
        if col not in header:
            raise ValueError(f"{where} has no column {col!r}; its columns are {header}")
    if not rows:
        raise NoImagesFoundError(f"{where} has a header but no rows")
    files: list[str] = []
    for line, row in enumerate(rows, start=2):
        rel = (row[path_column] or "").strip()
        if not rel:
            raise ValueError(f"{where}, line {line}: empty {path_column!r}")
        if root_url is not None:
            try:
                files.append(join(root_url, rel))
            except ValueError:
                raise ValueError(
                    f"{where}, line {line}: path {rel!r} points outside root {root_url!r}; "
                    "paths must be relative to root and stay inside it"
                ) from None
            continue
        # lexical: '..' and absolute paths may not leave the root, but a symbolic link
        # inside it may point anywhere (a cache), and the sample keeps the CSV's name
        full = Path(os.path.normpath(root_path / rel))
        if not full.is_relative_to(root_path):
            raise ValueError(
                f"{where}, line {line}: path {rel!r} points outside root {str(root_path)!r}; "
                "paths must be relative to root and stay inside it"
            )
        files.append(os.fspath(full))
    labels = None
    classes: list[str] = []
    if label_column:
        raw = [(row[label_column] or "").strip() for row in rows]
        holes = [line for line, v in enumerate(raw, start=2) if not v]
        if holes:
            shown = ", ".join(map(str, holes[:5])) + (", ..." if len(holes) > 5 else "")
            raise ValueError(
                f"{where}, line{'s' if len(holes) > 1 else ''} {shown}: no {label_column!r} ({len(holes)} of {len(rows)} rows "
                "have none); fill them in, drop those rows, or pass label_column=None to read "
                "the set without labels"
            )
        # whole numbers are class indices, also when written as floats ("3.0": an int
        # column that went through a float one)
        wholes = [_whole_value(v) for v in raw]
        if all(w is not None for w in wholes):
            ints = cast("list[int]", wholes)
            big = [
                (i, v)
                for i, (v, w) in enumerate(zip(raw, ints, strict=True))
                if not _INT64[0] <= w <= _INT64[1]
            ]
            if big:
                raise ValueError(
                    f"{where}, line {big[0][0] + 2}: label {big[0][1]} is too large for a class "
                    "index (int64); integer labels are class indices — give class names instead"
                )
            labels = np.array(ints, dtype=np.int64)
        else:
            classes = sorted(set(raw))
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[v] for v in raw], dtype=np.int64)
    used = {path_column, label_column}
    extra: dict[str, np.ndarray] = {}
    if columns is None:
        for col in header:
            if col not in used and all(_is_float(row[col]) for row in rows):
                extra[col] = _numbers([[row[col]] for row in rows], [col], where)[:, 0]
    else:
        for name, cols in columns.items():
            cols = [cols] if isinstance(cols, str) else list(cols)
            for col in cols:
                if col not in header:
                    raise ValueError(
                        f"{where} has no column {col!r} (asked for {name!r}); its columns are {header}"
                    )
            for line, row in enumerate(rows, start=2):
                bad = [c for c in cols if not _is_float(row[c])]
                if bad:
                    raise ValueError(
                        f"{where}, line {line}: column {bad[0]!r} is not a number: {row[bad[0]]!r}"
                    )
            values = _numbers([[row[c] for c in cols] for row in rows], cols, where)
            extra[name] = (
                values[:, 0] if len(cols) == 1 and isinstance(columns[name], str) else values
            )
    spec = DecodeSpec(size=tuple(size), channels=channels, dtype=dtype, resize=resize, draft=draft)
    remote = (
        None
        if root_url is None
        else RemoteFiles(protocol_of(root_url), dict(storage_options or {}))
    )
    source = FileSource(tuple(files), spec, chunks, remote)
    return ImageSet(
        source.to_dask(),
        labels,
        classes=classes,
        paths=relative_paths(files, root_url or root_path),
        columns=extra,
        root=root_url or root_path,
        on_error=on_error,
        _files=source,
    )


def _numbers(cells: list[list[str]], cols: list[str], where: str) -> np.ndarray:
    """CSV cells as float32, or int64 when they are whole numbers float32 would round.

    Whole numbers count however they are written ("16777217", "16777217.0", "1.6777217e7").
    """
    wholes = [[_whole_value(v) for v in row] for row in cells]
    if cells and all(w is not None for row in wholes for w in row):
        ints = cast("list[list[int]]", wholes)
        out = [
            (c, w)
            for row in ints
            for c, w in zip(cols, row, strict=True)
            if not _INT64[0] <= w <= _INT64[1]
        ]
        if out:
            raise ValueError(
                f"{where}: column {out[0][0]!r} holds {out[0][1]}, a whole number beyond int64 "
                "(nor can float32 hold it exactly); store it as text, or pass columns= naming "
                "only the numeric columns to keep"
            )
        if max((abs(w) for row in ints for w in row), default=0) > 2**24:
            return np.array(ints, dtype=np.int64)
    return np.array([[float(v) for v in row] for row in cells], dtype=np.float32)


_INT64 = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))


def _class_index(classes: list[str], where: str) -> dict[str, int]:
    """Class name -> label; an error if a folder has no class subfolders."""
    if not classes:
        raise NoImagesFoundError(
            f"{where!r} has no class subfolders; expected {where}/<class>/<image files> "
            "(use daskimg.imread for a flat folder without labels)"
        )
    return {c: i for i, c in enumerate(classes)}


def _whole_value(v: str | None) -> int | None:
    """The exact whole number a CSV cell spells ("3", "3.0", "1e3"), or None.

    Written as a float ("1e30"), a number beyond int64 is a measurement, not an ID: None.
    """
    if _is_int(v):
        return int(v or "")
    try:
        d = decimal.Decimal((v or "").strip())
    except decimal.InvalidOperation:
        return None
    if not d.is_finite() or d.adjusted() > 18 or d != d.to_integral_value():
        return None
    w = int(d)
    return w if _INT64[0] <= w <= _INT64[1] else None


def _is_int(v: str | None) -> bool:
    try:
        int(v or "")
    except ValueError:
        return False
    return True


def _is_float(v: str | None) -> bool:
    try:
        float(v or "")
    except ValueError:
        return False
    return True
