"""Read: boxes moved between a source image's pixels and its stored sample's pixels.

A box is four numbers ``x0, y0, x1, y1``: its left, top, right and bottom edges in
continuous pixel coordinates, where pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``.
A box around pixels 10..19 (inclusive) of a row has ``x0 = 10`` and ``x1 = 20``. (For
1-based inclusive corners, as in Pascal VOC files, subtract 1 from ``x0`` and ``y0``.)

Source boxes are in the source image's pixels *after* EXIF orientation, the picture as
a viewer shows it (and as :mod:`daskimg.read.decode` decodes it). :func:`to_stored` moves
them with exactly the geometry applied to the pixels (:mod:`daskimg.read.geometry`) for
``resize="stretch"``, ``"crop"`` and ``"pad"`` (DCT draft scaling does not change it).
A stored box is clipped to the part of the sample that holds the picture; a box with
nothing left inside (cut away by ``"crop"``, or outside its image) becomes NaN in all four
numbers. (Read from files, a box with nothing inside its source image is an error naming
the file before it gets here: it was given in another frame; so is one reaching past its
right or bottom edge by more than a tenth of the image's side and 8 pixels.) NaN boxes (a sample without one) stay NaN. :func:`to_source` maps stored boxes
back, given each sample's ``source_size``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("daskimg")

__all__ = [
    "box_dtype",
    "check_boxes",
    "checked_column",
    "clip_boxes",
    "image_frame",
    "outside",
    "to_source",
    "to_stored",
    "warn_fractions",
]


def to_stored(
    boxes: Any, source_size: Any, *, size: Sequence[int], resize: str = "stretch"
) -> np.ndarray:
    """Source-pixel boxes ``(N, 4)`` in the stored samples' pixel frame (clipped; NaN if cut away).

    Parameters
    ----------
    boxes
        ``(N, 4)`` ``x0, y0, x1, y1`` in each source's pixels after EXIF orientation.
    source_size
        ``(N, 2)`` ``(H, W)`` of each source after EXIF orientation (a set's
        ``source_size`` column). A row of zeros (a file that failed) gives NaN.
    size
        The stored ``(height, width)``.
    resize
        ``"stretch"``, ``"crop"`` or ``"pad"``, as the images were read.

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` float32.

    Examples
    --------
    >>> to_stored([[100, 50, 300, 250]], [[300, 400]], size=(150, 150), resize="crop")
    array([[ 25.,  25., 125., 125.]], dtype=float32)
    >>> to_stored([[0, 0, 40, 40]], [[300, 400]], size=(150, 150), resize="crop")
    array([[nan, nan, nan, nan]], dtype=float32)
    """
    b, p = _prepare(boxes, source_size, size, resize)
    bx0, by0, sx, sy, ox, oy = p[:6]
    with np.errstate(invalid="ignore", divide="ignore"):
        moved = np.stack(
            [
                (b[:, 0] - bx0) * sx + ox,
                (b[:, 1] - by0) * sy + oy,
                (b[:, 2] - bx0) * sx + ox,
                (b[:, 3] - by0) * sy + oy,
            ],
            axis=1,
        )
    return clip_boxes(moved, p[6:])


def clip_boxes(boxes: Any, frame: Sequence[Any], dtype: Any = np.float32) -> np.ndarray:
    """Boxes ``(N, 4)`` clipped to ``frame = (x0, y0, x1, y1)``; NaN where nothing is left.
    Returned as ``dtype`` (computed in float64: float64 boxes keep their precision).

    ``frame`` holds numbers or one value per box. A box with width (or height) and none
    left inside, or lying wholly outside, becomes NaN in all four numbers; a point or line
    (zero width or height) inside the frame is kept.

    Examples
    --------
    >>> clip_boxes([[-5, 2, 5, 8], [12, 0, 20, 4]], (0, 0, 10, 10))
    array([[ 0.,  2.,  5.,  8.],
           [nan, nan, nan, nan]], dtype=float32)
    """
    b = np.asarray(boxes, dtype=np.float64)
    fx0, fy0, fx1, fy1 = (np.asarray(f, dtype=np.float64) for f in frame)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    with np.errstate(invalid="ignore"):
        cx0, cx1 = np.clip(x0, fx0, fx1), np.clip(x1, fx0, fx1)
        cy0, cy1 = np.clip(y0, fy0, fy1), np.clip(y1, fy0, fy1)
    out = np.stack([cx0, cy0, cx1, cy1], axis=1)
    out[outside(b, frame)] = np.nan
    return out.astype(dtype, copy=False)


def outside(boxes: Any, frame: Sequence[Any]) -> np.ndarray:
    """Which boxes ``(N, 4)`` have nothing inside ``frame = (x0, y0, x1, y1)`` (numbers or
    one value per box): lying wholly outside, or with width (height) and none of it
    inside. A point or line inside, or on an edge, is inside; a NaN box is not outside.

    Examples
    --------
    >>> outside([[-5, 2, 5, 8], [12, 0, 20, 4], [10, 0, 12, 4]], (0, 0, 10, 10)).tolist()
    [False, True, True]
    """
    b = np.asarray(boxes, dtype=np.float64)
    fx0, fy0, fx1, fy1 = (np.asarray(f, dtype=np.float64) for f in frame)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    with np.errstate(invalid="ignore"):  # NaN compares False
        return np.asarray(
            (x1 < fx0)
            | (x0 > fx1)
            | (y1 < fy0)
            | (y0 > fy1)
            | ((x1 > x0) & (np.clip(x1, fx0, fx1) <= np.clip(x0, fx0, fx1)))
            | ((y1 > y0) & (np.clip(y1, fy0, fy1) <= np.clip(y0, fy0, fy1)))
        )


def to_source(
    boxes: Any, source_size: Any, *, size: Sequence[int], resize: str = "stretch"
) -> np.ndarray:
    """Stored-pixel boxes ``(N, 4)`` back in each source's pixels (after EXIF orientation).

    The inverse of :func:`to_stored` for boxes it did not clip; a clipped box comes back as
    the part of the source that the stored sample shows. NaN stays NaN.

    Parameters
    ----------
    boxes
        ``(N, 4)`` ``x0, y0, x1, y1`` in the stored samples' pixels (e.g.
        ``ds.columns["bbox"]``).
    source_size
        ``(N, 2)`` ``(H, W)`` of each source (``ds.columns["source_size"]``).
    size, resize
        How the samples were read (``ds.spec``, or a store's ``attrs["source"]``).

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` float64.

    Examples
    --------
    >>> to_source([[25, 25, 125, 125]], [[300, 400]], size=(150, 150), resize="crop")
    array([[100.,  50., 300., 250.]])
    """
    b, p = _prepare(boxes, source_size, size, resize)
    bx0, by0, sx, sy, ox, oy = p[:6]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack(
            [
                (b[:, 0] - ox) / sx + bx0,
                (b[:, 1] - oy) / sy + by0,
                (b[:, 2] - ox) / sx + bx0,
                (b[:, 3] - oy) / sy + by0,
            ],
            axis=1,
        )


def _prepare(
    boxes: Any, source_size: Any, size: Sequence[int], resize: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    b = np.asarray(boxes, dtype=np.float64)
    hw = np.asarray(source_size)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) (x0, y0, x1, y1); got {b.shape}")
    if hw.shape != (len(b), 2):
        raise ValueError(
            f"source_size must have shape ({len(b)}, 2), one (height, width) per box; "
            f"got {hw.shape}"
        )
    if len(size) != 2:
        raise ValueError(f"size must be the stored (height, width); got {tuple(size)}")
    return b, placements(hw[:, 0], hw[:, 1], (int(size[0]), int(size[1])), resize)


def placements(h: Any, w: Any, size: tuple[int, int], resize: str) -> list[np.ndarray]:
    """:func:`daskimg.read.geometry.placement` for many sources at once, the same arithmetic.

    Returns ``[box_x0, box_y0, scale_x, scale_y, offset_x, offset_y, pic_x0, pic_y0,
    pic_x1, pic_y1]``, each an array with one value per source; a source of size 0
    gives NaN.
    """
    h = np.asarray(h, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    th, tw = size
    bad = (h <= 0) | (w <= 0)
    h = np.where(bad, np.nan, h)
    w = np.where(bad, np.nan, w)
    zero = np.zeros_like(h)
    with np.errstate(invalid="ignore", divide="ignore"):
        if resize == "crop":
            src_ratio = w / h
            out_ratio = tw / th
            wider = src_ratio >= out_ratio
            same = src_ratio == out_ratio
            cw = np.where(same, w, np.where(wider, out_ratio * h, w))
            ch = np.where(same, h, np.where(wider, h, w / out_ratio))
            bx0 = (w - cw) * 0.5
            by0 = (h - ch) * 0.5
            fw, fh = np.full_like(h, tw), np.full_like(h, th)
            sx, sy = tw / cw, th / ch
            ox, oy = zero, zero
        elif resize == "pad":
            src_ratio = w / h
            out_ratio = tw / th
            fw = np.where(src_ratio > out_ratio, tw, np.maximum(1, np.round(w / h * th)))
            fh = np.where(src_ratio < out_ratio, th, np.maximum(1, np.round(h / w * tw)))
            same = src_ratio == out_ratio
            fw, fh = np.where(same, tw, fw), np.where(same, th, fh)
            fw, fh = np.where(bad, np.nan, fw), np.where(bad, np.nan, fh)
            bx0, by0 = zero, zero
            sx, sy = fw / w, fh / h
            ox, oy = np.round((tw - fw) * 0.5), np.round((th - fh) * 0.5)
        elif resize == "stretch":
            bx0, by0 = zero, zero
            fw, fh = np.full_like(h, tw), np.full_like(h, th)
            sx, sy = tw / w, th / h
            ox, oy = zero, zero
        else:
            raise ValueError(f"resize must be 'stretch', 'crop' or 'pad'; got {resize!r}")
    return [bx0, by0, sx, sy, ox, oy, ox, oy, ox + fw, oy + fh]


def check_boxes(name: str, boxes: Any, hw: Sequence[int] | None = None, first: int = 0) -> None:
    """Raise ValueError naming the column and row of the first box of ``boxes`` ``(N, 4)``
    that cannot be ``x0, y0, x1, y1`` in an image of ``hw = (height, width)`` pixels (None:
    the frame is not known): some but not all four values NaN, an infinite value, right
    before left or bottom above top (``x, y, width, height`` boxes), or nothing inside the
    image (another frame: the source's, normalised 0..1 of another image, ...). A box that
    only reaches past an edge, a point or line inside, and NaN in all four (no box) pass.
    ``first``: the row of ``boxes[0]`` in the whole column (for the message)."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or not len(b):
        return
    nan = np.isnan(b)
    with np.errstate(invalid="ignore"):
        problems = [
            (nan.any(axis=1) & ~nan.all(axis=1), "has some of its four values NaN; a sample "
             "without a box has all four NaN"),
            (np.isinf(b).any(axis=1), "has an infinite value; give the box's edges in pixels"),
            ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]), "is not the left, top, right and "
             "bottom edges (x0 <= x1, y0 <= y1). For x, y, width, height boxes, add width "
             "and height to x and y"),
        ]  # fmt: skip
        if hw is not None:
            h, w = int(hw[0]), int(hw[1])
            problems.append((
                outside(b, (0, 0, w, h)),
                f"lies wholly outside the images, which are {w} x {h} pixels (width x "
                "height); boxes are x0, y0, x1, y1 in the images' own pixels (scale "
                "normalised 0..1 boxes by the width and height)",
            ))  # fmt: skip
    for bad, why in problems:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            box = ", ".join(f"{v:g}" for v in b[i])
            raise ValueError(f"boxes {name!r}, row {first + i}: ({box}) {why}")


