"""Read: :class:`ImageSet` — images with their labels, paths and per-sample columns."""

from __future__ import annotations

import decimal
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import dask.array as da
import numpy as np

from .boxes import check_boxes, image_frame
from .decode import DecodeSpec
from .files import ON_ERROR
from .lazy import check_persisted_reachable, cut_checked, unmasked
from .source import DEFAULT_BLOCK, FileSource, RowSource

logger = logging.getLogger("daskimg")

#: the label of a sample that has none (a sample of an unlabelled split), as in scikit-learn
NO_LABEL = -1


def channels_first(shape: tuple[int, ...]) -> str | None:
    """Why images of ``shape`` look channels-first (PyTorch's layout), or None.

    ``(N, C, H, W)`` or ``(N, C, D, H, W)`` with C 1-4 (gray, two bands, RGB, RGBA) and
    the last axis longer than 4: a store holds images channels-last, and such an array
    would be stored as C rows (or slices) with W channels each, and every reader would
    get those. :func:`daskimg.to_zarr` and ``convert`` refuse it unless told the layout
    is right (``check_layout=False``: images 1-4 pixels high with more than 4 channels);
    a store that already holds such arrays still opens.

    Examples
    --------
    >>> channels_first((10, 3, 32, 32)) is not None
    True
    >>> channels_first((10, 32, 32, 3)) is None
    True
    """
    what = looks_channels_first(shape)
    if what is None:
        return None
    c, w = shape[1], shape[-1]
    last = "(N, H, W, C)" if len(shape) == 4 else "(N, D, H, W, C)"
    return (
        f"images of shape {shape} look channels-first {what} with C={c}: a store holds "
        f"images channels-last {last}, and these would be stored with {w} channels each. "
        "Move the channel axis last first: np.moveaxis(images, 1, -1), or da.moveaxis for "
        "a dask array (an HDF5 dataset: di.ImageSet(da.moveaxis(da.from_array(f['images']), "
        "1, -1), labels)). If the layout is right (images of few rows with many channels), "
        "pass check_layout=False (daskimg convert --no-layout-check)"
    )


def looks_channels_first(shape: tuple[int, ...]) -> str | None:
    """The layout ``(N, C, H, W)`` or ``(N, C, D, H, W)`` that images of ``shape`` look to
    have (see :func:`channels_first`), or None.

    Examples
    --------
    >>> looks_channels_first((10, 3, 32, 32))
    '(N, C, H, W)'
    >>> looks_channels_first((10, 32, 32, 3)) is None
    True
    """
    if len(shape) not in (4, 5) or not 1 <= shape[1] <= 4 or shape[-1] <= 4:
        return None
    return "(N, C, H, W)" if len(shape) == 4 else "(N, C, D, H, W)"


