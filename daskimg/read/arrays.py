"""Read: arrays already on disk (HDF5 datasets, ``.npy``/``.npz`` files) as a row source."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import DecodeError
from .fileio import file_view, text_ordered, unseen_here
from .imageset import ImageSet, channels_first, check_index_range
from .source import DEFAULT_BLOCK

logger = logging.getLogger("daskimg")

#: data a shuffled read of a chunked HDF5 dataset may hold in memory to read each chunk once
SHUFFLE_MEMORY = 4 * 2**30
#: how much more decompression than reading each chunk once makes a shuffled read hold it all
REREAD_LIMIT = 1.5


@dataclass(frozen=True, eq=False)
class ArraySource:
    """Rows of an array in a ``.npy`` file or an HDF5 dataset, read lazily by blocks.

    How rows are read, in any order (``take``), at about the speed of reading them in order:

    * each block reads its rows as contiguous slices (``dset[a:b]``), never through
      h5py's fancy indexing (which is 10-40x slower on chunked datasets): rows next to
      each other, or in the same HDF5 chunk along axis 0, share one slice;
    * when the HDF5 chunks hold several rows each (h5py's automatic chunks do) and the
      blocks' rows are scattered (a shuffled order), reading per block would decompress
      each chunk once for every block that needs one of its rows. Then, if the rows fit
      in ``SHUFFLE_MEMORY``, the graph reads contiguous slabs of chunks once and each
      block gathers its rows from them in memory (every block depends on the slabs its
      rows lie in).
    """

    path: str
    key: str | None  # HDF5 dataset name; None for .npy
    shape: tuple[int, ...]  # as stored; (N, H, W) sources get a channel axis when read
    dtype: str
    rows: np.ndarray = field(repr=False)
    block: int = DEFAULT_BLOCK
    #: rows per HDF5 chunk along axis 0 (1 for contiguous datasets and .npy files)
    chunk_rows: int = 1
    #: the file as it was opened (:func:`file_stamp`): each read checks it is the same file
    stamp: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        # read where the set is made: a relative path was taken from the folder of each
        # process reading a block (a dask worker started elsewhere said the file was gone)
        object.__setattr__(self, "path", os.path.abspath(self.path))
        what = f"{self.path!r}" + (f", dataset {self.key!r}" if self.key else "")
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError:  # a structured dtype, spelled as its fields
            kind = "V"
        if kind not in "biuf":
            raise ValueError(
                f"{what}: images of dtype {self.dtype} cannot be stored; a store holds "
                "integers, floats or bools (e.g. the magnitude: np.abs(values))"
            )
        if not self.shape or self.shape[0] == 0:
            raise ValueError(f"{what}: holds no images (shape {self.shape}); nothing to convert")
        if 0 in self.shape[1:]:
            raise ValueError(
                f"{what}: every image is empty (shape {self.shape}); nothing to convert"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (*self.shape[1:], 1) if len(self.shape) == 3 else tuple(self.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: Sequence[int] | np.ndarray) -> ArraySource:
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySource(
            self.path,
            self.key,
            self.shape,
            self.dtype,
            self.rows[idx],
            self.block,
            self.chunk_rows,
            self.stamp,
        )

    def to_dask(self, *, block: int | None = None) -> da.Array:
        block = block or self.block
        n = len(self.rows)
        starts = range(0, n, block)
        chunks = (tuple(min(block, n - s) for s in starts), *((d,) for d in self.sample_shape))
        row_bytes = int(np.prod(self.sample_shape)) * np.dtype(self.dtype).itemsize
        # in order, a slab is freed as soon as its few blocks are done; scattered rows hold
        # every slab until the blocks that need it are, so memory bounds that case
        ordered = bool(np.all(np.diff(self.rows) >= 0))
        if (
            self.key is not None
            and (ordered or n * row_bytes <= SHUFFLE_MEMORY)
            and reread_factor(self.rows, block, self.chunk_rows) > REREAD_LIMIT
        ):
            return self._via_slabs(block, chunks)
        name = "convert-" + tokenize(self.path, self.key, self.rows, block, self.stamp)
        zeros = (0,) * len(self.sample_shape)
        dsk: dict[Any, Any] = {
            (name, i, *zeros): (
                _read_rows,
                self.path,
                self.key,
                self.rows[s : s + block],
                self.sample_shape,
                self.chunk_rows,
                self.stamp,
            )
            for i, s in enumerate(starts)
        }
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
        return da.Array(graph, name, chunks, dtype=np.dtype(self.dtype))

    def _via_slabs(self, block: int, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
        """Read each needed slab of chunks once; each block gathers its rows from the slabs."""
        token = tokenize(self.path, self.key, self.rows, block, self.chunk_rows, self.stamp)
        slab_name, name = f"convert-slab-{token}", f"convert-{token}"
        bounds = slabs(self.rows, self.chunk_rows, max(block, self.chunk_rows))
        starts = np.array([a for a, _ in bounds], dtype=np.int64)
        slab_layer: dict[Any, Any] = {
            (slab_name, j): (_read_slab, self.path, self.key, a, b, self.sample_shape, self.stamp)
            for j, (a, b) in enumerate(bounds)
        }
        zeros = (0,) * len(self.sample_shape)
        layer: dict[Any, Any] = {}
        for i, s in enumerate(range(0, len(self.rows), block)):
            rows = self.rows[s : s + block]
            slab_of = np.searchsorted(starts, rows, side="right") - 1
            used, which = np.unique(slab_of, return_inverse=True)
            layer[(name, i, *zeros)] = (
                _gather,
                [(slab_name, int(j)) for j in used],
                which.astype(np.int64),
                (rows - starts[slab_of]).astype(np.int64),
                self.sample_shape,
                self.dtype,
            )
        layers: dict[str, Any] = {slab_name: slab_layer, name: layer}
        graph = HighLevelGraph(layers, {slab_name: set(), name: {slab_name}})
        return da.Array(graph, name, chunks, dtype=np.dtype(self.dtype))

    @property
    def derived(self) -> tuple[str, ...]:
        """Nothing: arrays on disk derive no other arrays (see :class:`~daskimg.read.source.RowSource`)."""
        return ()

    def to_dask_arrays(
        self, *, block: int | None = None, skip: bool = False
    ) -> dict[str, da.Array]:
        """``{"images": ...}``: arrays on disk derive nothing else (and never fail to decode)."""
        return {"images": self.to_dask(block=block)}


def spans(rows: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Contiguous ``[a, b)`` slices covering ``rows`` (any order, repeats allowed).

    Rows next to each other, or in the same chunk of ``chunk_rows`` rows, share a slice:
    a chunk is decompressed whole whatever part of it is read.

    Examples
    --------
    >>> spans(np.array([9, 1, 2, 5, 3]), 1)
    [(1, 4), (5, 6), (9, 10)]
    >>> spans(np.array([9, 1, 2, 5, 3]), 8)
    [(1, 6), (9, 10)]
    """
    wanted = np.unique(np.asarray(rows, dtype=np.int64))
    if not len(wanted):
        return []
    group = wanted // max(1, chunk_rows)
    # a new slice where a row is neither next to the previous one nor in its chunk
    breaks = np.flatnonzero((np.diff(wanted) > 1) & (np.diff(group) > 0)) + 1
    firsts = np.concatenate([[0], breaks])
    lasts = np.concatenate([breaks - 1, [len(wanted) - 1]])
    return [(int(wanted[f]), int(wanted[t]) + 1) for f, t in zip(firsts, lasts, strict=True)]


def slabs(rows: np.ndarray, chunk_rows: int, target: int) -> list[tuple[int, int]]:
    """Chunk-aligned ``[a, b)`` slabs of about ``target`` rows covering the chunks ``rows`` touch.

    The last slab may reach past the end of the dataset (a slice stops there).

    Examples
    --------
    >>> slabs(np.array([0, 5, 6, 30]), 4, 8)
    [(0, 8), (28, 32)]
    """
    c = max(1, chunk_rows)
    groups = np.unique(np.asarray(rows, dtype=np.int64) // c)
    per = max(1, target // c)
    out: list[tuple[int, int]] = []
    if not len(groups):
        return out
    first = prev = int(groups[0])
    for g in (int(v) for v in groups[1:]):
        if g != prev + 1 or g - first >= per:
            out.append((first * c, (prev + 1) * c))
            first = g
        prev = g
    out.append((first * c, (prev + 1) * c))
    return out


def reread_factor(rows: np.ndarray, block: int, chunk_rows: int) -> float:
    """Chunks decompressed when each block reads its own, over reading each chunk once.

    Examples
    --------
    >>> reread_factor(np.arange(100), 20, 25)  # in order, 3 of 5 blocks straddle 2 chunks
    2.0
    >>> reread_factor(np.arange(100).reshape(25, 4).T.ravel(), 20, 25)  # each block: all 4
    5.0
    """
    rows = np.asarray(rows, dtype=np.int64)
    c = max(1, chunk_rows)
    once = len(np.unique(rows // c))
    if not once:
        return 1.0
    per_block = sum(len(np.unique(rows[s : s + block] // c)) for s in range(0, len(rows), block))
    return per_block / once


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading HDF5 needs h5py: pip install h5py") from e
    return h5py


def _read_rows(
    path: str,
    key: str | None,
    rows: np.ndarray,
    sample_shape: tuple[int, ...],
    chunk_rows: int = 1,
    stamp: tuple[Any, ...] | None = None,
) -> np.ndarray:
    """``rows`` (any order) of a .npy file or an HDF5 dataset, read as contiguous slices."""
    check_stamp(path, stamp)
    if key is None:
        data = np.load(path, mmap_mode="r")
        return np.asarray(data[rows]).reshape(len(rows), *sample_shape)
    with _h5_file(path) as f:
        dset = f[key]
        out = np.empty((len(rows), *sample_shape), dtype=dset.dtype)
        for a, b in spans(rows, chunk_rows):
            part = _h5_rows(dset, path, key, a, b).reshape(b - a, *sample_shape)
            inside = (rows >= a) & (rows < b)
            out[inside] = part[rows[inside] - a]
    return out


def _read_slab(
    path: str,
    key: str,
    a: int,
    b: int,
    sample_shape: tuple[int, ...],
    stamp: tuple[Any, ...] | None = None,
) -> np.ndarray:
    """Rows ``a .. b - 1`` of an HDF5 dataset (fewer at its end), in one contiguous read."""
    check_stamp(path, stamp)
    with _h5_file(path) as f:
        data = _h5_rows(f[key], path, key, a, b)
    return data.reshape(len(data), *sample_shape)


def file_stamp(path: str) -> tuple[Any, ...]:
    """What tells a file from the one there before: this machine's name, the file's inode,
    size and modification time (a file written again under its name has others). Not its
    change time, which a chmod or a hard link moves, nor its device, which a network file
    system numbers per machine."""
    st = os.stat(path)
    return (socket.gethostname(), st.st_ino, st.st_size, st.st_mtime_ns)


def check_stamp(path: str, stamp: tuple[Any, ...] | None) -> None:
    """Refuse reading ``path`` if it is not the file that was opened (``stamp``): rows of
    the new file would be stored beside labels and columns read from the old one (or fail
    with numpy's or h5py's errors naming nothing, when its shape changed). On another
    machine (a cluster's worker) only the size is compared: a copy of the file there has
    its own inode and maybe time."""
    if stamp is None:
        return
    try:
        now = file_stamp(path)
        if now[0] != stamp[0]:
            now, stamp = now[2:3], stamp[2:3]
    except FileNotFoundError:
        unseen = unseen_here(path, (stamp[0], file_view()[1]))
        if unseen:  # opened on another machine: not gone, out of this one's sight
            raise FileNotFoundError(f"{path!r} is not found here{unseen}") from None
        raise FileNotFoundError(
            f"{path!r} is gone since it was opened (open_array_set / convert): put it back, "
            "or open it again"
        ) from None
    if now != stamp:
        raise ValueError(
            f"{path!r} changed since it was opened (open_array_set / convert): written again "
            "or replaced, so its rows may no longer be the ones its labels and columns were "
            "read with. Open it again"
        )


@contextlib.contextmanager
def _h5_file(path: str) -> Iterator[Any]:
    """``path`` opened with h5py, read only; a file HDF5 cannot open said with its name
    (h5py's "file signature not found" or "truncated file" named no file)."""
    try:
        f = _h5py().File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(
            f"cannot open {path!r} as HDF5: {e}. It is not an HDF5 file (a .npy or .npz "
            "named .h5?), or it is truncated or damaged: copy it again"
        ) from None
    with f:
        yield f


def _h5_rows(dset: Any, path: str, key: str, a: int, b: int) -> np.ndarray:
    """Rows ``a .. b - 1`` of an HDF5 dataset; a read that fails (a chunk whose compression
    or checksum filter fails: damage) said with the file, the dataset and the rows of the
    first chunk that fails (h5py's "filter returned failure" named none of them)."""
    try:
        return np.asarray(dset[a:b])
    except OSError as e:
        step = int(dset.chunks[0]) if dset.chunks else b - a
        bad = next(
            (
                r
                for r in range(a - a % step, b, step)
                if not _readable(dset, max(a, r), min(b, r + step))
            ),
            a,
        )
        rows = (max(a, bad), min(b, bad + step) - 1)
        raise DecodeError(
            path,
            f"dataset {key!r}, rows {rows[0]}..{rows[1]}: HDF5 cannot read them ({e}); the "
            "file is damaged there (copy it again from its source)",
        ) from None


def _readable(dset: Any, a: int, b: int) -> bool:
    try:
        dset[a:b]
    except OSError:
        return False
    return True


def _gather(
    parts: list[np.ndarray],
    which: np.ndarray,
    local: np.ndarray,
    sample_shape: tuple[int, ...],
    dtype: str,
) -> np.ndarray:
    """A block's rows from the slabs they lie in: row ``k`` is ``parts[which[k]][local[k]]``."""
    out = np.empty((len(which), *sample_shape), dtype=dtype)
    for j, part in enumerate(parts):
        sel = which == j
        out[sel] = part[local[sel]]
    return out


def open_array_set(
    src: str | os.PathLike[str],
    *,
    images: str = "images",
    labels: str | None = None,
    classes: Sequence[str] = (),
    columns: Sequence[str] = (),
    boxes: Sequence[str] = (),
    check_layout: bool = True,
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
    columns
        Other per-sample datasets (HDF5) or arrays (``.npz``) to carry along, by name
        (read into memory: they are small next to the images).
    boxes
        Datasets of ``(N, 4)`` boxes ``x0, y0, x1, y1`` in the images' own pixels (the
        images are stored as they are, so the boxes are too); carried like ``columns``
        and named in the set's ``boxes``.
    check_layout
        Refuse images that look channels-first (:func:`~daskimg.read.imageset.channels_first`);
        False takes them as given.

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
    extra_names = list(dict.fromkeys([*columns, *boxes]))
    extra: dict[str, np.ndarray] = {}
    if images != "images" and low.endswith(".npy"):  # was ignored: the one array was read
        raise ValueError(
            f"{path!r}: a .npy file holds one array, the images; images={images!r} names an "
            "array in .h5 or .npz files only: leave it out"
        )
    if extra_names and low.endswith(".npy"):
        raise ValueError(
            f"{path!r}: a .npy file holds one array; columns and boxes come from .h5 or .npz files"
        )
    hdf5 = low.endswith((".h5", ".hdf5", ".he5"))
    if hdf5:
        stamp = file_stamp(path) if os.path.isfile(path) else None
        with _h5_file(path) as f:
            dset = _dataset(f, path, images)
            if dset.dtype.subdtype is not None:  # an HDF5 array type: each value an image
                raise ValueError(
                    f"{path!r}: dataset {images!r} holds {dset.shape[0]} values of the HDF5 "
                    f"array type {dset.dtype.subdtype[0]} x {dset.dtype.subdtype[1]}, not "
                    "images along its axes: write it again as one array of shape "
                    f"{(*dset.shape, *dset.dtype.subdtype[1])} (with h5py: "
                    "f.create_dataset(new_name, data=f[name][...]))"
                )
            shape, dtype = tuple(dset.shape), str(dset.dtype)
            chunk_rows = int(dset.chunks[0]) if dset.chunks else 1
            if labels is not None:
                label_dset = _dataset(f, path, labels)
                label_values = label_dset[...]
                enum = _h5py().check_enum_dtype(label_dset.dtype)
                if enum and not classes:
                    # an HDF5 enum (MATLAB, pandas exports) names its values: those names
                    # are the classes when they number 0..K-1 (else the values stay plain)
                    by_value = {int(v): str(k) for k, v in enum.items()}
                    if sorted(by_value) == list(range(len(by_value))):
                        classes = [by_value[i] for i in range(len(by_value))]
            for name in extra_names:
                extra[_stored_name(name, extra_names, path)] = _dataset(f, path, name)[...]
            boxes = [_stored_name(b, extra_names, path) for b in boxes]
        source: Any = ArraySource(
            path, images, shape, dtype, np.arange(shape[0]), chunk_rows=chunk_rows, stamp=stamp
        )
        arr = source.to_dask()
    elif low.endswith(".npy"):
        stamp = file_stamp(path) if os.path.isfile(path) else None
        with _numpy_file(path):
            mm = np.load(path, mmap_mode="r")
        if not isinstance(mm, np.ndarray):  # np.load opens an .npz archive by its content
            raise ValueError(
                f"{path!r} is an .npz archive (a zip of arrays), not a .npy file: rename it "
                "to .npz and name its arrays (images=, labels=)"
            )
        if mm.ndim == 0:
            raise ValueError(
                f"{path!r} holds a single value ({mm.dtype}), not one image per row; save "
                "the images as one array (N, H, W[, C])"
            )
        source = ArraySource(
            path, None, tuple(mm.shape), str(mm.dtype), np.arange(mm.shape[0]), stamp=stamp
        )
        arr = source.to_dask()
        if labels is not None:
            with _numpy_file(labels):
                label_values = np.load(labels)
            if not isinstance(label_values, np.ndarray):  # an .npz archive, by its content
                label_values.close()
                raise ValueError(
                    f"{path!r}: the labels {labels!r} are an .npz archive (a zip of arrays), "
                    "not a .npy file: save them with np.save, or pass the images and labels in "
                    "one .npz (images=, labels=)"
                )
    elif low.endswith(".npz"):
        with _numpy_file(path):
            opened = np.load(path)
        if isinstance(opened, np.ndarray):  # np.load opens a .npy by its content
            raise ValueError(
                f"{path!r} is a .npy file (one array), not an .npz archive (a zip of arrays): "
                "rename it to .npy"
            )
        with _numpy_file(path), opened as z:
            if images not in z.files:
                raise KeyError(f"{path!r} has no array {images!r}; it has {sorted(z.files)}")
            arr = np.asarray(z[images])
            if labels is not None:
                if labels not in z.files:
                    raise KeyError(f"{path!r} has no array {labels!r}; it has {sorted(z.files)}")
                label_values = np.asarray(z[labels])
            for name in extra_names:
                if name not in z.files:
                    raise KeyError(f"{path!r} has no array {name!r}; it has {sorted(z.files)}")
                extra[name] = np.asarray(z[name])
        source = None
        if arr.ndim >= 1 and arr.shape[0] == 0:
            raise ValueError(
                f"{path!r}, array {images!r}: holds no images (shape {arr.shape}); nothing "
                "to convert"
            )
    else:
        raise ValueError(f"{path!r}: convert reads .h5/.hdf5, .npy or .npz files")
    read_as = tuple(source.shape) if source is not None else tuple(arr.shape)
    if len(read_as) == 3 and read_as[2] <= 4 < read_as[1]:
        # as (N, H, W) gray images, one image (H, W, C) is H images a few pixels wide
        logger.warning(
            "%s: an array of shape %s is read as %d gray images of %dx%d pixels (N, H, W); "
            "if it is one image (H, W, C), add the sample axis first (np.save(path, x[None]))",
            path,
            read_as,
            read_as[0],
            read_as[1],
            read_as[2],
        )
    if arr.ndim == 3 and source is None:  # (N, H, W) grayscale: add the channel axis
        arr = arr[..., None]
    if np.dtype(arr.dtype).kind == "f" and np.dtype(arr.dtype).itemsize > 8:
        raise ValueError(
            f"{path!r}: the images are {arr.dtype} (long double), which Zarr has no type "
            "for: save them as float64 (np.save(path, x.astype(np.float64)))"
        )
    if check_layout and (why := channels_first(tuple(arr.shape))):
        where = f"{path!r}" + (f", dataset {images!r}" if hdf5 else "")
        raise ValueError(f"{where}: {why}")
    if arr.ndim < 4:
        raise ValueError(
            f"{path!r}: images must be (N, H, W), (N, H, W, C) or volumes; got {arr.shape}"
        )
    try:
        lab, names = _labels(label_values, classes, name=str(labels))
    except ValueError as e:  # named with the file the labels come from
        raise ValueError(f"{path!r}: {e}") from None
    try:
        return ImageSet(
            arr,
            lab,
            classes=names,
            columns=extra,
            root=os.path.dirname(os.path.abspath(path)),
            row_source=source,
            boxes=tuple(boxes),
        )
    except ValueError as e:  # a column or box that cannot be stored: say which file
        if type(e) is not ValueError:
            raise
        raise ValueError(f"{path!r}: {e}") from e


@contextlib.contextmanager
def _numpy_file(path: str) -> Iterator[None]:
    """NumPy's errors reading a .npy/.npz, said with the file (a truncated .npy gave only
    "mmap length is greater than file size"; a damaged .npz numpy's allow_pickle advice)."""
    try:
        yield
    except KeyError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"cannot read {path!r}: {e}. It is truncated or damaged, not a NumPy file, or "
            "holds Python objects rather than numbers (save arrays of numbers: np.save(path, "
            "x.astype(...)))"
        ) from None


def _dataset(f: Any, path: str, name: str) -> Any:
    """The HDF5 dataset ``name`` of the open file ``f``: one value per image (or an image
    per row), never a group, a link to nothing or a single value."""
    h5py = _h5py()
    if name not in f:
        raise KeyError(f"{path!r} has no dataset {name!r}; it has {sorted(f.keys())}")
    try:
        node = f[name]
    except (KeyError, OSError) as e:  # a soft link to nothing, an external link to no file
        raise KeyError(
            f"{path!r}: {name!r} is a link to nothing that can be opened ({e}); name a "
            f"dataset; the file has {sorted(f.keys())}"
        ) from None
    if isinstance(node, h5py.Group):
        inside = sorted(node.keys())
        hint = f", e.g. {name.rstrip('/')}/{inside[0]}" if inside else " (it holds nothing)"
        raise ValueError(
            f"{path!r}: {name!r} is an HDF5 group (holding {inside[:8]}), not a dataset; "
            f"name the dataset inside it{hint}"
        )
    if not isinstance(node, h5py.Dataset):
        raise ValueError(
            f"{path!r}: {name!r} is an HDF5 {type(node).__name__.lower()}, not a dataset; "
            "name a dataset"
        )
    if node.shape is None:
        raise ValueError(f"{path!r}: dataset {name!r} is empty (it holds no values)")
    if not node.shape:
        raise ValueError(
            f"{path!r}: dataset {name!r} holds a single value (shape ()), not one row per "
            "image; name a dataset whose first axis runs over the images"
        )
    _check_written(node, path, name)
    return node


def _stored_name(name: str, names: list[str], path: str) -> str:
    """The store's name for the HDF5 dataset ``name`` carried as a column: a dataset in a
    group (``data/ids``) is stored by its own name (``ids``; a store's arrays cannot be
    named with '/'), unless two carried datasets would share it."""
    if "/" not in name:
        return name
    short = name.rstrip("/").rsplit("/", 1)[-1]
    twins = [n for n in names if n != name and n.rstrip("/").rsplit("/", 1)[-1] == short]
    if twins:
        raise ValueError(
            f"{path!r}: the datasets {name!r} and {twins[0]!r} would both be stored as "
            f"{short!r} (a store's arrays are named without their HDF5 groups): carry one "
            "of them, or copy it to another name in the file"
        )
    logger.info("%s: dataset %r is stored as the array %r", path, name, short)
    return short


def _check_written(dset: Any, path: str, name: str) -> None:
    """Refuse an HDF5 dataset whose values are not all in the file: HDF5 reads what was
    never written (chunks never allocated, a contiguous dataset never written, a virtual
    dataset's missing source file, an external raw file cut short) as the fill value — 0
    — without an error, which would be stored as black images with their labels."""
    h5d = _h5py().h5d
    where = f"{path!r}: dataset {name!r}"
    if dset.size == 0:
        return
    if dset.is_virtual:
        sources = dset.virtual_sources()
        _check_mapped(dset, sources, where)
        opened: dict[str, Any] = {}
        try:
            for vs in sources:
                _check_virtual_source(path, where, vs, opened)
        finally:
            for f in opened.values():
                f.close()
        return
    external = dset.external
    if external:
        need = dset.size * dset.dtype.itemsize
        for file_name, offset, size in external:
            take = min(int(size), need)
            have = _external_size(path, file_name)
            if have is None or have < offset + take:
                raise ValueError(
                    f"{where} keeps its values in the external file {file_name!r}, which "
                    + (
                        "is not there"
                        if have is None
                        else f"holds {have} bytes, not the {offset + take} it needs"
                    )
                    + ": HDF5 would read the missing values as the fill value (0). Put the "
                    "file beside it whole, or store the dataset in the file itself"
                )
            need -= take
            if need <= 0:
                break
        return
    status = dset.id.get_space_status()
    if status == h5d.SPACE_STATUS_ALLOCATED:
        return
    fill = np.asarray(dset.fillvalue).tolist()
    if status == h5d.SPACE_STATUS_NOT_ALLOCATED:
        raise ValueError(
            f"{where} was never written (HDF5 keeps no values for it and would read every "
            f"one as the fill value, {fill!r}): the file's writer stopped before writing "
            "it. Write the file again"
        )
    rows = _unwritten_rows(dset)
    shown = ", ".join(f"{a}..{b - 1}" for a, b in rows[:4]) + (", ..." if len(rows) > 4 else "")
    raise ValueError(
        f"{where} was written in part: rows {shown} lie in chunks never written, which "
        f"HDF5 would read as the fill value ({fill!r}) and would be stored as data (a "
        "writer that stopped early, or a dataset made larger than was filled). "
        "Write the file again, or make one of the rows written (e.g. with h5py: "
        "f.create_dataset(..., data=d[:n]))"
    )


def _unwritten_rows(dset: Any) -> list[tuple[int, int]]:
    """The row ranges of a chunked dataset that hold a chunk never written."""
    shape, chunks = dset.shape, dset.chunks
    per_band = int(np.prod([-(-s // c) for s, c in zip(shape[1:], chunks[1:], strict=True)]))
    bands = -(-shape[0] // chunks[0])
    written = np.zeros(bands, np.int64)
    for i in range(dset.id.get_num_chunks()):
        written[dset.id.get_chunk_info(i).chunk_offset[0] // chunks[0]] += 1
    out: list[tuple[int, int]] = []
    for b in np.flatnonzero(written < per_band):
        a, z = int(b * chunks[0]), int(min(shape[0], (b + 1) * chunks[0]))
        out[-1:] = [(out[-1][0], z)] if out and out[-1][1] == a else [*out[-1:], (a, z)]
    return out


def _candidates(path: str, file_name: str, env: str) -> list[str]:
    """Where HDF5 looks for a file another one names: as given (absolute, or from the
    working folder), under the prefix in ``env``, beside ``path``."""
    if os.path.isabs(file_name):
        return [file_name]
    found = [file_name, os.path.join(os.path.dirname(os.path.abspath(path)), file_name)]
    prefix = os.environ.get(env)
    if prefix:
        found.insert(0, os.path.join(prefix, file_name))
    return found


def _external_size(path: str, file_name: str) -> int | None:
    """The size of an external raw file where HDF5 would find it, or None: not there."""
    sizes = [
        os.path.getsize(c)
        for c in _candidates(path, file_name, "HDF5_EXTFILE_PREFIX")
        if os.path.isfile(c)
    ]
    return max(sizes) if sizes else None


def _check_mapped(dset: Any, sources: list[Any], where: str) -> None:
    """Refuse a virtual dataset some of whose values no source maps (HDF5 reads them as the
    fill value): the union of the sources' selections, by HDF5's own selection operations."""
    h5s = _h5py().h5s
    left = h5s.create_simple(dset.shape)
    left.select_all()
    for vs in sources:
        space = vs.vspace
        kind = space.get_select_type()
        if kind == h5s.SEL_ALL:
            left.select_none()
        elif kind == h5s.SEL_POINTS:
            one = (1,) * len(dset.shape)
            for point in space.get_select_elem_pointlist():
                left.select_hyperslab(tuple(int(p) for p in point), one, op=h5s.SELECT_NOTB)
        elif kind == h5s.SEL_HYPERSLABS:
            for start, count, stride, block in _hyperslabs(space, dset.shape):
                left.select_hyperslab(start, count, stride, block, op=h5s.SELECT_NOTB)
        if not left.get_select_npoints():
            return
    n = left.get_select_npoints()
    first, last = left.get_select_bounds()
    raise ValueError(
        f"{where} is a virtual dataset whose sources leave {n} of its {dset.size} values "
        f"unmapped (in rows {first[0]}..{last[0]}): HDF5 would read them as the fill value "
        f"({np.asarray(dset.fillvalue).tolist()!r}), stored as data. Map every row to a "
        "source, or make the dataset as long as its sources"
    )


def _hyperslabs(space: Any, shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], ...]]:
    """A hyperslab selection of a dataset of ``shape`` as ``(start, count, stride, block)``
    per slab: its blocks, or, for a regular selection without an end (an unlimited mapping,
    which HDF5 cannot list as blocks), the one regular slab cut at ``shape``."""
    try:
        blocks = space.get_select_hyper_blocklist()
    except NotImplementedError:  # unlimited: a regular slab without a count
        start, stride, count, block = space.get_regular_hyperslab()
        unlimited = _h5py().h5s.UNLIMITED
        count = tuple(
            max(0, (dim - s - b) // t + 1) if c == unlimited else c
            for dim, s, t, c, b in zip(shape, start, stride, count, block, strict=True)
        )
        return [(tuple(start), count, tuple(stride), tuple(block))]
    one = (1,) * len(shape)
    return [
        (
            tuple(int(a) for a in start),
            tuple(int(b) - int(a) + 1 for a, b in zip(start, end, strict=True)),
            one,
            one,
        )
        for start, end in blocks
    ]


def _check_virtual_source(path: str, where: str, vs: Any, opened: dict[str, Any]) -> None:
    """Refuse a virtual dataset one of whose source files (or datasets) is not there, or
    whose source rows it maps were never written: HDF5 reads that part as the fill value.
    ``opened``: the source files opened so far, by path (each is opened once)."""
    file_name, dset_name = vs.file_name, vs.dset_name
    found = (
        [path]
        if file_name == "."
        else [c for c in _candidates(path, file_name, "HDF5_VDS_PREFIX") if os.path.isfile(c)]
    )
    missing = None if found else f"its source file {file_name!r} is not there"
    if found:
        try:
            f = opened.get(found[0])
            if f is None:
                f = opened[found[0]] = _h5py().File(found[0], "r")
            if dset_name not in f:
                missing = f"its source file {found[0]!r} has no dataset {dset_name!r}"
            else:
                missing = _unwritten_source(f[dset_name], vs.src_space, found[0], dset_name)
        except OSError as e:
            missing = f"its source file {found[0]!r} cannot be opened ({e})"
    if missing:
        raise ValueError(
            f"{where} is a virtual dataset, and {missing}: HDF5 would read that part as the "
            "fill value (0). Put the source files beside it, whole, or store a copy of the data "
            "itself"
        )


def _unwritten_source(src: Any, space: Any, file: str, name: str) -> str | None:
    """What of the rows ``space`` selects in the source dataset ``src`` was never written
    (None: all were)."""
    h5d, h5s = _h5py().h5d, _h5py().h5s
    if src.is_virtual or src.external or not src.size:
        return None  # (checked when read as a dataset of its own; an empty one maps nothing)
    status = src.id.get_space_status()
    if status == h5d.SPACE_STATUS_ALLOCATED:
        return None
    kind = space.get_select_type()
    if kind == h5s.SEL_NONE:
        return None
    n = src.shape[0]
    rows = np.zeros(n, dtype=bool)  # the source rows the mapping selects
    if kind == h5s.SEL_ALL:  # (a source given whole holds a selection without its extent)
        rows[:] = True
    elif kind == h5s.SEL_POINTS:
        rows[[int(p[0]) for p in space.get_select_elem_pointlist() if 0 <= p[0] < n]] = True
    else:
        for start, count, stride, block in _hyperslabs(space, src.shape):
            for k in range(count[0]):
                a = start[0] + k * stride[0]
                rows[a : a + block[0]] = True
    never = status == h5d.SPACE_STATUS_NOT_ALLOCATED
    for a, b in [(0, n)] if never else _unwritten_rows(src):
        hit = np.flatnonzero(rows[a:b])
        if hit.size:
            return (
                f"its source {file!r}, dataset {name!r}, was never written in row "
                f"{a + int(hit[0])} (of rows {a}..{b - 1}), which it maps"
            )
    return None


def _label_text(value: Any, name: str, row: int) -> str:
    """A text label as ``str``: bytes (HDF5's, ``S`` arrays) decoded as UTF-8, or named."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"labels {name!r}, row {row}: {value[:40]!r} is not UTF-8 text ({e.reason}); "
            "re-encode the labels as UTF-8, or store them as class indices with the names "
            "given as classes (--classes)"
        ) from None


def _labels(
    values: Any, classes: Sequence[str], *, name: str = "labels"
) -> tuple[np.ndarray | None, Sequence[str]]:
    if values is None:
        return None, classes
    values = np.asarray(values)
    if values.ndim == 0:
        raise ValueError(
            f"labels {name!r} hold a single value ({values.item()!r}), not one per sample"
        )
    given = values.shape
    values = values.reshape(len(values), -1)
    if values.shape[1] != 1:
        raise ValueError(
            f"labels {name!r} must be one per sample (shape (N,) or (N, 1)), got shape {given}"
        )
    values = values[:, 0]
    if values.dtype.kind in "SUO":
        text = np.array([_label_text(v, name, i) for i, v in enumerate(values)])
        names = list(classes) or sorted(set(text.tolist()))
        ordered = None if classes else text_ordered(names)
        if ordered is not None:
            moved, by_value = ordered
            logger.warning(
                "labels %r are numbers written as text, numbered in text order as class "
                "names are (%s): label %r is not index %s. Pass classes=%r (the CLI: "
                "--classes) to number them by their value",
                name,
                ", ".join(f"{c!r} -> {names.index(c)}" for c in moved),
                moved[0],
                moved[0],
                by_value,
            )
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
    check_index_range(values, f"labels {name!r}")
    return values.astype(np.int64), classes
