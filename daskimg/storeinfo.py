"""Store: look inside a store — :func:`info` (what is in it) and :func:`verify` (is it intact)."""

from __future__ import annotations

import errno
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import (
    DaskImgError,
    ForeignStoreError,
    NewerFormatError,
    ServerError,
    UnsupportedStoreError,
)
from .read.imageset import NO_LABEL
from .store.format import (
    check_array,
    check_attrs,
    check_fits_memory,
    check_labels,
    check_together,
    required_arrays,
)
from .store.location import Location
from .store.open import missing_error, open_store
from .store.reader import StoreReader

__all__ = ["Problem", "info", "unchecked", "verify"]

logger = logging.getLogger("daskimg")


#: what :func:`verify` raises instead of listing as damage: no daskimg store but another, a
#: store of a newer format version, a sound layout daskimg does not read
NOT_DAMAGE = (ForeignStoreError, NewerFormatError, UnsupportedStoreError)


@dataclass(frozen=True)
class Problem:
    """A damaged or missing chunk found by :func:`verify`."""

    array: str
    chunk: int
    message: str

    def __str__(self) -> str:
        if self.chunk >= 0:
            return f"array {self.array!r}, chunk {self.chunk}: {self.message}"
        # chunk -1: no chunk, the store itself, its root metadata or an array's metadata
        where = {"(store)": "the store", "zarr.json": "the store's root metadata (zarr.json)"}
        return f"{where.get(self.array, f'array {self.array!r}')}: {self.message}"


