"""Read: :func:`from_csv` — file paths, labels and numeric columns from a CSV file."""

from __future__ import annotations

import csv
import decimal
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import NoImagesFoundError
from ..remote import RemoteFiles, check_options, filesystem, is_url, join, protocol_of
from .decode import DecodeSpec
from .files import DEFAULT_BLOCK, FileSource, relative_paths
from .imageset import ImageSet

_INT64 = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))


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
        row_source=source,
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
