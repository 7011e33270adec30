"""Test data: small smooth seeded volumes, and folders of them (``.npy`` files or TIFF stacks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from ._common import check_seed, check_shape

__all__ = ["make_volume", "make_volume_folder"]

_VOLUME_DTYPES: Final = ("uint8", "uint16", "int16", "float32", "float64")


def make_volume(
    shape: tuple[int, ...] = (8, 10, 12),
    *,
    seed: int | np.random.Generator = 0,
    dtype: str = "uint8",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Make a small smooth volume: a gradient plus a few Gaussian blobs.

    Parameters
    ----------
    shape : tuple of int
        ``(depth, height, width)``.
    seed : int or numpy.random.Generator
        Decides every voxel.
    dtype : {"uint8", "uint16", "int16", "float32", "float64"}
        Unsigned volumes span their full range (0..255, 0..65535), the others 0..1,
        unless ``value_range`` is given.
    value_range : tuple of float, optional
        ``(lo, hi)`` for the values to span, e.g. ``(-1000, 2000)`` for a CT scan in
        Hounsfield units (air to bone).

    Returns
    -------
    numpy.ndarray
        An array of ``shape`` and ``dtype``.

    Examples
    --------
    >>> vol = make_volume((4, 5, 6), seed=1)
    >>> vol.shape, vol.dtype.name, int(vol.min()), int(vol.max())
    ((4, 5, 6), 'uint8', 0, 255)
    >>> ct = make_volume((4, 5, 6), dtype="int16", value_range=(-1000, 2000))
    >>> ct.dtype.name, int(ct.min()), int(ct.max())
    ('int16', -1000, 2000)
    """
    dims = check_shape(shape, 3, "shape")
    dtype = np.dtype(dtype).name
    if dtype not in _VOLUME_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_VOLUME_DTYPES)}; got {dtype!r}")
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in dims), indexing="ij", sparse=True)
    vol = sum(g * c for g, c in zip(grids, rng.uniform(-0.5, 0.5, 3), strict=True))
    for _ in range(3):
        center = rng.uniform(0.2, 0.8, 3)
        width = rng.uniform(0.1, 0.3)
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True))
        vol = vol + rng.uniform(0.5, 1.0) * np.exp(-dist2 / (2 * width**2))
    vol = np.broadcast_to(vol, dims).astype(np.float64)
    span = vol.max() - vol.min()
    vol = (vol - vol.min()) / span if span > 0 else np.zeros(dims)
    if value_range is None and dtype in ("uint8", "uint16"):
        value_range = (0, np.iinfo(dtype).max)
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        vol = lo + vol * (hi - lo)
    if np.dtype(dtype).kind == "f":
        return vol.astype(dtype)
    return np.round(vol).astype(dtype)


def make_volume_folder(
    root: str | os.PathLike[str],
    *,
    n: int = 4,
    shape: tuple[int, int, int] = (8, 10, 12),
    seed: int = 0,
    fmt: str = "npy",
    shapes: Sequence[tuple[int, int, int]] | None = None,
    dtype: str = "uint8",
    classes: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
) -> list[Path]:
    """Write ``n`` :func:`make_volume` volumes as ``.npy`` files or TIFF stacks.

    Files are ``root/vol_<i:04d>.<fmt>``, or with ``classes``
    ``root/<class>/<class>_<i:04d>.<fmt>`` spread round-robin.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into; created if missing.
    n : int
        Number of volumes.
    shape : tuple of int
        ``(depth, height, width)`` of every volume, unless ``shapes`` is given.
    seed : int
        Non-negative seed.
    fmt : {"npy", "tif"}
        ``"npy"`` for ``numpy.save`` files, ``"tif"`` (or ``"tiff"``) for
        multi-page grayscale TIFFs.
    shapes : sequence of tuple of int, optional
        Shapes to cycle through, so volume ``i`` has ``shapes[i % len(shapes)]``.
    dtype : {"uint8", "uint16", "int16", "float32", "float64"}
        Voxel type (see :func:`make_volume`).
    classes : sequence of str, optional
        Class folder names.
    value_range : tuple of float, optional
        The values to span (see :func:`make_volume`).

    Returns
    -------
    list of pathlib.Path
        The written files, sorted.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> paths = make_volume_folder(tempfile.mkdtemp(), n=3, shapes=[(4, 5, 6), (2, 3, 4)])
    >>> [np.load(p).shape for p in paths]
    [(4, 5, 6), (2, 3, 4), (4, 5, 6)]
    """
    root = Path(root)
    seed = check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    ext = fmt.lower().lstrip(".")
    if ext not in ("npy", "tif", "tiff"):
        raise ValueError(f"fmt must be 'npy', 'tif' or 'tiff'; got {fmt!r}")
    cycle = (
        [check_shape(s, 3, "shapes[i]") for s in shapes]
        if shapes
        else [check_shape(shape, 3, "shape")]
    )
    if classes is not None and (isinstance(classes, str) or not classes):
        raise ValueError(f"classes must be a non-empty sequence of folder names; got {classes!r}")
    paths = []
    for i in range(n):
        vol = make_volume(
            cycle[i % len(cycle)],
            seed=np.random.default_rng([seed, i]),
            dtype=dtype,
            value_range=value_range,
        )
        if classes is None:
            folder, stem = root, f"vol_{i:04d}"
        else:
            cls = classes[i % len(classes)]
            folder, stem = root / cls, f"{cls}_{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.{ext}"
        if ext == "npy":
            np.save(path, vol)
        else:
            import tifffile

            tifffile.imwrite(path, vol, photometric="minisblack")
        paths.append(path)
    return sorted(paths)