def verify(
    path: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Re-read every chunk of every array, checking checksums and metadata; return the problems.

    An empty list means the metadata is consistent and every chunk is present and matches
    its checksum. Damage never raises (an OS error that says nothing of the bytes does:
    out of descriptors or memory, no permission; so does a path holding no daskimg store
    but another, a store of a newer format version or a sound layout daskimg does not read:
    :data:`NOT_DAMAGE`): a damaged zip (array ``"(store)"``),
    unparsable root metadata (``"zarr.json"``), a missing or inconsistent array (chunk -1) and every
    bad chunk are listed. ``progress`` is called with the number of chunks done after each
    chunk. A URL (with ``storage_options``) is read through the same checked reader.

    Examples
    --------
    >>> di.storeinfo.verify("out/train.zarr.zip")  # doctest: +SKIP
    []
    """
    loc = Location.of(path, storage_options)
    try:
        reader = StoreReader(loc.open())
    except FileNotFoundError:
        raise missing_error(loc) from None  # an unfinished write there is named, as open_zarr does
    except DaskImgError as e:
        return [_damage("(store)", -1, e)]
    try:
        attrs = check_attrs(
            loc.target, reader.json("zarr.json"), check_complete=False, keys=reader.source.keys
        )
    except NOT_DAMAGE:
        raise  # not damage: no daskimg store but another, a newer one, another tool's layout
    except DaskImgError as e:
        return [_damage("zarr.json", -1, e)]
    problems: list[Problem] = []
    if attrs.get("complete") is not True:
        problems.append(Problem("(store)", -1, "incomplete: complete is not true"))
    present = reader.array_names()
    names = required_arrays(attrs, present)
    problems += [
        Problem(n, -1, "not declared in the store's attributes (added by another tool?)")
        for n in sorted(set(present) - set(names))
    ]
    layouts = {}
    for name in names:
        try:
            lay = check_array(reader, attrs, name)
            check_fits_memory(reader.path, lay)  # its chunks are not read, then
            layouts[name] = lay
        except DaskImgError as e:
            problems.append(_damage(name, -1, e))
    try:
        check_together(loc.target, attrs, layouts)
    except DaskImgError as e:
        problems.append(_damage("(store)", -1, e))
    for name, lay in layouts.items():
        problems += _check_chunks(reader, attrs, name, lay.num_chunks, progress)
    if not problems and loc.kind == "zip" and not loc.is_url:  # (a damaged chunk is named)
        problems += _zip_crcs(loc.target)
    if not problems:
        problems += _plain_zarr(loc, names)
    return problems


def unchecked(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> str | None:
    """What :func:`verify` cannot check in this store, or None: a store written before
    2026-12 has no table of its chunks' checksums, so a chunk moved to another place (a
    shard copied over another) matches its own checksum and passes."""
    loc = Location.of(path, storage_options)
    reader = StoreReader(loc.open())
    try:
        attrs = check_attrs(
            loc.target, reader.json("zarr.json"), check_complete=False, keys=reader.source.keys
        )
    finally:
        reader.close()
    from .store.chunktable import TABLE

    if "arrays" not in attrs:
        return (
            "written before 2026-12, the store has no table of its chunks' checksums: each "
            "chunk matches its own, but a chunk moved to another place (a shard copied over "
            "another) would not be noticed. Re-create it (di.to_zarr(di.open_zarr(old), new, "
            "order='source')) "
            "to get one"
        )
    # a store from before the tables that ArrayWriter(mode="a") added an array to: the new
    # array has its table, those written before have none
    bare = sorted(n for n, a in attrs["arrays"].items() if TABLE not in a)
    if not bare:
        return None
    return (
        f"the arrays {', '.join(repr(n) for n in bare)} were written before 2026-12 and have "
        "no table of their chunks' checksums: each chunk matches its own, but a chunk moved "
        "to another place (a shard copied over another) would not be noticed in them. "
        "Re-create the store (di.to_zarr(di.open_zarr(old), new, order='source'), which keeps "
        "every array) "
        "to get one for each"
    )


#: OS errors of this process or machine, not of a store's bytes (verify raises them, as
#: it does an OS error reading: out of descriptors, memory, no permission)
_NOT_THE_STORE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EACCES, errno.EPERM})

#: what fsspec says when the server answers no Range requests: it answered one with the
#: whole file, or said it would not (``Accept-Ranges: none``: a file fsspec cannot seek)
_NO_RANGES = ("support range requests", "Cannot seek streaming HTTP file")


def _plain_zarr(loc: Location, names: list[str]) -> list[Problem]:
    """Each array's metadata as plain zarr parses it: daskimg reads through its own checked
    reader, which needs less of ``zarr.json`` (``dimension_names`` of another length, an
    unknown ``must_understand`` key, a ``fill_value`` not of the dtype), so such a store
    would pass here yet not open in plain zarr or xarray, which the format promises."""
    import zarr

    from .remote import protocol_of

    path = loc.target
    try:
        store: Any
        if loc.is_url:  # the same check at a URL, through fsspec (a zip through zip::)
            opts = dict(loc.storage_options or {})
            if loc.kind == "zip" and "?" in path:
                # a signed URL: its query is no glob of fsspec's chained "zip::" URLs
                from fsspec.implementations.zip import ZipFileSystem

                from .remote import filesystem

                fs, key = filesystem(path, opts)
                zipped = ZipFileSystem(fo=fs.open(key, "rb"))
                store = zarr.storage.FsspecStore.from_mapper(zipped.get_mapper(""), read_only=True)
            else:
                store = (
                    zarr.storage.FsspecStore.from_url(
                        "zip::" + path, storage_options={protocol_of(path): opts}, read_only=True
                    )
                    if loc.kind == "zip"
                    else zarr.storage.FsspecStore.from_url(
                        path, storage_options=opts, read_only=True
                    )
                )
        elif loc.kind == "zip":
            store = zarr.storage.ZipStore(path, mode="r")
        else:
            store = zarr.storage.LocalStore(path, read_only=True)
        with warnings.catch_warnings():  # zarr's: consolidated metadata is no v3 standard
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            group = zarr.open_group(store, mode="r")
        # consolidated metadata (zarr.consolidate_metadata, a step xarray users take) is
        # what plain zarr reads instead of each array's own zarr.json, which daskimg checks
        consolidated = group.metadata.consolidated_metadata is not None
        own = zarr.open_group(store, mode="r", use_consolidated=False) if consolidated else None
    except Exception as e:  # whatever zarr refuses, said in its words
        if isinstance(e, OSError) and e.errno in _NOT_THE_STORE:
            raise  # out of descriptors or memory: says nothing of the store (was DAMAGED)
        if loc.is_url and any(said in str(e) for said in _NO_RANGES):
            # the server's, not the store's (Python's http.server): daskimg read every
            # chunk above; only plain zarr's reading could not be tried (it said DAMAGED)
            logger.warning(
                "%s: the server does not answer Range requests, so whether plain zarr opens "
                "the store was not checked (daskimg checked every chunk); verify a local "
                "copy, or serve it with a server that answers them (nginx)",
                path,
            )
            return []
        return [Problem("zarr.json", -1, f"{path}: plain zarr cannot open the store: {e}")]
    problems = []
    fix = (
        "plain zarr and xarray read it from the root zarr.json's consolidated metadata, "
        "which is out of date: run zarr.consolidate_metadata on the store again, or remove "
        "the root's consolidated_metadata"
    )
    try:
        for name in names:
            try:
                arr = group[name]
            except KeyError:
                if own is None:
                    raise
                problems.append(Problem(name, -1, f"{path}: {name!r} is missing where {fix}"))
                continue
            except Exception as e:  # whatever zarr refuses
                if isinstance(e, OSError) and e.errno in _NOT_THE_STORE:
                    raise
                problems.append(
                    Problem(
                        name,
                        -1,
                        f"{path}: plain zarr cannot open this array ({type(e).__name__}: {e}): "
                        "its zarr.json was changed by another tool; re-create the store",
                    )
                )
                continue
            if own is not None and _described(arr) != _described(own[name]):
                problems.append(
                    Problem(name, -1, f"{path}: {name!r} reads as another array where {fix}")
                )
    finally:
        store.close()
    return problems


def _described(arr: Any) -> str:
    """An array's metadata as plain zarr parsed it, comparable."""
    return json.dumps(arr.metadata.to_dict(), sort_keys=True, default=str)