class ImageSet:
    """Images (lazy) with their per-sample labels, paths and extra columns.

    Parameters
    ----------
    images
        ``(N, H, W, C)`` or ``(N, D, H, W, C)`` dask or numpy array.
    labels
        ``(N,)`` integer class indices, or None. ``-1`` marks a sample without a label
        (a sample of an unlabelled ``test/`` folder beside labelled ones).
    classes
        Class names; ``classes[labels[i]]`` names sample ``i``'s class.
    paths
        ``(N,)`` source paths relative to ``root`` (strings), or None.
    columns
        Extra per-sample numeric arrays, each with ``N`` rows (e.g. ``{"bbox": (N, 4)}``).
        A name is one array's in the store: not empty, no ``/``, not ``.``/``..`` nor
        starting ``__``; ``images``, ``labels``, ``paths``, ``index`` (the feed's store
        index) and ``ok`` are reserved; a column ``masks`` must have the images' height
        and width (segmentation masks).
    boxes
        Names of the columns that hold boxes: ``(N, 4)`` corners ``x0, y0, x1, y1`` in the
        stored image's pixel frame. Recorded in the store, so transforms and readers know
        which columns move with the pixels. Each box is checked
        (:func:`~daskimg.read.boxes.check_boxes`: left <= right, top <= bottom, all four
        numbers or all NaN, something inside the images): a column in memory here, a
        lazy one as :func:`~daskimg.to_zarr` or a feed computes it. Boxes are floats (a box
        cut away by a crop is NaN): an integer column is stored as float32 (up to 16 bits)
        or float64, which hold its values exactly, and flips and crops give floats.
    root
        The folder the paths are relative to.
    on_error
        ``"raise"`` or ``"skip"``: what storing does with a file that cannot be decoded
        (only meaningful for sets read from files): with ``"skip"``, :func:`~daskimg.to_zarr`
        leaves it out and records it. Such a set is fed from its store:
        :class:`~daskimg.BatchIterator` refuses it straight from the files, and computing
        ``images`` raises at a bad file.
    check_names
        False: the column names and ``masks`` shape are taken as they are (a subset of
        a set, or a store written by an earlier version, which still opens).

    Examples
    --------
    >>> import numpy as np, daskimg as di
    >>> ds = di.ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]), classes=["cat", "dog"])
    >>> len(ds), ds.classes
    (4, ('cat', 'dog'))
    """

    def __init__(
        self,
        images: da.Array | np.ndarray | None,
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        classes: Sequence[str] | None = (),
        paths: Sequence[str] | np.ndarray | None = None,
        columns: Mapping[str, Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        source_splits: Sequence[str] | np.ndarray | None = None,
        row_source: RowSource | None = None,
        boxes: Sequence[str] = (),
        check_names: bool = True,
    ) -> None:
        if images is not None and not isinstance(images, da.Array):
            images = unmasked("images", images)
            if images.ndim >= 3:
                images = da.from_array(images, chunks=(DEFAULT_BLOCK, *images.shape[1:]))
        if isinstance(images, da.Array) and any(math.isnan(c) for c in images.shape):
            raise ValueError(
                f"images have an unknown shape {images.shape} (a dask array cut by a boolean "
                "mask, e.g. x[x.mean(axis=(1, 2, 3)) > 10]); call images.compute_chunk_sizes() "
                "first, or index with the positions np.flatnonzero(mask.compute())"
            )
        if images is not None and images.ndim < 3:
            raise ValueError(
                f"images must have shape (N, H, W, C) or (N, D, H, W, C); got {images.shape}"
            )
        if images is not None and images.ndim == 3:
            # gray (N, H, W): the channel axis added, as imread and convert give them (it
            # was stored 3-D, with dimension names of no image, and random_crop refused it)
            images = images[..., None]
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if images is not None:
            n = int(images.shape[0])
        else:
            # a set without images (e.g. features written back): its length comes from the other arrays
            others = [a for a in (labels, paths, *(columns or {}).values()) if a is not None]
            if not others:
                raise ValueError("an ImageSet needs images or at least one per-sample array")
            n = len(others[0])
        self._n = n
        #: ``(N, H, W, C)`` dask array, or None for a store of other arrays only (e.g. features)
        self.images: da.Array | None = cast("da.Array | None", images)
        self.labels = labels  # checked and cast by the setter
        self.classes = classes  # checked by the setter
        self._check_label_range()
        self.paths = paths  # checked by the setter
        self.columns = {k: _per_sample(k, v, n, None) for k, v in (columns or {}).items()}
        self.boxes = tuple(str(b) for b in _box_names(boxes))
        self.check_columns(strict=check_names)
        for b in self.boxes:
            col = self.columns[b]
            if not isinstance(col, da.Array):  # lazy columns: checked as they are computed
                frame = None if images is None else image_frame(images.shape)
                check_boxes(b, col, frame)
        self.root = None if root is None else str(root)
        self.on_error = on_error
        self.source_splits = (
            None
            if source_splits is None
            else _per_sample("source_splits", source_splits, n, object)
        )
        self.row_source = row_source
        # the names of the arrays the files give (images, source_size, masks, boxes read
        # with them), as made: an array put in one's place (ds.images = flipped) is the
        # user's, kept by take/split/to_zarr instead of decoded again from the files
        self._from_files: dict[str, str] = {}
        if row_source is not None:
            given = {"images": self.images, **self.columns}
            self._from_files = {
                k: a.name
                for k in ("images", *row_source.derived)
                if isinstance(a := given.get(k), da.Array)
            }
        #: how the images were decoded (``size``, ``channels``, ``dtype``, ``resize``,
        #: ``draft``) for a set opened from a store (its ``attrs["source"]``), kept by
        #: subsets, so a store written from it keeps what maps its boxes back
        #: (:func:`~daskimg.read.boxes.to_source`); sets read from files have :attr:`spec`
        self.decoded_as: dict[str, Any] | None = None
        #: files left out because they could not be decoded: (path, reason), filled by to_zarr
        self.skipped: list[tuple[str, str]] = []
        #: stores this set was written to in another order (to_zarr's order="shuffled", or
        #: any order for a subset of a store's set): the feed's ``"index"`` of this set is
        #: no row there, which the feed warns of
        self.reordered_in: list[str] = []
        #: stores this set was written to in its own order (its "index" is their rows)
        self.stored_in_order: list[str] = []
        #: the store's ``daskimg`` attributes and path, for sets from :func:`daskimg.open_zarr`
        self.attrs: dict[str, Any] = {}
        #: the names of this set's dask arrays whose blocks are known to have the shapes
        #: they declare (read from a store, cut from checked arrays): :meth:`take` cuts
        #: them as they are; any other array the user made is checked as it is cut
        self.exact_names: frozenset[str] = frozenset()
        #: the opened store (:class:`daskimg.store.open.OpenedStore`) this set was read from,
        #: or None: the loader reads its chunks through the same checked reader
        self.store: Any = None
        #: for a subset of a set read from a store (:meth:`take`, :meth:`split`): each
        #: sample's row in that store, which the feed's ``"index"`` gives (so predictions
        #: written back by index land on their samples); None: sample i is row i
        self.store_rows: np.ndarray | None = None
        #: for a subset (:meth:`take`, :meth:`split`) of a set not read from a store: each
        #: sample's row in the set it was first cut from, so that :meth:`split` can tell
        #: samples taken more than once without paths to compare (a store's subset has
        #: :attr:`store_rows` for that); None: sample i is its own
        self.taken_rows: np.ndarray | None = None
        #: for such a subset: the store's path and ``daskimg`` attributes, so that a feed's
        #: saved state is tied to the store and rows it was saved on
        self.origin: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self._n

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a set pickled by an earlier version holds its labels as "labels"
        if "labels" in state and "_labels" not in state:
            state = {**state, "_labels": state["labels"]}
            del state["labels"]
        state.setdefault("exact_names", frozenset())
        state.setdefault("taken_rows", None)
        for name in ("classes", "paths"):  # plain attributes in an earlier version
            if name in state and f"_{name}" not in state:
                state = {**state, f"_{name}": state[name]}
                del state[name]
        self.__dict__.update(state)

    def check_columns(self, *, strict: bool = True) -> None:
        """Check the columns as they are now, as the constructor does: one may have been put
        in or replaced since (``ds.columns["labels"] = ...``, ``ds.boxes = (...)``), and
        :func:`~daskimg.to_zarr` and the feed check again.

        Always: every array has one row per sample (a list column becomes an array), the
        labels lie in the classes' range, no column is named ``images``, ``labels`` or
        ``paths`` (one would stand in for the set's own array: stored and fed instead of
        it), and each name in :attr:`boxes` is an ``(N, 4)`` column. ``strict`` (a set being made or stored,
        not a store of an earlier version being opened): each name can name a store's
        array, ``index`` and ``ok`` are not used either (a store holding them could not be
        fed its index), and a column ``masks`` has the images' height and width.
        """
        self._check_label_range()
        if self.images is not None and not isinstance(self.images, da.Array):  # put in after
            self.images = unmasked("images", self.images)
        for k, v in self.columns.items():
            if not isinstance(v, (np.ndarray, da.Array)) or isinstance(v, np.ma.MaskedArray):
                self.columns[k] = unmasked(k, v)  # a list: as the constructor takes it
        n = len(self)
        for name, values in self._arrays_as_set().items():
            rows = values.shape[0] if values.ndim else None
            if rows != n:  # a column put in after the set was made (one of the whole set's,
                # on a split: its first rows were stored on other samples)
                raise ValueError(
                    f"array {name!r} has {rows if rows is not None else 'no'} rows for a set of "
                    f"{n} samples: every array holds one row per sample (a column of the whole "
                    "set given to a split? take its rows with the split's indices)"
                )
        if strict:
            for k in self.columns:
                check_column_name(k)
        # "index" and "ok" were free names before: a store holding them still opens
        reserved = set(RESERVED if strict else RESERVED[:3]) & set(self.columns)
        if reserved:
            raise ValueError(
                f"column names {sorted(reserved)} are reserved ({', '.join(RESERVED)}: the "
                "set's own arrays, the feed's store index, the decode check); rename them, "
                "e.g. ds.columns['new_name'] = ds.columns.pop('old_name') (from a CSV, "
                "columns={'new_name': 'csv column'} renames one), or assign ds.labels / "
                "ds.paths to replace the set's own"
            )
        masks = self.columns.get("masks") if strict else None
        images = self.images
        if (
            masks is not None
            and images is not None
            and (masks.ndim < 3 or tuple(masks.shape[1:3]) != tuple(images.shape[1:3]))
        ):
            raise ValueError(
                f"a column named 'masks' is the images' segmentation masks, shape (N, "
                f"{images.shape[1]}, {images.shape[2]}) or with a trailing channel axis; got "
                f"shape {tuple(masks.shape)}. Rename the column if it holds something else"
            )
        for b in _box_names(self.boxes):
            col = self.columns.get(b)
            if col is None or col.ndim != 2 or col.shape[1] != 4:
                raise ValueError(
                    f"boxes names {b!r}, which must be a column of shape (N, 4) "
                    "(x0, y0, x1, y1); "
                    + ("it is not a column" if col is None else f"it has shape {col.shape}")
                )

    def _check_label_range(self) -> None:
        """The labels are indices into :attr:`classes` (or ``-1``, no label): checked when the
        set is made, and again by :meth:`check_columns` (labels or classes assigned since)."""
        if self.labels is not None and self.classes and len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < NO_LABEL or hi >= len(self.classes):
                raise ValueError(
                    f"labels must lie in 0..{len(self.classes) - 1} for {len(self.classes)} classes "
                    f"(or be {NO_LABEL}: no label); found {lo}..{hi}"
                )
        elif self.labels is not None and len(self.labels) and int(self.labels.min()) < NO_LABEL:
            raise ValueError(
                f"labels must be class indices (0 or more, or {NO_LABEL}: no label); found "
                f"{int(self.labels.min())}. Signed labels (e.g. -1/+1) name classes: map them "
                "to indices, e.g. classes, labels = np.unique(labels, return_inverse=True)"
            )

    @property
    def labels(self) -> np.ndarray | None:
        """``(N,)`` int64 class indices (``-1``: no label), or None.

        Assigning new labels checks them as ``ImageSet(labels=...)`` does (one whole number
        per sample; names and fractions refused) and stores them as int64: assigned as
        they came, float or bool labels were written and the store then refused to open
        as damaged. Their range against :attr:`classes` is checked when they are stored or
        fed (:meth:`check_columns`).
        """
        return self._labels

    @labels.setter
    def labels(self, values: Sequence[int] | np.ndarray | None) -> None:
        self._labels = (
            None
            if values is None
            else _per_sample("labels", _class_indices(values), self._n, np.int64)
        )

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in label order (label ``i`` is ``classes[i]``).

        Assigning checks them as ``ImageSet(classes=...)`` does: a string (``"cat"``, which
        was stored as the classes ``'c', 'a', 't'``) and a name given twice are refused;
        any sequence (a numpy array from ``np.unique``) becomes a tuple of strings; None is
        no class names. Their range against the labels is checked when the set is stored,
        fed or shown.
        """
        return self._classes

    @classes.setter
    def classes(self, names: Sequence[str] | np.ndarray | None) -> None:
        given = names.tolist() if isinstance(names, np.ndarray) else names  # (0-d: its value)
        if isinstance(given, (str, bytes)):
            raise ValueError(
                f"classes must be a sequence of class names, e.g. [{given!r}]; got the string "
                f"{given!r} (it would be {len(given)} classes, one per letter)"
            )
        # None: no class names, as () (tuple(None) failed with "'NoneType' is not iterable")
        classes = () if given is None else tuple(str(c) for c in given)
        if len(set(classes)) != len(classes):
            twice = sorted({c for c in classes if classes.count(c) > 1})
            raise ValueError(
                f"classes name {', '.join(repr(c) for c in twice)} more than once "
                f"({list(classes)[:12]}{' ...' if len(classes) > 12 else ''}): a "
                "name must say which class a label is. Give each class its own name"
            )
        self._classes = classes

    @property
    def paths(self) -> np.ndarray | None:
        """``(N,)`` object array of each sample's path (relative to :attr:`root`), or None.

        Assigning checks it as ``ImageSet(paths=...)`` does: one per sample, held as an
        object array (a list, or a dask array, which is computed: one string a sample);
        numbers are refused when the set is stored, as text is what a path is.
        """
        return self._paths

    @paths.setter
    def paths(self, values: Sequence[str] | np.ndarray | None) -> None:
        if isinstance(values, da.Array):
            values = values.compute()
        self._paths = None if values is None else _per_sample("paths", values, self._n, object)

    def check_one_split(self, doing: str) -> None:
        """Refuse (ValueError) to ``doing`` (store, feed) a set that holds several predefined
        splits (``train/``, ``valid/``, ``test/`` folders) as one: test images trained on.
        ``ds.source_splits = None`` lifts the record, to mix them on purpose."""
        held = [] if self.source_splits is None else sorted(set(self.source_splits.tolist()))
        if len(held) > 1:
            use = (
                "for name, part in ds.split().items(): di.to_zarr(part, f'{name}.zarr.zip', "
                "split=name) (or daskimg ingest SRC OUT)"
                if doing == "storing"
                else "di.BatchIterator(ds.split()['train'], ...)"
            )
            raise ValueError(
                f"this set holds the predefined splits {held} (split folders); {doing} them as "
                f"one set would mix them, e.g. test images into training. Use each split: {use}; "
                "to mix them on purpose, set ds.source_splits = None first (split(fractions, "
                "resplit=True) divides them anew)"
            )

    def is_from_files(self, name: str) -> bool:
        """Whether the array ``name`` (``"images"`` or a column) is still the one decoded
        from the set's files, not an array the user put in its place."""
        a = self.images if name == "images" else self.columns.get(name)
        made = self._from_files.get(name)
        return made is not None and isinstance(a, da.Array) and a.name == made

    def from_files(self) -> RowSource | None:
        """The files this set's images are decoded from (its :class:`RowSource`), or None:
        not read from files, or its ``images`` were replaced (``ds.images = flipped``), so
        they are computed as they are, not decoded again."""
        if self.row_source is None or not self.is_from_files("images"):
            return None
        return self.row_source

    @property
    def store_path(self) -> str | None:
        """The local path of the store this set was opened from, else None."""
        return None if self.store is None else self.store.local_path

    @property
    def store_url(self) -> str | None:
        """The URL of the store this set was opened from (``s3://...``), else None."""
        loc = None if self.store is None else self.store.location
        return loc.target if loc is not None and loc.is_url else None

    def __repr__(self) -> str:
        parts = [
            f"images={self.images.shape} {self.images.dtype}"
            if self.images is not None
            else f"n={self._n}"
        ]
        if self.labels is not None:
            parts.append(f"labels={len(self.labels)}")
        if self.classes:
            shown = ", ".join(self.classes[:8]) + (", ..." if len(self.classes) > 8 else "")
            parts.append(f"classes=[{shown}]")
        if self.columns:
            parts.append("columns=" + ",".join(self.columns))
        return f"ImageSet({', '.join(parts)})"

    @property
    def arrays(self) -> dict[str, Any]:
        """Every per-sample array by name: ``images``, ``labels``, ``paths`` and the columns.

        Which are dask arrays and which numpy follows one rule: an array whose values need
        files to be read or decoded is a dask array (lazy); an array already in memory is
        numpy.

        * dask: ``images``; for sets read from files also ``source_size``, ``masks`` and
          the box columns (moving a box into the stored frame needs its source's size,
          which comes from decoding); for sets opened from a store, every array of more
          than one dimension (``images``, ``masks``, boxes, features, ...).
        * numpy: ``labels`` and ``paths`` (always), the numbers read from a CSV, and 1-D
          columns of an opened store (read when it is opened).
        * columns passed to :class:`ImageSet` keep their kind (numpy or dask).

        Computing several dask arrays of a set read from files together (``dask.compute``)
        decodes each file once: they are views of the same decode tasks.
        """
        shadow = set(RESERVED[:3]) & set(self.columns)
        if shadow:
            self.check_columns(strict=False)  # says which, and what to do
        return self._arrays_as_set()

    def _arrays_as_set(self) -> dict[str, Any]:
        """:attr:`arrays`, a column named as one of the set's own arrays replacing it."""
        out: dict[str, Any] = {} if self.images is None else {"images": self.images}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.paths is not None:
            out["paths"] = self.paths
        out.update(self.columns)
        return out

    def require_images(self) -> da.Array:
        """``images``, or a clear error for a set that has none."""
        if self.images is None:
            raise ValueError(
                f"this set has no images, only {sorted(self.arrays)}; "
                "it was probably written by daskimg.ArrayWriter"
            )
        return self.images

    @property
    def spec(self) -> DecodeSpec | None:
        """How the images are decoded, for sets read from files."""
        return self.row_source.spec if isinstance(self.row_source, FileSource) else None

    def show(self, *, n: int = 32, seed: int | None = 0) -> Any:
        """A grid of ``n`` random samples with their class names.

        In a notebook it displays inline; elsewhere save it with ``.savefig(path)``
        (``.figure`` is the matplotlib figure).
        """
        from ..show import Grid, grid_figure

        # an array put in since of another length (a whole set's boxes on a subset) would
        # be drawn on other samples; labels beyond the classes named nothing
        self.check_columns(strict=False)
        try:
            return Grid(grid_figure(self, n=n, seed=seed))
        except Exception:
            # persisted on a cluster this process no longer reaches: said so (else as it is)
            check_persisted_reachable(self.arrays)
            raise

    def take(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """A new set with the samples at ``indices``, in that order (or where a boolean mask is True).

        For sets read from files, the lazy images are rebuilt over the chosen files (a small
        graph, nothing decoded), rather than gathered across blocks.
        """
        self.check_columns(strict=False)  # an array put in since of another length: not cut
        raw = np.asarray(indices)
        if isinstance(indices, (list, tuple)) or raw.dtype == object:
            ints = np.asarray(indices, dtype=object).ravel().tolist()
            if ints and all(type(v) is int for v in ints):
                # Python ints of any size: 2**70 is out of range, not "not a whole number"
                self._check_index_range(min(ints), max(ints))
                raw = raw.astype(np.int64)
        if raw.dtype == bool:  # a mask, as numpy reads it (not the indices 0 and 1)
            if raw.shape != (len(self),):
                raise IndexError(
                    f"a boolean mask of {raw.size} values for {len(self)} samples; "
                    "pass one value per sample, or integer indices"
                )
            raw = np.flatnonzero(raw)
        if raw.size and raw.dtype.kind not in "iu":
            # 0.5, 1.7 were taken as 0 and 1, "1" as 1: other samples than meant
            raise IndexError(
                f"indices must be whole numbers (an integer array or a boolean mask); got "
                f"{raw.dtype} values such as {raw.ravel()[0]!r}"
            )
        if raw.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {raw.shape}")
        # compared before the cast: uint64 2**64 - 3 became -3, the third sample from the end
        if raw.size:
            self._check_index_range(int(raw.min()), int(raw.max()))
        idx = raw.astype(np.int64)
        files = None if self.row_source is None else self.row_source.take(idx)
        # arrays derived from the files are rebuilt with the images, from the same tasks;
        # arrays the user put in their place are taken as they are
        fresh = {} if self.from_files() is None or files is None else files.to_dask_arrays()
        fresh = {k: a for k, a in fresh.items() if self.is_from_files(k)}

        exact: set[str] = set()  # the names of the arrays cut from checked ones

        def cut(name: str, a: Any) -> Any:
            # a dask array the user made is held to its declared block shapes before it
            # is cut (:func:`~daskimg.read.lazy.cut_checked`): cut first, a block
            # short of a row moved the rows after it onto other samples' labels, unseen by
            # to_zarr. Not arrays decoded from files or read from a store (made to their
            # shapes), nor those cut from checked ones (a subset's subset)
            if isinstance(a, da.Array):
                if not self.is_from_files(name) and a.name not in self.exact_names:
                    a = cut_checked(a, name, idx)
                else:
                    a = a[idx]
                exact.add(a.name)
                return a
            return a[idx]

        images = (
            fresh["images"]
            if "images" in fresh
            else None
            if self.images is None
            else cut("images", self.images)
        )
        subset = ImageSet(
            images,
            None if self.labels is None else self.labels[idx],
            classes=self.classes,
            paths=None if self.paths is None else self.paths[idx],
            columns={k: fresh[k] if k in fresh else cut(k, v) for k, v in self.columns.items()},
            root=self.root,
            on_error=self.on_error,
            source_splits=None if self.source_splits is None else self.source_splits[idx],
            row_source=files,
            boxes=self.boxes,
            check_names=False,  # checked when this set was made (or as a store kept them)
        )
        subset.exact_names = frozenset(exact)
        if files is not None:  # a column put in a derived one's place is the user's
            subset._from_files = {k: a.name for k, a in fresh.items()}
        subset.decoded_as = self.decoded_as
        if self.store is not None or self.store_rows is not None:
            rows = np.arange(len(self)) if self.store_rows is None else self.store_rows
            subset.store_rows = rows[idx]
            subset.store_rows.flags.writeable = False
            subset.origin = (
                {"path": self.store.location.target, "attrs": self.attrs}
                if self.store is not None
                else self.origin
            )
        else:
            rows = np.arange(len(self)) if self.taken_rows is None else self.taken_rows
            subset.taken_rows = rows[idx]
        return subset

    def _check_index_range(self, lo: int, hi: int) -> None:
        """IndexError unless (some) indices from ``lo`` to ``hi`` lie in the set (negative: from
        its end)."""
        n = len(self)
        if not n:
            raise IndexError("the set is empty: there is no sample to take")
        if lo < -n or hi >= n:
            raise IndexError(
                f"indices must lie in -{n}..{n - 1} for a set of {n} samples; got {lo}..{hi}"
            )

    def split(
        self,
        fractions: Mapping[str, float] | None = None,
        *,
        seed: int | np.random.Generator | None = 0,
        stratify: bool = True,
        resplit: bool = False,
    ) -> dict[str, ImageSet]:
        """Split into disjoint subsets, e.g. ``{"train": 0.8, "valid": 0.1, "test": 0.1}``.

        Stratified by label when there are labels: each class is divided by the fractions
        (largest remainder), and every split gets at least one sample of a class that has
        at least as many samples as there are splits. Deterministic for an integer seed.
        Without ``fractions``, a set read from a folder that already held ``train/``,
        ``valid/`` (or ``val/``), ``test/`` returns those splits; a split folder of files
        without class subfolders (Kaggle's flat ``test/``) is a split without labels
        (``labels`` None, ``paths`` set).

        ``fractions`` on a set that holds several predefined splits is refused: it would mix
        them (a test image trained on). Split one of them (``ds.split()["train"].split(...)``
        carves a validation split out of train), or pass ``resplit=True`` to divide all the
        samples anew on purpose.

        Examples
        --------
        >>> import numpy as np, daskimg as di
        >>> ds = di.ImageSet(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10) % 2, classes=["a", "b"])
        >>> {k: len(v) for k, v in ds.split({"train": 0.8, "test": 0.2}).items()}
        {'train': 8, 'test': 2}
        """
        if fractions is None:
            if self.source_splits is None:
                raise ValueError(
                    "pass fractions, e.g. split({'train': 0.8, 'valid': 0.1, 'test': 0.1}); "
                    "this set has no predefined train/valid/test folders"
                )
            names = [s for s in ("train", "valid", "test") if (self.source_splits == s).any()]
            given = {s: self.take(np.flatnonzero(self.source_splits == s)) for s in names}
            for part in given.values():
                if part.labels is not None and (part.labels == NO_LABEL).all():
                    part.labels = None  # an unlabelled split folder: paths, no labels
            return given
        held = [] if self.source_splits is None else sorted(set(self.source_splits.tolist()))
        if len(held) > 1 and not resplit:
            raise ValueError(
                f"this set holds the predefined splits {held} (split folders); split(fractions) "
                "would mix them, e.g. test images into train. Use ds.split() for them, split "
                "one of them (ds.split()['train'].split({'train': 0.9, 'valid': 0.1})), or pass "
                "resplit=True to divide all samples anew"
            )
        if resplit and len(held) > 1 and self.labels is not None:
            labels = np.asarray(self.labels)
            bare = [
                s for s in held if (labels[np.asarray(self.source_splits) == s] == NO_LABEL).all()
            ]
            if bare and len(bare) < len(held):
                raise ValueError(
                    f"the predefined split(s) {bare} hold no labels (a folder of files without "
                    "class folders); resplit=True would put those unlabelled samples (label -1) "
                    "into every part, training included. Resplit the labelled samples only: "
                    "ds.take(np.flatnonzero(ds.labels >= 0)).split(fractions, resplit=True)"
                )
        if not isinstance(fractions, Mapping):  # [0.8, 0.2]: a bare TypeError
            raise TypeError(
                f"fractions must map split names to fractions, e.g. {{'train': 0.8, 'valid': "
                f"0.2}}; got {type(fractions).__name__} {fractions!r}"
            )
        if isinstance(seed, float | bool | np.floating | np.bool_ | str):
            # 1.5 failed inside numpy; True was seed 1
            raise TypeError(f"seed must be a whole number, a numpy Generator or None; got {seed!r}")
        if stratify is None:  # scikit-learn's word for "not stratified"
            stratify = False
        if not isinstance(stratify, bool | np.bool_):  # an array of labels was "ambiguous"
            raise TypeError(
                f"stratify must be True or False (by the set's labels); got "
                f"{type(stratify).__name__}. To stratify by other values, make them the labels"
            )
        if self.labels is not None and stratify and (self.labels == NO_LABEL).any():
            logger.warning(
                "split: %d samples have no label (-1): they are divided among the parts as if "
                "a class, so training would hold unlabelled samples; split the labelled ones "
                "(ds.take(np.flatnonzero(ds.labels >= 0))) if that is not meant",
                int((self.labels == NO_LABEL).sum()),
            )
        repeats = 0 if self.paths is None else len(self.paths) - len(set(self.paths))
        rows = self.store_rows if self.store_rows is not None else self.taken_rows
        if not repeats and rows is not None:  # no paths (arrays, a converted store)
            repeats = len(rows) - len(np.unique(rows))
        if repeats:
            logger.warning(
                "split: %d samples are in the set more than once (take() with repeated "
                "indices, or paths given twice): their copies may land in different parts, a "
                "test image also trained on; split the set without repeats, then repeat "
                "samples within a part",
                repeats,
            )
        parts = split_indices(
            len(self),
            fractions,
            labels=self.labels if stratify else None,
            seed=seed,
        )
        empty = [k for k, idx in parts.items() if not len(idx) and float(fractions[k]) > 0]
        if empty:
            raise ValueError(
                f"split {empty[0]!r} ({float(fractions[empty[0]]):g} of {len(self)} samples) gets "
                f"no sample: { ({k: len(v) for k, v in parts.items()}) }. Pass fewer splits or "
                "larger fractions for so few samples"
            )
        if self.labels is not None:
            _warn_classes_left_out(parts, self.labels, fractions, self.classes)
        out = {name: self.take(idx) for name, idx in parts.items()}
        if resplit:  # divided anew on purpose: no part is one of the split folders any more
            for part in out.values():
                part.source_splits = None
        return out


#: names a column may not have: the set's own arrays, the feed's store index (``"index"``)
#: and the decode check of a set read from files (``"ok"``)
RESERVED = ("images", "labels", "paths", "index", "ok")


def _box_names(boxes: Any) -> Any:
    """``boxes`` (names of box columns), refused if it is one string (read letter by letter)."""
    if isinstance(boxes, (str, bytes)):
        raise ValueError(
            f"boxes must be a sequence of column names, e.g. ({boxes!r},); got the string {boxes!r}"
        )
    return boxes


def check_column_name(name: Any) -> None:
    """A column's name is one store array's: a non-empty string, no ``/`` (a zarr path),
    not ``.``/``..``, not starting ``__`` (zarr keeps those), not ``zarr.json`` (the store's
    own metadata file beside the arrays' folders), and short enough to name a folder
    (200 bytes of UTF-8, leaving room for the suffixes a write adds)."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name in (".", "..")
        or name.startswith("__")
        or name.lower() == "zarr.json"
        or len(name.encode("utf-8", "surrogatepass")) > 200
    ):
        raise ValueError(
            f"column name {name!r} cannot name an array in the store: use a non-empty name "
            "of at most 200 bytes without '/' or '\\', not '.' or '..' or 'zarr.json', not "
            f"starting with '__' (e.g. {storable_like(str(name))!r}; from a CSV, "
            "columns={'new_name': 'csv column'} renames one)"
        )


def storable_like(name: str) -> str:
    """A name like ``name`` that :func:`check_column_name` takes (for messages)."""
    like = name.replace("/", "_per_").replace("\\", "_").replace("\0", "").strip("._ ")
    like = like.encode("utf-8", "ignore")[:190].decode("utf-8", "ignore")
    return "value" if not like.strip() or like.lower() == "zarr.json" else like


_NO_INDEX = (
    "labels, row {row}: {value} is no class index; mark a sample without a label with -1 "
    "(pandas: labels.fillna(-1).astype(int))"
)
#: why a label beyond int64 is refused (the end of both messages that say so)
_WRAPS = (
    "beyond the int64 they are stored as (it would wrap to another label). Check the source of "
    "the labels"
)
_NOT_WHOLE = (
    "labels, row {row}: labels must be whole numbers (class indices); found {value} (casting "
    "would truncate it). Per-sample values such as scores or targets belong in columns=, "
    "e.g. columns={{'target': values}}"
)


def _class_indices(labels: Any) -> Any:
    """``labels`` checked to be whole class indices (strings and fractions are refused)."""
    # lazy labels are read here (one integer per sample, small), to be checked as any are:
    # cast unchecked, 1.7 was stored as 1 and uint64 2**64 - 1 as -1 (no label)
    arr = unmasked("labels", labels.compute() if isinstance(labels, da.Array) else labels)
    if arr.ndim != 1:
        raise ValueError(
            f"labels must be one class index per sample, shape (N,); got shape {arr.shape}. "
            "Multi-label (multi-hot) targets or several labels per sample belong in "
            "columns=, e.g. columns={'tags': y}"
        )
    if arr.dtype.kind in "USO" and any(isinstance(v, (str, bytes)) for v in arr.ravel()):
        names = sorted({str(v) for v in arr.ravel() if isinstance(v, (str, bytes))})
        raise ValueError(
            f"labels must be integer class indices; got names such as {names[0]!r}. Pass "
            "indices and the names separately: classes = sorted(set(names)); "
            "labels = [classes.index(name) for name in names]"
        )
    if arr.dtype.kind in "mMV":  # dates were stored as their integers (ns since 1970)
        raise ValueError(
            f"labels must be whole class indices; got {arr.dtype} values. Convert them to "
            "integer class indices"
        )
    if arr.dtype.kind == "O":  # None, <NA>, 1.5, 2**64: int() failed or cut, naming nothing
        whole = []
        for i, v in enumerate(arr.ravel()):
            if isinstance(v, (np.datetime64, np.timedelta64)):  # .item() gives an int for ns
                raise ValueError(
                    f"labels, row {i}: {v!r} is no class index (a whole number); convert the "
                    "labels to integers"
                )
            if np.ndim(v) == 0 and hasattr(v, "item") and not isinstance(v, np.ma.MaskedArray):
                v = v.item()  # a 0-d array or tensor, a numpy bool
            if isinstance(v, decimal.Decimal) and v.is_nan():  # sNaN != sNaN raises
                v = float("nan")
            if v is None or type(v).__name__ in ("NAType", "NaTType") or v != v:
                raise ValueError(_NO_INDEX.format(row=i, value=repr(v)))
            if not isinstance(v, (numbers.Real, decimal.Decimal)):
                raise ValueError(
                    f"labels, row {i}: {v!r} ({type(v).__name__}) is no class index (a whole "
                    "number); convert the labels to integers"
                )
            v = cast(Any, v)  # a Real or a Decimal: math and int() take both
            if not math.isfinite(v) or v != int(v):
                raise ValueError(_NOT_WHOLE.format(row=i, value=v))
            if not -(2**63) <= int(v) < 2**63:
                raise ValueError(f"labels, row {i}: {v!r} is {_WRAPS}")
            whole.append(int(v))
        arr = np.array(whole, dtype=np.int64)
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr) | (arr != np.round(arr.real))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = arr[i].item()
            if value != value:  # a pandas Int64 column's <NA> comes as NaN
                raise ValueError(_NO_INDEX.format(row=i, value="NaN"))
            raise ValueError(_NOT_WHOLE.format(row=i, value=value))
        arr = arr.real
    check_index_range(arr, "labels")
    return arr


def check_index_range(arr: np.ndarray, name: str) -> None:
    """Whole-number labels ``arr`` fit int64, the dtype they are stored as (uint64 2**64 - 1
    would wrap to -1, "no label"; a float 1e20 to -2**63)."""
    if arr.dtype.kind not in "uf" or not arr.size:
        return
    lo, hi = arr.min(), arr.max()
    if (arr.dtype.kind == "u" and int(hi) > 2**63 - 1) or (
        arr.dtype.kind == "f" and not (float(lo) >= -(2.0**63) and float(hi) < 2.0**63)
    ):
        bad = hi if arr.dtype.kind == "u" or float(hi) >= 2.0**63 else lo
        raise ValueError(
            f"{name} must be class indices; found {bad.item()!r} ({arr.dtype}), {_WRAPS}"
        )


def _per_sample(name: str, values: Any, n: int, dtype: Any) -> Any:
    if isinstance(values, da.Array):
        # large columns (e.g. features from a store) stay lazy
        if values.ndim == 0 or values.shape[0] != n:
            raise ValueError(f"{name} must have {n} rows, one per image; got shape {values.shape}")
        return values if dtype is None else values.astype(dtype)
    arr = unmasked(name, values, dtype=dtype)
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows, one per image; got shape {arr.shape}")
    return arr


def split_indices(
    n: int,
    fractions: Mapping[str, float],
    *,
    labels: np.ndarray | None = None,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, np.ndarray]:
    """Disjoint, sorted index arrays per split name (see :meth:`ImageSet.split`)."""
    if not fractions:
        raise ValueError("fractions is empty; pass e.g. {'train': 0.8, 'valid': 0.2}")
    if n == 0:  # (max() of no groups failed, naming nothing)
        raise ValueError("the set holds no samples: there is nothing to split")
    names = list(fractions)
    fr = np.array([float(fractions[k]) for k in names])
    if (fr < 0).any() or not np.isfinite(fr).all():
        raise ValueError(f"fractions must be non-negative numbers, got {dict(fractions)}")
    if not math.isclose(fr.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must add up to 1, got {dict(fractions)} (sum {fr.sum():g})")
    fr = fr / fr.sum()  # within 1e-6 of 1: a class of millions lost samples to the shortfall
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    out: list[list[np.ndarray]] = [[] for _ in names]
    for members in groups:
        members = rng.permutation(members)
        counts = _allocate(len(members), fr)
        for j, (a, b) in enumerate(zip(np.cumsum(counts) - counts, np.cumsum(counts), strict=True)):
            out[j].append(members[a:b])
    # classes too small to reach every split can leave one empty: it gets a sample from the
    # largest class of any split (of the largest split, among equals), so each split with a
    # fraction > 0 has one if n allows, and a class keeps a sample where it can
    for j in np.flatnonzero(fr > 0).tolist():
        if not sum(len(g) for g in out[j]):
            donor, g = max(
                ((k, c) for k in range(len(names)) for c in range(len(out[k]))),
                key=lambda kc: (len(out[kc[0]][kc[1]]), sum(len(x) for x in out[kc[0]])),
            )
            if sum(len(x) for x in out[donor]) < 2:
                break
            out[j].append(out[donor][g][-1:])
            out[donor][g] = out[donor][g][:-1]
    parts = {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.empty(0, np.int64)
        for name, chunks in zip(names, out, strict=True)
    }
    assert sum(len(p) for p in parts.values()) == n, "every sample in exactly one split"
    _warn_far_from_fractions(parts, fractions, n, len(groups))
    return parts


def _warn_classes_left_out(
    parts: Mapping[str, np.ndarray],
    labels: np.ndarray,
    fractions: Mapping[str, float],
    classes: Sequence[str] = (),
) -> None:
    """Name the classes with no sample in the training split (``train``, else the largest):
    a class of fewer samples than splits goes where the fractions put it (or fills a split
    that would be empty), and a model trained there never sees it."""
    main = "train" if "train" in parts else max(parts, key=lambda k: float(fractions[k]))
    labels = np.asarray(labels)
    held = set(np.unique(labels[parts[main]]).tolist())
    gone = [int(c) for c in np.unique(labels) if c >= 0 and int(c) not in held]
    if gone:
        where = {c: [k for k, idx in parts.items() if (labels[idx] == c).any()] for c in gone[:8]}
        logger.warning(
            "split: %d class(es) have no sample in %r, so a model trained on it never sees "
            "them: %s%s. They have fewer samples than there are splits; add samples, pass "
            "fewer splits, or leave such classes out",
            len(gone),
            main,
            ", ".join(
                f"{classes[c]!r} (in {', '.join(map(repr, ks))})"
                if c < len(classes)
                else f"class {c} (in {', '.join(map(repr, ks))})"
                for c, ks in where.items()
            ),
            ", ..." if len(gone) > 8 else "",
        )


def _warn_far_from_fractions(
    parts: Mapping[str, np.ndarray], fractions: Mapping[str, float], n: int, groups: int
) -> None:
    """Name a split whose share is far from its fraction (a quarter of it off, and 2 points
    or more): stratified, each class gives every split one sample, so many small classes
    move the shares (5 per class: 0.8/0.1/0.1 comes out 0.6/0.2/0.2)."""
    if not n or groups < 2:
        return
    far = [
        f"{name!r} {len(idx) / n:.1%} (asked {fractions[name]:.1%})"
        for name, idx in parts.items()
        if abs(len(idx) / n - fractions[name]) >= max(0.02, fractions[name] / 4)
    ]
    if far:
        logger.warning(
            "split: the shares are far from the fractions asked: %s. Each of the %d classes "
            "with as many samples as splits gives every split one (about %.1f samples per "
            "class here); pass "
            "stratify=False (daskimg ingest --no-stratify) to divide the whole set by the "
            "fractions",
            ", ".join(far),
            groups,
            n / groups,
        )


def _allocate(m: int, fr: np.ndarray) -> np.ndarray:
    """Split ``m`` items by fractions: largest remainder, at least one per positive fraction if m allows."""
    raw = fr * m
    counts = np.floor(raw).astype(np.int64)
    for j in np.argsort(-(raw - counts), kind="stable")[: m - counts.sum()]:
        counts[j] += 1
    positive = np.flatnonzero(fr > 0)
    if m >= len(positive):
        for j in positive:
            if counts[j] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[j] += 1
    return counts


def file_set(
    source: FileSource,
    labels: Any = None,
    *,
    classes: Sequence[str] = (),
    paths: Any = None,
    columns: Mapping[str, Any] | None = None,
    root: str | os.PathLike[str] | None = None,
    on_error: str = "raise",
    source_splits: Any = None,
) -> ImageSet:
    """An :class:`ImageSet` of files: images and derived arrays from ``source``'s shared tasks.

    The derived arrays (``source_size``, ``masks``, box columns in the stored frame) join
    ``columns``; the box columns are the set's ``boxes``.
    """
    arrays = source.to_dask_arrays()
    columns = dict(columns or {})
    clash = sorted(set(columns) & set(source.derived))
    if clash:
        raise ValueError(
            f"column names {clash} are taken by arrays daskimg derives from the files "
            "(source_size, masks, boxes); rename those columns"
        )
    columns.update({k: arrays[k] for k in source.derived})
    return ImageSet(
        arrays["images"],
        labels,
        classes=classes,
        paths=paths,
        columns=columns,
        root=root,
        on_error=on_error,
        source_splits=source_splits,
        row_source=source,
        boxes=tuple(source.source_boxes),
    )
