"""Read: dask arrays a user made, held to the shape they declare as their blocks are computed.

A dask array's chunks are what its maker declared (``da.from_delayed(..., shape=)``,
``map_blocks(..., chunks=)``); dask does not hold a computed block to them. A block with
fewer rows than declared was stored with the rows after it moved up and the gap filled
with zeros (black images, labels on other samples), and one with more had its extra rows
cut off by a rechunk, without a word. Where daskimg computes such an array (to store it,
to feed it), each block is checked against its declared shape first.

Masked arrays (``np.ma``, ``da.ma``) are refused where they have masked values
(:func:`unmasked`): a store has no mask and a batch is plain numpy, so the values under
the mask were stored and fed as real ones (a sample marked "label unknown" trained as
class 0).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from ..errors import DaskImgError


def check_block(name: str, block: Any, rows: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """``block``, the computed rows ``rows`` (start, stop) of the dask array ``name``, as a
    numpy array (a masked one keeps its mask); a ValueError naming them unless its shape is
    ``shape``, the declared one (a length dask does not know, NaN, is not compared)."""
    block = np.asanyarray(block)
    if len(block.shape) != len(shape) or any(
        d == d and b != d
        for b, d in zip(block.shape, shape, strict=True)  # d != d: NaN
    ):
        a, b = rows
        raise ValueError(
            f"array {name!r}: rows {a}..{b} of its dask array computed to an array of shape "
            f"{block.shape}, not the {tuple(shape)} its chunks declare, so its rows would "
            "land on other samples (or be filled with zeros); fix the function that makes "
            "its blocks (da.from_delayed's shape=, map_blocks' chunks=), or call "
            ".compute_chunk_sizes() on it to take the shapes its blocks really have"
        )
    return block


def unmasked(
    name: str, value: Any, rows: tuple[int, int] | None = None, dtype: Any = None
) -> np.ndarray:
    """``value`` as a plain numpy array; a masked array with masked values is refused (a
    ValueError naming ``name``, and ``rows`` of it): nothing daskimg stores or feeds
    keeps a mask, so the values under it would be taken as real ones. One with nothing
    masked gives its data; so do lists of them, at any depth (numpy's asarray drops their
    masks). What numpy cannot make one array of (ragged rows) and iterators (read once)
    are refused naming ``name`` too. ``dtype``: as numpy's asarray takes it (``object``
    keeps a list's values as they are: ``3.5`` among paths stays a float, to be refused)."""
    hidden = masked_count(value)
    if hidden:
        where = f" (rows {rows[0]}..{rows[1]})" if rows is not None else ""
        raise ValueError(
            f"array {name!r}{where} is a masked array with {hidden} masked value(s); a store "
            "has no mask and a batch is plain numpy, so the values under the mask would be "
            "stored and fed as real ones. Fill them first: labels with -1 (no label: "
            "labels.filled(-1)), a float column with NaN (.filled(np.nan)); or leave those "
            "samples out (ds.take)"
        )
    if isinstance(value, np.ma.MaskedArray):
        return np.asarray(np.ma.getdata(value), dtype=dtype)
    if isinstance(value, np.ndarray):
        return np.asarray(value, dtype=dtype)
    if isinstance(value, Iterator):
        raise ValueError(
            f"array {name!r} is an iterator ({type(value).__name__}), which is read once; "
            "give a list or an array"
        )
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as e:  # ragged rows, a type numpy has not (bfloat16)
        ragged = "inhomogeneous" in str(e) or "sequence" in str(e)
        raise ValueError(
            f"array {name!r} cannot be made one numpy array ({e})"
            + (
                "; every sample's row must have the same shape (pad ragged rows, or keep "
                "them in a column of text)"
                if ragged
                else "; convert it to a numpy array of a numpy dtype first"
            )
        ) from None


def masked_count(value: Any) -> int:
    """The masked values of a masked array, or of the masked arrays in a list or tuple (at
    any depth, as numpy makes one array of nested lists)."""
    if isinstance(value, np.ma.MaskedArray):
        return int(np.ma.count_masked(value))
    if value is np.ma.masked:
        return 1
    if isinstance(value, (list, tuple)):
        return sum(masked_count(v) for v in value if isinstance(v, (list, tuple, np.ndarray)))
    return 0


def exact_blocks(arr: da.Array, name: str) -> da.Array:
    """``arr`` with each block checked (:func:`check_block`) when computed, before any
    rechunk or slice of it (which would hide a block's wrong length: they cut and join
    blocks)."""
    return da.map_blocks(_exact, arr, name, dtype=arr.dtype, meta=arr._meta)


def _exact(block: Any, name: str, block_info: Any = None) -> np.ndarray:
    if not block_info:  # (dask's meta probe)
        return np.asarray(block)
    where = block_info[None]
    rows = where["array-location"][0] if where["array-location"] else (0, 1)
    return unmasked(name, check_block(name, block, rows, where["chunk-shape"]), rows)


