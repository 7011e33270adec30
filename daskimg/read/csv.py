"""Read: :func:`from_csv` — file paths, labels, boxes, masks and numeric columns from a CSV file."""

from __future__ import annotations

import contextlib
import csv
import decimal
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import NoImagesFoundError
from ..remote import RemoteFiles, as_local, check_options, filesystem, is_url, join, protocol_of
from .boxes import warn_fractions
from .decode import DecodeSpec
from .fileio import alike, case_groups, given_classes, near_misses
from .files import relative_paths, resolve_dtype
from .imageset import RESERVED, ImageSet, check_column_name, file_set, storable_like
from .masks import resolve_mask_dtype, warn_lossy_masks
from .source import DEFAULT_BLOCK, DERIVED, FileSource, refuse_volume_masks

_INT64 = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))
#: how spreadsheets, pandas and R write a missing value
_MISSING = frozenset({"na", "n/a", "#n/a", "nan", "none", "null", "nil", "-"})

logger = logging.getLogger("daskimg")


def from_csv(
    csv_path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str],
    size: Sequence[int],
    path_column: str = "path",
    label_column: str | None = "label",
    classes: Sequence[str] | None = None,
    labels_are: str | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
    boxes: Mapping[str, Sequence[str]] | None = None,
    mask_column: str | None = None,
    mask_dtype: str | None = None,
    channels: int = 3,
    dtype: str | None = None,
    resize: str = "stretch",
    draft: bool = True,
    on_error: str = "raise",
    chunks: int = DEFAULT_BLOCK,
    storage_options: Mapping[str, Any] | None = None,
) -> ImageSet:
    """An :class:`ImageSet` from a CSV of relative paths, labels, boxes, masks and numbers.

    Parameters
    ----------
    csv_path
        A CSV file with a header row (a local path or a URL).
    root
        Folder the paths in ``path_column`` are relative to (an absolute path inside it
        is read too, named through root's links or its real folder). Paths that lead
        outside it (absolute elsewhere, or up through ``..``) are refused; symbolic links
        inside it are followed
        wherever they point, and each sample keeps the name the CSV gives it. A URL (``"s3://bucket/imgs"``) reads the images with fsspec.
    path_column, label_column
        Column names. Labels may be class names (classes are then the sorted unique names)
        or integers (used as given; whole numbers written as floats, "3.0" as pandas writes
        an integer column that had a missing value, count as integers). ``label_column=None``: no labels.
    classes
        The class names in index order, e.g. the training CSV's (``train.classes``) when
        reading the validation CSV, so that an index means the same class in every split
        (each CSV's own sorted names would differ when a split lacks a class). Name labels
        are looked up in it, a name not in it is an error naming its line; integer labels
        must lie in ``0..len(classes) - 1``. Default: the sorted unique names of this CSV.
    labels_are
        ``"names"`` or ``"indices"``: how to read the labels when that is not clear from
        them. By default plain whole numbers are indices and anything else is a name
        (``01``, with a leading zero, is a name, as a folder ``01`` is); with
        ``classes`` that are numbers themselves (folders ``0`` .. ``10``, sorted as text
        ``'0', '1', '10', '2', ...``) a label ``2`` is both class ``'2'`` and index 2 (class
        ``'10'``), which is an error naming the line until ``labels_are`` says which.
    columns
        Extra per-sample arrays to build from numeric CSV columns, stored as they are, e.g.
        ``{"age": ["age"]}`` gives ``ds.columns["age"]`` of shape (N, 1) float32. By default
        every other column whose values are all numbers becomes its own ``(N,)`` float32
        array. Empty cells (pandas' missing values) are NaN. Whole numbers that float32
        cannot hold exactly (beyond 2**24, e.g. IDs, written "123456789" or
        "123456789.0") give int64 instead, and integers beyond int64 are refused naming
        the column. A column with a value float32 would change as written (a timestamp
        "1700000000.5", an ID beside a NaN cell) is float64. Digit separators ("1_2")
        are not numbers. A column of ``true``/``false`` (any case) is bool. Other (text)
        columns are not stored; a logged warning names them.
    boxes
        Box columns, each from four CSV columns ``x0, y0, x1, y1`` — the left, top, right
        and bottom edges in the source image's pixels, *after its EXIF orientation* (the
        picture as a viewer shows it), in continuous coordinates (a box around pixels
        10..19 has ``x0 = 10, x1 = 20``), e.g. ``{"bbox": ["x0", "y0", "x1", "y1"]}``.
        They are moved into the stored image's pixel frame with exactly the geometry
        applied to the pixels (``resize`` and DCT draft scaling alike); a box cut by
        ``resize="crop"`` is clipped, and one wholly outside the stored picture becomes
        NaN; one with nothing inside its source image, or reaching past its right or
        bottom edge by more than a tenth of the side (and 8 pixels), is an error naming the file (it was given in another
        frame), also with ``on_error="skip"``. Boxes within 0..1 (fractions) are named
        in a warning. Empty cells (all four) give a NaN box: a sample without one. The result is a
        lazy ``(N, 4)`` float32 column named in ``ds.boxes``; :func:`daskimg.read.boxes.to_source`
        maps it back with the ``source_size`` column. See :mod:`daskimg.read.boxes`.
    mask_column
        A column of mask files (relative to ``root``, like the images): each image's
        segmentation mask, stored as the ``masks`` column ``(N, H, W)`` with the image's
        exact geometry, resized by nearest neighbour (:mod:`daskimg.read.masks`).
    mask_dtype
        dtype of the stored masks; by default the first mask file's (uint8 for 8-bit,
        palette and 1-bit files).
    storage_options
        fsspec options for ``csv_path`` and ``root`` when they are URLs (see
        :func:`daskimg.imread`).

    Other options are those of :func:`daskimg.imread`. The set also has a ``source_size``
    column ``(N, 2)``: each source's height and width after EXIF orientation.

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> files = di.testing.make_image_folder(root, n=2, size=(32, 40))
    >>> rows = "path,label,x0,y0,x1,y1\\n" + "".join(f"{f.relative_to(root).as_posix()},{f.parent.name},4,8,20,24\\n" for f in files)
    >>> _ = (root / "labels.csv").write_text(rows)
    >>> ds = di.from_csv(root / "labels.csv", root=root, size=(16, 20), boxes={"bbox": ["x0", "y0", "x1", "y1"]})
    >>> ds.classes, ds.boxes
    (('cat', 'dog'), ('bbox',))
    >>> ds.columns["bbox"][0].compute().tolist()  # halved, like the pixels
    [2.0, 4.0, 10.0, 12.0]
    """
    csv_path, root = as_local(csv_path), as_local(root)  # file:// as the paths they are
    if not is_url(csv_path) and not is_url(root):
        check_options(root, storage_options)
    root_url = str(root).rstrip("/") if is_url(root) else None
    root_path = Path(root).resolve() if root_url is None else Path()
    if root_url is None and not root_path.is_dir():
        raise NoImagesFoundError(
            f"root {os.fspath(root)!r} is not a folder; pass root= the folder that the "
            "CSV's paths are relative to"
        )
    header, rows = _read_csv(csv_path, storage_options)
    where = f"CSV {os.fspath(csv_path)!r}"
    for col in [path_column] + [c for c in (label_column, mask_column) if c]:
        if col not in header:
            raise _no_column(where, col, header)
    if not rows:
        raise NoImagesFoundError(f"{where} has a header but no rows")
    base = root_url or root_path
    given = None if root_url is not None else os.fspath(root)  # as named, before its links
    files = _paths(rows, path_column, where, base, given)
    _refuse_repeats(rows, path_column, where, files, local=root_url is None)
    classes = given_classes(classes)
    if labels_are not in (None, "names", "indices"):
        raise ValueError(f"labels_are must be 'names', 'indices' or None; got {labels_are!r}")
    labels, classes = (
        (None, []) if not label_column else _labels(rows, label_column, where, classes, labels_are)
    )
    reserved = sorted(set(boxes or {}) & set(RESERVED))
    if reserved:  # "images" was met with the images' shape, (N, 4) not (N, H, W, C)
        raise ValueError(
            f"boxes names {reserved} are reserved ({', '.join(RESERVED)}: the set's own "
            "arrays, the feed's store index, the decode check); name the boxes otherwise, "
            "e.g. boxes={'bbox': [...]}"
        )
    taken = sorted(set(boxes or {}) & set(DERIVED))
    if taken:  # boxes={"source_size": ...} replaced the files' own sizes without a word
        raise ValueError(
            f"boxes names {taken} are taken by arrays daskimg derives from the files "
            f"({', '.join(DERIVED)}); name the boxes otherwise, e.g. boxes={{'bbox': [...]}}"
        )
    source_boxes = {
        name: _box_values(rows, cols, name, header, where) for name, cols in (boxes or {}).items()
    }
    for name, values in source_boxes.items():
        warn_fractions(values, name, where, files)
    used = {path_column, label_column, mask_column}
    used.update(c for cols in (boxes or {}).values() for c in cols)
    extra = _columns(rows, header, columns, used, where)
    _warn_raw_corners(header, columns, used, where)
    remote = (
        None
        if root_url is None
        else RemoteFiles(protocol_of(root_url), dict(storage_options or {}))
    )
    masks = None if mask_column is None else tuple(_paths(rows, mask_column, where, base, given))
    if masks is not None:
        warn_lossy_masks(masks, where)
    spec = DecodeSpec(
        size=tuple(size),
        channels=channels,
        dtype=resolve_dtype(dtype, size, files, remote, skip=on_error == "skip"),
        resize=resize,
        draft=draft,
        dtype_taken=dtype is None,
    )
    refuse_volume_masks(spec, masks, source_boxes)
    source = FileSource(
        tuple(files),
        spec,
        chunks,
        remote,
        masks,
        resolve_mask_dtype(mask_dtype, masks, remote, files, skip=on_error == "skip"),
        source_boxes,
    )
    return file_set(
        source,
        labels,
        classes=classes,
        paths=relative_paths(files, base),
        columns=extra,
        root=base,
        on_error=on_error,
    )


