"""Store: :func:`convert` — arrays from HDF5 / ``.npy`` / ``.npz`` into a daskimg store."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..read.arrays import open_array_set
from .write import SOURCE_ROW, to_zarr


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    images: str = "images",
    labels: str | None = None,
    classes: Sequence[str] = (),
    columns: Sequence[str] = (),
    boxes: Sequence[str] = (),
    chunks: int | None = None,
    codec: str | None = None,
    order: str = "shuffled",
    seed: int = 0,
    split: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    check_layout: bool = True,
) -> str:
    """Write the arrays of an HDF5 / ``.npy`` / ``.npz`` file to a daskimg store.

    See :func:`~daskimg.read.arrays.open_array_set` for the source (``columns``: other
    per-sample datasets to carry; ``boxes``: those of them that are ``(N, 4)`` boxes in
    the images' pixels; ``check_layout``: refuse images that look channels-first) and
    :func:`daskimg.to_zarr` for the rest.

    Each stored sample's row in ``src`` is kept in the column ``source_row`` (int64): the
    default order is shuffled, and an array file has no paths to tell its rows by, so
    predictions written back by store index could not be traced to the source's rows.

    Examples
    --------
    >>> convert("old.h5", "out/train.zarr.zip", labels="labels")  # doctest: +SKIP
    """
    ds = open_array_set(
        src,
        images=images,
        labels=labels,
        classes=classes,
        columns=columns,
        boxes=boxes,
        check_layout=check_layout,
    )
    if SOURCE_ROW in ds.columns:
        raise ValueError(
            f"{os.fspath(src)!r}: a column named 'source_row' is asked for, the name convert "
            "gives each sample's row in the source; leave it out of columns="
        )
    ds.columns[SOURCE_ROW] = np.arange(len(ds), dtype=np.int64)
    return to_zarr(
        ds,
        out,
        chunks=chunks,
        codec=codec,
        order=order,
        seed=seed,
        split=split,
        overwrite=overwrite,
        progress=progress,
        check_layout=check_layout,
    )
