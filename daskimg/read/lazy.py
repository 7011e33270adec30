"""Read: dask arrays a user made, held to the shape they declare as their blocks are computed.

A dask array's chunks are what its maker declared (``da.from_delayed(..., shape=)``,
``map_blocks(..., chunks=)``); dask does not hold a computed block to them. A block with
fewer rows than declared was stored with the rows after it moved up and the gap filled
with zeros (black images, labels on other samples), and one with more had its extra rows
cut off by a rechunk, without a word. Where daskimg computes such an array (to store it,
to feed it), each block is checked against its declared shape first.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np


def check_block(name: str, block: Any, rows: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """``block``, the computed rows ``rows`` (start, stop) of the dask array ``name``, as a
    numpy array; a ValueError naming them unless its shape is ``shape``, the declared one."""
    block = np.asarray(block)
    if block.shape != tuple(shape):
        a, b = rows
        raise ValueError(
            f"array {name!r}: rows {a}..{b} of its dask array computed to an array of shape "
            f"{block.shape}, not the {tuple(shape)} its chunks declare, so its rows would "
            "land on other samples (or be filled with zeros); fix the function that makes "
            "its blocks (da.from_delayed's shape=, map_blocks' chunks=), or call "
            ".compute_chunk_sizes() on it to take the shapes its blocks really have"
        )
    return block


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
    return check_block(name, block, rows, where["chunk-shape"])