def _read_csv(
    csv_path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of a local or remote CSV file, each row as long as the header.

    Rows are counted as the messages count them: data row ``i`` (from 0) is called line
    ``i + 2``. Blank lines are skipped, as ``csv`` does; a file where that makes the count
    differ from the file's own lines is read with a warning saying so.
    """
    where = os.fspath(csv_path)
    try:
        if is_url(csv_path):
            fs, key = filesystem(str(csv_path), storage_options)
            text = fs.cat_file(key).decode("utf-8-sig")
        else:
            # utf-8-sig: Excel's "CSV UTF-8" starts with a byte order mark, which would
            # otherwise become part of the first column's name
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                text = fh.read()
    except UnicodeDecodeError as e:
        if e.object[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte order mark
            raise ValueError(
                f"{where}: UTF-16 text (Excel's 'Unicode Text', tab-separated), not UTF-8; save "
                "it as 'CSV UTF-8 (comma delimited)', e.g. iconv -f utf-16 -t utf-8 and "
                "commas for the tabs"
            ) from None
        raise ValueError(
            f"{where}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 (Excel: "
            "'CSV UTF-8'), e.g. iconv -f latin1 -t utf-8"
        ) from None
    with _field_limit(len(text) + 1):  # csv's limit of 131,072 characters a value
        return _parse_csv(text, where)


@contextlib.contextmanager
def _field_limit(n: int) -> Iterator[None]:
    """csv's limit on a value's length raised to ``n`` (a run-length mask or a polygon
    column is longer than its 131,072 characters), then set back."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, n))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _records(stream: io.StringIO, where: str) -> Iterator[tuple[int, list[str], str]]:
    """The rows of the CSV text in ``stream``, as csv reads them (text after a closing quote,
    ``"a.png" ,cat``, kept as pandas keeps it); but a file that ends inside a quoted value
    is refused, naming the line where the value began: a quote never closed took every line
    after it into that value, unsaid (csv's strict mode says so, but refuses the rest too).
    Each row comes with csv's ``line_num`` after it (the file's line it ends on) and its
    text as written."""
    reader = csv.reader(stream, strict=False)
    text = stream.getvalue()  # (once: it copies the text)
    end = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    while True:
        start, line = stream.tell(), reader.line_num + 1  # where the next row begins
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"{where}, line {reader.line_num}: not valid CSV ({exc})") from None
        if stream.tell() == end:  # the last row: did it close its quotes?
            try:
                list(csv.reader(io.StringIO(text[start:], newline=""), strict=True))
            except csv.Error as exc:
                if "end of data" in str(exc):
                    raise ValueError(
                        f"{where}, line {line}: a value opens a double quote that is never "
                        "closed, so every line after it was read into that value. Close the "
                        'quote; a double quote inside a quoted value is written twice ("")'
                    ) from None
        yield reader.line_num, cells, text[start : stream.tell()]


