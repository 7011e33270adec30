"""Store: :func:`open_zarr` — a store opened lazily, every array read through the checked reader.

Opening reads the root ``zarr.json`` and each array's, checks them
(:func:`~daskimg.store.format.check_attrs`, :func:`~daskimg.store.format.check_arrays`)
and builds dask arrays whose tasks read one chunk each with
:class:`~daskimg.store.reader.StoreReader` — for a local store or one at a URL alike.
``labels`` and ``paths`` are small and read at once (checked the same way), as numpy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import ChecksumError, IncompleteStoreError
from ..read.imageset import ImageSet
from ..remote import started_without
from .format import check_arrays, check_attrs, check_fits_memory, check_labels
from .layout import ArrayLayout
from .locate import WRITE_EMPTY
from .location import Location
from .reader import StoreReader
from .splits import renamed

__all__ = ["OpenedStore", "lazy_array", "missing_error", "open_store", "open_zarr", "read_attrs"]

logger = logging.getLogger("daskimg")

#: arrays read at open as numpy (small, and what ImageSet keeps in memory)
EAGER = ("labels", "paths")


@dataclass(eq=False)
class OpenedStore:
    """A store opened for reading: where it lives, its checked reader, attributes and layouts."""

    location: Location
    reader: StoreReader
    attrs: dict[str, Any]
    layouts: dict[str, ArrayLayout]

    @property
    def local_path(self) -> str | None:
        return None if self.location.is_url else self.location.target


def missing_error(loc: Location) -> Exception:
    """The error for no store at ``loc``: an unfinished write there is named, with what to do."""
    if loc.is_url and (elsewhere := started_without(loc.target)) is not None:
        return elsewhere  # a memory:// store of the process that started this one
    staging = loc.unfinished()
    if staging is None:
        return FileNotFoundError(f"no store at {loc.target!r}")
    how = (
        "If its writer is still running, wait for it to close(); if it stopped, reopen it "
        "with ArrayWriter(..., resume=True) to continue from its last checkpoint"
        if loc.unfinished_writer() is not None
        else "If it is still being written, wait for it; if it stopped, re-run the same "
        "ingest/to_zarr to redo it"
    )
    return IncompleteStoreError(
        f"{loc.target!r} was never finished: a write into it stopped or is still running "
        f"(staging folder {staging!r}). {how}."
    )


def open_store(
    path: str | os.PathLike[str] | Location,
    *,
    storage_options: Mapping[str, Any] | None = None,
    check_complete: bool = True,
) -> OpenedStore:
    """Open a store for reading: checked attributes and arrays (nothing is decoded yet).

    Raises ``FileNotFoundError``, :class:`~daskimg.errors.IncompleteStoreError`,
    :class:`~daskimg.errors.FormatVersionError`, :class:`~daskimg.errors.MetadataError`
    (an array missing or inconsistent) or :class:`~daskimg.errors.ChecksumError` (a
    damaged zip), each naming the store.
    """
    loc = path if isinstance(path, Location) else Location.of(path, storage_options)
    try:
        source = loc.open()
    except FileNotFoundError:
        raise missing_error(loc) from None
    reader = StoreReader(source)
    attrs = check_attrs(
        loc.target, reader.json("zarr.json"), check_complete=check_complete, keys=source.keys
    )
    layouts = check_arrays(reader, attrs)
    if "created_with" not in attrs:
        _refuse_left_out_chunks(loc.target, source.keys, layouts)
    said = renamed(loc.target, attrs)
    if said is not None and (loc.target, said) not in _SAID:
        _SAID.add((loc.target, said))  # once a process, not per worker and epoch
        logger.warning("%s", said)
    return OpenedStore(loc, reader, attrs, layouts)


#: the renamed stores already said in this process
_SAID: set[tuple[str, str]] = set()


def _refuse_left_out_chunks(
    where: str, keys: Mapping[str, Any], layouts: Mapping[str, Any]
) -> None:
    """A store written by another tool (no ``created_with``) whose arrays lack chunks: what
    zarr-python does by default for a chunk holding only the fill value. Said when it is
    opened, with how to write them: read, such a chunk was "missing; the store is damaged
    — re-create it", which re-creating with zarr gave again. (daskimg never reads a chunk
    that is not there as zeros.)"""
    for name, lay in layouts.items():
        absent = [lay.key(i) for i in range(lay.num_shards) if lay.key(i) not in keys]
        if absent:
            raise ChecksumError(
                f"{where}: array {name!r} has no {absent[0]!r} ({len(absent)} of "
                f"{lay.num_shards} chunks or shards not there). The store was not written by "
                f"daskimg: {WRITE_EMPTY}"
            )


def read_attrs(
    path: str | os.PathLike[str],
    *,
    check_complete: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``daskimg`` attributes of a store, after checking version, completeness and arrays."""
    return open_store(path, storage_options=storage_options, check_complete=check_complete).attrs


