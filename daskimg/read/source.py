"""Read: :class:`FileSource` — files and how to decode them, as small dask graphs.

One task decodes a *block* of files (not one file), and the graph is written directly,
so building arrays for a million paths takes a fraction of a second and opens no file.

Everything that travels with the pixels comes out of the same decode tasks
(:meth:`FileSource.to_dask_arrays`): each block task returns the images, each source's
size, the masks and which files decoded, and the other arrays are cheap views of it (the
boxes a small computation on it). Computing images, masks, boxes and ``source_size``
together — in one ``dask.compute``, or block by block — decodes each file once.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import DecodeError
from ..remote import FETCH_FILES, RemoteFiles
from .boxes import outside, to_stored
from .decode import DecodeSpec, decode_into
from .masks import mask_into

__all__ = ["DEFAULT_BLOCK", "DERIVED", "FileSource", "RowSource", "block_arrays"]

logger = logging.getLogger("daskimg")

#: files decoded by one task; large enough to keep the graph small, small enough to balance 2+ workers
DEFAULT_BLOCK = 64

#: arrays a :class:`FileSource` derives from its files, besides ``images`` and box columns
DERIVED = ("source_size", "masks")


class Rows(NamedTuple):
    """What a block task returns; the arrays of :meth:`FileSource.to_dask_arrays` are its parts."""

    images: np.ndarray
    source_size: np.ndarray
    masks: np.ndarray | None
    ok: np.ndarray


# positions in Rows, for the getitem tasks that take a part
_IMAGES, _SIZES, _MASKS, _OK = 0, 1, 2, 3


class RowSource(Protocol):
    """A recipe for lazy per-sample arrays that can be re-cut over any rows cheaply.

    ``take`` returns the recipe over chosen rows and ``to_dask`` / ``to_dask_arrays``
    build a small graph (one task per block of rows), so subsets and shuffled orders never
    gather across the blocks of an existing graph.
    """

    def __len__(self) -> int: ...

    def take(self, indices: Sequence[int] | np.ndarray) -> RowSource: ...

    def to_dask(self, *, block: int | None = None) -> da.Array: ...

    @property
    def derived(self) -> tuple[str, ...]:
        """Names of the arrays besides ``images`` that :meth:`to_dask_arrays` gives."""
        ...

    def to_dask_arrays(
        self, *, block: int | None = None, skip: bool = False
    ) -> dict[str, da.Array]:
        """``images`` and every other array derived from the rows, from shared tasks."""
        ...


def refuse_volume_masks(spec: DecodeSpec, masks: Any, boxes: Mapping[str, Any] | None) -> None:
    """Masks and boxes go with 2-D images: refused for volumes before any mask is read (the
    first mask's shape was refused first, as if a 2-D one would do)."""
    if (masks is not None or boxes) and spec.is_volume:
        raise ValueError(
            f"masks and boxes go with 2-D images, not volumes (size={spec.size}); leave "
            "masks= and boxes= out"
        )


@dataclass(frozen=True, eq=False)
class FileSource:
    """Files and how to decode them: the recipe behind a lazy image array.

    Holding the recipe (rather than only the dask array) lets subsets and permutations
    rebuild a fresh small graph over the chosen files instead of gathering across blocks.

    Parameters
    ----------
    paths
        The image (or volume) files, local paths or URLs.
    spec
        How each is decoded.
    block
        Files per task.
    remote
        Set when ``paths`` are URLs: how tasks reach them (protocol and storage_options).
    masks
        A mask file per image (:mod:`daskimg.read.masks`), or None.
    mask_dtype
        The dtype of the stored masks.
    source_boxes
        Box columns by name, ``(N, 4)`` in each source's pixels after EXIF orientation;
        they are moved into the stored frame (:func:`daskimg.read.boxes.to_stored`).
    """

    paths: tuple[str, ...]
    spec: DecodeSpec
    block: int = DEFAULT_BLOCK
    remote: RemoteFiles | None = None
    masks: tuple[str, ...] | None = None
    mask_dtype: str = "uint8"
    source_boxes: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or self.block < 1:
            raise ValueError(
                f"chunks must be a positive number of files per block, got {self.block!r}"
            )
        n = len(self.paths)
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"masks must name one file per image ({n}); got {len(self.masks)}")
        for name, values in self.source_boxes.items():
            if np.shape(values) != (n, 4):
                raise ValueError(
                    f"box column {name!r} must have shape ({n}, 4); got {np.shape(values)}"
                )
        refuse_volume_masks(self.spec, self.masks, self.source_boxes)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def derived(self) -> tuple[str, ...]:
        """Names of the arrays besides ``images`` that :meth:`to_dask_arrays` gives."""
        return (
            "source_size",
            *(("masks",) if self.masks is not None else ()),
            *self.source_boxes,
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> FileSource:
        """The same recipe over ``paths[indices]`` (any order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return FileSource(
            tuple(self.paths[i] for i in idx),
            self.spec,
            self.block,
            self.remote,
            None if self.masks is None else tuple(self.masks[i] for i in idx),
            self.mask_dtype,
            {k: np.asarray(v)[idx] for k, v in self.source_boxes.items()},
        )

    def decode_file(self, i: int) -> np.ndarray:
        """Decode file ``i`` alone (and its mask; local or remote); a bad file raises DecodeError."""
        one = self.take([i])
        masks = one._masks_block(0, 1)
        rows = decode_rows(one.paths, one.spec, masks, one.mask_dtype, False, *_extra(one))
        return rows.images[0]

    def block_starts(self, block: int | None = None) -> range:
        return range(0, len(self.paths), block or self.block)

    def to_dask(self, *, block: int | None = None, skip: bool = False) -> da.Array:
        """A dask array ``(N, *sample_shape)`` whose tasks each decode a block of images.

        Errors raise; with ``skip=True`` bad files are left out instead, so the array has
        unknown chunk sizes along axis 0. Masks are not read: see :meth:`to_dask_arrays`.
        """
        func = _decode_block_skip if skip else _decode_block
        arr = _graph(self, block or self.block, func, "skip" if skip else "raise")
        if not skip:
            return arr
        unknown = (tuple(np.nan for _ in arr.chunks[0]), *arr.chunks[1:])
        return da.Array(arr.dask, arr.name, unknown, dtype=arr.dtype)

    def to_dask_arrays(
        self, *, block: int | None = None, skip: bool = False
    ) -> dict[str, da.Array]:
        """``images`` and every derived array, all views of the same block decode tasks.

        Returns ``images`` ``(N, *sample_shape)``; ``source_size`` ``(N, 2)`` int64 (H, W of
        each source after EXIF orientation; ``(N, 3)`` D, H, W for volumes); ``masks``
        ``(N, H, W)`` when the images have masks; one ``(N, 4)`` float32 array per box
        column, in the stored frame; and with ``skip=True`` also ``ok`` ``(N,)`` bool.

        With ``skip=False`` a bad file (or mask) raises :class:`~daskimg.errors.DecodeError`.
        With ``skip=True`` it leaves ``ok`` False, and zeros (NaN boxes) in its rows of this
        intermediate: the caller drops those rows, so a bad file never becomes a sample.
        """
        block = block or self.block
        spec = self.spec
        n = len(self.paths)
        starts = range(0, n, block)
        sizes = tuple(min(block, n - s) for s in starts)
        token = tokenize(
            self.paths,
            spec,
            block,
            self.remote,
            _options(self.remote),
            self.masks,
            self.mask_dtype,
            sorted(self.source_boxes.items()),
            skip,
        )
        dec = f"imread-rows-{token}"
        extra = _extra(self)
        path_blocks = [_paths_block(self.paths[s : s + block]) for s in starts]
        dec_layer: dict[Any, Any] = {
            (dec, i): (
                decode_rows,
                path_blocks[i],
                spec,
                self._masks_block(s, block),
                self.mask_dtype,
                skip,
                *extra,
            )
            for i, s in enumerate(starts)
        }

        def view(name: str, tail: tuple[int, ...], dtype: Any, task: Any) -> da.Array:
            if not starts:  # no files (e.g. an empty split): an array of no samples
                return da.zeros((0, *tail), dtype=np.dtype(dtype))
            key = f"imread-{name}-{token}"
            zeros = (0,) * len(tail)
            layer = {(key, i, *zeros): task(i, s) for i, s in enumerate(starts)}
            layers: dict[str, Any] = {dec: dec_layer, key: layer}
            graph = HighLevelGraph(layers, {dec: set(), key: {dec}})
            return da.Array(graph, key, (sizes, *((d,) for d in tail)), dtype=np.dtype(dtype))

        def part(pos: int) -> Any:
            return lambda i, s: (operator.getitem, (dec, i), pos)

        out = {
            "images": view("images", spec.sample_shape, spec.dtype, part(_IMAGES)),
            "source_size": view("source-size", (len(spec.size),), np.int64, part(_SIZES)),
        }
        if self.masks is not None:
            out["masks"] = view("masks", spec.size, self.mask_dtype, part(_MASKS))
        for name, values in self.source_boxes.items():
            src = np.asarray(values, dtype=np.float64)
            out[name] = view(
                f"boxes-{name}",
                (4,),
                np.float32,
                lambda i, s, src=src, name=name: (
                    functools.partial(_stored_boxes, name),  # a str argument could be a key
                    src[s : s + block],
                    (dec, i),
                    spec.size,
                    spec.resize,
                    path_blocks[i],
                ),
            )
        if skip:
            out["ok"] = view("ok", (), bool, part(_OK))
        return out

    def block_args(self, block: int) -> list[tuple[Any, ...]]:
        """Per block of ``block`` rows, the arguments of :func:`block_arrays` (for write tasks
        that decode and encode a block in one step)."""
        boxes = {k: np.asarray(v, dtype=np.float64) for k, v in self.source_boxes.items()}
        return [
            (
                _paths_block(self.paths[s : s + block]),
                self.spec,
                self._masks_block(s, block),
                self.mask_dtype,
                {k: v[s : s + block] for k, v in boxes.items()},
                *_extra(self),
            )
            for s in range(0, len(self.paths), block)
        ]

    def to_dask_masked(self, *, block: int | None = None) -> tuple[da.Array, da.Array]:
        """Pixels and a boolean ``ok`` mask from the same tasks; a bad file leaves ``ok`` False.

        :meth:`to_dask_arrays` with ``skip=True``, for callers that need only these two.
        """
        arrays = self.to_dask_arrays(block=block, skip=True)
        return arrays["images"], arrays["ok"]

    def _masks_block(self, start: int, block: int) -> np.ndarray | None:
        return None if self.masks is None else _paths_block(self.masks[start : start + block])


def _paths_block(paths: Any) -> np.ndarray:
    """A block's paths as an object array: dask passes it to the task as it is (a list or
    tuple in a task would be searched for keys of other tasks)."""
    out = np.empty(len(paths), dtype=object)
    out[:] = list(paths)
    return out


def _options(remote: RemoteFiles | None) -> Any:
    return None if remote is None else dict(remote.storage_options)


def _extra(source: FileSource) -> tuple[RemoteFiles, ...]:
    """Extra task arguments: the URL access recipe for remote files, nothing for local ones."""
    return () if source.remote is None else (source.remote,)


def _graph(source: FileSource, block: int, func: Any, mode: str) -> da.Array:
    spec = source.spec
    n = len(source.paths)
    sample = spec.sample_shape
    token = (
        tokenize(source.paths, spec, block)
        if source.remote is None
        else tokenize(source.paths, spec, block, source.remote, _options(source.remote))
    )
    name = f"imread-{mode}-" + token
    zeros = (0,) * len(sample)
    starts = range(0, n, block)
    extra = _extra(source)
    # classic tuple tasks (dask's public graph spec); the paths travel as one opaque array
    dsk: dict[Any, Any] = {
        (name, i, *zeros): (func, _paths_block(source.paths[s : s + block]), spec, *extra)
        for i, s in enumerate(starts)
    }
    chunks = (tuple(min(block, n - s) for s in starts), *((d,) for d in sample))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks, dtype=np.dtype(spec.dtype))


def _contents(
    paths: Sequence[str] | np.ndarray,
    masks: Sequence[str] | np.ndarray | None,
    remote: RemoteFiles | None,
) -> Iterator[tuple[int, bytes | DecodeError | None, bytes | DecodeError | None]]:
    """Each row's file content and its mask's (None: read the local file when decoding).

    Remote files are fetched ``FETCH_FILES`` rows at a time, masks with their images.
    """
    if remote is None:
        for i in range(len(paths)):
            yield i, None, None
        return
    for s in range(0, len(paths), FETCH_FILES):
        part = list(paths[s : s + FETCH_FILES])
        wanted = part + ([] if masks is None else list(masks[s : s + FETCH_FILES]))
        got = remote.fetch(wanted)
        for j in range(len(part)):
            yield s + j, got[j], None if masks is None else got[len(part) + j]


def decode_rows(
    paths: Sequence[str] | np.ndarray,
    spec: DecodeSpec,
    masks: Sequence[str] | np.ndarray | None,
    mask_dtype: str,
    skip: bool,
    remote: RemoteFiles | None = None,
    *,
    out: np.ndarray | None = None,
) -> Rows:
    """Decode a block of rows: ``(images, source_size, masks or None, ok)``.

    A bad file (or mask) raises :class:`~daskimg.errors.DecodeError`, or with ``skip``
    leaves its rows zero and ``ok`` False. ``out``: the images are decoded into it (a
    buffer the caller reuses; its shape and dtype those of the block's images).
    """
    n = len(paths)
    shape = (n, *spec.sample_shape)
    if out is not None and (out.shape != shape or out.dtype != np.dtype(spec.dtype)):
        raise ValueError(f"out is {out.dtype} {out.shape}; the block needs {spec.dtype} {shape}")
    images = (np.zeros if skip else np.empty)(shape, dtype=spec.dtype) if out is None else out
    sizes = np.zeros((n, len(spec.size)), dtype=np.int64)
    stored = None if masks is None else np.zeros((n, *spec.size), dtype=mask_dtype)
    ok = np.ones(n, dtype=bool)
    for i, data, mask_data in _contents(paths, masks, remote):
        try:
            if isinstance(data, DecodeError):
                raise data
            sizes[i] = decode_into(paths[i], spec, images[i], data=data)
            if masks is not None and stored is not None:
                if isinstance(mask_data, DecodeError):
                    raise DecodeError(paths[i], f"its mask {masks[i]!r}: {mask_data.reason}")
                mask_into(
                    masks[i],
                    stored[i],
                    source_size=(int(sizes[i, 0]), int(sizes[i, 1])),
                    resize=spec.resize,
                    image=paths[i],
                    data=mask_data,
                )
        except DecodeError as e:
            if not skip:
                raise
            ok[i] = False
            images[i] = 0
            sizes[i] = 0
            if stored is not None:
                stored[i] = 0
            logger.warning("skipping %s", e)
    return Rows(images, sizes, stored, ok)


def block_arrays(
    paths: Sequence[str] | np.ndarray,
    spec: DecodeSpec,
    masks: Sequence[str] | np.ndarray | None,
    mask_dtype: str,
    boxes: Mapping[str, np.ndarray],
    remote: RemoteFiles | None = None,
    *,
    out: np.ndarray | None = None,
    skip: bool = False,
) -> dict[str, np.ndarray]:
    """Decode a block into every array of :meth:`FileSource.to_dask_arrays`: a bad file
    raises, or with ``skip`` leaves its rows zero and ``ok`` (then returned too) False.

    The arguments are one item of :meth:`FileSource.block_args`; ``out`` as for
    :func:`decode_rows`.
    """
    rows = decode_rows(paths, spec, masks, mask_dtype, skip, remote, out=out)
    arrays = {"images": rows.images, "source_size": rows.source_size}
    if skip:
        arrays["ok"] = rows.ok
    if rows.masks is not None:
        arrays["masks"] = rows.masks
    for name, src in boxes.items():
        arrays[name] = _stored_boxes(
            name, src, rows, (spec.size[0], spec.size[1]), spec.resize, paths
        )
    return arrays


def _stored_boxes(
    name: str,
    source: np.ndarray,
    rows: Rows,
    size: tuple[int, int],
    resize: str,
    paths: Sequence[str] | np.ndarray,
) -> np.ndarray:
    """A block's source-pixel boxes ``name`` in the stored frame (NaN for rows that failed);
    a box wholly outside its image is an error naming the file."""
    _check_inside(name, source, rows.source_size, paths)
    return to_stored(source, rows.source_size, size=size, resize=resize)


def _check_inside(
    name: str, source: np.ndarray, sizes: np.ndarray, paths: Sequence[str] | np.ndarray
) -> None:
    """Raise if a box has nothing inside its image: it was given in another frame (the
    stored size, the picture before its EXIF rotation, another image's), and would be
    stored as NaN — a box silently lost; or if one reaches far past the right or bottom
    edge (more than :data:`FAR_PAST` of the side: drawn on the picture before its
    rotation, or on a larger copy), which clipping would silently cut. A box that reaches
    a little past an edge is clipped later, as ``resize="crop"`` clips; NaN (no box) and
    files that failed pass."""
    if sizes.ndim != 2 or sizes.shape[1] != 2 or not len(source):
        return
    h, w = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    viewed = "x0, y0, x1, y1 in the source image's pixels as a viewer shows it"
    for bad, what, why in (
        (
            outside(source, (0, 0, w, h)),
            "lies wholly outside the image",
            f"; boxes are {viewed}. Correct the box, or leave its four values empty (NaN) "
            "for an image without one",
        ),
        (
            _far_past(source, w, h),
            "reaches far past the image",
            " ({n} such boxes in this block); it would be cut to the image. Boxes are "
            f"{viewed}: a box drawn on the picture before its EXIF rotation, or on a larger "
            "copy, is in another frame. If the boxes reach past the edges on purpose, clip "
            "them to each image first",
        ),
    ):
        bad &= h > 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            box = ", ".join(f"{v:g}" for v in source[i])
            raise ValueError(
                f"{paths[i]!r}: box {name!r} ({box}) {what}, which is {int(w[i])} x "
                f"{int(h[i])} pixels (width x height) after its EXIF orientation"
                + why.format(n=int(bad.sum()))
            )


#: how far past the right or bottom edge a box may reach before it is taken for another
#: frame's (drawn before the EXIF rotation, or on a larger copy): a tenth of the image's
#: side, and at least 8 pixels (annotators' boxes overshoot by a few). Past the left or top
#: edge (negative corners, which no other frame explains) a box is clipped, as before
FAR_PAST = 0.1


def _far_past(source: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per box: reaching past the right or bottom edge of its ``w`` x ``h`` image by more
    than :data:`FAR_PAST` of that side (NaN boxes do not)."""
    with np.errstate(invalid="ignore"):
        over_x, over_y = source[:, 2] - w, source[:, 3] - h
        return (over_x > np.maximum(8.0, FAR_PAST * w)) | (over_y > np.maximum(8.0, FAR_PAST * h))


def _decode_block(
    paths: Sequence[str] | np.ndarray, spec: DecodeSpec, remote: RemoteFiles | None = None
) -> np.ndarray:
    return decode_rows(paths, spec, None, "uint8", False, remote).images


def _decode_block_skip(
    paths: Sequence[str] | np.ndarray, spec: DecodeSpec, remote: RemoteFiles | None = None
) -> np.ndarray:
    images, _, _, ok = decode_rows(paths, spec, None, "uint8", True, remote)
    return images[ok]
