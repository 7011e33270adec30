"""Store: :func:`open_zarr` — a store opened lazily as an :class:`~daskimg.ImageSet`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

import dask.array as da
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import (
    IncompleteStoreError,
)
from ..read.imageset import ImageSet
from ..remote import check_options, is_url, local_path
from .format import check_attrs
from .reader import StoreReader


def read_attrs(
    path: str | os.PathLike[str],
    *,
    check_complete: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``daskimg`` attributes of a store, after checking version and completeness.

    ``path`` may be a URL (with ``storage_options``), as for :func:`open_zarr`.
    """
    if is_url(path) and local_path(str(path)) is None:
        from .url import read_attrs_url

        return read_attrs_url(str(path), storage_options, check_complete=check_complete)
    check_options(path, storage_options)
    path = local_path(path) or path if isinstance(path, str) else path
    p = os.path.abspath(os.fspath(path)).rstrip("/")
    if not os.path.exists(p):
        if os.path.exists(p + ".partial"):
            how = (
                "Reopen it with ArrayWriter(..., resume=True) to continue from its last checkpoint"
                if os.path.exists(os.path.join(p + ".partial", "writer.json"))
                else "Re-run the same ingest/to_zarr to redo it"
            )
            raise IncompleteStoreError(
                f"{p!r} was never finished: a write into it stopped or is still running "
                f"(staging folder {p + '.partial'!r}). {how}."
            )
        raise FileNotFoundError(f"no store at {p!r}")
    return check_attrs(p, StoreReader(p).json("zarr.json"), check_complete=check_complete)


def open_zarr(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> ImageSet:
    """Open a daskimg store lazily as an :class:`ImageSet`.

    ``images`` and other multi-dimensional arrays are dask arrays read chunk by chunk
    (checksums checked, fork-safe); ``labels``, ``paths`` and 1-D columns are loaded.
    ``.arrays`` holds every per-sample array; attributes are in ``.attrs``.

    ``path`` may be a URL (``"s3://bucket/out/train.zarr.zip"`` or ``.../train.zarr``)
    with fsspec ``storage_options``: chunks are then read by zarr with byte-range
    requests (a zip is never downloaded whole), ``.store_url`` is set and
    ``.store_path`` is None.

    Examples
    --------
    >>> train = di.open_zarr("out/train.zarr.zip")  # doctest: +SKIP
    >>> train.images.shape  # doctest: +SKIP
    (800, 224, 224, 3)
    """
    if is_url(path) and local_path(str(path)) is None:
        from .url import open_zarr_url

        return open_zarr_url(str(path), storage_options)
    check_options(path, storage_options)
    path = local_path(path) or path if isinstance(path, str) else path
    p = os.path.abspath(os.fspath(path)).rstrip("/")
    attrs = read_attrs(p)
    reader = StoreReader(p)
    group = open_group(p)
    names = [name for name, _ in group.arrays()]
    arrays: dict[str, Any] = {}
    for name in names:
        arr = group[name]
        lay = reader.layout(name)
        if lay.kind is not None and (name == "images" or len(lay.shape) > 1):
            arrays[name] = lazy_array(reader, name)
        else:
            arrays[name] = cast(Any, arr)[...]
    ds = imageset_of(arrays, attrs)
    ds.store_path = p
    return ds


def imageset_of(arrays: dict[str, Any], attrs: dict[str, Any]) -> ImageSet:
    """An opened store's arrays and ``daskimg`` attributes as an :class:`ImageSet`."""
    columns = {k: v for k, v in arrays.items() if k not in ("images", "labels", "paths")}
    ds = ImageSet(
        arrays.get("images"),
        arrays.get("labels"),
        classes=attrs.get("classes") or (),
        paths=arrays.get("paths"),
        columns=columns,
        root=(attrs.get("source") or {}).get("root"),
    )
    ds.attrs = attrs
    ds.skipped = [(str(path), str(reason)) for path, reason in attrs.get("skipped", [])]
    return ds


def open_group(p: str) -> zarr.Group:
    from .jpeg import register

    register()  # stores written with codec="jpeg" need it (the entry point covers installed copies)
    if os.path.isfile(p):
        return zarr.open_group(zarr.storage.ZipStore(p, mode="r"), mode="r")
    return zarr.open_group(zarr.storage.LocalStore(p, read_only=True), mode="r")


def lazy_array(reader: StoreReader, name: str) -> da.Array:
    """A dask array over one stored array, one task per chunk, read by :class:`StoreReader`."""
    lay = reader.layout(name)
    token = tokenize(reader.path, name, os.path.getmtime(reader.path))
    key = f"daskimg-read-{name}-{token}"
    zeros = (0,) * (len(lay.shape) - 1)
    dsk: dict[Any, Any] = {
        (key, c, *zeros): (reader.read_chunk, name, c) for c in range(lay.num_chunks)
    }
    sizes = tuple(b - a for a, b in (lay.chunk_rows(c) for c in range(lay.num_chunks)))
    chunks = (sizes or (0,), *((d,) for d in lay.shape[1:]))
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    return da.Array(graph, key, chunks, dtype=lay.dtype)