def cut_checked(arr: da.Array, name: str, idx: np.ndarray) -> da.Array:
    """``arr[idx]`` (rows ``idx``: integers, negative from the end) with each block the rows
    come from checked first, as :func:`exact_blocks` checks them (:meth:`ImageSet.take
    <daskimg.read.imageset.ImageSet.take>`: cut first, a wrong block would be hidden).

    Only the blocks holding rows of ``idx`` are taken, each behind one task that checks it,
    built here: the cost follows the rows taken, not the array's blocks (``map_blocks``
    builds information for every block: 3 rows of 200,000 one-row blocks took 6 s, 0.1 s
    uncut)."""
    if not len(idx):
        return arr[idx]  # no block read
    n = arr.shape[0]
    idx = np.where(idx < 0, idx + n, idx)
    starts = np.cumsum((0, *arr.chunks[0]))
    block = np.searchsorted(starts, idx, side="right") - 1
    touched, where = np.unique(block, return_inverse=True)
    out = "exact-" + tokenize(arr.name, name, touched)
    rest = [range(k) for k in arr.numblocks[1:]]
    dsk: dict[Any, Any] = {}
    for j, b in enumerate(touched.tolist()):
        rows = (int(starts[b]), int(starts[b + 1]))
        for ix in itertools.product(*rest):
            shape = (rows[1] - rows[0], *(c[i] for c, i in zip(arr.chunks[1:], ix, strict=True)))
            dsk[(out, j, *ix)] = (check_block, name, (arr.name, b, *ix), rows, shape)
    graph = HighLevelGraph.from_collections(out, dsk, dependencies=[cast(Any, arr)])
    sizes = tuple(int(starts[b + 1] - starts[b]) for b in touched.tolist())
    part = da.Array(graph, out, (sizes, *arr.chunks[1:]), meta=arr._meta)
    inside = np.cumsum((0, *sizes))[:-1]
    return part[inside[where] + (idx - starts[block])]


def persisted_futures(arr: Any) -> list[Any]:
    """The ``distributed`` futures ``arr`` (a dask array) holds: its persisted chunks
    (``ds.images.persist()``); none for other arrays, or without ``distributed``."""
    import sys

    if "distributed" not in sys.modules or not isinstance(arr, da.Array):
        return []
    from distributed import Future

    graph = arr.__dask_graph__()
    # a persisted array's futures are in materialized layers: others are not expanded
    layers = graph.layers.values() if isinstance(graph, HighLevelGraph) else [graph]
    return [
        v
        for layer in layers
        if isinstance(layer, MaterializedLayer | dict)
        for v in (layer.mapping if isinstance(layer, MaterializedLayer) else layer).values()
        if isinstance(v, Future)
    ]


def check_persisted_reachable(arrays: Mapping[str, Any], scheduler: Any = None) -> None:
    """After a computation of ``arrays`` failed (or handed futures back as values): refuse
    those persisted on a ``distributed`` cluster (``ds.images.persist()``) whose chunks
    this process cannot reach — their client was closed, they were cancelled, or their
    client is not the scheduler the computation ran on (``Client(set_as_default=False)``).
    Dask then fails with "Missing dependency" or "cancelled for reason: unknown", naming
    none of the user's arrays; this names the array and says what to do. Not asked before
    computing: the chunks the computation needs may be there all the same (persisted again
    under the same keys, or only unneeded ones cancelled). ``scheduler``: the one the
    computation was given, if any (else dask's configured one)."""
    for name, arr in arrays.items():
        futures = persisted_futures(arr)
        # ("lost": a worker died; the scheduler may compute it again, so not refused)
        gone = [f for f in futures if f.status == "cancelled" or f.client.status != "running"]
        if gone:
            f = gone[0]
            raise DaskImgError(
                f"array {name!r} was persisted on a dask.distributed cluster (.persist()) "
                f"whose client is closed, or its chunks cancelled (future {f.status}, "
                f"client {f.client.status}): they are gone, and dask cannot compute them "
                "again from here. Persist it again with a running client (or compute it "
                "to numpy first), or write the set with daskimg.to_zarr while the cluster "
                "runs and read the store"
            )
        if futures and not _runs_on(futures[0].client, scheduler):
            raise DaskImgError(
                f"array {name!r} is persisted on a dask.distributed client that is not the "
                "scheduler this computation ran on (a Client(set_as_default=False)?), so "
                "its chunks were not found. Run it on that client: with "
                "dask.config.set(scheduler=client): ..., or client.as_current()"
            )


def _runs_on(client: Any, scheduler: Any = None) -> bool:
    """Whether a computation given ``scheduler`` (None: dask's configured one) runs on
    ``client``."""
    import dask

    if scheduler is None:
        scheduler = dask.config.get("scheduler", None)
    if scheduler is client or getattr(scheduler, "__self__", None) is client:
        return True
    if scheduler not in (None, "dask.distributed", "distributed"):
        return False
    from distributed import Client

    try:  # the client made current here (client.as_current()), else the default one
        return Client.current() is client
    except ValueError:  # none
        return False