def box_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype boxes of ``dtype`` are kept in: a float dtype as it is; integers (and bool)
    as floats that hold each of their values exactly (float32 up to 16 bits, else float64).
    Boxes must be floats: a box cut away by a crop is NaN, a flip can move one past the
    left edge (an unsigned 20 becomes 65531 there), and stored boxes come from scaling."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return dt
    return np.dtype(np.float32 if dt.itemsize <= 2 else np.float64)


def checked_column(values: Any, name: str, frame: tuple[int, int] | None) -> Any:
    """A lazy (dask) box column whose blocks are checked (:func:`check_boxes`, rows counted
    in the whole column) as they are computed: by ``to_zarr`` and by a feed alike."""
    return values.rechunk({1: -1}).map_blocks(_checked_block, name, frame, dtype=values.dtype)


def _checked_block(
    block: np.ndarray, name: str, frame: tuple[int, int] | None, block_info: Any = None
) -> np.ndarray:
    check_boxes(name, block, frame, block_info[0]["array-location"][0][0] if block_info else 0)
    return block


def warn_fractions(
    values: np.ndarray, name: str, where: str, rows: Sequence[Any] | None = None
) -> None:
    """Log boxes that lie within 0..1: fractions of the image size (YOLO, TensorFlow's
    normalised boxes), which ``boxes=`` would take for pixels — every such box inside the
    top-left pixel, passing every check, then scaled with the pixels into nothing. When
    every box does, the column is named; when only some do among pixel boxes (a CSV pieced
    together from two exports), those whose edges are not whole pixels are counted and the
    first named (``rows``: what names each row, e.g. its file; default its number)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 4:
        return
    given = ~np.isnan(values).any(axis=1)
    if not given.any():
        return
    with np.errstate(invalid="ignore"):
        within = given & (values >= 0).all(axis=1) & (values <= 1).all(axis=1)
    if within[given].all() and values[given].max() > 0:
        logger.warning(
            "%s: every box %r lies within 0..1; boxes= takes pixel positions, so these would "
            "be boxes inside the top-left pixel. If they are fractions of the image size, "
            "multiply x0, x1 by each image's width and y0, y1 by its height first",
            where,
            name,
        )
        return
    # among pixel boxes: a box inside the top-left pixel with edges that are no whole
    # pixels (0.1, 0.2, 0.5, 0.6) is no object; (0, 0, 1, 1) is the top-left pixel itself
    wide = (values[:, 2] > values[:, 0]) | (values[:, 3] > values[:, 1])
    fractions = within & wide & (values != np.round(values)).any(axis=1)
    if fractions.any():
        i = int(np.flatnonzero(fractions)[0])
        row = repr(rows[i]) if rows is not None else f"row {i}"
        box = ", ".join(f"{v:g}" for v in values[i])
        logger.warning(
            "%s: %d of %d boxes %r lie within 0..1, among boxes in pixels (the first: %s, "
            "(%s)); boxes= takes pixel positions, so each would be a box inside the top-left "
            "pixel. If they are fractions of the image size (a file put together from two "
            "exports?), multiply x0, x1 by the image's width and y0, y1 by its height",
            where,
            int(fractions.sum()),
            int(given.sum()),
            name,
            row,
            box,
        )


def image_frame(shape: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of images of ``shape`` ``(N, H, W[, C])`` or ``(N, D, H, W, C)``."""
    return (int(shape[1]), int(shape[2])) if len(shape) <= 4 else (int(shape[-3]), int(shape[-2]))