def _zip_crcs(path: str) -> list[Problem]:
    """The zip's own CRC-32 of each member, as plain zarr's ``ZipStore`` checks them on
    every read: daskimg reads through its own checksums, so a damaged CRC-32 field (or
    a member whose bytes changed with its crc32c resealed) would pass, yet the store
    would not open in plain zarr."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        return [Problem("(store)", -1, f"{path}: the zip cannot be read to check its CRC-32s: {e}")]
    if bad is None:
        return []
    return [
        Problem(
            "(store)",
            -1,
            f"{path}: member {bad!r} does not match the CRC-32 the zip records for it "
            "(damaged; plain zarr's ZipStore refuses to read it). Copy the store again, or "
            "re-create it",
        )
    ]


#: errors of reading that say nothing about the bytes read: out of file descriptors or
#: memory, no permission. Raised, not listed as a damaged chunk
_NOT_THE_DATA = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EACCES, errno.EPERM}


def _damage(array: str, chunk: int, e: Exception) -> Problem:
    """``e`` as a problem of the store; an error that says nothing of its bytes (the server
    failing to answer, out of descriptors or memory, no permission) is raised instead."""
    if isinstance(e, ServerError) or (isinstance(e, OSError) and e.errno in _NOT_THE_DATA):
        raise e
    if isinstance(e, NOT_DAMAGE):
        raise e  # a sound store daskimg does not read: said for what it is, not "DAMAGED"
    return Problem(array, chunk, str(e))


def _check_chunks(
    reader: StoreReader,
    attrs: Mapping[str, Any],
    name: str,
    num_chunks: int,
    progress: Callable[[int], None] | None,
) -> list[Problem]:
    problems = []
    for c in range(num_chunks):
        try:
            values = reader.read_chunk(name, c)
            if name == "labels":
                lay = reader.layout(name)
                check_labels(reader.path, attrs, values, lay.chunk_len, lay.chunk_rows(c)[0])
        except (DaskImgError, ValueError, RuntimeError, OSError) as e:
            problems.append(_damage(name, c, e))
        if progress is not None:
            progress(1)
    return problems


def count_chunks(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> int:
    """Chunks that :func:`verify` reads (for a progress bar); 0 if the metadata does not open."""
    try:
        st = open_store(path, storage_options=storage_options, check_complete=False)
    except DaskImgError:
        return 0  # verify reports it
    return sum(lay.num_chunks for lay in st.layouts.values())


def info(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A summary of a store: arrays, codec, compression ratio, classes with counts, attributes.

    ``path`` may be a URL, with fsspec ``storage_options``. Damaged metadata raises
    (:func:`verify` lists every problem instead).

    Examples
    --------
    >>> print(di.storeinfo.format_info(di.storeinfo.info("out/train.zarr.zip")))  # doctest: +SKIP
    """
    st = open_store(path, storage_options=storage_options, check_complete=False)
    keys = st.reader.source.keys
    arrays = {}
    for name, lay in st.layouts.items():
        # strings have no fixed size per sample (itemsize is a pointer's): no ratio
        text = lay.dtype.kind == "O"
        nbytes = None if text else int(np.prod(lay.shape)) * lay.dtype.itemsize
        stored = sum(v for k, v in keys.items() if k.startswith(name + "/"))
        arrays[name] = {
            "shape": list(lay.shape),
            "dtype": "str" if text else str(lay.dtype),
            "chunks": [lay.inner_len, *lay.shape[1:]],
            "shards": [lay.shard_len, *lay.shape[1:]] if lay.sharded else None,
            "stored_bytes": stored,
            "ratio": (nbytes / stored) if nbytes and stored else None,
        }
    counts: dict[str, int] = {}
    unlabelled = 0
    classes = st.attrs.get("classes")
    if "labels" in st.layouts:
        labels = st.reader.read_array("labels")
        unlabelled = int((labels == NO_LABEL).sum())
        values, n = np.unique(labels[labels != NO_LABEL], return_counts=True)
        if classes:  # every class, those without samples too, in class order
            by_index = dict(zip(values.tolist(), n.tolist(), strict=True))
            counts = {c: by_index.pop(i, 0) for i, c in enumerate(classes)}
            counts.update({f"(index {v}, no class)": k for v, k in by_index.items()})
        else:  # class indices without names: counted by index
            counts = {str(v): k for v, k in zip(values.tolist(), n.tolist(), strict=True)}
    loc = st.location
    total = (
        os.path.getsize(loc.target) if not loc.is_url and loc.kind == "zip" else sum(keys.values())
    )
    return {
        "path": loc.target,
        "file_bytes": total,
        "arrays": arrays,
        "class_counts": counts,
        "unlabelled": unlabelled,
        "attrs": st.attrs,
    }


