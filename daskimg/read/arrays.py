"""Read: arrays already on disk (HDF5 datasets, ``.npy``/``.npz`` files) as a row source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .imageset import ImageSet
from .source import DEFAULT_BLOCK


@dataclass(frozen=True, eq=False)
class ArraySource:
    """Rows of an array in a ``.npy`` file or an HDF5 dataset, read lazily by blocks."""

    path: str
    key: str | None  # HDF5 dataset name; None for .npy
    shape: tuple[int, ...]  # as stored; (N, H, W) sources get a channel axis when read
    dtype: str
    rows: np.ndarray = field(repr=False)
    block: int = DEFAULT_BLOCK

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (*self.shape[1:], 1) if len(self.shape) == 3 else tuple(self.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: Sequence[int] | np.ndarray) -> ArraySource:
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySource(self.path, self.key, self.shape, self.dtype, self.rows[idx], self.block)

    def to_dask(self, *, block: int | None = None) -> da.Array:
        block = block or self.block
        n = len(self.rows)
        name = "convert-" + tokenize(self.path, self.key, self.rows, block)
        zeros = (0,) * len(self.sample_shape)
        dsk: dict[Any, Any] = {
            (name, i, *zeros): (
                _read_rows,
                self.path,
                self.key,
                self.rows[s : s + block],
                self.sample_shape,
            )
            for i, s in enumerate(range(0, n, block))
        }
        chunks = (
            tuple(min(block, n - s) for s in range(0, n, block)),
            *((d,) for d in self.sample_shape),
        )
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
        return da.Array(graph, name, chunks, dtype=np.dtype(self.dtype))

    def to_dask_arrays(
        self, *, block: int | None = None, skip: bool = False
    ) -> dict[str, da.Array]:
        """``{"images": ...}``: arrays on disk derive nothing else (and never fail to decode)."""
        return {"images": self.to_dask(block=block)}


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading HDF5 needs h5py: pip install h5py") from e
    return h5py


def _read_rows(
    path: str, key: str | None, rows: np.ndarray, sample_shape: tuple[int, ...]
) -> np.ndarray:
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    uniq, inverse = np.unique(wanted, return_inverse=True)
    if key is None:
        data = np.load(path, mmap_mode="r")[uniq]
    else:
        with _h5py().File(path, "r") as f:
            data = f[key][uniq]  # h5py fancy indexing wants increasing, unique rows
    out = np.empty((len(rows), *sample_shape), dtype=data.dtype)
    out[order] = data[inverse].reshape(len(rows), *sample_shape)
    return out


def open_array_set(
    src: str | os.PathLike[str],
    *,
    images: str = "images",
    labels: str | None = None,
    classes: Sequence[str] = (),
) -> ImageSet:
    """An :class:`ImageSet` over arrays in an HDF5 file, a ``.npy`` file or an ``.npz`` archive.

    Parameters
    ----------
    src
        ``*.h5`` / ``*.hdf5`` (``images`` and ``labels`` name datasets), ``*.npz`` (they name
        arrays in the archive) or ``*.npy`` (the images; ``labels`` is then a path to a
        ``.npy`` file of labels).
    classes
        Class names; by default, string labels give sorted unique names and integer
        labels give none.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "x.npy"), np.zeros((5, 4, 4, 3), np.uint8))
    >>> len(open_array_set(os.path.join(d, "x.npy")))
    5
    """
    path = os.fspath(src)
    low = path.lower()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path!r}")
    label_values: Any = None
    if low.endswith((".h5", ".hdf5", ".he5")):
        with _h5py().File(path, "r") as f:
            if images not in f:
                raise KeyError(f"{path!r} has no dataset {images!r}; it has {sorted(f.keys())}")
            dset = f[images]
            shape, dtype = tuple(dset.shape), str(dset.dtype)
            if labels is not None:
                if labels not in f:
                    raise KeyError(f"{path!r} has no dataset {labels!r}; it has {sorted(f.keys())}")
                label_values = f[labels][...]
        source: Any = ArraySource(path, images, shape, dtype, np.arange(shape[0]))
        arr = source.to_dask()
    elif low.endswith(".npy"):
        mm = np.load(path, mmap_mode="r")
        source = ArraySource(path, None, tuple(mm.shape), str(mm.dtype), np.arange(mm.shape[0]))
        arr = source.to_dask()
        if labels is not None:
            label_values = np.load(labels)
    elif low.endswith(".npz"):
        with np.load(path) as z:
            if images not in z.files:
                raise KeyError(f"{path!r} has no array {images!r}; it has {sorted(z.files)}")
            arr = np.asarray(z[images])
            if labels is not None:
                if labels not in z.files:
                    raise KeyError(f"{path!r} has no array {labels!r}; it has {sorted(z.files)}")
                label_values = np.asarray(z[labels])
        source = None
    else:
        raise ValueError(f"{path!r}: convert reads .h5/.hdf5, .npy or .npz files")
    if arr.ndim == 3 and source is None:  # (N, H, W) grayscale: add the channel axis
        arr = arr[..., None]
    if arr.ndim < 4:
        raise ValueError(
            f"{path!r}: images must be (N, H, W), (N, H, W, C) or volumes; got {arr.shape}"
        )
    lab, names = _labels(label_values, classes, name=str(labels))
    return ImageSet(
        arr, lab, classes=names, root=os.path.dirname(os.path.abspath(path)), row_source=source
    )


def _labels(
    values: Any, classes: Sequence[str], *, name: str = "labels"
) -> tuple[np.ndarray | None, Sequence[str]]:
    if values is None:
        return None, classes
    values = np.asarray(values).reshape(len(values), -1)
    if values.shape[1] != 1:
        raise ValueError(f"labels must be one per sample, got shape {values.shape}")
    values = values[:, 0]
    if values.dtype.kind in "SUO":
        text = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
        names = list(classes) or sorted(set(text.tolist()))
        index = {c: i for i, c in enumerate(names)}
        missing = sorted(set(text.tolist()) - set(index))
        if missing:
            raise ValueError(f"labels {missing[:5]} are not among the classes {names}")
        return np.array([index[t] for t in text], dtype=np.int64), names
    if values.dtype.kind == "f":
        # MATLAB and many HDF5 exports store class indices as floats: take whole numbers
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise ValueError(
                f"labels {name!r} must be whole numbers (class indices) or strings; found "
                f"{values[bad][0].item()} ({values.dtype}). Per-sample values such as "
                "regression targets are a column, not labels: build "
                "di.ImageSet(images, columns={'target': values}) and di.to_zarr it"
            )
    elif values.dtype.kind not in "iub":
        raise ValueError(
            f"labels {name!r} must be integer class indices or strings, got {values.dtype}"
        )
    return values.astype(np.int64), classes