def open_zarr(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> ImageSet:
    """Open a daskimg store lazily as an :class:`ImageSet`.

    ``images`` and every other per-sample array but ``labels`` and ``paths`` are dask
    arrays, one task per chunk, each chunk read and checked by daskimg's reader (a
    missing or damaged chunk is a :class:`~daskimg.errors.ChecksumError` naming it,
    never zeros); ``labels`` and ``paths`` are read at once, checked the same way, as
    numpy arrays. ``.arrays`` holds every per-sample array; attributes are in ``.attrs``.

    ``path`` may be a URL (``"s3://bucket/out/train.zarr.zip"`` or ``.../train.zarr``)
    with fsspec ``storage_options``: chunks are then read with byte-range requests (a
    zip is never downloaded whole).

    Examples
    --------
    >>> train = di.open_zarr("out/train.zarr.zip")  # doctest: +SKIP
    >>> train.images.shape  # doctest: +SKIP
    (800, 224, 224, 3)
    """
    st = open_store(path, storage_options=storage_options)
    for lay in st.layouts.values():
        check_fits_memory(st.reader.path, lay)
    arrays: dict[str, Any] = {}
    for name in st.layouts:
        if name in EAGER:
            arrays[name] = st.reader.read_array(name)
            if name == "labels":
                check_labels(st.reader.path, st.attrs, arrays[name], st.layouts[name].chunk_len)
        else:
            arrays[name] = lazy_array(st.reader, name)
    return imageset_of(arrays, st)


#: the keys of a store's ``attrs["source"]`` that say how its images were decoded
_DECODED_AS = ("size", "channels", "dtype", "resize", "draft")


def imageset_of(arrays: dict[str, Any], st: OpenedStore) -> ImageSet:
    """An opened store's arrays as an :class:`ImageSet`."""
    attrs = st.attrs
    columns = {k: v for k, v in arrays.items() if k not in ("images", "labels", "paths")}
    ds = ImageSet(
        arrays.get("images"),
        arrays.get("labels"),
        classes=attrs.get("classes") or (),
        paths=arrays.get("paths"),
        columns=columns,
        root=(attrs.get("source") or {}).get("root"),
        boxes=attrs.get("boxes") or (),
        check_names=False,  # a store written before a name was reserved still opens
    )
    ds.attrs = attrs
    # the store's arrays read by its checked reader, each chunk to its stored shape
    ds.exact_names = frozenset(a.name for a in arrays.values() if isinstance(a, da.Array))
    decoded = {k: v for k, v in (attrs.get("source") or {}).items() if k in _DECODED_AS}
    ds.decoded_as = decoded if "size" in decoded else None
    ds.store = st
    ds.skipped = [(str(path), str(reason)) for path, reason in attrs.get("skipped", [])]
    return ds


def store_array_name(reader: StoreReader, name: str) -> str:
    """The dask name of :func:`lazy_array`'s array of ``name``: how a feed knows an array is
    still the store's own (not one put in its place: ``ds.images = ds.images[:, :, ::-1]``)."""
    return f"daskimg-read-{name}-{tokenize(reader.root_token(), name, reader.layout(name))}"


#: the sample shape of each array :func:`lazy_array` made, by its dask name: a feed spares a
#: store's images (or rows of them) the channels-first check, not an array made from them in
#: another shape (``da.moveaxis``)
READ_SHAPES: dict[str, tuple[int, ...]] = {}


def lazy_array(reader: StoreReader, name: str) -> da.Array:
    """A dask array over one stored array, one task per chunk, read by :class:`StoreReader`."""
    lay = reader.layout(name)
    key = store_array_name(reader, name)
    READ_SHAPES[key] = tuple(lay.shape[1:])
    zeros = (0,) * (len(lay.shape) - 1)
    dsk: dict[Any, Any] = {
        (key, c, *zeros): (reader.read_chunk, name, c) for c in range(lay.num_chunks)
    }
    sizes = tuple(b - a for a, b in (lay.chunk_rows(c) for c in range(lay.num_chunks)))
    chunks = (sizes or (0,), *((d,) for d in lay.shape[1:]))
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    return da.Array(graph, key, chunks, dtype=lay.dtype)
