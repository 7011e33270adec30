"""Test data: pictures whose objects are known (the oracles of boxes and masks), and files
saved with an EXIF orientation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

from ._common import FORMATS, check_shape

__all__ = ["make_object_image", "make_object_mask", "save_oriented"]

#: the transpose that turns an upright picture into the file's frame for EXIF orientation 1..8
#: (the inverse of what ImageOps.exif_transpose applies)
_UNTRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def make_object_image(
    size: tuple[int, int],
    box: Sequence[int],
    *,
    background: int = 40,
    color: int = 220,
    mode: str = "RGB",
) -> Image.Image:
    """An upright picture with one object: a filled rectangle on a flat background.

    The oracle for boxes: the object's position found in a decoded image says where the
    box must be.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)``.
    box : sequence of int
        ``x0, y0, x1, y1``: the object covers columns ``x0 .. x1 - 1`` and rows
        ``y0 .. y1 - 1`` (pixel edges, as daskimg's boxes); it may reach past the edges.
    background, color : int
        Gray levels of the background and the object.
    mode : str
        ``"RGB"`` or ``"L"``.

    Returns
    -------
    PIL.Image.Image

    Examples
    --------
    >>> im = make_object_image((4, 6), (1, 1, 3, 2), background=0, color=9, mode="L")
    >>> np.asarray(im).tolist()[:3]
    [[0, 0, 0, 0, 0, 0], [0, 9, 9, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    """
    h, w = check_shape(size, 2, "size")
    arr = np.full((h, w), background, dtype=np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    arr[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = color
    image = Image.fromarray(arr)
    return image if mode == "L" else image.convert(mode)


def make_object_mask(
    size: tuple[int, int],
    boxes: Sequence[tuple[Sequence[int], int]],
    *,
    background: int = 0,
    palette: bool = False,
) -> Image.Image:
    """A segmentation mask: class ids painted in rectangles, in order, on ``background``.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)``.
    boxes : sequence of (box, class id)
        ``((x0, y0, x1, y1), id)`` pairs, as :func:`make_object_image` draws them.
    background : int
        The class id everywhere else.
    palette : bool
        Save-ready as a palette image (``P``, as Pascal VOC masks) instead of ``L``.

    Examples
    --------
    >>> m = make_object_mask((3, 4), [((0, 0, 2, 2), 3)], background=5)
    >>> np.asarray(m).tolist()
    [[3, 3, 5, 5], [3, 3, 5, 5], [5, 5, 5, 5]]
    """
    h, w = check_shape(size, 2, "size")
    arr = np.full((h, w), background, dtype=np.uint8)
    for box, class_id in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        arr[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = class_id
    image = Image.fromarray(arr)
    if palette:
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)])
    return image


def save_oriented(
    upright: Image.Image,
    path: str | os.PathLike[str],
    *,
    orientation: int = 1,
    quality: int = 95,
) -> Path:
    """Save ``upright`` so that a viewer honouring EXIF ``orientation`` shows it upright.

    The pixels are stored turned the way a camera would store them, with the orientation
    tag (1..8) set, in the format the file ending names (JPEG, PNG, ...).

    Examples
    --------
    >>> import tempfile
    >>> from PIL import ImageOps
    >>> im = make_object_image((4, 6), (1, 1, 3, 2))
    >>> p = save_oriented(im, Path(tempfile.mkdtemp()) / "x.png", orientation=6)
    >>> with Image.open(p) as f:
    ...     f.size, ImageOps.exif_transpose(f).tobytes() == im.tobytes()
    ((4, 6), True)
    """
    path = Path(path)
    if orientation not in range(1, 9):
        raise ValueError(f"orientation must be 1..8; got {orientation!r}")
    stored = upright if orientation == 1 else upright.transpose(_UNTRANSPOSE[orientation])
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    ext = path.suffix.lower().lstrip(".")
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path.name!r}; use one of {', '.join(FORMATS)}"
        )
    options: dict[str, int] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, format=fmt, exif=exif, **options)
    return path