#: classes listed by format_info (all are in info()'s counts)
_SHOWN = 100


def format_info(summary: dict[str, Any]) -> str:
    """``info`` as readable text (what ``daskimg info`` prints)."""
    a = summary["attrs"]
    lines = [
        f"store         {summary['path']}  ({_human(summary['file_bytes'])})",
        f"format        version {a.get('format_version')}, complete={a.get('complete')}",
        f"split         {a.get('split')}   samples {a.get('num_samples')}",
        f"order         {a.get('order')}"
        + (f" (seed {a.get('seed')})" if a.get("order") == "shuffled" else ""),
        f"codec         {a.get('codec')} + crc32c",
        "arrays:",
    ]
    for name, arr in summary["arrays"].items():
        ratio = f"{arr['ratio']:.2f}x" if arr["ratio"] else "-"
        shards = f" shards {tuple(arr['shards'])}" if arr["shards"] else ""
        lines.append(
            f"  {name:<12} {tuple(arr['shape'])!s:<24} {arr['dtype']:<8} chunks {tuple(arr['chunks'])}"
            f"{shards}  stored {_human(arr['stored_bytes'])}  ratio {ratio}"
        )
    if summary["class_counts"]:
        named = bool(a.get("classes"))
        lines.append("classes:" if named else "labels (class indices, no names stored):")
        shown = list(summary["class_counts"].items())
        lines.extend(f"  {c:<20} {n}" for c, n in shown[:_SHOWN])
        if len(shown) > _SHOWN:
            lines.append(f"  ... and {len(shown) - _SHOWN} more (see info()['class_counts'])")
    if summary.get("unlabelled"):
        if not summary["class_counts"]:  # every sample unlabelled: a heading of its own
            lines.append("labels:")
        lines.append(f"  {'(no label: -1)':<20} {summary['unlabelled']}")
    skipped = a.get("skipped") or []
    lines.append(f"skipped files {len(skipped)}")
    lines.extend(f"  {p}: {why}" for p, why in skipped[:20])
    if len(skipped) > 20:
        lines.append(f"  ... and {len(skipped) - 20} more (see the 'skipped' attribute)")
    src = a.get("source") or {}
    if src:
        lines.append("source        " + ", ".join(f"{k}={v}" for k, v in src.items()))
    lines.append(
        "created with  " + ", ".join(f"{k} {v}" for k, v in (a.get("created_with") or {}).items())
    )
    return "\n".join(lines)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"