#: what ends a line for csv (and its line numbers): CR LF, LF, or a lone CR (old Mac Excel)
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _parse_csv(text: str, where: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of a CSV's ``text`` (see :func:`_read_csv`)."""
    nul = text.find("\0")
    if nul >= 0:  # read as a value's character, it made a class 'cat\0' or a path no OS has
        raise ValueError(
            f"{where}, line {len(_NEWLINE.findall(text, 0, nul)) + 1}: holds a NUL character "
            "(byte 0), "
            "which CSV text never does: the file is damaged (a write cut short, its end "
            "zero-filled) or is not text. Repair or export it again"
        )
    records = _records(io.StringIO(text, newline=""), where)
    header = next(records, (0, [], ""))[1]
    if header and header[0].lower().startswith("sep=") and not any(h.strip() for h in header[1:]):
        raise ValueError(f"{where}: the header is missing{_header_hint(header)}")
    # unnamed columns (Excel's trailing empty ones, "path,label,,") are never read
    twice = sorted({h for h in header if h.strip() and header.count(h) > 1})
    if twice:
        raise ValueError(
            f"{where}: the header names the column(s) {', '.join(map(repr, twice))} more than "
            "once; which one would be read? Give each column its own name"
        )
    rows: list[dict[str, Any]] = []
    shifted = False
    unnamed = [i for i, h in enumerate(header) if not h.strip()]
    valued: dict[int, tuple[int, str]] = {}  # an unnamed column's first value
    short: dict[int, int] = {}  # the lines with fewer values than the header: how many
    named = [h.strip().lstrip("\ufeff").strip() for h in header]
    for line_num, cells, raw in records:
        if not cells or (len(cells) == 1 and not cells[0].strip(" \t") and '"' not in raw):
            continue  # a blank line, or one of only spaces or tabs (pandas skips both; not "")
        if len(header) > 1 and [c.strip().lstrip("\ufeff").strip() for c in cells] == named:
            raise ValueError(
                f"{where}, line {line_num}: the header again ({','.join(cells)}), as "
                "where two CSV files were joined; it would be read as an image and a "
                "class. Remove the line (e.g. concatenate with the header kept once)"
            )
        shifted = shifted or line_num != len(rows) + 2
        if len(cells) > len(header) and not any(c.strip() for c in cells[len(header) :]):
            cells = cells[: len(header)]  # trailing empty cells ("a.png,cat,")
        elif len(cells) < len(header):
            # trailing empty values left out (Excel does so), or a line cut short: said below
            short.setdefault(line_num, len(cells))
            cells = cells + [""] * (len(header) - len(cells))
        if len(cells) != len(header):
            # "path;label" with a "1,5" in a row: the separator, not the quoting
            raise ValueError(
                f"{where}, line {line_num}: {len(cells)} value(s) for {len(header)} "
                f"column(s) ({', '.join(header)}): {cells!r}"
                + (
                    _separator_hint(header)
                    or ". A comma inside a value needs the value in double quotes"
                )
            )
        for i in unnamed:
            if cells[i].strip() and i not in valued:
                valued[i] = (line_num, cells[i])
        rows.append(dict(zip(header, cells, strict=True)))
    for i, (line, value) in valued.items():
        # Excel's trailing empty columns are unnamed and empty; one with values is data
        logger.warning(
            "%s: column %d has no name in the header but holds values (line %d: %r); it is "
            "not read. %s",
            where, i + 1, line, value,
            "pandas' to_csv writes its index so: save with index=False" if i == 0
            else "Name it in the header to keep it",
        )  # fmt: skip
    if short:
        line, n = next(iter(short.items()))
        logger.warning(
            "%s: %d line(s) hold fewer values than the header's %d columns (line %d: %d), "
            "their missing last cells read as empty (a number NaN, a box none): as Excel "
            "writes trailing empty cells, or a line cut short. Check line(s) %s",
            where, len(short), len(header), line, n, ", ".join(map(str, list(short)[:8])),
        )  # fmt: skip
    if shifted:
        logger.warning(
            "%s: blank lines or values spanning lines: the line numbers in messages count "
            "data rows from 2 (the first after the header), not the file's own lines",
            where,
        )
    return header, rows


def _paths(
    rows: list[dict[str, Any]],
    column: str,
    where: str,
    root: str | Path,
    given: str | None = None,
) -> list[str]:
    """The files a column names, relative to ``root`` and refused if they leave it.
    ``given``: a local root as the caller named it (for messages), ``root`` being its real
    folder: an absolute path through links to a folder inside it (``/data/...`` for
    ``root="/data"``, a link to a disk) is inside it too."""
    files: list[str] = []
    folders: dict[Path, Path | None] = {}  # absolute paths' folders named from root, once each
    for line, row in enumerate(rows, start=2):
        raw = row[column] or ""
        rel = raw.strip()
        if rel != raw and isinstance(root, Path) and os.path.lexists(root / raw):
            rel = raw  # a file whose name starts or ends with spaces, named as it is
        if not rel:
            raise ValueError(f"{where}, line {line}: empty {column!r}")
        if is_url(rel) and not (isinstance(root, Path) and os.path.lexists(root / rel)):
            # 'http:/example.com/0.png' under root was decoded, and failed as no such file
            raise ValueError(
                f"{where}, line {line}: path {rel!r} is a URL; from_csv takes paths relative "
                f"to root ({str(root)!r}). For images at a URL, pass its folder as root "
                "(root='https://example.com/images/') and the paths relative to it"
            )
        if isinstance(root, str):
            try:
                files.append(join(root, rel))
            except ValueError:
                raise ValueError(
                    f"{where}, line {line}: path {rel!r} points outside root {root!r}; "
                    "paths must be relative to root and stay inside it"
                ) from None
            continue
        # lexical: '..' and absolute paths may not leave the root, but a symbolic link
        # inside it may point anywhere (a cache), and the sample keeps the CSV's name
        full = Path(os.path.normpath(root / rel))
        if not full.is_relative_to(root) and given is not None and os.path.isabs(rel):
            # an absolute path through a link to root or a folder inside it (the link root
            # was named by, /data -> /mnt/disk1/data)
            if full.parent not in folders:
                folders[full.parent] = _inside(full.parent, root)
            inside = folders[full.parent]
            if inside is not None:
                full = inside / full.name
        if not full.is_relative_to(root):
            named = given if given is not None else str(root)
            also = f" (the folder {str(root)!r})" if named != str(root) else ""
            raise ValueError(
                f"{where}, line {line}: path {rel!r} points outside root {named!r}{also}; "
                "paths must be relative to root and stay inside it"
            )
        if ".." in Path(rel).parts:
            # the system takes '..' after a link from the link's target: another file
            # than the one the text names ('link/../x.png' is not 'x.png')
            read, named = os.path.realpath(root / rel), os.path.realpath(full)
            if read != named:
                raise ValueError(
                    f"{where}, line {line}: path {rel!r} goes through a link and then '..': "
                    f"the system reads {read!r}, not {named!r}; write the path without '..'"
                )
        files.append(os.fspath(full))
    return files


def _inside(folder: Path, root: Path) -> Path | None:
    """``folder`` named from ``root`` (a real path): its first ancestor (or itself) whose
    real path is ``root`` or in it, the rest of it as written (links below it, which may
    point anywhere as inside root, kept); None if no ancestor leads into root."""
    parts = folder.parts
    for k in range(1, len(parts) + 1):
        real = Path(os.path.realpath(Path(*parts[:k])))
        if real.is_relative_to(root):
            return real.joinpath(*parts[k:])
    return None


def _refuse_repeats(
    rows: list[dict[str, Any]], column: str, where: str, files: list[str], *, local: bool
) -> None:
    """An image file on two rows (masks may be shared: a blank mask for every negative),
    also when one row reaches it through a link (a file link, or a link to its folder)."""
    first: dict[str, int] = {}
    for line, f in enumerate(files, start=2):
        seen = first.setdefault(f, line)
        if seen != line:
            a, b = (rows[n - 2][column].strip() for n in (seen, line))
            said = repr(a) if a == b else f"the same file ({a!r} and {b!r})"
            raise ValueError(
                f"{where}, lines {seen} and {line}: both name {said}. "
                "from_csv reads one row per image: a file on two rows would be two samples (and "
                "could land in two splits, a test image also trained on). Remove the repeated "
                "row; a CSV with one row per box needs its rows grouped by image first (boxes "
                "in columns, see boxes=)"
            )
    if not local:
        return
    # a row naming a file the CSV names directly too, through a link: the same image twice.
    # Links that only share a target (git-annex and DVC keep identical files once) are
    # separate samples, as from_folder reads them
    direct: dict[str, int] = {}
    linked: dict[str, int] = {}
    for line, (f, real) in enumerate(zip(files, _real_files(files), strict=True), start=2):
        (direct if real == f else linked).setdefault(real, line)
        if real in direct and real in linked:
            a, b = sorted((direct[real], linked[real]))
            names = [rows[k - 2][column].strip() for k in (a, b)]
            raise ValueError(
                f"{where}, lines {a} and {b}: {names[0]!r} and {names[1]!r} are the same file "
                f"({real!r}, one of them through a link). from_csv reads one row per image: "
                "the file would be two samples (and could land in two splits). Remove one of "
                "the rows"
            )


def _real_files(files: list[str]) -> list[str]:
    """The real path of each local file: each folder's real path is looked up once, and
    only names its listing shows to be links are resolved one by one (no call per file
    otherwise). A folder that cannot be listed, or a missing file, keeps its path (reading
    it names what is wrong)."""
    folders: dict[str, tuple[str, frozenset[str]]] = {}
    out = []
    for f in files:
        d, name = os.path.split(f)
        known = folders.get(d)
        if known is None:
            try:
                with os.scandir(d) as listing:
                    links = frozenset(e.name for e in listing if e.is_symlink())
            except OSError:
                links = frozenset()
            known = folders[d] = (os.path.realpath(d), links)
        real_dir, links = known
        out.append(os.path.realpath(f) if name in links else os.path.join(real_dir, name))
    return out


def _labels(
    rows: list[dict[str, Any]],
    label_column: str,
    where: str,
    given: Sequence[str] | None = None,
    labels_are: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Labels (class indices) and class names (empty for integer labels, unless ``given``)."""
    labels, classes = _own_labels(
        rows,
        label_column,
        where,
        names=labels_are == "names",
        padded=labels_are == "indices",
        given=given,
    )
    if labels_are == "indices" and classes:
        line = next(
            i for i, c in enumerate(_classes_of(labels, classes), 2) if _whole_value(c) is None
        )
        raise ValueError(
            f"{where}, line {line}: label {rows[line - 2][label_column].strip()!r} is not a "
            "whole number, but labels_are='indices'"
        )
    if given is not None and not len(given) and not classes:
        given = None  # train.classes of a set labelled by indices: () names no class
    if given is None:
        if not classes and len(labels) and labels.min() < 0:
            i = int(np.argmin(labels))
            raise ValueError(
                f"{where}, line {i + 2}: label {rows[i][label_column].strip()!r} is not a class "
                "index (0 or more). If the labels are -1/1 (or other signed values) naming "
                "classes, pass labels_are='names'; to mark samples without a label as -1, pass "
                "classes=[...] (then -1 means no label)"
            )
        return labels, classes
    given = list(given)
    if not classes and labels_are is None:
        _refuse_ambiguous(rows, label_column, where, labels, given)
    if classes:  # names: looked up in the given list
        index = {c: i for i, c in enumerate(given)}
        unknown = [
            (line, c) for line, c in enumerate(_classes_of(labels, classes), 2) if c not in index
        ]
        if unknown:
            line, name = unknown[0]
            spaced = [c for c in given if c != c.strip() and c.strip() == name]
            raise ValueError(
                f"{where}, line {line}: label {name!r} is not one of the classes given "
                f"({given}){near_misses([name], given)}; {len(unknown)} row(s) have such labels"
                + (
                    f". A label is read without the spaces around it unless the cell is a "
                    f"class name exactly as written: write {spaced[0]!r} in the CSV (quoted: "
                    f'"{spaced[0]}"), or rename that class'
                    if spaced
                    else ""
                )
            )
        return np.array([index[c] for c in _classes_of(labels, classes)], dtype=np.int64), given
    bad = np.flatnonzero((labels < -1) | (labels >= len(given)))  # -1: no label
    if len(bad):
        raise ValueError(
            f"{where}, line {int(bad[0]) + 2}: label {int(labels[bad[0]])} is not an index of the "
            f"{len(given)} classes given ({given})"
        )
    return labels, given


def _refuse_ambiguous(
    rows: list[dict[str, Any]], label_column: str, where: str, labels: np.ndarray, given: list[str]
) -> None:
    """Whole-number labels that also name given classes, naming other classes (or none).

    A label names a class when the classes hold it as it is written ("2.0" beside a class
    "2.0", as a float column's labels sorted as text give them), or else the same whole
    number ("2", "2.0" or "+2" beside a class "2" or "2.0"). When every label names one,
    the column could be names as well as indices: refused wherever the two readings differ,
    a class named "-1" included (as an index, -1 is no label). A label -1 that names no
    class is no label either way."""
    exact = {c: i for i, c in enumerate(given)}
    by_value: dict[int, list[int]] = {}
    for i, c in enumerate(given):
        w = _whole_value(c)
        if w is not None:
            by_value.setdefault(w, []).append(i)
    raw = [(row[label_column] or "").strip() for row in rows]
    named = []
    for line, (v, k) in enumerate(zip(raw, labels.tolist(), strict=True), start=2):
        hits = [exact[v]] if v in exact else by_value.get(k, [])
        if hits:
            named.append((line, v, k, hits))
        elif k != -1:
            return  # a label that names no class: the column holds indices
    for line, v, k, hits in named:
        if hits == [k]:
            continue
        names = " and ".join(f"{given[i]!r}" for i in hits)
        if k == -1:
            other = "-1, no label"
        else:
            other = f"index {k} ({f'class {given[k]!r}' if 0 <= k < len(given) else 'no class'})"
        raise ValueError(
            f"{where}, line {line}: label {v!r} is both the class{'es' if len(hits) > 1 else ''}"
            f" named {names} (index {', '.join(map(str, hits))}) and {other}: the classes "
            "given are numbers, so the column could be either. Pass labels_are='names' if the "
            "labels name classes (as folder names do), or labels_are='indices'"
        )


def _classes_of(labels: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each row's class name."""
    return [classes[i] for i in labels.tolist()]


def _own_labels(
    rows: list[dict[str, Any]],
    label_column: str,
    where: str,
    *,
    names: bool = False,
    padded: bool = False,
    given: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Labels (class indices) and class names (empty for integer labels).

    A whole number written with leading zeros ("01", "007") or digit separators ("1_0")
    is a class name, as a folder named so is (an index column spells its numbers plainly;
    taken as index 1, "01" would name the class "02" of a set whose classes are "01",
    "02", ...), unless ``padded`` (``labels_are='indices'``). One written with an exponent
    is not guessed: "2E1" may be a code, "1.000000e+01" index 10 (numpy's ``savetxt``);
    a column of whole numbers holding one is refused until ``labels_are`` says which
    (beside labels that are no numbers, it is a name).

    Labels are read without the spaces around them, unless a class ``given`` is the cell as
    written (a folder named ``"cat "`` read by ``from_folder``: ``"cat "`` quoted in the CSV
    names it)."""
    spaced = {c for c in given or () if c != c.strip()}
    raw = [v if (v := row[label_column] or "") in spaced else v.strip() for row in rows]
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
    # numbers of one width with leading zeros ("00" .. "42") are all names, "10" too
    fixed = not padded and _fixed_width_codes(raw)
    exponent = [line for line, v in enumerate(raw, start=2) if _exponent(v)]
    if (
        exponent
        and not (names or padded)
        and not (given and set(raw) <= set(given))
        and all(_whole_value(v) is not None for v in raw)
    ):  # "1.000000e+01" (numpy's savetxt) is index 10; "2E1" may be a code: not guessed
        line = exponent[0]
        raise ValueError(
            f"{where}, line {line}: label {raw[line - 2]!r} is a whole number written with an "
            "exponent: an index written as a float (numpy's savetxt writes 1.000000e+01) or a "
            "code named so (2E1)? Say which: labels_are='indices' or labels_are='names'"
        )
    wholes = [
        None
        if names or fixed or not (padded or (_plain_number(v) and not _exponent(v)))
        else _whole_value(v)
        for v in raw
    ]
    if not names and all(w is not None for w in wholes):
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
        return np.array(ints, dtype=np.int64), []
    named = [line for line, w in enumerate(wholes, start=2) if w is None]
    if len(named) < len(raw):  # some whole numbers, some not: neither reading is safe
        shown = ", ".join(f"line {line}: {raw[line - 2]!r}" for line in named[:3])
        more = f" and {len(named) - 3} more" if len(named) > 3 else ""
        missing = any(raw[line - 2].lower() in _MISSING for line in named)
        raise ValueError(
            f"{where}: column {label_column!r} holds plain whole numbers (class indices) and "
            f"other values ({shown}{more}), so it is neither indices nor class names"
            + (
                "; those look like missing labels: fill them in, drop those rows, or pass "
                "label_column=None to read the set without labels"
                if missing
                else "; write every label as a class name, or every one as an index, or say "
                "which they are: labels_are='names' or labels_are='indices'"
            )
        )
    # classes= naming the values as they are written says they are class names
    as_names = names or (given is not None and len(given) > 0 and set(raw) <= set(given))
    fractions = [i for i, v in enumerate(raw, start=2) if _whole_value(v) is None]
    if not as_names and fractions and all(_is_float(v) and math.isfinite(float(v)) for v in raw):
        line = fractions[0]
        raise ValueError(
            f"{where}, line {line}: column {label_column!r} holds numbers with fractions "
            f"({raw[line - 2]!r}): a target or a score, not class names (each value would be a "
            "class, sorted as text). Read it as a column: label_column=None, "
            f"columns={{'target': {label_column!r}}}; or, if the values do name classes, "
            "pass labels_are='names'"
        )
    if not as_names:
        _refuse_several_labels(raw, label_column, where)
        _warn_space_separated(raw, label_column, where)
    odd = sorted({v for v in raw if v.lower() in _MISSING})
    if odd:
        logger.warning(
            "%s: the label(s) %s in column %r are taken as class names; if they mark "
            "missing labels, fill them in or drop those rows",
            where,
            ", ".join(map(repr, odd)),
            label_column,
        )
    classes = sorted(set(raw))
    if given is None:  # given: each label must be one as it is, case too (as from_folder)
        _refuse_same_looking(raw, classes, label_column, where)
        _warn_cased(raw, classes, label_column, where)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in raw], dtype=np.int64), classes


def _refuse_several_labels(raw: list[str], column: str, where: str) -> None:
    """Refuse cells that hold several labels (``cat|dog``, ``cat;dog``): each would be a
    class of its own. Taken as such when a part is itself the label of another row; a name
    that merely holds the character (``animal|cat`` beside ``animal|dog``, a path of a
    hierarchy) is not refused. Not commas: class names hold them (ImageNet's ``maillot``
    beside ``maillot, tank suit``)."""
    whole = set(raw)
    for sep in ("|", ";"):
        for v in sorted(v for v in whole if sep in v):
            parts = [p.strip() for p in v.split(sep)]
            again = next((p for p in parts if p and p != v and p in whole), None)
            if again is None:
                continue
            raise ValueError(
                f"{where}, line {raw.index(v) + 2}: label {v!r} in column {column!r} holds "
                f"several labels ({', '.join(map(repr, parts))}; {again!r} is the label of "
                f"line {raw.index(again) + 2}); read as it is, it would be a class of its "
                "own. daskimg reads one class per sample: for several, store one 0/1 column "
                "per class (columns=) with label_column=None; or, if the values are class "
                "names as written, pass labels_are='names' (or classes=[...] naming them)"
            )


def _warn_space_separated(raw: list[str], column: str, where: str) -> None:
    """Log labels made of other rows' labels joined by spaces (Planet's ``haze primary``
    beside ``haze`` and ``primary``): read as one class each, a multi-label set becomes a
    class per combination. Logged, not refused: two-word class names are common
    (``sea lion``), and only when every word is a label of its own does it look like this."""
    whole = set(raw)
    joined = sorted(
        v for v in whole if len(words := v.split()) > 1 and all(w in whole for w in words)
    )
    if joined:
        v = joined[0]
        logger.warning(
            "%s: %d label(s) in column %r are other rows' labels joined by spaces, e.g. %r "
            "(line %d: %s); each is read as one class of its own. If these samples have "
            "several labels, store one 0/1 column per class (columns=) with "
            "label_column=None",
            where, len(joined), column, v, raw.index(v) + 2,
            ", ".join(f"{w!r} is line {raw.index(w) + 2}'s label" for w in v.split()),
        )  # fmt: skip


def _refuse_same_looking(raw: list[str], classes: list[str], column: str, where: str) -> None:
    """Refuse class names that are the same letters composed differently (``café`` typed on
    macOS, e + an accent, beside a composed ``café``): two classes that print alike, the
    samples of one divided between them (``from_folder`` refuses such folders too)."""
    pair = alike(classes)
    if pair is not None:
        (first, a), (second, b) = sorted((raw.index(v) + 2, v) for v in pair[:2])
        raise ValueError(
            f"{where}: column {column!r} holds the labels {a!r} (line {first}) and "
            f"{b!r} (line {second}) ({a!a} and {b!a}), {pair[2]}: they would be two "
            "classes that print alike. Write them one way, e.g. "
            "unicodedata.normalize('NFC', label)"
        )


def _warn_cased(raw: list[str], classes: list[str], column: str, where: str) -> None:
    """Log labels that differ only in letter case (``Cat`` beside ``cat``: annotators'
    spellings): each is a class of its own, the samples of one class divided between
    them. Logged, not refused, as ``from_folder`` logs such folders: case may matter
    (EMNIST-like letters), and ``classes=`` says so."""
    cased = case_groups(classes)
    if cased:
        logger.warning(
            "%s: labels in column %r that differ only in letter case are separate classes: "
            "%s. If each pair is one class, write them one way; if case matters, pass "
            "classes=[...] to say so",
            where,
            column,
            "; ".join(
                " and ".join(f"{n!r} (line {raw.index(n) + 2})" for n in names) for names in cased
            ),
        )


def _box_values(
    rows: list[dict[str, Any]], cols: Sequence[str], name: str, header: list[str], where: str
) -> np.ndarray:
    """``(N, 4)`` float64 corners from four CSV columns; four empty cells give NaN."""
    if isinstance(cols, str) or len(cols) != 4:
        raise ValueError(f"boxes[{name!r}] must name four columns x0, y0, x1, y1; got {cols!r}")
    for col in cols:
        if col not in header:
            raise _no_column(where, col, header, f"box {name!r}")
    _check_corner_names(list(cols), name, where)
    out = np.empty((len(rows), 4), dtype=np.float64)
    for line, row in enumerate(rows, start=2):
        cells = [(row[c] or "").strip() for c in cols]
        if not any(cells) or all(v.lower() == "nan" for v in cells):
            out[line - 2] = np.nan  # a sample without this box (NaN as numpy/pandas write it)
            continue
        bad = [c for c, v in zip(cols, cells, strict=True) if not _is_float(v)]
        if bad:
            raise ValueError(
                f"{where}, line {line}: box {name!r} column {bad[0]!r} is not a number: "
                f"{row[bad[0]]!r} (leave all four cells empty for a sample without a box)"
            )
        x0, y0, x1, y1 = values = [float(v) for v in cells]
        odd = [c for c, v in zip(cols, values, strict=True) if not math.isfinite(v)]
        if odd:  # "nan" beside numbers made a box half NaN; "inf" was clipped to an edge
            raise ValueError(
                f"{where}, line {line}: box {name!r} column {odd[0]!r} is "
                f"{row[odd[0]].strip()!r}, not a pixel position; leave all four cells empty "
                "(or all four NaN) for a sample without a box"
            )
        if x1 < x0 or y1 < y0:
            raise ValueError(
                f"{where}, line {line}: box {name!r} has x0={x0:g}, y0={y0:g}, x1={x1:g}, "
                f"y1={y1:g}; expected the left, top, right and bottom edges (x0 <= x1, "
                "y0 <= y1). For x, y, width, height boxes, add width and height to x and y"
            )
        out[line - 2] = (x0, y0, x1, y1)
    return out


def _check_corner_names(cols: list[str], name: str, where: str) -> None:
    """Refuse box columns whose names say they are not x0, y0, x1, y1 in that order: a
    width or height (COCO's x, y, w, h), or the axes in another order (TensorFlow's ymin,
    xmin, ymax, xmax). Read as corners, such a box lands elsewhere without an error
    whenever its numbers happen to be ordered like corners."""
    roles = [_axis_of(c) for c in cols]
    template = {re.sub(r"\d+", "#", c.strip()) for c in cols}
    if roles == [None] * len(cols) and len(template) == 1 and len(set(cols)) == len(cols):
        # bbox-0..3, nuc_bbox-0, bbox_0_pred, 0..3: one name numbered, saying nothing
        raise ValueError(
            f"boxes[{name!r}] = {cols}: numbered box columns say neither which axis each "
            "holds nor whether the last two are corners or a width and height (scikit-image's "
            "regionprops_table writes min_row, min_col, max_row, max_col as bbox-0..3; a COCO "
            "box split into columns is x, y, width, height). A box is read from x0, y0, x1, "
            "y1 (left, top, right, bottom, in the source image's pixels): rename the columns "
            f"in the CSV so that they say so. ({where})"
        )
    sized = [c for c, r in zip(cols, roles, strict=True) if r == "size"]
    if sized:
        raise ValueError(
            f"boxes[{name!r}] = {cols}: {sized[0]!r} names a width or height, but a box is "
            "its corners x0, y0, x1, y1 (left, top, right, bottom, in the source image's "
            f"pixels). Add the width and height to x and y first (e.g. df['x1'] = df['x'] + "
            f"df['w']), then pass the four corner columns. ({where})"
        )
    if None not in roles and sorted(map(str, roles)) != ["x", "x", "y", "y"]:
        raise ValueError(
            f"boxes[{name!r}] = {cols}: the names of these columns say "
            f"{', '.join(map(str, roles))}, not two x and two y corners, so which is which "
            "cannot be told from them. A box is read from x0, y0, x1, y1 (left, top, right, "
            "bottom, in the source image's pixels): rename the columns in the CSV so that "
            f"they say so (e.g. x0, y0, x1, y1). ({where})"
        )
    wrong = [i for i, r in enumerate(roles) if r is not None and r != "xyxy"[i]]
    if wrong and None in roles:  # some names say nothing; those that do say another order
        i = wrong[0]
        raise ValueError(
            f"boxes[{name!r}] = {cols}: the columns are taken as x0, y0, x1, y1 in that "
            f"order, but {cols[i]!r} (number {i + 1}) names {'an x' if roles[i] == 'x' else 'a y'}; "
            f"list them as left, top, right, bottom. ({where})"
        )
    if None not in roles and roles != ["x", "y", "x", "y"]:
        raise ValueError(
            f"boxes[{name!r}] = {cols}: the columns are taken as x0, y0, x1, y1 in that "
            f"order, but these are {', '.join(map(str, roles))}; list them as left, top, right, bottom, "
            f"e.g. {[cols[i] for i in _xy_order(roles)]}. ({where})"
        )


def _xy_order(roles: list[str | None]) -> list[int]:
    xs = [i for i, r in enumerate(roles) if r == "x"]
    ys = [i for i, r in enumerate(roles) if r == "y"]
    return [xs[0], ys[0], xs[1], ys[1]] if len(xs) == 2 and len(ys) == 2 else list(range(4))


#: what separates the words of a column name (``bbox_x``, ``min-row``, ``x.center``)
_WORDS = re.compile(r"[_\-. ]+")


#: words of a box column's name that say it holds a width or height, not a corner
_SIZE_WORDS = frozenset(
    ("w", "h", "width", "height", "wd", "ht", "size", "sz", "len", "length", "extent", "span",
     "dx", "dy", "dw", "dh", "bw", "bh", "ncol", "ncols", "nrow", "nrows", "widths",
     "heights", "dim", "dims", "delta", "colspan", "rowspan", "num", "count", "cnt")
)  # fmt: skip


def _axis_of(column: str) -> str | None:
    """What a box column's name says it holds: "x" or "y" (a corner on that axis), "size"
    (a width or height), or None (a name that says nothing)."""
    n = column.strip().lower()
    for prefix in ("bbox", "box", "bb"):
        if n.startswith(prefix) and len(n) > len(prefix) and n[len(prefix)] in "_-. ":
            n = n[len(prefix) + 1 :]
            break
    words = set(_WORDS.split(n))  # min_row, col_left: "row" and "col" as words
    # an axis said by a word anywhere in the name (min_y, pred_ymin, bbox/ymin, minY,
    # topLeftY, row0, gt_r0, p1y, tly): see _named_axis for which says most
    rank, said = _named_axis(column)
    # a width or height in any spelling: w_px, x_size, xlen, dx, bw, ncols, n_cols,
    # width_px, boxW; not beside a corner (extent_xmin, xmin_orig_size), nor x_h, y_l
    sized = words | set(re.findall(r"[a-z]+", n)) | {w.lower() for w in _CAMEL.findall(column)}
    if len(words) == 2 and words & {"x", "y"} and words & {"l", "h"}:
        sized -= {"h"}  # x_l, y_h: low and high corners
    if rank < _CORNER and (
        n.endswith(("width", "height"))
        or n in ("cols", "rows")
        or (words & {"n", "num", "count", "cnt"} and words & {"col", "cols", "row", "rows"})
        or any(
            # xlen, ysz, xdx: a size word after x or y, but for one letter (xh, yl, xw: low
            # and high corners, as before)
            w in _SIZE_WORDS or (len(w) > 2 and w[0] in "xy" and w[1:] in _SIZE_WORDS)
            for w in sized
        )
    ):
        return "size"
    if rank >= _BARE:
        return said
    if n in ("left", "right") or n.startswith("x") or words & {"col", "cols"} or _numbered(n, "c"):
        return "x"  # also scikit-image's min_col, max_col and r0, c0, r1, c1
    if n in ("top", "bottom") or n.startswith("y") or words & {"row", "rows"} or _numbered(n, "r"):
        return "y"
    return said


#: how surely a word of a box column's name says its axis (:func:`_named_axis`)
_SIDE, _ROWCOL, _GLUED, _BARE, _CORNER = 1, 2, 3, 4, 5


def _named_axis(column: str) -> tuple[int, str | None]:
    """The axis the words of a box column's name say, and how surely: most by an axis with
    its corner (``xmin``, ``y1``, ``miny``, ``tlx``: pandas' ``xmin_y`` after a merge is an
    x), then a bare ``x`` or ``y`` (``top_left_x``), one glued to a prefix (``gty1``,
    ``boxymin``), one of rows or columns (``row0``, ``cmax``), a side (``top``, ``left``);
    the last of the surest. (0, None) when no word does."""
    best: tuple[int, str | None] = (0, None)
    parts = [p for p in _PARTS.split(column.strip()) if p]
    for i, part in enumerate(parts):
        candidates = [(part, True), *((w, True) for w in _CAMEL.findall(part))]
        if i + 1 < len(parts):  # r_min, min_r, gty_min: a corner in two parts; glued only
            # where the part alone says nothing (rmax_1 is no glued "x1", predy_0 a y0)
            alone = _word_axis(part.lower()) or _ENDS_WITH_CORNER.search(part.lower())
            candidates.append((part + parts[i + 1], alone is None))
        for word, glued in candidates:
            found = _word_axis(word.lower())
            if found is None and glued:  # boxymin, gty1: an axis glued to a prefix
                m = _ENDS_WITH_CORNER.search(word.lower())
                found = (_GLUED, m[1]) if m else None
            if found is not None and found[0] >= best[0]:
                best = found
    return best


#: what separates the parts of a column name, for the words that say its axis
_PARTS = re.compile(r"[_\-. /:]+")
#: the words of one part: minY -> min, Y; topLeftY -> top, Left, Y; p1y -> p, 1, y
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
#: words of a box column's name that say its axis, anywhere in it (``min_y``, ``row0``)
_X_WORDS = frozenset(("x", "left", "right", "col", "cols", "column", "columns"))
_Y_WORDS = frozenset(("y", "top", "bottom", "upper", "lower", "row", "rows"))
#: an axis (x, y; r, row; c, col) with the corner it is (ymin, x1, yhi, rmin, rowstart,
#: cmax) or after a corner or side (miny, maxx, p1y, minr, maxc, minrow, topy, leftx)
_AXIS_CORNER = re.compile(
    r"(x|y|rows?|cols?|columns?)(?:(?:min|max|lo|low|hi|high|start|end|tl|tr|bl|br)\d*|\d+)"
    r"|(r|c)(?:(?:min|max|start|end)\d*|\d+)"
    r"|(?:min|max|lo|low|hi|high|start|end|p\d+|pt\d+|top|bottom|left|right|upper|lower)"
    r"(x|y|rows?|cols?|columns?)"
    r"|(?:min|max|start|end)(r|c)"
    r"|(?:tl|tr|bl|br|ul|ur|ll|lr|lt|rt|lb|rb)(x|y|r|c)"  # corners first: tlx, uly (GDAL), brc
)
#: an x or y corner ending a longer word (boxymin, gtxmax, gty1)
_ENDS_WITH_CORNER = re.compile(r"(?<!bo)(?<!ma)([xy])(?:(?:min|max)\d*|\d+)$")  # not bbox0, max1
#: words that name a side, not an axis: an axis word in the same name says more
_SIDES = frozenset(("left", "right", "top", "bottom", "upper", "lower"))
#: the axis a letter or word of rows or columns in :data:`_AXIS_CORNER` names
_AXIS_OF = {"r": "y", "row": "y", "rows": "y", "c": "x", "col": "x", "cols": "x"}


def _word_axis(word: str) -> tuple[int, str] | None:
    """The axis one word of a box column's name says ("x", "y") and how surely (see
    :func:`_named_axis`), or None."""
    for axis, names in (("x", _X_WORDS), ("y", _Y_WORDS)):
        if word in names or (word[-1:].isdigit() and word.rstrip("0123456789") in names):
            base = word.rstrip("0123456789")  # also row0, col1, x0
            if base in ("x", "y"):
                return (_CORNER if base != word else _BARE), axis
            return (_SIDE if base in _SIDES else _ROWCOL), axis
    m = _AXIS_CORNER.fullmatch(word)
    if m is None:
        return None
    said = next(g for g in m.groups() if g)
    if said in ("x", "y"):
        return _CORNER, said
    return _ROWCOL, _AXIS_OF.get(said, "x" if said.startswith("column") else "y")


def _numbered(name: str, letter: str) -> bool:
    """``name`` is ``letter`` and digits (``r0``, ``c1``)."""
    return len(name) > 1 and name[0] == letter and name[1:].isdigit()


def _columns(
    rows: list[dict[str, Any]],
    header: list[str],
    columns: Mapping[str, Sequence[str]] | None,
    used: set[str | None],
    where: str,
) -> dict[str, np.ndarray]:
    """The numeric columns: those asked for, or every unused column of numbers."""
    extra: dict[str, np.ndarray] = {}
    if columns is None:
        text = []
        for col in header:
            if col in used or not col.strip():
                continue
            if not _storable_name(col) or col in DERIVED:  # (the files' own arrays' names)
                logger.warning(
                    "%s: column %r is not stored: the name is reserved or cannot name an array "
                    "in a store; to keep it, pass columns= with another name, e.g. "
                    "columns={%r: %r}",
                    where, col, storable_like(col) + "_", col,
                )  # fmt: skip
                continue
            numeric = [_is_float(row[col]) or _is_empty(row[col]) for row in rows]
            padded = next(
                (i for i, row in enumerate(rows, start=2) if not _plain_number(row[col] or "")),
                None,
            )
            if all(numeric) and padded is not None:  # codes: "02134" would be 2134
                logger.warning(
                    "%s: column %r is not stored: its values are codes with leading zeros "
                    "(line %d: %r), which numbers would drop. To store them as numbers, pass "
                    "columns=",
                    where, col, padded, rows[padded - 2][col],
                )  # fmt: skip
            elif all(numeric) and not all(_is_empty(row[col]) for row in rows):
                extra[col] = _numbers([[row[col]] for row in rows], [col], where)[:, 0]
            elif (flags := _flags([[row[col]] for row in rows])) is not None:
                extra[col] = flags[:, 0]
            elif any(_is_flag(row[col]) for row in rows) and all(
                _is_flag(row[col]) or _is_empty(row[col]) for row in rows
            ):  # (it was named among the text columns: "only numbers and true/false are")
                line = next(i for i, row in enumerate(rows, start=2) if _is_empty(row[col]))
                logger.warning(
                    "%s: column %r is not stored: it is true/false with an empty cell (line "
                    "%d), and a true/false column needs a value in every row. Fill them in, or "
                    "write 1 and 0 (empty cells are then NaN) and it becomes a column",
                    where, col, line,
                )  # fmt: skip
            elif any(_is_float(row[col]) for row in rows):  # mostly numbers: say why not
                line = numeric.index(False) + 2
                logger.warning(
                    "%s: column %r is not stored: %d of its %d values are not numbers "
                    "(line %d: %r). Fill them in (NaN or empty for missing) and it becomes a "
                    "column, or pass columns= to choose the columns",
                    where, col, numeric.count(False), len(rows), line, rows[line - 2][col],
                )  # fmt: skip
            else:
                text.append(col)
        if text:
            logger.warning(
                "%s: text column(s) %s not stored (only numbers and true/false are); to keep "
                "one, map it to numbers (e.g. its classes to indices) before reading",
                where,
                ", ".join(repr(c) for c in text[:8]) + (" ..." if len(text) > 8 else ""),
            )
        return extra
    for name, given in columns.items():
        cols = [given] if isinstance(given, str) else list(given)
        if not cols:
            raise ValueError(
                f"columns={{{name!r}: {given!r}}} names no CSV column; give {name!r} a "
                f"column name or a list of them (the CSV's columns are {header})"
            )
        for col in cols:
            if col not in header:
                raise _no_column(where, col, header, repr(name))
        cells = [[row[c] for c in cols] for row in rows]
        flags = _flags(cells)  # true/false throughout: bool, as the columns picked by default
        if flags is None:
            _refuse_non_numbers(rows, cols, where)
        values = flags if flags is not None else _numbers(cells, cols, where)
        extra[name] = values[:, 0] if len(cols) == 1 and isinstance(given, str) else values
    return extra


def _refuse_non_numbers(rows: list[dict[str, Any]], cols: list[str], where: str) -> None:
    """Name the first cell of ``cols`` that is no number: text, or true/false beside numbers
    (or beside empty cells)."""
    for c in cols:
        cells = [row[c] for row in rows]
        empty = any(map(_is_empty, cells))
        if empty and any(map(_is_flag, cells)) and all(_is_flag(v) or _is_empty(v) for v in cells):
            line = next(i for i, v in enumerate(cells, start=2) if _is_empty(v))
            raise ValueError(
                f"{where}, line {line}: column {c!r} is true/false with an empty cell here; a "
                "true/false column needs a value in every row: fill them in, or write 1 and 0 "
                "(empty cells are then NaN)"
            )
    for flag in (False, True):  # text first: the likelier mistake
        for line, row in enumerate(rows, start=2):
            for c in cols:
                v = row[c]
                if _is_float(v) or _is_empty(v) or _is_flag(v) != flag:
                    continue
                raise ValueError(
                    f"{where}, line {line}: column {c!r} holds {v!r}, "
                    + (
                        "true/false beside numbers; a column is numbers, or true/false in "
                        "every row (write 1 and 0 for numbers)"
                        if flag
                        else "not a number; a column is numbers, or true/false in every row"
                    )
                )


def _is_flag(v: str | None) -> bool:
    return str(v).strip().lower() in ("true", "false")


def _flags(cells: list[list[str]]) -> np.ndarray | None:
    """CSV cells as bool when every one is ``true`` or ``false`` (any case), else None."""
    if not cells or not all(_is_flag(v) for row in cells for v in row):
        return None
    return np.array([[str(v).strip().lower() == "true" for v in row] for row in cells], bool)


def _numbers(cells: list[list[str]], cols: list[str], where: str) -> np.ndarray:
    """CSV cells as float32; int64 when they are whole numbers float32 would round; float64
    when float32 would change a value as written (empty cells are NaN).

    Whole numbers count however they are written ("16777217", "16777217.0", "1.6777217e7").
    A value float32 keeps is one whose shortest float32 spelling reads back as the same
    float64: "0.1" is kept, "1700000000.5" (a timestamp, which float32 moves by 64 s) or
    "123456789" beside an empty cell (an ID) is not.
    """
    cells = [["nan" if _is_empty(v) else v for v in row] for row in cells]
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
    values = np.array([[float(v) for v in row] for row in cells], dtype=np.float64)
    _refuse_float64_changes(cells, wholes, values, cols, where)
    with np.errstate(over="ignore"):
        narrow = values.astype(np.float32)
    return narrow if _float32_keeps(values, narrow) else values


def _refuse_float64_changes(
    cells: list[list[str]],
    wholes: list[list[int | None]],
    values: np.ndarray,
    cols: list[str],
    where: str,
) -> None:
    """Refuse a cell float64 would change: a whole number beyond 2**53 (an ID beside an
    empty cell or a fraction, which make the column floats) that it rounds, or a number
    beyond its range ("1e400") that it makes infinity."""
    for i, (row, whole) in enumerate(zip(cells, wholes, strict=True)):
        for c, v, w, x in zip(cols, row, whole, values[i].tolist(), strict=True):
            # a float's own spelling ("1.6859000001234568e+18", pandas' for a timestamp
            # in ns beside a NaN) is that float: only other digits are changed
            if w is not None and abs(w) > 2**53 and int(x) != w and not _spells(v, x):
                raise ValueError(
                    f"{where}, line {i + 2}: column {c!r} holds {v.strip()}, a whole number "
                    f"that would be stored as {int(x)}: beside empty cells or fractions the "
                    "column is floats, which hold whole numbers exactly only up to 2**53 "
                    "(IDs, hashes, nanosecond times are beyond it) and two IDs could become "
                    "one. Fill its empty cells (e.g. with -1) so it is stored as int64, or "
                    "leave it out with columns= (store it as text yourself)"
                )
            if math.isinf(x) and v.strip().lower().lstrip("+-") not in ("inf", "infinity"):
                raise ValueError(
                    f"{where}, line {i + 2}: column {c!r} holds {v.strip()}, beyond the "
                    "range of float64 (it would be stored as infinity); write inf if that "
                    "is meant, or scale the column"
                )


def _spells(v: str, x: float) -> bool:
    """Whether the cell ``v`` is the float ``x`` as written, in its shortest spelling."""
    try:
        return decimal.Decimal(v.strip()) == decimal.Decimal(repr(x))
    except decimal.InvalidOperation:
        return False


def _float32_keeps(values: np.ndarray, narrow: np.ndarray) -> bool:
    """Whether each of ``values`` (float64, as parsed) reads back from its float32 ``narrow``
    as written: exactly, or through float32's shortest spelling ("0.1")."""
    finite = np.isfinite(values)
    if not np.array_equal(np.isfinite(narrow), finite):
        return False  # beyond float32's range: it would be infinity
    inexact = np.unique(values[finite & (narrow.astype(np.float64) != values)])
    return all(float(str(np.float32(v))) == v for v in inexact.tolist())


def _plain_number(v: str) -> bool:
    """``v`` does not spell a whole number with leading zeros ("01"; "05.0" is 5) or digit
    separators ("1_0")."""
    digits = v.strip().lstrip("+-")
    return "_" not in digits and not (len(digits) > 1 and digits[0] == "0" and digits.isdigit())


def _exponent(v: str) -> bool:
    """A label written with an exponent ("2E1", "1e3"): not taken for a class index
    without ``labels_are`` ("2E1" may be a code, and beside "20" the two merged)."""
    return "e" in v.lower() and _is_float(v)


def _fixed_width_codes(raw: Sequence[str]) -> bool:
    """Every label is digits of one width, some with leading zeros: codes such as
    ``"00" .. "42"`` (class folders written so that they sort), names all of them."""
    return (
        bool(raw)
        and all(v.isdigit() for v in raw)
        and len({len(v) for v in raw}) == 1
        and any(not _plain_number(v) for v in raw)
    )


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
    """``v`` spells a number ("3", "-1.5e3", "nan"); not with digit separators ("1_2",
    which Python reads as 12)."""
    if v is None or "_" in v:
        return False
    try:
        float(v)
    except ValueError:
        return False
    return True


#: column names that spell a box's corners, by convention
_CORNERS = (
    ("x0", "y0", "x1", "y1"),
    ("xmin", "ymin", "xmax", "ymax"),
    ("x_min", "y_min", "x_max", "y_max"),
    ("left", "top", "right", "bottom"),
    ("x1", "y1", "x2", "y2"),
)


def _warn_raw_corners(
    header: list[str],
    columns: Mapping[str, Sequence[str]] | None,
    used: set[str | None],
    where: str,
) -> None:
    """Log box corners read as plain numbers: they stay in the source's pixels while the
    images are resized, flipped, cropped (``boxes=`` moves them with the pixels)."""
    asked = (
        {c for g in columns.values() for c in ([g] if isinstance(g, str) else g)}
        if columns is not None
        else {h for h in header if h not in used}
    )
    lower = {c.lower(): c for c in asked}
    for names in _CORNERS:
        if all(n in lower for n in names):
            cols = [lower[n] for n in names]
            logger.warning(
                "%s: columns %s look like box corners; stored as numbers, they stay in the "
                "source images' pixels while the images are resized (and flipped or cropped "
                "in the feed). To move them with the pixels, pass boxes={'bbox': %r}",
                where,
                ", ".join(map(repr, cols)),
                cols,
            )
            return
    axis = {c: _position_axis(c) for c in asked}
    xs = [c for c in asked if axis[c] == "x"]
    ys = [c for c in asked if axis[c] == "y"]
    if xs and ys:  # COCO's x, y, w, h; keypoints kx, ky; centres cx, cy
        cols = sorted(xs + [c for c in asked if axis[c] in ("y", "size")])
        logger.warning(
            "%s: columns %s look like pixel positions or sizes; stored as numbers, they stay "
            "in the source images' pixels while the images are resized (and flipped or "
            "cropped in the feed). For boxes, make corner columns x0, y0, x1, y1 (x1 = x + w) "
            "and pass boxes=; other positions need scaling by each sample's source_size",
            where,
            ", ".join(map(repr, cols)),
        )


def _position_axis(column: str) -> str | None:
    """What a plain column's name says: "x" or "y" (a pixel position on that axis: ``x``,
    ``cx``, ``kp_x``, ``x_center``, ``x1``), "size" (``w``, ``bbox_width``), or None. Stricter than
    :func:`_axis_of` (a box column's, where any name starting x is an x): whole words only."""
    words = _WORDS.split(column.strip().lower())
    if words[-1] in ("w", "h", "width", "height") or words[0] in ("w", "h"):
        return "size"
    for axis in ("x", "y"):
        if any(
            w in (axis, "c" + axis, "k" + axis, "p" + axis) or _numbered(w, axis) for w in words
        ):
            return axis
    return None


def _storable_name(name: str) -> bool:
    """Whether ``ImageSet`` takes ``name`` as a column's (see its checks)."""
    try:
        check_column_name(name)
    except ValueError:
        return False
    return name not in RESERVED


def _no_column(where: str, col: str, header: list[str], asked_for: str = "") -> ValueError:
    """The error for a column the CSV lacks, with why: another letter case, or a hint from
    :func:`_header_hint`."""
    asked = f" (asked for {asked_for})" if asked_for else ""
    same = [h for h in header if h.lower() == col.lower() and h != col]  # (padded: below)
    hint = (
        f" ({same[0]!r} differs from it in letter case: names are matched exactly, so pass "
        f"the column's own name, {same[0]!r}, or rename the column)"
        if same
        else _header_hint(header)
    )
    return ValueError(f"{where} has no column {col!r}{asked}; its columns are {header}{hint}")


def _separator_hint(header: list[str]) -> str:
    """A header of one column holding ``;``, tabs or ``|``: the file is separated by those."""
    if len(header) == 1:
        for sep, name in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")):
            if sep in header[0]:
                return (
                    f": the file seems separated by {name}, not commas; from_csv reads "
                    "comma-separated files (save it so, or pandas: "
                    "pd.read_csv(f, sep=...).to_csv(g, index=False))"
                )
    return ""


def _header_hint(header: list[str]) -> str:
    """Why a header may lack the columns asked for: another separator, Excel's ``sep=``
    line, or no header row."""
    if header and header[0].lower().startswith("sep=") and not any(h.strip() for h in header[1:]):
        return (
            f" (its first line {','.join(header)!r} is Excel's separator hint, not a header: remove "
            "that line and save the file comma-separated)"
        )
    padded = [h for h in header if h != h.strip()]
    if padded:
        return (
            f" (names with spaces around them, such as {padded[0]!r}: write the header "
            f"without them, e.g. {','.join(h.strip() for h in header)})"
        )
    if sep := _separator_hint(header):
        return sep
    from .folder import IMAGE_EXTENSIONS

    if header and any(os.path.splitext(h)[1].lower() in IMAGE_EXTENSIONS for h in header):
        return " (the first line looks like data: the CSV needs a header row naming its columns)"
    return ""


def _is_empty(v: str | None) -> bool:
    """An empty cell (pandas writes a missing number so): NaN in a numeric column."""
    return v is None or not v.strip()
